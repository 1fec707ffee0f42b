//! The log's line splitter, sanitizer and secret mask, fed a step's raw
//! output. The steps run the dev VM's code, so their output is hostile: it
//! must not drive the terminal or browser that shows the log, nor reveal a
//! configured secret.
//!
//! Checked: the lines do not depend on how the output was cut into reads,
//! and put back together they are the output; a cleaned, masked line holds
//! no control character but tab and no secret; cleaning is idempotent and
//! leaves plain printable ASCII as it is.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_core::log::{LineSplitter, SecretMask, sanitize};

const SECRETS: [&str; 2] = ["s3cr3t", "hunter2"];

fuzz_target!(|data: &[u8]| {
    let mask = SecretMask::new(SECRETS.map(String::from));
    let whole = split(&mask, [data]);
    let in_reads = split(&mask, data.chunks(7));
    assert_eq!(whole, in_reads, "lines depend on how the output was read");
    assert_eq!(whole.join(&b'\n'), data);

    for raw in &whole {
        assert!(!raw.contains(&b'\n'));
        let clean = sanitize(raw);
        let shown = mask.apply(&clean);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\t'),
            "control character left in {shown:?}"
        );
        for secret in SECRETS {
            assert!(!shown.contains(secret), "{secret} shown in {shown:?}");
        }
        assert_eq!(
            sanitize(clean.as_bytes()),
            clean,
            "cleaning twice changes it"
        );
        if raw
            .iter()
            .all(|&b| (b' '..=b'~').contains(&b) || b == b'\t')
        {
            assert_eq!(clean.as_bytes(), raw.as_slice());
        }
    }
});

/// The lines the splitter gives for output arriving in `reads`, the last
/// one without its newline included.
fn split<'a>(mask: &SecretMask, reads: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    let mut splitter = LineSplitter::masking(mask.clone());
    let mut lines = Vec::new();
    for read in reads {
        lines.extend(splitter.push(read));
    }
    lines.push(splitter.finish().unwrap_or_default());
    lines
}
