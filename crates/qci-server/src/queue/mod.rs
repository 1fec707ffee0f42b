//! The queue's rules, as transactions on the database. Each function runs
//! inside one [`crate::store::Store`] write (or read), so each rule holds
//! atomically:
//!
//! - [`intake`]: deliveries, triggers, and the jobs they make
//! - [`operator`]: canceling and retrying, for the job API
//! - [`dispatch`]: taking jobs for the pool, their runs' statuses and ends
//! - [`reconcile`]: what start-up repairs after a crash
//! - [`outbox`]: the statuses and notifications still to send
//! - [`history`]: reading jobs, events and deliveries back

pub mod dispatch;
pub mod history;
pub mod intake;
pub mod operator;
pub mod outbox;
pub mod reconcile;

pub use dispatch::{
    MAX_EVENTS_PER_JOB, RelayRefusal, Requeued, claim_next, has_final, mark_started, publish,
    record_final, relay, requeue, runnable,
};
pub use history::{Counts, Delivery, counts, delivery, events, expired_logs, get, overview};
pub use intake::{
    Applied, Queued, Trigger, Version, apply, approve, close_pr, next_trigger, run_commit,
    trigger_done,
};
pub use operator::{CancelOutcome, RetryOutcome, cancel, retry};
pub use outbox::{Kind, Outgoing, outgoing, sent};
pub use reconcile::reconcile;

use crate::store::StoreError;
use qci_core::job_file::Reason;
use qci_core::{JobId, State};
use rusqlite::types::Type;
use rusqlite::{Connection, params};
use std::time::{SystemTime, UNIX_EPOCH};

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
}

pub(crate) const JOB_COLUMNS: &str = "id, repo, clone_url, sha, git_ref, reason, author, message, qubes, \
    context, pr, needs_approval, state, description, retry_of, start_failures, created_at, \
    dispatched_at, started_at, finished_at, log_published";

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
    })
}

impl Job {
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

const STATES: [State; 6] = [
    State::Queued,
    State::Running,
    State::Success,
    State::Failure,
    State::Error,
    State::Canceled,
];

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

const REASONS: [Reason; 4] = [
    Reason::Push,
    Reason::PullRequest,
    Reason::Nightly,
    Reason::Manual,
];

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

fn bad_column(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
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

pub(crate) fn record_event(
    conn: &Connection,
    job: &JobId,
    state: State,
    description: &str,
    source: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (job, at, state, description, source) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        job.as_str(),
        now_ms(),
        state.as_str(),
        description,
        source
    ])?;
    Ok(())
}

