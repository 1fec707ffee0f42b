//! A job's run: taking the next job of a Qubes version for the pool,
//! putting back one that could not start, marking it started, the statuses
//! its machine posts through the relay, and its end.

use super::history::get;
use super::job::{JOB_COLUMNS, Job, job_from_row, now_ms, state_column};
use super::outbox::{coalesce_github, enqueue_github};
use super::record::{finish, record_event};
use crate::store::StoreError;
use qci_core::{JobId, State};
use rusqlite::{Connection, OptionalExtension, params};

/// A queued job that may go to the pool now: approved, not handed over
/// yet, and not waiting out a retry delay.
const RUNNABLE: &str = "state = 'queued' AND qubes = ?1 AND needs_approval = 0 \
    AND dispatched_at IS NULL AND (not_before IS NULL OR not_before <= ?2)";

/// Takes the oldest runnable job of `qubes`, marks it handed to the pool
/// and gives it its relay token (only the hash is kept).
pub fn claim_next(
    conn: &Connection,
    qubes: &str,
    token_hash: &str,
) -> Result<Option<Job>, StoreError> {
    let now = now_ms();
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {RUNNABLE} ORDER BY seq LIMIT 1");
    let Some(mut job) = conn
        .prepare_cached(&sql)?
        .query_row(params![qubes, now], job_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    conn.prepare_cached("UPDATE jobs SET dispatched_at = ?2, token_hash = ?3 WHERE id = ?1")?
        .execute(params![job.id.as_str(), now, token_hash])?;
    job.dispatched_at = Some(now);
    Ok(Some(job))
}

/// Whether a job of `qubes` is waiting for a machine.
pub fn runnable(conn: &Connection, qubes: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT 1 FROM jobs WHERE {RUNNABLE} LIMIT 1"))?
        .query_row(params![qubes, now_ms()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// What became of a job the pool could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum Requeued {
    /// Back in the queue (at its old place), handed over again at `at` (Unix ms).
    Waiting { attempt: i64, at: i64 },
    /// Out of attempts: ended as `error`.
    Ended,
    /// It had ended meanwhile (canceled, superseded): nothing to do.
    Final,
}

/// Puts a job that never started back in the queue, to be handed to the
/// pool again after `delay`, its status saying why it waits; once it has
/// failed to start `attempts` times it ends as `error`. Its relay token dies.
pub fn requeue(
    conn: &Connection,
    id: &JobId,
    why: &str,
    attempts: u32,
    delay: std::time::Duration,
) -> Result<Requeued, StoreError> {
    let Some(job) = get(conn, id)? else {
        return Ok(Requeued::Final);
    };
    if job.is_final() {
        return Ok(Requeued::Final);
    }
    let failures = job.start_failures + 1;
    if failures >= i64::from(attempts) {
        let why = if failures == 1 {
            format!("CI error: could not start on a machine: {why}")
        } else {
            format!("CI error: could not start on a machine in {failures} attempts; last: {why}")
        };
        // Nothing ran: there is no log to wait for before the final status.
        conn.prepare_cached(
            "UPDATE jobs SET start_failures = ?2, dispatched_at = NULL, token_hash = NULL \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), failures])?;
        finish(conn, id, State::Error, &why, "host")?;
        return Ok(Requeued::Ended);
    }
    let at = now_ms() + delay.as_millis() as i64;
    let description = qci_core::status::clean_description(&format!(
        "Queued: retrying in {} (attempt {failures} of {attempts} could not start: {why})",
        humantime::format_duration(delay),
    ));
    conn.prepare_cached(
        "UPDATE jobs SET dispatched_at = NULL, token_hash = NULL, start_failures = ?2, \
         not_before = ?3, description = ?4 WHERE id = ?1",
    )?
    .execute(params![id.as_str(), failures, at, description])?;
    record_event(conn, id, State::Queued, &description, "host")?;
    enqueue_github(conn, id, State::Queued, &description, true)?;
    Ok(Requeued::Waiting {
        attempt: failures,
        at,
    })
}

/// The job began on a machine: from now on a host crash ends it as
/// `error`, where before it would have been queued again.
pub fn mark_started(conn: &Connection, id: &JobId) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET started_at = coalesce(started_at, ?2) WHERE id = ?1")?
        .execute(params![id.as_str(), now_ms()])?;
    Ok(())
}

/// The pool leased `machine` for the job (again, if it moved).
pub fn mark_machine(conn: &Connection, id: &JobId, machine: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET machine = ?2, snapshot = NULL WHERE id = ?1")?
        .execute(params![id.as_str(), machine])?;
    Ok(())
}

/// The pool reverts the job's machine to `snapshot`.
pub fn mark_snapshot(conn: &Connection, id: &JobId, snapshot: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET snapshot = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), snapshot])?;
    Ok(())
}

