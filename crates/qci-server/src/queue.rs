//! The queue's rules, as transactions on the database: accepting a
//! delivery as a trigger, turning a trigger into jobs (superseding,
//! approving, dropping), canceling, retrying, taking the next job of a
//! Qubes version, putting back a job that could not start, recording
//! statuses, and reconciling after a crash.
//! Each function runs inside one [`crate::store::Store`] write, so each
//! rule holds atomically.

use crate::store::StoreError;
use crate::webhook::{Commit, NewJob, Plan};
use qci_core::State;
use rusqlite::{Connection, OptionalExtension, params};
use std::time::{SystemTime, UNIX_EPOCH};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id          TEXT PRIMARY KEY,      -- X-GitHub-Delivery
    event       TEXT NOT NULL,
    received_at INTEGER NOT NULL,      -- Unix ms, as every time here
    outcome     TEXT NOT NULL
);
-- A delivery that asks for something, kept until the resolver has done it,
-- in the order deliveries came (a push's jobs need its .qci.toml first).
CREATE TABLE IF NOT EXISTS triggers (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery    TEXT NOT NULL UNIQUE,
    plan        TEXT NOT NULL,         -- JSON of webhook::Plan
    received_at INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX IF NOT EXISTS triggers_open ON triggers(resolved_at, seq);
CREATE TABLE IF NOT EXISTS jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO order
    id             TEXT NOT NULL UNIQUE,
    delivery       TEXT,
    repo           TEXT NOT NULL,
    clone_url      TEXT NOT NULL,
    sha            TEXT NOT NULL,
    git_ref        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    author         TEXT NOT NULL,
    message        TEXT NOT NULL,
    qubes          TEXT NOT NULL,
    context        TEXT NOT NULL,
    supersede_key  TEXT,
    pr             INTEGER,
    needs_approval INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL,
    description    TEXT NOT NULL,
    token_hash     TEXT,               -- SHA-256 of the relay token, minted at dispatch
    retry_of       TEXT,
    start_failures INTEGER NOT NULL DEFAULT 0,  -- hand-overs to the pool that did not start
    not_before     INTEGER,            -- not handed over again before this
    created_at     INTEGER NOT NULL,
    dispatched_at  INTEGER,            -- handed to the pool
    started_at     INTEGER,            -- the job began on a machine
    finished_at    INTEGER,
    log_published  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, qubes, seq);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs(supersede_key, state);
CREATE INDEX IF NOT EXISTS jobs_by_token ON jobs(token_hash);
CREATE INDEX IF NOT EXISTS jobs_by_delivery ON jobs(delivery);
CREATE TABLE IF NOT EXISTS events (
    job         TEXT NOT NULL,
    at          INTEGER NOT NULL,
    state       TEXT NOT NULL,
    description TEXT NOT NULL,
    source      TEXT NOT NULL          -- relay, host
);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job);
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL,           -- github, slack, webhook
    job       TEXT NOT NULL,
    body      TEXT NOT NULL,           -- the JSON to post
    ready     INTEGER NOT NULL,        -- 0 until the job's log is published
    sent_at   INTEGER,
    error     TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(kind, sent_at, ready, id);
CREATE INDEX IF NOT EXISTS outbox_by_job ON outbox(job, kind, id);
";

