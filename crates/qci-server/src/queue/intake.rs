//! Deliveries into jobs: a webhook delivery is recorded once, what it asks
//! is kept as a trigger, and the resolver turns each trigger, in order,
//! into jobs (superseding, approving, dropping).

use super::job::{job_id_column, now_ms, reason_str, state_column};
use super::outbox::enqueue_github;
use super::record::{finish, record_event};
use crate::store::StoreError;
use crate::webhook::{Commit, NewJob, Plan};
use qci_core::{JobId, State};
use rusqlite::{Connection, OptionalExtension, params};

/// What a delivery did.
#[derive(Debug)]
pub enum Applied {
    /// The delivery was already received: nothing was written.
    Duplicate,
    /// Recorded; `trigger` when it asks for something the resolver does.
    Done {
        outcome: String,
        trigger: Option<i64>,
    },
}

/// Records a delivery once. What it asks (anything but `Ignore`) is kept
/// as a trigger, for the resolver to carry out in order.
pub fn apply(
    conn: &Connection,
    delivery: &str,
    event: &str,
    plan: &Plan,
) -> Result<Applied, StoreError> {
    let now = now_ms();
    let outcome = match plan {
        Plan::Ignore(why) => format!("ignored: {why}"),
        Plan::Run(c) => format!(
            "accepted: {} of {} at {}",
            c.git_ref,
            c.slug,
            c.sha.as_str()
        ),
        Plan::RunVersions {
            commit: c,
            versions,
        } => format!(
            "accepted: {} of {} at {} on Qubes {}",
            c.git_ref,
            c.slug,
            c.sha.as_str(),
            versions.join(", ")
        ),
        Plan::Asked { slug, pr, by, .. } => {
            format!("accepted: a request of {by} on {slug}#{pr}, once GitHub says they may")
        }
        Plan::Approve { slug, pr, .. } => format!("accepted: approval of {slug}#{pr}"),
        Plan::Close { slug, pr } => format!("accepted: closing of {slug}#{pr}"),
        Plan::Rerun { slug, job, .. } => format!("accepted: re-run of {job} of {slug}"),
        Plan::WorkflowJob(j) => format!(
            "accepted: Actions job {} of {} {:?} on Qubes {}",
            j.job_id, j.slug, j.action, j.qubes
        ),
    };
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO deliveries (id, event, received_at, outcome) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![delivery, event, now, outcome])?;
    if inserted == 0 {
        return Ok(Applied::Duplicate);
    }
    let trigger = match plan {
        Plan::Ignore(_) => None,
        plan => {
            let json = serde_json::to_string(plan)?;
            conn.prepare_cached(
                "INSERT INTO triggers (delivery, plan, received_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![delivery, json, now])?;
            Some(conn.last_insert_rowid())
        }
    };
    Ok(Applied::Done { outcome, trigger })
}

/// A delivery whose request is not carried out yet.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub seq: i64,
    pub delivery: String,
    /// JSON of a [`Plan`].
    pub plan: String,
    pub received_at: i64,
}

/// The oldest trigger not yet resolved.
pub fn next_trigger(conn: &Connection) -> Result<Option<Trigger>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, delivery, plan, received_at FROM triggers WHERE resolved_at IS NULL \
             ORDER BY seq LIMIT 1",
        )?
        .query_row([], |r| {
            Ok(Trigger {
                seq: r.get(0)?,
                delivery: r.get(1)?,
                plan: r.get(2)?,
                received_at: r.get(3)?,
            })
        })
        .optional()?)
}

/// A trigger is carried out: the delivery's outcome says what it did.
pub fn trigger_done(conn: &Connection, trigger: &Trigger, outcome: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE triggers SET resolved_at = ?2 WHERE seq = ?1")?
        .execute(params![trigger.seq, now_ms()])?;
    conn.prepare_cached("UPDATE deliveries SET outcome = ?2 WHERE id = ?1")?
        .execute(params![trigger.delivery, outcome])?;
    Ok(())
}