/// The run is over and its log is published: the held final status and
/// notifications may go. A job nobody gave a final status ends as `error`
/// with `why_no_final`.
pub fn publish(conn: &Connection, id: &JobId, why_no_final: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET log_published = 1 WHERE id = ?1")?
        .execute([id.as_str()])?;
    let final_state = conn
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
        .query_row([id.as_str()], |r| state_column(r, 0))?;
    if !final_state.is_final() {
        finish(conn, id, State::Error, why_no_final, "host")?;
    }
    conn.prepare_cached("UPDATE outbox SET ready = 1 WHERE job = ?1 AND ready = 0")?
        .execute([id.as_str()])?;
    Ok(())
}

/// Records a final state the host (or the pool) decided, unless the job
/// has one already or is none of ours (a lease of another engine's job,
/// a GitHub Actions runner's: its status is the engine's).
pub fn record_final(
    conn: &Connection,
    id: &JobId,
    state: State,
    why: &str,
) -> Result<bool, StoreError> {
    if !state.is_final() || get(conn, id)?.is_none_or(|j| j.is_final()) {
        return Ok(false);
    }
    finish(conn, id, state, why, "host")?;
    Ok(true)
}

/// Why the relay refused a status; each maps to one HTTP status.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayRefusal {
    NoSuchJob,
    /// The token is not this job's (whether or not it is another's).
    BadToken,
    /// The job has a final state: its token is dead.
    Ended(State),
    /// e.g. `queued` after `running`.
    Backwards {
        from: State,
        to: State,
    },
}

/// Applies a status event posted through the relay, after checking that
/// the token is this job's and that the state moves forward. On any
/// refusal nothing is written.
pub fn relay(
    conn: &Connection,
    id: &JobId,
    token_hash: &str,
    state: State,
    description: &str,
) -> Result<Result<(), RelayRefusal>, StoreError> {
    let row: Option<(Option<String>, State)> = conn
        .prepare_cached("SELECT token_hash, state FROM jobs WHERE id = ?1")?
        .query_row([id.as_str()], |r| Ok((r.get(0)?, state_column(r, 1)?)))
        .optional()?;
    let Some((hash, current)) = row else {
        return Ok(Err(RelayRefusal::NoSuchJob));
    };
    // Another job's token gets the same refusal as a made-up one: the
    // answer must not tell its holder that it is valid somewhere.
    if !hash.is_some_and(|h| crate::tokens::same_hash(&h, token_hash)) {
        return Ok(Err(RelayRefusal::BadToken));
    }
    if current.is_final() {
        return Ok(Err(RelayRefusal::Ended(current)));
    }
    if current == State::Running && state == State::Queued {
        return Ok(Err(RelayRefusal::Backwards {
            from: current,
            to: state,
        }));
    }
    if state.is_final() {
        finish(conn, id, state, description, "relay")?;
    } else {
        conn.prepare_cached(
            "UPDATE jobs SET state = ?2, description = ?3, \
             started_at = CASE WHEN ?2 = 'running' THEN coalesce(started_at, ?4) ELSE started_at END \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), state.as_str(), description, now_ms()])?;
        let recorded: i64 = conn
            .prepare_cached("SELECT count(*) FROM events WHERE job = ?1")?
            .query_row([id.as_str()], |r| r.get(0))?;
        if recorded < MAX_EVENTS_PER_JOB {
            record_event(conn, id, state, description, "relay")?;
        }
        coalesce_github(conn, id, state, description)?;
    }
    Ok(Ok(()))
}

/// Events kept per job: a machine that reports progress without end must
/// not fill the host's disk. The job's row keeps the latest description,
/// and its final event is always recorded.
pub const MAX_EVENTS_PER_JOB: i64 = 200;
