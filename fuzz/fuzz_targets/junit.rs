//! The JUnit XML reader, fed a test report as the machine under test wrote
//! it (the code under test ran as dom0's user with sudo).
//!
//! Checked: it never panics; an accepted report keeps to its limits (no more
//! cases than allowed; each name, class name, file and message one line of
//! at most its limit, with no control character; details and output at most
//! their limit, with no control character but newline and tab), and its
//! counts add up. Read again with the default, larger limits, an accepted
//! report gives the same cases with the same outcomes, times and lines:
//! cutting text never changes what a report says about its tests.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_junit::{Limits, Outcome, Report, parse};

fuzz_target!(|data: &[u8]| {
    let small = Limits {
        max_bytes: 1 << 20,
        max_depth: 8,
        max_cases: 50,
        max_name: 24,
        max_message: 16,
        max_text: 64,
    };
    let Ok(report) = parse(data, &small) else {
        return;
    };
    check_limits(&report, &small);

    let roomy = Limits::default();
    let full = parse(data, &roomy)
        .unwrap_or_else(|e| panic!("accepted with small limits, refused with the default: {e}"));
    check_limits(&full, &roomy);
    assert_eq!(full.cases.len(), report.cases.len());
    for (cut, whole) in report.cases.iter().zip(&full.cases) {
        assert_eq!(
            (cut.outcome, cut.duration, cut.line),
            (whole.outcome, whole.duration, whole.line)
        );
    }
});

fn check_limits(report: &Report, limits: &Limits) {
    assert!(report.cases.len() <= limits.max_cases);
    let counts = report.counts();
    assert_eq!(
        counts.passed + counts.failed + counts.errored + counts.skipped,
        report.cases.len()
    );
    for case in &report.cases {
        let one_line = [
            (Some(&case.name), limits.max_name),
            (Some(&case.classname), limits.max_name),
            (case.file.as_ref(), limits.max_name),
            (case.message.as_ref(), limits.max_message),
        ];
        for (field, limit) in one_line {
            let Some(field) = field else { continue };
            assert!(field.len() <= limit, "{} bytes: {field:?}", field.len());
            assert!(
                !field.chars().any(char::is_control),
                "control character in {field:?}"
            );
        }
        for field in [&case.details, &case.output].into_iter().flatten() {
            assert!(field.len() <= limits.max_text, "{} bytes", field.len());
            assert!(
                !field.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
                "control character in {field:?}"
            );
        }
        assert_eq!(case.outcome.as_str().parse::<Outcome>().ok(), Some(case.outcome));
    }
}
