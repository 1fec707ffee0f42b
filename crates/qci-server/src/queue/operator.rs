//! What operators ask through the job API: canceling a job, and running a
//! finished one again.

use super::history::get;
use super::intake::insert_job;
use super::job::now_ms;
use super::record::finish;
use crate::store::StoreError;
use crate::webhook::{Commit, NewJob};
use qci_core::job_file::CommitSha;
use qci_core::{JobId, State};
use rusqlite::Connection;

#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    AlreadyFinal(State),
    /// Ended; `running` when its run on a machine must be stopped.
    Canceled {
        running: bool,
    },
}

pub fn cancel(conn: &Connection, id: &JobId, by: &str) -> Result<CancelOutcome, StoreError> {
    let Some(job) = get(conn, id)? else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.is_final() {
        return Ok(CancelOutcome::AlreadyFinal(job.state));
    }
    finish(
        conn,
        &job.id,
        State::Canceled,
        &format!("Canceled by {by}"),
        "host",
    )?;
    Ok(CancelOutcome::Canceled {
        running: job.dispatched_at.is_some(),
    })
}

#[derive(Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    NotFound,
    NotFinal(State),
    /// No machine of the pool runs its Qubes version.
    NoMachine(String),
    Queued(JobId),
}

/// Queues a finished job again, as a new job on the same commit and
/// context, if a machine of the pool (running `versions`) can take it.
/// `delivery` is the webhook delivery that asked (GitHub's Re-run), so that
/// its page lists the new job; `None` for an operator's retry.
pub fn retry(
    conn: &Connection,
    id: &JobId,
    versions: &[String],
    delivery: Option<&str>,
) -> Result<RetryOutcome, StoreError> {
    let Some(old) = get(conn, id)? else {
        return Ok(RetryOutcome::NotFound);
    };
    if !old.is_final() {
        return Ok(RetryOutcome::NotFinal(old.state));
    }
    if !versions.contains(&old.qubes) {
        return Ok(RetryOutcome::NoMachine(old.qubes));
    }
    let supersede_key: Option<String> = conn
        .prepare_cached("SELECT supersede_key FROM jobs WHERE id = ?1")?
        .query_row([old.id.as_str()], |r| r.get(0))?;
    let job = NewJob {
        commit: Commit {
            slug: old.repo,
            clone_url: old.clone_url,
            sha: CommitSha::parse(&old.sha).map_err(|source| StoreError::BadCommit {
                job: old.id.clone(),
                source,
            })?,
            git_ref: old.git_ref,
            reason: old.reason,
            author: old.author,
            message: old.message,
            supersede_key,
            pr: old.pr.map(|n| n as u64),
            needs_approval: false,
        },
        qubes: old.qubes,
        context: old.context,
    };
    let new = insert_job(conn, &job, delivery, Some(&old.id), now_ms(), None)?;
    Ok(RetryOutcome::Queued(new))
}
