//! The status-event parser of the dev VM's `qci.Status` service, and the
//! description cleaning both sides apply.
//!
//! The input is what arrives on the service's stdin, for a call whose
//! argument is job `J1`. An accepted event is for `J1`, names `J1.log`, has
//! a clean description (one line, no control character, white space in
//! single spaces, at most `MAX_DESCRIPTION` bytes), fits the wire limit, and
//! serializes to JSON that parses back to the same event. Whatever job the
//! input names, it is accepted only for that job.
//!
//! The input is also taken as a description dom0 writes (a step's command
//! line, a hostile file name): the event `StatusEvent::new` makes of it
//! obeys the same rules and survives the wire.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_core::{JobId, State, StatusEvent};

fuzz_target!(|data: &[u8]| {
    let expected = JobId::parse("J1").expect("J1 is a job id");
    if let Ok(event) = StatusEvent::parse_for(data, &expected) {
        check_accepted(&event, &expected);
    }

    // The same bytes offered for the job they name (if they name one): the
    // check against the call's job is the only difference.
    let named = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("job")?.as_str().map(str::to_owned))
        .and_then(|job| JobId::parse(&job).ok());
    if let Some(job) = named
        && let Ok(event) = StatusEvent::parse_for(data, &job)
    {
        check_accepted(&event, &job);
    }

    let made = StatusEvent::new(&expected, State::Failure, String::from_utf8_lossy(data));
    check_accepted(&made, &expected);
});

fn check_accepted(event: &StatusEvent, job: &JobId) {
    assert_eq!(&event.job, job);
    assert_eq!(event.log, qci_core::log::file_name(job));
    let description = &event.description;
    assert!(description.len() <= StatusEvent::MAX_DESCRIPTION);
    assert!(
        !description.chars().any(char::is_control),
        "control character in {description:?}"
    );
    assert_eq!(
        &description.split_whitespace().collect::<Vec<_>>().join(" "),
        description,
        "white space not in single spaces"
    );
    let json = event.to_json();
    assert!(
        json.len() as u64 <= StatusEvent::MAX_WIRE_BYTES,
        "an accepted event serializes to {} bytes, more than the wire limit",
        json.len()
    );
    let back = StatusEvent::parse_for(json.as_bytes(), job)
        .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    assert_eq!(&back, event);
    assert_eq!(back.to_json(), json, "serializing is stable");
}
