//! The log's line splitter, sanitizer and secret mask, fed a step's raw
//! output. The steps run the dev VM's code, so their output is hostile: it
//! must not drive the terminal or browser that shows the log, nor reveal a
//! configured secret.
//!
//! Checked: the lines do not depend on how the output was cut into reads,
//! and put back together they are the output; a cleaned, masked line holds
//! no control character but tab and no secret; cleaning is idempotent and
//! leaves plain printable ASCII as it is. The fast paths agree with the
//! slow one: a line the splitter calls printable cleans to itself, and a
//! read it says passes whole comes out as its own lines, unchanged.
//!
//! A short input without a newline is also repeated into a line over twice
//! [`MAX_LINE`], which must come out in pieces of at most that size that
//! put back make the line, never cut a secret in two (each piece is masked
//! on its own), and never cut a UTF-8 character in two. (Short, because
//! this costs a hundred times more than the rest; the input's length and
//! content still place the cuts anywhere in it.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_core::log::{LineSplitter, MAX_LINE, SecretMask, sanitize};

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

    if (1..=256).contains(&data.len()) && !data.contains(&b'\n') {
        check_overlong(&mask, &data.repeat((2 * MAX_LINE + 100) / data.len() + 1));
    }
});

fn check_overlong(mask: &SecretMask, line: &[u8]) {
    let pieces = split(mask, line.chunks(4096));
    assert_eq!(pieces.concat(), line);
    let utf8 = std::str::from_utf8(line).is_ok();
    let (last, cut) = pieces.split_last().expect("the last piece");
    assert!(last.len() <= MAX_LINE);
    let mut at = 0;
    for piece in cut {
        assert!(
            !piece.is_empty() && piece.len() <= MAX_LINE,
            "{}",
            piece.len()
        );
        assert!(
            !utf8 || std::str::from_utf8(piece).is_ok(),
            "a character cut at {at}"
        );
        at += piece.len();
        // Where a secret cut at `at` would be.
        for secret in SECRETS {
            let secret = secret.as_bytes();
            let from = at.saturating_sub(secret.len() - 1);
            let around = &line[from..(at + secret.len() - 1).min(line.len())];
            assert!(
                !around.windows(secret.len()).any(|w| w == secret),
                "{} cut at {at}",
                String::from_utf8_lossy(secret)
            );
        }
    }
}

/// The lines the splitter gives for output arriving in `reads`, the last
/// one without its newline included.
fn split<'a>(mask: &SecretMask, reads: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    let mut splitter = LineSplitter::masking(mask.clone());
    let mut lines = Vec::new();
    for read in reads {
        let whole = splitter.passes_whole(read);
        let before = lines.len();
        splitter.push(read, |line| {
            if let Some(text) = line.as_printable() {
                assert_eq!(sanitize(line.bytes), text, "called printable");
            }
            lines.push(line.bytes.to_vec());
        });
        if whole {
            let mut own: Vec<&[u8]> = read.split(|&b| b == b'\n').collect();
            own.pop(); // after the last newline
            assert_eq!(lines[before..], own, "passed whole, but cut");
        }
    }
    lines.push(splitter.finish().unwrap_or_default());
    lines
}
