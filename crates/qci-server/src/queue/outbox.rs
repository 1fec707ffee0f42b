//! The outbox's rows: GitHub statuses and notifications still to send,
//! written with the job change they tell of, and marked once sent.

use super::job::{job_id_column, now_ms};
use crate::store::StoreError;
use qci_core::{JobId, State};
use rusqlite::{Connection, OptionalExtension, params};

/// What an outbox row is for; each kind has its own sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Github,
    Slack,
    Webhook,
}

impl Kind {
    /// As the `kind` column stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Github => "github",
            Kind::Slack => "slack",
            Kind::Webhook => "webhook",
        }
    }
}

/// Everything the outbox needs to know to post a job's commit status, or,
/// in App mode, to bring its check run to this state: `job_state` is the
/// job's own state (`queued` and `running` are both `pending` as a
/// status), so each message says where the check run stands whatever the
/// job's row says by the time it is sent.
pub(crate) fn enqueue_github(
    conn: &Connection,
    job: &JobId,
    state: State,
    description: &str,
    ready: bool,
) -> Result<(), StoreError> {
    let (repo, sha, context): (String, String, String) = conn
        .prepare_cached("SELECT repo, sha, context FROM jobs WHERE id = ?1")?
        .query_row([job.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let body = serde_json::json!({
        "repo": repo, "sha": sha, "context": context,
        "state": state.github_state(), "description": description,
        "job_state": state.as_str(),
    });
    conn.prepare_cached(
        "INSERT INTO outbox (kind, job, body, ready) VALUES ('github', ?1, ?2, ?3)",
    )?
    .execute(params![job.as_str(), body.to_string(), ready])?;
    Ok(())
}

/// A progress status for GitHub that replaces the job's one still waiting
/// there, if any: however often a machine reports, GitHub gets at most one
/// pending status per job in flight and one waiting, the latest. The job's
/// first status (`queued`) is never replaced, and a status replaced while
/// in flight is sent again (see [`sent`]).
pub(crate) fn coalesce_github(
    conn: &Connection,
    job: &JobId,
    state: State,
    description: &str,
) -> Result<(), StoreError> {
    let waiting: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT id, body FROM outbox WHERE kind = 'github' AND job = ?1 AND sent_at IS NULL \
             AND id > (SELECT min(id) FROM outbox WHERE kind = 'github' AND job = ?1) \
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([job.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((row, body)) = waiting else {
        return enqueue_github(conn, job, state, description, true);
    };
    let mut body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    body["state"] = state.github_state().into();
    body["description"] = description.into();
    body["job_state"] = state.as_str().into();
    conn.prepare_cached("UPDATE outbox SET body = ?2 WHERE id = ?1")?
        .execute(params![row, body.to_string()])?;
    Ok(())
}

/// One message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: i64,
    pub job: JobId,
    pub body: String,
}

/// The oldest ready messages of `kind`, in the order they were written.
pub fn outgoing(conn: &Connection, kind: Kind, limit: usize) -> Result<Vec<Outgoing>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, job, body FROM outbox WHERE kind = ?1 AND sent_at IS NULL AND ready = 1 \
             ORDER BY id LIMIT ?2",
        )?
        .query_map(params![kind.as_str(), limit as i64], |r| {
            Ok(Outgoing {
                id: r.get(0)?,
                job: job_id_column(r, 1)?,
                body: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// Marks messages done, each with the error that made the host give up on
/// it, if any. A message whose body changed while it was being sent (a
/// newer progress status took its place) stays, to be sent as it is now.
pub fn sent(conn: &Connection, done: &[(Outgoing, Option<String>)]) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached("UPDATE outbox SET sent_at = ?2, error = ?3 WHERE id = ?1 AND body = ?4")?;
    for (msg, error) in done {
        stmt.execute(params![msg.id, now_ms(), error, msg.body])?;
    }
    Ok(())
}

/// The id of the job's check run (App mode), once GitHub has given it.
pub fn check_run_id(conn: &Connection, job: &JobId) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT check_run_id FROM jobs WHERE id = ?1")?
        .query_row([job.as_str()], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Keeps the id GitHub gave the job's check run, for its later messages.
pub fn set_check_run_id(conn: &Connection, job: &JobId, id: Option<i64>) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET check_run_id = ?2 WHERE id = ?1")?
        .execute(params![job.as_str(), id])?;
    Ok(())
}
