//! What start-up repairs after a crash of the host.

use super::job::job_id_column;
use super::record::{finish, record_event};
use crate::store::StoreError;
use qci_core::{JobId, State};
use rusqlite::Connection;

/// After a host crash: jobs handed to the pool that never started go back
/// in the queue; jobs that started end as `error` "host restarted" (their
/// machines are the pool's to reclaim). Held statuses of jobs whose run
/// ended with the host are released. Returns (requeued, ended).
pub fn reconcile(conn: &Connection) -> Result<(Vec<JobId>, Vec<JobId>), StoreError> {
    let requeued: Vec<JobId> = conn
        .prepare(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') \
             AND dispatched_at IS NOT NULL AND started_at IS NULL ORDER BY seq",
        )?
        .query_map([], |r| job_id_column(r, 0))?
        .collect::<Result<_, _>>()?;
    for id in &requeued {
        conn.execute(
            "UPDATE jobs SET dispatched_at = NULL, state = 'queued' WHERE id = ?1",
            [id.as_str()],
        )?;
        record_event(
            conn,
            id,
            State::Queued,
            "Queued again (host restarted before it started)",
            "host",
        )?;
    }
    let ended: Vec<JobId> = conn
        .prepare(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') \
             AND started_at IS NOT NULL ORDER BY seq",
        )?
        .query_map([], |r| job_id_column(r, 0))?
        .collect::<Result<_, _>>()?;
    for id in &ended {
        finish(conn, id, State::Error, "host restarted", "host")?;
    }
    // Whatever log the host had is all there will be.
    conn.execute(
        "UPDATE jobs SET log_published = 1 WHERE finished_at IS NOT NULL AND log_published = 0",
        [],
    )?;
    conn.execute(
        "UPDATE outbox SET ready = 1 WHERE ready = 0 AND job IN \
         (SELECT id FROM jobs WHERE log_published = 1)",
        [],
    )?;
    Ok((requeued, ended))
}