/// A job that has ended on the host's side: its state, its GitHub status
/// (held until the log is published, if the job was handed to the pool),
/// and its notifications.
pub(crate) fn finish(
    conn: &Connection,
    job: &JobId,
    state: State,
    description: &str,
    source: &str,
) -> Result<(), StoreError> {
    let dispatched: Option<i64> = conn
        .prepare_cached("SELECT dispatched_at FROM jobs WHERE id = ?1")?
        .query_row([job.as_str()], |r| r.get(0))?;
    // A job that never reached a machine has no log to wait for.
    let published = dispatched.is_none();
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, description = ?3, finished_at = ?4, \
         log_published = log_published OR ?5 WHERE id = ?1",
    )?
    .execute(params![
        job.as_str(),
        state.as_str(),
        description,
        now_ms(),
        published
    ])?;
    let published: bool = conn
        .prepare_cached("SELECT log_published FROM jobs WHERE id = ?1")?
        .query_row([job.as_str()], |r| r.get(0))?;
    record_event(conn, job, state, description, source)?;
    outbox::enqueue_github(conn, job, state, description, published)?;
    for kind in [Kind::Slack, Kind::Webhook] {
        conn.prepare_cached("INSERT INTO outbox (kind, job, body, ready) VALUES (?1, ?2, '', ?3)")?
            .execute(params![kind.as_str(), job.as_str(), published])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::{self, SCHEMA};
    use crate::webhook::{Commit, Plan};
    use qci_core::job_file::CommitSha;

    fn commit(branch: &str) -> Commit {
        Commit {
            slug: "o/r".into(),
            clone_url: "/src".into(),
            sha: CommitSha::parse(&"a".repeat(40)).unwrap(),
            git_ref: format!("refs/heads/{branch}"),
            reason: Reason::Push,
            author: "a".into(),
            message: "m".into(),
            supersede_key: Some(format!("o/r#branch:{branch}")),
            pr: None,
            needs_approval: false,
        }
    }

    /// A delivery for each branch, resolved into one job on Qubes 4.2.
    fn queue(conn: &Connection, branches: &[&str]) -> Vec<JobId> {
        let mut jobs = Vec::new();
        for b in branches {
            let plan = Plan::Run(commit(b));
            apply(conn, &format!("d-{b}"), "push", &plan).unwrap();
            let trigger = next_trigger(conn).unwrap().unwrap();
            let v = Version {
                qubes: "4.2".into(),
                context: "qci/qubes-4.2".into(),
                refused: None,
            };
            jobs.extend(run_commit(conn, &trigger, &commit(b), &[v]).unwrap().jobs);
            trigger_done(conn, &trigger, "done").unwrap();
        }
        jobs
    }

    fn memory() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn).unwrap();
        conn
    }

    #[test]
    fn a_database_from_before_the_retry_columns_gets_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        let old = SCHEMA
            .replace(
                "    start_failures INTEGER NOT NULL DEFAULT 0,  -- hand-overs to the pool that did not start\n",
                "",
            )
            .replace(
                "    not_before     INTEGER,            -- not handed over again before this\n",
                "",
            );
        assert_ne!(old, SCHEMA);
        conn.execute_batch(&old).unwrap();
        schema::migrate(&mut conn).unwrap();
        schema::migrate(&mut conn).unwrap();
        assert_eq!(queue(&conn, &["a"]).len(), 1);
        assert!(claim_next(&conn, "4.2", "h").unwrap().is_some());
    }

    #[test]
    fn reconcile_requeues_what_never_started_and_ends_what_ran() {
        let conn = memory();
        let queued = queue(&conn, &["a", "b", "c"]);
        let started = claim_next(&conn, "4.2", "h1").unwrap().unwrap();
        mark_started(&conn, &started.id).unwrap();
        let handed = claim_next(&conn, "4.2", "h2").unwrap().unwrap();
        assert_eq!([&started.id, &handed.id], [&queued[0], &queued[1]], "FIFO");

        let (requeued, ended) = reconcile(&conn).unwrap();

        assert_eq!(requeued, std::slice::from_ref(&handed.id));
        assert_eq!(ended, std::slice::from_ref(&started.id));
        let ran = get(&conn, &started.id).unwrap().unwrap();
        assert_eq!(
            (ran.state.as_str(), ran.description.as_str()),
            ("error", "host restarted")
        );
        assert!(ran.log_published);
        let again = get(&conn, &handed.id).unwrap().unwrap();
        assert_eq!(
            (again.state.as_str(), again.dispatched_at),
            ("queued", None)
        );
        // It goes first again, and its final status is sendable at once.
        assert_eq!(
            claim_next(&conn, "4.2", "h3").unwrap().unwrap().id,
            handed.id
        );
        let github = outgoing(&conn, Kind::Github, 100).unwrap();
        assert!(
            github
                .iter()
                .any(|m| m.job == started.id && m.body.contains("host restarted"))
        );
        assert!(matches!(
            apply(&conn, "d-a", "push", &Plan::Run(commit("a"))).unwrap(),
            Applied::Duplicate
        ));
    }

    #[test]
    fn a_job_that_could_not_start_waits_its_delay_at_its_place_then_ends() {
        let conn = memory();
        let jobs = queue(&conn, &["a", "b"]);
        let first = claim_next(&conn, "4.2", "h1").unwrap().unwrap();
        assert_eq!(first.id, jobs[0]);
        let delay = std::time::Duration::from_secs(3600);
        let again = requeue(&conn, &first.id, "libvirt unreachable", 3, delay).unwrap();
        assert!(
            matches!(again, Requeued::Waiting { attempt: 1, .. }),
            "{again:?}"
        );
        let job = get(&conn, &first.id).unwrap().unwrap();
        assert_eq!(job.state.as_str(), "queued");
        assert!(job.description.contains("libvirt unreachable"), "{job:?}");
        // While it waits, the next job goes; then nothing is runnable.
        assert_eq!(claim_next(&conn, "4.2", "h2").unwrap().unwrap().id, jobs[1]);
        assert!(!runnable(&conn, "4.2").unwrap());
        // Its delay over, it goes again, and ends after the last attempt.
        let zero = std::time::Duration::ZERO;
        conn.execute("UPDATE jobs SET not_before = 0", []).unwrap();
        assert_eq!(claim_next(&conn, "4.2", "h3").unwrap().unwrap().id, jobs[0]);
        let second = requeue(&conn, &jobs[0], "still unreachable", 3, zero).unwrap();
        assert!(matches!(second, Requeued::Waiting { attempt: 2, .. }));
        claim_next(&conn, "4.2", "h4").unwrap().unwrap();
        assert_eq!(
            requeue(&conn, &jobs[0], "unreachable", 3, zero).unwrap(),
            Requeued::Ended
        );
        let ended = get(&conn, &jobs[0]).unwrap().unwrap();
        assert_eq!(ended.state.as_str(), "error");
        assert_eq!(
            ended.description,
            "CI error: could not start on a machine in 3 attempts; last: unreachable"
        );
        assert!(ended.log_published, "its final status is not held");
        assert_eq!(
            requeue(&conn, &jobs[0], "late", 3, zero).unwrap(),
            Requeued::Final
        );
        let states: Vec<String> = outgoing(&conn, Kind::Github, 100)
            .unwrap()
            .into_iter()
            .filter(|m| m.job == jobs[0])
            .map(|m| m.body)
            .collect();
        assert_eq!(states.len(), 4, "{states:?}");
        assert!(states[1].contains("attempt 1 of 3") && states[1].contains("pending"));
        assert!(states[3].contains("\"error\""), "{states:?}");
    }
}
