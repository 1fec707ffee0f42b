//! The reader against real reports and against the hostile ones a machine
//! under test could write: each refusal is checked by its variant and the
//! line a user reads in the job's log.

use qci_junit::{Counts, JunitError, Limits, Outcome, TestCase, parse, parse_file};
use std::path::Path;
use std::time::{Duration, Instant};

/// A report as pytest 8 writes it with `-o junit_family=legacy` (which
/// keeps `file` and `line`) and `-o junit_logging=system-out`: one line of
/// XML but for the traceback and captured output.
const PYTEST: &str = include_str!("pytest-8.xml");

fn read(xml: &str) -> Result<Vec<TestCase>, JunitError> {
    parse(xml.as_bytes(), &Limits::default()).map(|r| r.cases)
}

fn refusal(xml: &str) -> JunitError {
    match read(xml) {
        Ok(cases) => panic!("accepted {cases:?}"),
        Err(e) => e,
    }
}

fn case(body: &str) -> TestCase {
    let xml = format!("<testsuite>{body}</testsuite>");
    let mut cases = read(&xml).expect("a case");
    assert_eq!(cases.len(), 1, "{cases:?}");
    cases.remove(0)
}

#[test]
fn reads_a_pytest_report() {
    let report = parse(PYTEST.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(
        report.counts(),
        Counts {
            passed: 3,
            failed: 1,
            errored: 0,
            skipped: 1
        }
    );
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "test_add",
            "test_sub",
            "test_div",
            "test_big[10]",
            "test_on_qubes"
        ]
    );

    let passed = &report.cases[0];
    assert_eq!(passed.outcome, Outcome::Passed);
    assert_eq!(passed.classname, "tests.test_math");
    assert_eq!(passed.duration, Some(Duration::from_millis(1)));
    assert_eq!(passed.file.as_deref(), Some("tests/test_math.py"));
    assert_eq!(passed.line, Some(3));
    assert_eq!(
        (&passed.message, &passed.details, &passed.output),
        (&None, &None, &None)
    );

    let failed = &report.cases[2];
    assert_eq!(failed.outcome, Outcome::Failed);
    assert_eq!(failed.duration, Some(Duration::from_millis(2)));
    assert_eq!(failed.line, Some(10));
    // The message's `&#10;` made one line.
    assert_eq!(
        failed.message.as_deref(),
        Some("assert 2 == 3  +  where 2 = div(4, 2)")
    );
    assert_eq!(
        failed.details.as_deref(),
        Some(
            "def test_div():\n        print(\"dividing 4 by 2\")\n>       assert div(4, 2) == 3\n\
             E       assert 2 == 3\nE        +  where 2 = div(4, 2)\n\n\
             tests/test_math.py:13: AssertionError"
        )
    );
    assert_eq!(
        failed.output.as_deref(),
        Some(
            "--------------------------------- Captured Out ---------------------------------\n\
             dividing 4 by 2\n"
        )
    );

    let skipped = &report.cases[4];
    assert_eq!(skipped.outcome, Outcome::Skipped);
    assert_eq!(skipped.message.as_deref(), Some("not on Qubes"));
    assert_eq!(skipped.details, None);
}

#[test]
fn reads_a_pytest_report_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pytest-8.xml");
    let report = parse_file(&path, &Limits::default()).unwrap();
    assert_eq!(report.counts().failed, 1);
    assert_eq!(report.cases.len(), 5);
}

#[test]
fn refuses_a_billion_laughs_by_its_doctype_fast() {
    let mut xml =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
    for i in 1..=9 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        xml.push_str(&format!(
            " <!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    xml.push_str("]>\n<testsuite><testcase name=\"&lol9;\">&lol9;</testcase></testsuite>\n");
    let start = Instant::now();
    let e = refusal(&xml);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(e, JunitError::DocType), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the report has a DOCTYPE: refused (no DTDs or entities)"
    );
}

#[test]
fn refuses_entities_without_a_doctype() {
    let in_text =
        refusal("<testsuite><testcase name=\"a\"><failure>&lol9;</failure></testcase></testsuite>");
    assert!(
        matches!(&in_text, JunitError::Entity { name } if name == "lol9"),
        "{in_text:?}"
    );
    assert_eq!(
        in_text.to_string(),
        "the report uses the entity &lol9;: refused (only &amp; &lt; &gt; &quot; &apos; and numeric character references)"
    );
    let in_attribute = refusal("<testsuite><testcase name=\"&xxe;\"/></testsuite>");
    assert!(
        matches!(&in_attribute, JunitError::Entity { name } if name == "xxe"),
        "{in_attribute:?}"
    );
    // Even in an element the reader ignores.
    let ignored =
        refusal("<testsuite><properties><property value=\"&x;\"/></properties></testsuite>");
    assert!(matches!(ignored, JunitError::Entity { .. }), "{ignored:?}");
}

