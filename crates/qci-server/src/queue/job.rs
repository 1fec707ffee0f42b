//! A job as the queue stores it, and how its columns read back typed.

use qci_core::job_file::Reason;
use qci_core::{JobId, State};
use rusqlite::types::Type;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix ms, as every time in the database.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A job as the pages, the API and the dispatcher see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Job {
    pub id: JobId,
    pub repo: String,
    pub clone_url: String,
    pub sha: String,
    pub git_ref: String,
    pub reason: Reason,
    pub author: String,
    pub message: String,
    pub qubes: String,
    pub context: String,
    pub pr: Option<i64>,
    pub needs_approval: bool,
    pub state: State,
    pub description: String,
    pub retry_of: Option<JobId>,
    /// Times it was handed to the pool and could not start.
    pub start_failures: i64,
    pub created_at: i64,
    pub dispatched_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub log_published: bool,
    /// The machine it ran on, and the snapshot that machine was reverted
    /// to, as the pool reported them (none before it got one).
    pub machine: Option<String>,
    pub snapshot: Option<String>,
}

pub(crate) const JOB_COLUMNS: &str = "id, repo, clone_url, sha, git_ref, reason, author, message, qubes, \
    context, pr, needs_approval, state, description, retry_of, start_failures, created_at, \
    dispatched_at, started_at, finished_at, log_published, machine, snapshot";

pub(crate) fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: job_id_column(r, 0)?,
        repo: r.get(1)?,
        clone_url: r.get(2)?,
        sha: r.get(3)?,
        git_ref: r.get(4)?,
        reason: word_column(r, 5, parse_reason)?,
        author: r.get(6)?,
        message: r.get(7)?,
        qubes: r.get(8)?,
        context: r.get(9)?,
        pr: r.get(10)?,
        needs_approval: r.get(11)?,
        state: state_column(r, 12)?,
        description: r.get(13)?,
        retry_of: r
            .get::<_, Option<String>>(14)?
            .map(|id| id.parse().map_err(|e| bad_column(14, e)))
            .transpose()?,
        start_failures: r.get(15)?,
        created_at: r.get(16)?,
        dispatched_at: r.get(17)?,
        started_at: r.get(18)?,
        finished_at: r.get(19)?,
        log_published: r.get(20)?,
        machine: r.get(21)?,
        snapshot: r.get(22)?,
    })
}

impl Job {
    /// Its state ([`Job::state`] the field, for callers that hold a `&Job`).
    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_final(&self) -> bool {
        self.state().is_final()
    }

    /// How long it ran (or has been running), in ms.
    pub fn duration_ms(&self, now: i64) -> Option<i64> {
        let start = self.started_at.or(self.dispatched_at)?;
        Some(self.finished_at.unwrap_or(now) - start)
    }
}

/// A word in a column that names none of its kind: a database written by
/// hand, or by a newer qci.
#[derive(Debug, thiserror::Error)]
#[error("{word:?} is not a {kind}")]
pub struct UnknownWord {
    pub kind: &'static str,
    pub word: String,
}

/// Every state. A new one must be added here: this match stops compiling
/// without it.
const STATES: [State; 6] = [
    State::Queued,
    State::Running,
    State::Success,
    State::Failure,
    State::Error,
    State::Canceled,
];
const _: fn(State) = |s| match s {
    State::Queued | State::Running | State::Success => {}
    State::Failure | State::Error | State::Canceled => {}
};

/// A state as the database stores it ([`State::as_str`]).
pub fn parse_state(word: &str) -> Result<State, UnknownWord> {
    STATES
        .into_iter()
        .find(|s| s.as_str() == word)
        .ok_or_else(|| UnknownWord {
            kind: "job state",
            word: word.to_owned(),
        })
}

/// Every reason, kept complete as [`STATES`] is.
const REASONS: [Reason; 4] = [
    Reason::Push,
    Reason::PullRequest,
    Reason::Nightly,
    Reason::Manual,
];
const _: fn(Reason) = |r| match r {
    Reason::Push | Reason::PullRequest | Reason::Nightly | Reason::Manual => {}
};

/// How a reason is stored: as the job file spells it.
pub fn reason_str(r: Reason) -> &'static str {
    match r {
        Reason::Push => "push",
        Reason::PullRequest => "pull_request",
        Reason::Nightly => "nightly",
        Reason::Manual => "manual",
    }
}

pub fn parse_reason(word: &str) -> Result<Reason, UnknownWord> {
    REASONS
        .into_iter()
        .find(|r| reason_str(*r) == word)
        .ok_or_else(|| UnknownWord {
            kind: "job reason",
            word: word.to_owned(),
        })
}

pub(crate) fn bad_column(
    column: usize,
    e: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(e))
}

fn word_column<T>(
    r: &rusqlite::Row<'_>,
    column: usize,
    parse: fn(&str) -> Result<T, UnknownWord>,
) -> rusqlite::Result<T> {
    let word: String = r.get(column)?;
    parse(&word).map_err(|e| bad_column(column, e))
}

pub(crate) fn state_column(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<State> {
    word_column(r, column, parse_state)
}

pub(crate) fn job_id_column(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<JobId> {
    let id: String = r.get(column)?;
    id.parse().map_err(|e| bad_column(column, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_and_reason_reads_back_as_stored() {
        for state in STATES {
            assert_eq!(parse_state(state.as_str()).unwrap(), state);
        }
        for reason in REASONS {
            assert_eq!(parse_reason(reason_str(reason)).unwrap(), reason);
            // As the job file and the API spell it.
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason_str(reason))
            );
        }
        assert_eq!(
            parse_state("gone").unwrap_err().to_string(),
            "\"gone\" is not a job state"
        );
        assert!(
            parse_reason("")
                .unwrap_err()
                .to_string()
                .starts_with("\"\" is not a ")
        );
    }
}
