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
    #[error("status event description is longer than {max} bytes")]
    DescriptionTooLong { max: usize },
    #[error("status event log must be {expected:?}, got {got:?}")]
    BadLogName { expected: String, got: String },
}

impl StatusEvent {
    /// GitHub cuts descriptions at 140 characters; a longer one is a bug or an attack.
    pub const MAX_DESCRIPTION: usize = 1024;
    /// Upper bound on an event on the wire, read before parsing.
    pub const MAX_WIRE_BYTES: u64 = 8 * 1024;

    pub fn new(job: &JobId, state: State, description: impl Into<String>) -> Self {
        Self {
            job: job.clone(),
            state,
            description: description.into(),
            log: crate::log::file_name(job),
        }
    }

    /// Parses and validates an event that claims to be for `expected`.
    pub fn parse_for(bytes: &[u8], expected: &JobId) -> Result<Self, StatusError> {
        let event: StatusEvent = serde_json::from_slice(bytes)?;
        if &event.job != expected {
            return Err(StatusError::WrongJob {
                expected: expected.clone(),
                got: event.job,
            });
        }
        if event.description.len() > Self::MAX_DESCRIPTION {
            return Err(StatusError::DescriptionTooLong {
                max: Self::MAX_DESCRIPTION,
            });
        }
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
        assert!(StatusEvent::parse_for(state, &job()).is_err());
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
        assert!(StatusEvent::parse_for(badid, &job()).is_err());
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