#[test]
fn refuses_a_huge_file_by_its_size_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.xml");
    // Sparse: 200 MB that take no disk and would take seconds to read.
    std::fs::File::create(&path)
        .unwrap()
        .set_len(200_000_000)
        .unwrap();
    let start = Instant::now();
    let e = parse_file(&path, &Limits::default()).unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(100));
    assert!(
        matches!(e, JunitError::TooLarge { limit } if limit == 32 << 20),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "the report is larger than 32 MiB");
}

#[test]
fn refuses_a_report_over_the_size_in_memory() {
    let limits = Limits {
        max_bytes: 10,
        ..Limits::default()
    };
    let e = parse(b"<testsuite></testsuite>", &limits).unwrap_err();
    assert_eq!(e.to_string(), "the report is larger than 10 bytes");
}

#[test]
fn refuses_ten_thousand_levels_of_nesting() {
    for (open, close) in [("<testsuite>", "</testsuite>"), ("<a>", "</a>")] {
        let xml = format!(
            "<testsuites>{}{}</testsuites>",
            open.repeat(10_000),
            close.repeat(10_000)
        );
        let e = refusal(&xml);
        assert!(matches!(e, JunitError::TooDeep { limit: 32 }), "{e:?}");
        assert_eq!(e.to_string(), "nested deeper than 32 elements");
    }
}

#[test]
fn takes_nesting_up_to_the_limit() {
    let xml = format!(
        "<testsuites>{}<testcase name=\"deep\"/>{}</testsuites>",
        "<testsuite>".repeat(30),
        "</testsuite>".repeat(30)
    );
    let cases = read(&xml).unwrap();
    assert_eq!(cases[0].name, "deep");
}

#[test]
fn refuses_invalid_utf8_and_says_where() {
    let mut xml = b"<testsuite><testcase name=\"caf".to_vec();
    let at = xml.len();
    xml.extend_from_slice(b"\xe9\"/></testsuite>");
    let e = parse(&xml, &Limits::default()).unwrap_err();
    assert!(matches!(e, JunitError::Utf8 { at: a } if a == at), "{e:?}");
    assert_eq!(e.to_string(), format!("invalid UTF-8 at byte {at}"));
}

#[test]
fn keeps_markup_in_names_and_messages_as_text() {
    let case = case(
        "<testcase name=\"&lt;script&gt;alert(1)&lt;/script&gt;\">\
         <failure message=\"&lt;script&gt;x&lt;/script&gt;\"><![CDATA[<script>y</script>]]></failure>\
         </testcase>",
    );
    assert_eq!(case.name, "<script>alert(1)</script>");
    assert_eq!(case.message.as_deref(), Some("<script>x</script>"));
    assert_eq!(case.details.as_deref(), Some("<script>y</script>"));
}