/// One Qubes version a commit runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub qubes: String,
    pub context: String,
    /// Why it cannot run: its job ends at once as `error` saying so.
    pub refused: Option<String>,
}

/// What running a commit did: the jobs it queued (or ended at once), and
/// the older runs of its branch or pull request that must stop.
#[derive(Debug, Default)]
pub struct Queued {
    pub jobs: Vec<JobId>,
    pub stop: Vec<JobId>,
}

/// Queues a commit's jobs, one per version, after superseding the older
/// unfinished jobs of its branch or pull request: whatever their versions
/// (the newer commit's `.qci.toml` may have dropped one), or, `narrow`
/// (a label's or a comment's versions), those of other commits and its
/// own on these versions only, its others going on.
pub fn run_commit(
    conn: &Connection,
    trigger: &Trigger,
    commit: &Commit,
    versions: &[Version],
    narrow: bool,
) -> Result<Queued, StoreError> {
    let mut queued = Queued::default();
    if let Some(key) = &commit.supersede_key {
        let only: Option<Vec<&str>> =
            narrow.then(|| versions.iter().map(|v| v.qubes.as_str()).collect());
        queued.stop = supersede(conn, key, commit.sha.as_str(), only.as_deref())?;
    }
    for v in versions {
        let job = NewJob {
            commit: commit.clone(),
            qubes: v.qubes.clone(),
            context: v.context.clone(),
        };
        queued.jobs.push(insert_job(
            conn,
            &job,
            Some(&trigger.delivery),
            None,
            trigger.received_at,
            v.refused.as_deref(),
        )?);
    }
    Ok(queued)
}