/// Brings a database made by an earlier qci up to [`SCHEMA`] (run after it):
/// columns added since are added, with their defaults.
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('jobs')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, decl) in [
        ("start_failures", "INTEGER NOT NULL DEFAULT 0"),
        ("not_before", "INTEGER"),
    ] {
        if !columns.iter().any(|c| c == name) {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A job as the pages, the API and the dispatcher see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Job {
    pub id: String,
    pub repo: String,
    pub clone_url: String,
    pub sha: String,
    pub git_ref: String,
    pub reason: String,
    pub author: String,
    pub message: String,
    pub qubes: String,
    pub context: String,
    pub pr: Option<i64>,
    pub needs_approval: bool,
    pub state: String,
    pub description: String,
    pub retry_of: Option<String>,
    /// Times it was handed to the pool and could not start.
    pub start_failures: i64,
    pub created_at: i64,
    pub dispatched_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub log_published: bool,
}

const JOB_COLUMNS: &str = "id, repo, clone_url, sha, git_ref, reason, author, message, qubes, \
    context, pr, needs_approval, state, description, retry_of, start_failures, created_at, \
    dispatched_at, started_at, finished_at, log_published";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        repo: r.get(1)?,
        clone_url: r.get(2)?,
        sha: r.get(3)?,
        git_ref: r.get(4)?,
        reason: r.get(5)?,
        author: r.get(6)?,
        message: r.get(7)?,
        qubes: r.get(8)?,
        context: r.get(9)?,
        pr: r.get(10)?,
        needs_approval: r.get(11)?,
        state: r.get(12)?,
        description: r.get(13)?,
        retry_of: r.get(14)?,
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
        parse_state(&self.state)
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

fn parse_state(s: &str) -> State {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(State::Error)
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], job_from_row)
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
pub fn events(
    conn: &Connection,
    job: &str,
) -> Result<Vec<(i64, String, String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, state, description, source FROM events WHERE job = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map([job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Counts for `/metrics`.
pub struct Counts {
    /// Jobs by state.
    pub by_state: Vec<(String, i64)>,
    /// Jobs waiting for a machine, by Qubes version.
    pub queued: Vec<(String, i64)>,
    /// Deliveries whose jobs are not worked out yet.
    pub unresolved: i64,
}

pub fn counts(conn: &Connection) -> Result<Counts, StoreError> {
    let by_state = conn
        .prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
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

/// What the host posts to GitHub for a job's status.
#[derive(Debug, Clone)]
pub struct StatusPost<'a> {
    pub state: State,
    pub description: &'a str,
}

/// Everything the outbox needs to know to post a job's commit status.
fn enqueue_github(
    conn: &Connection,
    job: &str,
    state: State,
    description: &str,
    ready: bool,
) -> Result<(), StoreError> {
    let (repo, sha, context): (String, String, String) = conn
        .prepare_cached("SELECT repo, sha, context FROM jobs WHERE id = ?1")?
        .query_row([job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let body = serde_json::json!({
        "repo": repo, "sha": sha, "context": context,
        "state": state.github_state(), "description": description,
    });
    conn.prepare_cached(
        "INSERT INTO outbox (kind, job, body, ready) VALUES ('github', ?1, ?2, ?3)",
    )?
    .execute(params![job, body.to_string(), ready])?;
    Ok(())
}

fn record_event(
    conn: &Connection,
    job: &str,
    state: State,
    description: &str,
    source: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (job, at, state, description, source) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![job, now_ms(), state.as_str(), description, source])?;
    Ok(())
}

/// A job that has ended on the host's side: its state, its GitHub status
/// (held until the log is published, if the job was handed to the pool),
/// and its notifications.
fn finish(
    conn: &Connection,
    job: &str,
    state: State,
    description: &str,
    source: &str,
) -> Result<(), StoreError> {
    let dispatched: Option<i64> = conn
        .prepare_cached("SELECT dispatched_at FROM jobs WHERE id = ?1")?
        .query_row([job], |r| r.get(0))?;
    // A job that never reached a machine has no log to wait for.
    let published = dispatched.is_none();
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, description = ?3, finished_at = ?4, \
         log_published = log_published OR ?5 WHERE id = ?1",
    )?
    .execute(params![
        job,
        state.as_str(),
        description,
        now_ms(),
        published
    ])?;
    let published: bool = conn
        .prepare_cached("SELECT log_published FROM jobs WHERE id = ?1")?
        .query_row([job], |r| r.get(0))?;
    record_event(conn, job, state, description, source)?;
    enqueue_github(conn, job, state, description, published)?;
    for kind in ["slack", "webhook"] {
        conn.prepare_cached("INSERT INTO outbox (kind, job, body, ready) VALUES (?1, ?2, '', ?3)")?
            .execute(params![kind, job, published])?;
    }
    Ok(())
}

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

/// A job id: `SEQ-qVERSION`, unique on this host and readable in a URL.
fn new_job_id(conn: &Connection, qubes: &str) -> Result<String, StoreError> {
    let next: i64 = conn
        .prepare_cached(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0) + 1",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(format!("{next}-q{qubes}"))
}

/// Queues a job, announced `pending` on GitHub; or, with `refused`, records
/// it ended at once as `error` saying why (it is in the history all the same).
fn insert_job(
    conn: &Connection,
    job: &NewJob,
    delivery: Option<&str>,
    retry_of: Option<&str>,
    created_at: i64,
    refused: Option<&str>,
) -> Result<String, StoreError> {
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
        id,
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
        retry_of,
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

pub fn reason_str(r: qci_core::job_file::Reason) -> &'static str {
    use qci_core::job_file::Reason;
    match r {
        Reason::Push => "push",
        Reason::PullRequest => "pull_request",
        Reason::Nightly => "nightly",
        Reason::Manual => "manual",
    }
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
        Plan::Approve { slug, pr, .. } => format!("accepted: approval of {slug}#{pr}"),
        Plan::Close { slug, pr } => format!("accepted: closing of {slug}#{pr}"),
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
            let json =
                serde_json::to_string(plan).map_err(|e| StoreError::Commit(e.to_string()))?;
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
    pub jobs: Vec<String>,
    pub stop: Vec<String>,
}

/// Queues a commit's jobs, one per version, after superseding the older
/// unfinished jobs of its branch or pull request (whatever their versions:
/// the newer commit's `.qci.toml` may have dropped one).
pub fn run_commit(
    conn: &Connection,
    trigger: &Trigger,
    commit: &Commit,
    versions: &[Version],
) -> Result<Queued, StoreError> {
    let mut queued = Queued::default();
    if let Some(key) = &commit.supersede_key {
        queued.stop = supersede(conn, key, commit.sha.as_str())?;
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

/// A delivery as the job API shows it: its outcome, whether it is resolved
/// yet, and the jobs it made.
#[derive(Debug, serde::Serialize)]
pub struct Delivery {
    pub delivery: String,
    pub event: String,
    pub received_at: i64,
    pub outcome: String,
    pub resolved: bool,
    pub jobs: Vec<String>,
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
        .query_map([id], |r| r.get(0))?
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

/// Ends the unfinished jobs of `key` as `error` "Superseded by SHA";
/// returns those already handed to the pool, whose runs must stop.
fn supersede(conn: &Connection, key: &str, sha: &str) -> Result<Vec<String>, StoreError> {
    let older: Vec<(String, Option<i64>)> = conn
        .prepare_cached(
            "SELECT id, dispatched_at FROM jobs WHERE supersede_key = ?1 \
             AND state IN ('queued', 'running') ORDER BY seq",
        )?
        .query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?
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
) -> Result<Vec<String>, StoreError> {
    let waiting: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE repo = ?1 AND pr = ?2 AND needs_approval = 1 \
             AND state = 'queued' AND (?3 IS NULL OR sha = ?3) \
             AND (?4 IS NULL OR created_at <= ?4) ORDER BY seq",
        )?
        .query_map(params![slug, pr as i64, sha, before], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let description = format!("Queued (approved by {by})");
    for id in &waiting {
        conn.prepare_cached(
            "UPDATE jobs SET needs_approval = 0, description = ?2, created_at = created_at \
             WHERE id = ?1",
        )?
        .execute(params![id, description])?;
        record_event(conn, id, State::Queued, &description, "host")?;
        enqueue_github(conn, id, State::Queued, &description, true)?;
    }
    Ok(waiting)
}

/// Drops the jobs of a closed pull request that have not reached a machine.
pub fn close_pr(conn: &Connection, slug: &str, pr: u64) -> Result<Vec<String>, StoreError> {
    let waiting: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE repo = ?1 AND pr = ?2 AND state = 'queued' \
             AND dispatched_at IS NULL ORDER BY seq",
        )?
        .query_map(params![slug, pr as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &waiting {
        finish(conn, id, State::Canceled, "Pull request closed", "host")?;
    }
    Ok(waiting)
}

#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    AlreadyFinal(String),
    /// Ended; `running` when its run on a machine must be stopped.
    Canceled {
        running: bool,
    },
}

pub fn cancel(conn: &Connection, id: &str, by: &str) -> Result<CancelOutcome, StoreError> {
    let Some(job) = get(conn, id)? else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.is_final() {
        return Ok(CancelOutcome::AlreadyFinal(job.state));
    }
    finish(
        conn,
        id,
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
    NotFinal(String),
    /// No machine of the pool runs its Qubes version.
    NoMachine(String),
    Queued(String),
}

/// Queues a finished job again, as a new job on the same commit and
/// context, if a machine of the pool (running `versions`) can take it.
pub fn retry(conn: &Connection, id: &str, versions: &[String]) -> Result<RetryOutcome, StoreError> {
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
        .query_row([id], |r| r.get(0))?;
    let job = NewJob {
        commit: Commit {
            slug: old.repo,
            clone_url: old.clone_url,
            sha: qci_core::job_file::CommitSha::parse(&old.sha)
                .map_err(|e| StoreError::Commit(e.to_string()))?,
            git_ref: old.git_ref,
            reason: serde_json::from_value(serde_json::Value::String(old.reason))
                .unwrap_or(qci_core::job_file::Reason::Manual),
            author: old.author,
            message: old.message,
            supersede_key,
            pr: old.pr.map(|n| n as u64),
            needs_approval: false,
        },
        qubes: old.qubes,
        context: old.context,
    };
    let new = insert_job(conn, &job, None, Some(id), now_ms(), None)?;
    Ok(RetryOutcome::Queued(new))
}

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
        .execute(params![job.id, now, token_hash])?;
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
    id: &str,
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
        .execute(params![id, failures])?;
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
    .execute(params![id, failures, at, description])?;
    record_event(conn, id, State::Queued, &description, "host")?;
    enqueue_github(conn, id, State::Queued, &description, true)?;
    Ok(Requeued::Waiting {
        attempt: failures,
        at,
    })
}

/// The job began on a machine: from now on a host crash ends it as
/// `error`, where before it would have been queued again.
pub fn mark_started(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET started_at = coalesce(started_at, ?2) WHERE id = ?1")?
        .execute(params![id, now_ms()])?;
    Ok(())
}

/// The run is over and its log is published: the held final status and
/// notifications may go. A job nobody gave a final status ends as `error`
/// with `why_no_final`.
pub fn publish(conn: &Connection, id: &str, why_no_final: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET log_published = 1 WHERE id = ?1")?
        .execute([id])?;
    let final_state: String = conn
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    if !parse_state(&final_state).is_final() {
        finish(conn, id, State::Error, why_no_final, "host")?;
    }
    conn.prepare_cached("UPDATE outbox SET ready = 1 WHERE job = ?1 AND ready = 0")?
        .execute([id])?;
    Ok(())
}

/// Whether a final status has been recorded for a job (the pool asks).
pub fn has_final(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(get(conn, id)?.is_some_and(|j| j.is_final()))
}

/// Records a final state the host (or the pool) decided, unless the job
/// has one already.
pub fn record_final(
    conn: &Connection,
    id: &str,
    state: State,
    why: &str,
) -> Result<bool, StoreError> {
    if has_final(conn, id)? || !state.is_final() {
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
    Ended(String),
    /// e.g. `queued` after `running`.
    Backwards {
        from: String,
        to: String,
    },
}

/// Applies a status event posted through the relay, after checking that
/// the token is this job's and that the state moves forward. On any
/// refusal nothing is written.
pub fn relay(
    conn: &Connection,
    id: &str,
    token_hash: &str,
    state: State,
    description: &str,
) -> Result<Result<(), RelayRefusal>, StoreError> {
    let row: Option<(Option<String>, String)> = conn
        .prepare_cached("SELECT token_hash, state FROM jobs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((hash, current)) = row else {
        return Ok(Err(RelayRefusal::NoSuchJob));
    };
    // Another job's token gets the same refusal as a made-up one: the
    // answer must not tell its holder that it is valid somewhere.
    if !hash.is_some_and(|h| crate::relay::same_hash(&h, token_hash)) {
        return Ok(Err(RelayRefusal::BadToken));
    }
    let current = parse_state(&current);
    if current.is_final() {
        return Ok(Err(RelayRefusal::Ended(current.as_str().into())));
    }
    if current == State::Running && state == State::Queued {
        return Ok(Err(RelayRefusal::Backwards {
            from: current.as_str().into(),
            to: state.as_str().into(),
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
        .execute(params![id, state.as_str(), description, now_ms()])?;
        let recorded: i64 = conn
            .prepare_cached("SELECT count(*) FROM events WHERE job = ?1")?
            .query_row([id], |r| r.get(0))?;
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

/// A progress status for GitHub that replaces the job's one still waiting
/// there, if any: however often a machine reports, GitHub gets at most one
/// pending status per job in flight and one waiting, the latest. The job's
/// first status (`queued`) is never replaced, and a status replaced while
/// in flight is sent again (see [`sent`]).
fn coalesce_github(
    conn: &Connection,
    job: &str,
    state: State,
    description: &str,
) -> Result<(), StoreError> {
    let waiting: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT id, body FROM outbox WHERE kind = 'github' AND job = ?1 AND sent_at IS NULL \
             AND id > (SELECT min(id) FROM outbox WHERE kind = 'github' AND job = ?1) \
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([job], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((row, body)) = waiting else {
        return enqueue_github(conn, job, state, description, true);
    };
    let mut body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    body["state"] = state.github_state().into();
    body["description"] = description.into();
    conn.prepare_cached("UPDATE outbox SET body = ?2 WHERE id = ?1")?
        .execute(params![row, body.to_string()])?;
    Ok(())
}

/// After a host crash: jobs handed to the pool that never started go back
/// in the queue; jobs that started end as `error` "host restarted" (their
/// machines are the pool's to reclaim). Held statuses of jobs whose run
/// ended with the host are released. Returns (requeued, ended).
pub fn reconcile(conn: &Connection) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let requeued: Vec<String> = conn
        .prepare(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') \
             AND dispatched_at IS NOT NULL AND started_at IS NULL ORDER BY seq",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &requeued {
        conn.execute(
            "UPDATE jobs SET dispatched_at = NULL, state = 'queued' WHERE id = ?1",
            [id],
        )?;
        record_event(
            conn,
            id,
            State::Queued,
            "Queued again (host restarted before it started)",
            "host",
        )?;
    }
    let ended: Vec<String> = conn
        .prepare(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') \
             AND started_at IS NOT NULL ORDER BY seq",
        )?
        .query_map([], |r| r.get(0))?
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

/// One message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: i64,
    pub job: String,
    pub body: String,
}

/// The oldest ready messages of `kind`, in the order they were written.
pub fn outgoing(conn: &Connection, kind: &str, limit: usize) -> Result<Vec<Outgoing>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, job, body FROM outbox WHERE kind = ?1 AND sent_at IS NULL AND ready = 1 \
             ORDER BY id LIMIT ?2",
        )?
        .query_map(params![kind, limit as i64], |r| {
            Ok(Outgoing {
                id: r.get(0)?,
                job: r.get(1)?,
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

/// Jobs whose published logs are older than `cutoff` (Unix ms).
pub fn expired_logs(conn: &Connection, cutoff: i64) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1")?
        .query_map([cutoff], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qci_core::job_file::{CommitSha, Reason};

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
    fn queue(conn: &Connection, branches: &[&str]) -> Vec<String> {
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
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    #[test]
    fn a_database_from_before_the_retry_columns_gets_them() {
        let conn = Connection::open_in_memory().unwrap();
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
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
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
        let github = outgoing(&conn, "github", 100).unwrap();
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
        assert_eq!(job.state, "queued");
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
        assert_eq!(ended.state, "error");
        assert_eq!(
            ended.description,
            "CI error: could not start on a machine in 3 attempts; last: unreachable"
        );
        assert!(ended.log_published, "its final status is not held");
        assert_eq!(
            requeue(&conn, &jobs[0], "late", 3, zero).unwrap(),
            Requeued::Final
        );
        let states: Vec<String> = outgoing(&conn, "github", 100)
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