#[test]
fn refuses_a_report_left_open() {
    let cut = &PYTEST[..PYTEST.find("<skipped").unwrap()];
    let e = refusal(cut);
    assert!(
        matches!(&e, JunitError::Unclosed { element } if element == "testcase"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the report ends with <testcase> left open: it was cut short"
    );
    let e = refusal("<testsuites>\n  <testsuite name=\"s\">\n    <system-out>");
    assert!(
        matches!(&e, JunitError::Unclosed { element } if element == "system-out"),
        "{e:?}"
    );
}

#[test]
fn refuses_malformed_xml_with_its_position() {
    let e = refusal("<testsuite><testcase></testsuite>");
    assert!(matches!(e, JunitError::Malformed { at: 21, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "malformed XML at byte 21: ill-formed document: expected `</testcase>`, but `</testsuite>` was found"
    );
    let e = refusal("<testsuite><testcase name=\"a\" name=\"b\"/></testsuite>");
    assert!(matches!(e, JunitError::Malformed { .. }), "{e:?}");
}

#[test]
fn refuses_what_is_not_junit() {
    let e = refusal("<html><body/></html>");
    assert!(
        matches!(&e, JunitError::NotJunit { root } if root == "html"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "not a JUnit report: the root element is <html>, not <testsuites> or <testsuite>"
    );
    assert!(matches!(refusal("  "), JunitError::NoRoot));
    assert!(matches!(
        refusal("<testsuite/><testsuite/>"),
        JunitError::SecondRoot { .. }
    ));
}

#[test]
fn cuts_long_text_on_a_character_and_says_so() {
    let long = "é".repeat(50_000); // 100,000 bytes
    let case = case(&format!(
        "<testcase name=\"{long}\"><error message=\"{long}\">{long}</error>\
         <system-out>{long}</system-out></testcase>"
    ));
    let limits = Limits::default();
    for (field, limit) in [
        (case.name.as_str(), limits.max_name),
        (case.message.as_deref().unwrap(), limits.max_message),
        (case.details.as_deref().unwrap(), limits.max_text),
        (case.output.as_deref().unwrap(), limits.max_text),
    ] {
        assert!(field.len() <= limit, "{} > {limit}", field.len());
        assert!(field.len() > limit - 10, "{} cut too short", field.len());
        assert!(
            field.ends_with("é […cut]"),
            "{}",
            &field[field.len() - 20..]
        );
    }
    assert_eq!(case.outcome, Outcome::Errored);
}

#[test]
fn decodes_numeric_character_references() {
    let case = case(
        "<testcase name=\"t&#233;st&#x2713;\"><failure message=\"&#65;&#x42;\">&#67;&#x1F600;&amp;&lt;&gt;&quot;&apos;</failure></testcase>",
    );
    assert_eq!(case.name, "tést✓");
    assert_eq!(case.message.as_deref(), Some("AB"));
    assert_eq!(case.details.as_deref(), Some("C😀&<>\"'"));
}

#[test]
fn removes_control_characters() {
    let case = case(
        "<testcase name=\"a&#27;[31mb&#13;\tc\"><failure message=\"one&#10;two\">x&#27;]0;title&#7;\r\n\ty\u{85}z</failure>\
         <system-err>e&#1;rr&#x9f;</system-err></testcase>",
    );
    assert_eq!(case.name, "a[31mb c");
    assert_eq!(case.message.as_deref(), Some("one two"));
    assert_eq!(case.details.as_deref(), Some("x]0;title\n\tyz"));
    assert_eq!(case.output.as_deref(), Some("err"));
    // `&#0;` is no character at all, in XML as in quick-xml.
    let e = refusal("<testsuite><testcase name=\"&#0;\"/></testsuite>");
    assert!(matches!(e, JunitError::Malformed { .. }), "{e:?}");
}

#[test]
fn refuses_more_cases_than_the_limit() {
    let limits = Limits {
        max_cases: 2,
        ..Limits::default()
    };
    let e = parse(PYTEST.as_bytes(), &limits).unwrap_err();
    assert!(matches!(e, JunitError::TooManyCases { limit: 2 }), "{e:?}");
    assert_eq!(e.to_string(), "more than 2 test cases");
}

#[test]
fn reads_a_bare_suite_with_nested_suites_and_unknown_parts() {
    let cases = read(
        "<testsuite name=\"outer\"><properties><property name=\"x\" value=\"1\"/></properties>\
         <testcase name=\"a\" time=\"-1\" line=\"x\"/>\
         <testsuite><testcase name=\"b\" time=\"NaN\" weird=\"1\"><error message=\"boom\">trace</error>\
         <system-err>late</system-err><system-out>early</system-out><unknown><failure/></unknown></testcase></testsuite>\
         <testcase name=\"c\" time=\"1e400\"><failure/><error message=\"teardown\"/></testcase>\
         </testsuite>",
    )
    .unwrap();
    assert_eq!(cases.len(), 3);
    let [a, b, c] = &cases[..] else {
        unreachable!()
    };
    assert_eq!(
        (a.outcome, a.duration, a.line, &a.classname),
        (Outcome::Passed, None, None, &String::new())
    );
    assert_eq!((b.outcome, b.duration), (Outcome::Errored, None));
    assert_eq!(b.message.as_deref(), Some("boom"));
    assert_eq!(b.details.as_deref(), Some("trace"));
    assert_eq!(b.output.as_deref(), Some("early\nlate"));
    // A failure wins over the teardown's error.
    assert_eq!(
        (c.outcome, c.duration, &c.message),
        (Outcome::Failed, None, &None)
    );
}

#[test]
fn refuses_a_symlink_and_what_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.xml");
    std::fs::write(&real, PYTEST).unwrap();
    let link = dir.path().join("report.xml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = parse_file(&link, &Limits::default()).unwrap_err();
    assert!(
        matches!(&e, JunitError::Symlink { path } if *path == link),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("the report {} is a symlink: refused", link.display())
    );
    let e = parse_file(dir.path(), &Limits::default()).unwrap_err();
    assert!(matches!(e, JunitError::NotAFile { .. }), "{e:?}");
    let fifo = dir.path().join("fifo.xml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = parse_file(&fifo, &Limits::default()).unwrap_err();
    assert!(matches!(e, JunitError::NotAFile { .. }), "{e:?}");
}

#[test]
fn outcomes_read_back_from_their_words() {
    for outcome in [
        Outcome::Passed,
        Outcome::Failed,
        Outcome::Errored,
        Outcome::Skipped,
    ] {
        assert_eq!(outcome.as_str().parse::<Outcome>().unwrap(), outcome);
    }
    let e = "error".parse::<Outcome>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown test outcome \"error\": expected passed, failed, errored or skipped"
    );
}

#[test]
fn the_counts_read_as_one_line() {
    let counts = |passed, failed, errored, skipped| qci_junit::Counts {
        passed,
        failed,
        errored,
        skipped,
    };
    assert_eq!(
        counts(140, 2, 0, 6).to_string(),
        "2 of 148 tests failed (140 passed, 6 skipped)"
    );
    assert_eq!(
        counts(3, 1, 1, 0).to_string(),
        "2 of 5 tests failed (3 passed, 1 errored)"
    );
    assert_eq!(counts(3, 0, 0, 0).to_string(), "3 of 3 tests passed");
    assert_eq!(
        counts(1, 0, 0, 1).to_string(),
        "1 of 2 tests passed (1 skipped)"
    );
}