/// Ends the unfinished jobs of `key` as `error` "Superseded by SHA"
/// (with `only`, those of other commits and those of `sha` on these
/// versions); returns those already handed to the pool, whose runs must stop.
fn supersede(
    conn: &Connection,
    key: &str,
    sha: &str,
    only: Option<&[&str]>,
) -> Result<Vec<JobId>, StoreError> {
    let older: Vec<(JobId, Option<i64>)> = conn
        .prepare_cached(
            "SELECT id, dispatched_at, sha, qubes FROM jobs WHERE supersede_key = ?1 \
             AND state IN ('queued', 'running') ORDER BY seq",
        )?
        .query_map(params![key], |r| {
            Ok((
                job_id_column(r, 0)?,
                r.get(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .filter(|row| match (row, only) {
            (Ok((_, _, old_sha, qubes)), Some(only)) => {
                old_sha != sha || only.contains(&qubes.as_str())
            }
            _ => true,
        })
        .map(|row| row.map(|(id, dispatched, _, _)| (id, dispatched)))
        .collect::<Result<_, _>>()?;
    let why = format!("Superseded by {sha}");
    let mut running = Vec::new();
    for (id, dispatched) in older {
        finish(conn, &id, State::Error, &why, "host")?;
        if dispatched.is_some() {
            running.push(id);
        }
    }
    Ok(running)
}

/// Lets a fork's waiting jobs run. Returns the jobs approved.
pub fn approve(
    conn: &Connection,
    slug: &str,
    pr: u64,
    sha: Option<&str>,
    before: Option<i64>,
    by: &str,
) -> Result<Vec<JobId>, StoreError> {
    let waiting: Vec<JobId> = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE repo = ?1 AND pr = ?2 AND needs_approval = 1 \
             AND state = 'queued' AND (?3 IS NULL OR sha = ?3) \
             AND (?4 IS NULL OR created_at <= ?4) ORDER BY seq",
        )?
        .query_map(params![slug, pr as i64, sha, before], |r| {
            job_id_column(r, 0)
        })?
        .collect::<Result<_, _>>()?;
    let description = format!("Queued (approved by {by})");
    for id in &waiting {
        conn.prepare_cached(
            "UPDATE jobs SET needs_approval = 0, description = ?2, created_at = created_at \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), description])?;
        record_event(conn, id, State::Queued, &description, "host")?;
        enqueue_github(conn, id, State::Queued, &description, true)?;
    }
    Ok(waiting)
}

/// The latest job of each Qubes version on a pull request's head, oldest
/// version first: `(job, version, state)`.
pub fn head_jobs(
    conn: &Connection,
    slug: &str,
    pr: u64,
    sha: &str,
) -> Result<Vec<(JobId, String, State)>, StoreError> {
    let all: Vec<(JobId, String, State)> = conn
        .prepare_cached(
            "SELECT id, qubes, state FROM jobs WHERE repo = ?1 AND pr = ?2 AND sha = ?3 \
             ORDER BY seq",
        )?
        .query_map(params![slug, pr as i64, sha], |r| {
            Ok((job_id_column(r, 0)?, r.get(1)?, state_column(r, 2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut latest: Vec<(JobId, String, State)> = Vec::new();
    for job in all {
        match latest.iter_mut().find(|(_, q, _)| *q == job.1) {
            Some(slot) => *slot = job,
            None => latest.push(job),
        }
    }
    Ok(latest)
}

/// Whether a job of `commit`'s pull request on its commit was queued by
/// `by` (Unix ms): whether qci had that head then.
pub fn had_commit(conn: &Connection, commit: &Commit, by: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE repo = ?1 AND pr = ?2 AND sha = ?3 \
             AND created_at <= ?4)",
        )?
        .query_row(
            params![
                commit.slug,
                commit.pr.map(|n| n as i64),
                commit.sha.as_str(),
                by
            ],
            |r| r.get(0),
        )?)
}

/// Drops the jobs of a closed pull request that have not reached a machine.
pub fn close_pr(conn: &Connection, slug: &str, pr: u64) -> Result<Vec<JobId>, StoreError> {
    let waiting: Vec<JobId> = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE repo = ?1 AND pr = ?2 AND state = 'queued' \
             AND dispatched_at IS NULL ORDER BY seq",
        )?
        .query_map(params![slug, pr as i64], |r| job_id_column(r, 0))?
        .collect::<Result<_, _>>()?;
    for id in &waiting {
        finish(conn, id, State::Canceled, "Pull request closed", "host")?;
    }
    Ok(waiting)
}

/// The next job's id ([`JobId::for_queue`]): the sequence number its row
/// will get, so ids are unique on this host and never reused.
fn new_job_id(conn: &Connection, qubes: &str) -> Result<JobId, StoreError> {
    let next: i64 = conn
        .prepare_cached(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0) + 1",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(JobId::for_queue(next.unsigned_abs(), qubes)?)
}

/// Queues a job, announced `pending` on GitHub; or, with `refused`, records
/// it ended at once as `error` saying why (it is in the history all the same).
pub(super) fn insert_job(
    conn: &Connection,
    job: &NewJob,
    delivery: Option<&str>,
    retry_of: Option<&JobId>,
    created_at: i64,
    refused: Option<&str>,
) -> Result<JobId, StoreError> {
    let id = new_job_id(conn, &job.qubes)?;
    let c = &job.commit;
    let description = if c.needs_approval {
        "Waiting for a maintainer's approval (fork)"
    } else {
        "Queued"
    };
    conn.prepare_cached(
        "INSERT INTO jobs (id, delivery, repo, clone_url, sha, git_ref, reason, author, message, \
         qubes, context, supersede_key, pr, needs_approval, state, description, retry_of, \
         created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'queued', ?15, ?16, \
         ?17)",
    )?
    .execute(params![
        id.as_str(),
        delivery,
        c.slug,
        c.clone_url,
        c.sha.as_str(),
        c.git_ref,
        reason_str(c.reason),
        c.author,
        c.message,
        job.qubes,
        job.context,
        c.supersede_key,
        c.pr.map(|n| n as i64),
        c.needs_approval,
        description,
        retry_of.map(JobId::as_str),
        created_at,
    ])?;
    match refused {
        Some(why) => finish(conn, &id, State::Error, why, "host")?,
        None => {
            record_event(conn, &id, State::Queued, description, "host")?;
            enqueue_github(conn, &id, State::Queued, description, true)?;
        }
    }
    Ok(id)
}
