//! Reading the queue and the history: jobs, their events, deliveries,
//! counts for `/metrics`, and the logs old enough to prune.

use super::job::{JOB_COLUMNS, Job, job_from_row, job_id_column, state_column};
use crate::store::StoreError;
use qci_core::JobId;
use qci_core::State;
use rusqlite::{Connection, OptionalExtension};

/// A job by its id as asked (a URL's path, a machine's report): one that
/// is no valid job id is simply not found.
pub fn get(conn: &Connection, id: &(impl AsRef<str> + ?Sized)) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id.as_ref()], job_from_row)
        .optional()?)
}

/// Jobs not yet final, oldest first, and the `recent` latest final ones.
pub fn overview(conn: &Connection, recent: usize) -> Result<(Vec<Job>, Vec<Job>), StoreError> {
    let live =
        format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq");
    let done = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE state NOT IN ('queued', 'running') \
         ORDER BY finished_at DESC, seq DESC LIMIT ?1"
    );
    let live = conn
        .prepare_cached(&live)?
        .query_map([], job_from_row)?
        .collect::<Result<_, _>>()?;
    let done = conn
        .prepare_cached(&done)?
        .query_map([recent as i64], job_from_row)?
        .collect::<Result<_, _>>()?;
    Ok((live, done))
}

/// The events of a job, oldest first: `(at, state, description, source)`.
/// One status event of a job, as its page and the API show it.
#[derive(Debug, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub at: i64,
    pub state: State,
    pub description: String,
    /// Who sent it: dom0 through the relay, or the host itself.
    pub source: String,
}

pub fn events(conn: &Connection, job: &str) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, state, description, source FROM events WHERE job = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map([job], |r| {
            Ok(Event {
                at: r.get(0)?,
                state: state_column(r, 1)?,
                description: r.get(2)?,
                source: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Counts for `/metrics`.
pub struct Counts {
    /// Jobs by state.
    pub by_state: Vec<(State, i64)>,
    /// Jobs waiting for a machine, by Qubes version.
    pub queued: Vec<(String, i64)>,
    /// Deliveries whose jobs are not worked out yet.
    pub unresolved: i64,
}

pub fn counts(conn: &Connection) -> Result<Counts, StoreError> {
    let by_state = conn
        .prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")?
        .query_map([], |r| Ok((state_column(r, 0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let queued = conn
        .prepare_cached(
            "SELECT qubes, count(*) FROM jobs WHERE state = 'queued' AND dispatched_at IS NULL \
             GROUP BY qubes",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let unresolved = conn
        .prepare_cached("SELECT count(*) FROM triggers WHERE resolved_at IS NULL")?
        .query_row([], |r| r.get(0))?;
    Ok(Counts {
        by_state,
        queued,
        unresolved,
    })
}

/// A delivery as the job API shows it: its outcome, whether it is resolved
/// yet, and the jobs it made.
#[derive(Debug, serde::Serialize)]
pub struct Delivery {
    pub delivery: String,
    pub event: String,
    pub received_at: i64,
    pub outcome: String,
    pub resolved: bool,
    pub jobs: Vec<JobId>,
}

pub fn delivery(conn: &Connection, id: &str) -> Result<Option<Delivery>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT d.event, d.received_at, d.outcome, \
             (t.seq IS NULL OR t.resolved_at IS NOT NULL) \
             FROM deliveries d LEFT JOIN triggers t ON t.delivery = d.id WHERE d.id = ?1",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((event, received_at, outcome, resolved)) = row else {
        return Ok(None);
    };
    let jobs = conn
        .prepare_cached("SELECT id FROM jobs WHERE delivery = ?1 ORDER BY seq")?
        .query_map([id], |r| job_id_column(r, 0))?
        .collect::<Result<_, _>>()?;
    Ok(Some(Delivery {
        delivery: id.to_owned(),
        event,
        received_at,
        outcome,
        resolved,
        jobs,
    }))
}

/// Jobs whose published logs are older than `cutoff` (Unix ms).
pub fn expired_logs(conn: &Connection, cutoff: i64) -> Result<Vec<JobId>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1")?
        .query_map([cutoff], |r| job_id_column(r, 0))?
        .collect::<Result<_, _>>()?)
}
