//! What every change to a job writes: its events, and, at its end, its
//! state with the statuses and notifications that announce it.

use super::job::now_ms;
use super::outbox::{Kind, enqueue_github};
use crate::store::StoreError;
use qci_core::{JobId, State};
use rusqlite::{Connection, params};

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
    enqueue_github(conn, job, state, description, published)?;
    for kind in [Kind::Slack, Kind::Webhook] {
        conn.prepare_cached("INSERT INTO outbox (kind, job, body, ready) VALUES (?1, ?2, '', ?3)")?
            .execute(params![kind.as_str(), job.as_str(), published])?;
    }
    Ok(())
}
