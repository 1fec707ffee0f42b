//! The job-id check, which every side runs on the qrexec argument before the
//! id becomes a file name.
//!
//! Checked against an independent statement of the rule in DESIGN.md (1 to 64
//! characters of `[A-Za-z0-9_.-]`, not starting with `.` or `-`): the check
//! accepts exactly what the rule allows, an accepted id is the input itself
//! and survives JSON and `FromStr`, and a refusal quotes a bounded amount of
//! the hostile input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_core::JobId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let allowed = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !text.starts_with(['.', '-']);

    match JobId::parse(text) {
        Ok(id) => {
            assert!(allowed, "accepted {text:?}");
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert_eq!(text.parse::<JobId>().as_ref(), Ok(&id));
            let json = serde_json::to_string(&id).expect("a job id serializes");
            assert_eq!(json, format!("\"{text}\""), "needs no escaping");
            let back: JobId = serde_json::from_str(&json).expect("a job id parses back");
            assert_eq!(back, id);
            assert_eq!(qci_core::log::file_name(&id), format!("{text}.log"));
        }
        Err(error) => {
            assert!(!allowed, "refused {text:?}: {error}");
            // The message goes to stderr and into statuses: it quotes at
            // most the 64 bytes the length check lets through.
            assert!(
                error.to_string().len() <= 64 * 10 + 100,
                "refusal of a {}-byte input is {} bytes long",
                text.len(),
                error.to_string().len()
            );
            let as_json = serde_json::to_string(text).expect("a string serializes");
            assert!(serde_json::from_str::<JobId>(&as_json).is_err());
        }
    }
});
