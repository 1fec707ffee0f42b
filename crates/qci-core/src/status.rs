//! The status event dom0 sends to the dev VM's `qci.Status` service. It is
//! the only message that crosses from dom0 back out, so it is small, strict
//! and versioned by its shape: unknown fields are refused.

use crate::JobId;
use serde::{Deserialize, Serialize};

/// Where a job stands. `failure` is the project's fault (a step failed);
/// `error` is CI's own (machine, network, timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Success,
    Failure,
    Error,
    Canceled,
}

impl State {
    /// A final state ends the job; nothing may follow it.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }

    /// The commit status state GitHub knows for this one.
    pub fn github_state(self) -> &'static str {
        match self {
            State::Queued | State::Running => "pending",
            State::Success => "success",
            State::Failure => "failure",
            State::Error | State::Canceled => "error",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Success => "success",
            State::Failure => "failure",
            State::Error => "error",
            State::Canceled => "canceled",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long dom0 gives one `qci.Status` call, event written and service
/// ended, unless its settings say otherwise (`status_timeout`).
pub const DEFAULT_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One status event, as sent on `qci.Status`'s stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusEvent {
    pub job: JobId,
    pub state: State,
    pub description: String,
    /// The log's file name in dom0 (`JOB.log`), never a path.
    pub log: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status event is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("status event is for job {got}, but the call was for job {expected}")]
    WrongJob { expected: JobId, got: JobId },
    #[error("status event log must be {expected:?}, got {got:?}")]
    BadLogName { expected: String, got: String },
}

impl StatusEvent {
    /// The longest description on the wire, in bytes. Longer ones are cut
    /// (see [`clean_description`]), never refused: a final status must not
    /// be lost because a step's command line or a hostile file name it
    /// quotes is long. Each sink cuts further to its own limit (GitHub: 140
    /// characters).
    pub const MAX_DESCRIPTION: usize = 1024;
    /// Upper bound on an event on the wire, read before parsing.
    pub const MAX_WIRE_BYTES: u64 = 8 * 1024;

    /// An event whose description is cleaned and cut to fit the wire.
    pub fn new(job: &JobId, state: State, description: impl AsRef<str>) -> Self {
        Self {
            job: job.clone(),
            state,
            description: clean_description(description.as_ref()),
            log: crate::log::file_name(job),
        }
    }

    /// Parses and validates an event that claims to be for `expected`. The
    /// description is cleaned and cut as [`StatusEvent::new`] does, so
    /// whatever the sender wrote, no control character reaches a sink or a
    /// terminal.
    pub fn parse_for(bytes: &[u8], expected: &JobId) -> Result<Self, StatusError> {
        let mut event: StatusEvent = serde_json::from_slice(bytes)?;
        if &event.job != expected {
            return Err(StatusError::WrongJob {
                expected: expected.clone(),
                got: event.job,
            });
        }
        event.description = clean_description(&event.description);
        let log = crate::log::file_name(expected);
        if event.log != log {
            return Err(StatusError::BadLogName {
                expected: log,
                got: event.log.chars().take(80).collect(),
            });
        }
        Ok(event)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings and enums cannot fail.
        serde_json::to_string(self).expect("status event serializes")
    }
}

/// A description fit for any sink and any screen: one line, terminal
/// escapes and other control characters removed (as in the log), runs of
/// white space made one space, cut to [`StatusEvent::MAX_DESCRIPTION`] bytes.
pub fn clean_description(text: &str) -> String {
    cut_bytes(&clean_line(text), StatusEvent::MAX_DESCRIPTION).into_owned()
}

/// Text from elsewhere (a ref, a job's description, a hypervisor's answer)
/// made safe to show on a terminal: one line, terminal escapes and other
/// control characters removed, runs of white space made one space.
pub fn clean_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let clean = crate::log::sanitize(flat.as_bytes());
    let words: Vec<&str> = clean.split_whitespace().collect();
    words.join(" ")
}

/// The marker that ends a cut text.
const CUT: char = '…';

/// `text` in at most `max` bytes, cut on a character boundary and ending in
/// `…` when it had to be cut.
pub fn cut_bytes(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(CUT.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &text[..end]).into()
}

/// `text` in at most `max` characters (GitHub counts characters), ending
/// in `…` when it had to be cut.
pub fn cut_chars(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            format!("{}{CUT}", &text[..end]).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::parse("J1").unwrap()
    }

    #[test]
    fn round_trips_the_documented_shape() {
        let raw = br#"{"job": "J1", "state": "running", "description": "Running make dev", "log": "J1.log"}"#;
        let ev = StatusEvent::parse_for(raw, &job()).unwrap();
        assert_eq!(
            ev,
            StatusEvent::new(&job(), State::Running, "Running make dev")
        );
        assert_eq!(
            StatusEvent::parse_for(ev.to_json().as_bytes(), &job()).unwrap(),
            ev
        );
    }

    #[test]
    fn refuses_unknown_fields_states_and_other_jobs() {
        let extra = br#"{"job":"J1","state":"running","description":"","log":"J1.log","x":1}"#;
        assert!(
            StatusEvent::parse_for(extra, &job())
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        let state = br#"{"job":"J1","state":"pending","description":"","log":"J1.log"}"#;
        let err = StatusEvent::parse_for(state, &job()).unwrap_err();
        assert!(
            matches!(err, StatusError::Json(_))
                && err.to_string().contains("unknown variant `pending`"),
            "{err}"
        );
        let other = br#"{"job":"J2","state":"running","description":"","log":"J2.log"}"#;
        assert!(matches!(
            StatusEvent::parse_for(other, &job()),
            Err(StatusError::WrongJob { .. })
        ));
        let path = br#"{"job":"J1","state":"running","description":"","log":"../etc/passwd"}"#;
        assert!(matches!(
            StatusEvent::parse_for(path, &job()),
            Err(StatusError::BadLogName { .. })
        ));
        let badid = br#"{"job":"../x","state":"running","description":"","log":"J1.log"}"#;
        let err = StatusEvent::parse_for(badid, &job()).unwrap_err();
        assert!(
            matches!(err, StatusError::Json(_))
                && err.to_string().contains("invalid job id \"../x\""),
            "{err}"
        );
    }

    #[test]
    fn long_descriptions_are_cut_not_refused_and_controls_removed() {
        let long = format!("{}é", "x".repeat(StatusEvent::MAX_DESCRIPTION - 1));
        let event = StatusEvent::new(&job(), State::Failure, &long);
        assert!(event.description.len() <= StatusEvent::MAX_DESCRIPTION);
        assert!(event.description.ends_with("x…"), "{}", event.description);

        // A sender that ignores the limit still gets its event through, cut.
        let raw = format!(
            r#"{{"job":"J1","state":"failure","description":"{}","log":"J1.log"}}"#,
            "é".repeat(2000)
        );
        let parsed = StatusEvent::parse_for(raw.as_bytes(), &job()).unwrap();
        assert_eq!(parsed.state, State::Failure);
        assert!(parsed.description.len() <= StatusEvent::MAX_DESCRIPTION);
        assert!(parsed.description.starts_with("éé") && parsed.description.ends_with('…'));

        let raw = br#"{"job":"J1","state":"error","description":"tar \u001b[2Jbad\u0007 \u009b31m\nname\tx\u0000","log":"J1.log"}"#;
        let parsed = StatusEvent::parse_for(raw, &job()).unwrap();
        assert_eq!(parsed.description, "tar bad name x");
    }

    #[test]
    fn cuts_end_on_a_character_and_say_so() {
        assert_eq!(cut_bytes("abc", 3), "abc");
        assert_eq!(cut_bytes("abcdé", 6), "abcdé");
        assert_eq!(cut_bytes("abcdé", 5), "ab…");
        assert_eq!(cut_bytes("ééé", 5), "é…");
        assert_eq!(cut_bytes("ééé", 4), "…");
        assert_eq!(cut_chars("éé", 2), "éé");
        assert_eq!(cut_chars("ééé", 2), "é…");
    }

    #[test]
    fn maps_to_github_states() {
        assert_eq!(State::Queued.github_state(), "pending");
        assert_eq!(State::Running.github_state(), "pending");
        assert_eq!(State::Canceled.github_state(), "error");
        assert_eq!(State::Failure.github_state(), "failure");
        assert!(State::Error.is_final() && !State::Running.is_final());
    }
}
