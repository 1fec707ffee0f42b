//! GitHub Actions jobs on Qubes machines: `runs-on: [self-hosted, LABEL]`
//! with a label of `[server.actions]` gets a fresh machine and a runner
//! that takes one job.
//!
//! A `queued` job takes a place in the pool's FIFO for its Qubes version
//! (the queue and leases every qci job uses: a machine never holds two
//! jobs, whichever engine asked). Once a machine is leased, reverted and
//! booted, qci asks GitHub for a just-in-time runner config (single use,
//! made with the App's installation token, which never leaves the host)
//! and starts the runner in the dev VM with it. The machine is powered off
//! and freed when the runner exits, when `completed` names the runner, or
//! when no job reached the runner within `pickup_timeout`. A job that
//! completes while still waiting for a machine leaves the FIFO: no more
//! machines start than jobs are queued.
//!
//! Which runner holds which job is in memory ([`crate::actions_runs`]); a
//! job waiting for a machine is also on disk (`actions_waiting`) until its
//! runner starts. A host that restarts frees the machines its runners held
//! (the pool's reconcile) and queues the waiting jobs again ([`resume`]).

use crate::actions_runs::{ActionsRuns, Completed};
use crate::app::App;
use crate::config::ActionsConfig;
use crate::executor::{EngineEnd, EngineMachine, NotStarted};
use crate::webhook::{ActionsJob, JobAction};
use qci_core::{JobId, State};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error("no installation token for {slug}: {why}")]
    Token { slug: String, why: String },
    #[error("{url}: {source}")]
    Unanswered {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}: {body}")]
    Refused {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("{url}: unexpected answer: {source}")]
    Unexpected {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The part of GitHub's 201 to `generate-jitconfig` qci uses.
#[derive(Debug, serde::Deserialize)]
pub struct JitConfig {
    pub runner: JitRunner,
    pub encoded_jit_config: String,
}

#[derive(Debug, serde::Deserialize)]
pub struct JitRunner {
    pub id: u64,
    pub name: String,
}

/// Carries out one `workflow_job` delivery; what it did, for the
/// delivery's outcome. A queued job's machine is waited for and run on a
/// thread of its own.
pub fn take(app: &App, job: ActionsJob) -> String {
    let Some(config) = app.config.actions.clone() else {
        return "ignored: [server.actions] is not configured".into();
    };
    if app.github.app().is_none() {
        return "ignored: Actions runners need App mode".into();
    }
    match job.action {
        JobAction::Queued => {
            let Some((key, cancel)) = app.actions.open(job.job_id) else {
                return format!("ignored: Actions job {} is queued already", job.job_id);
            };
            remember(app, &job);
            let (app, id) = (app.clone(), job.job_id);
            let started = std::thread::Builder::new()
                .name(format!("qci-actions-{id}"))
                .spawn(move || {
                    run_slot(&app, &config, &job, key, &cancel);
                    forget(&app, job.job_id);
                    app.actions.close(key);
                });
            match started {
                Ok(_) => format!("Actions job {id}: waiting for a machine"),
                Err(e) => format!("error: Actions job {id}: cannot start a thread: {e}"),
            }
        }
        JobAction::InProgress => match &job.runner_name {
            Some(r) if app.actions.picked_up(job.job_id, r) => {
                format!("Actions job {}: picked up by runner {r}", job.job_id)
            }
            _ => format!(
                "ignored: Actions job {} runs on no runner of qci's",
                job.job_id
            ),
        },
        JobAction::Completed => {
            match app
                .actions
                .completed(job.job_id, job.runner_name.as_deref())
            {
                Completed::Ended => format!(
                    "Actions job {} completed: its machine is powered off and freed",
                    job.job_id
                ),
                Completed::Dropped => format!(
                    "Actions job {} completed before a runner of qci's took it: dropped",
                    job.job_id
                ),
                Completed::Unknown => format!("ignored: Actions job {} is not qci's", job.job_id),
            }
        }
    }
}

/// Keeps a queued job on disk until its runner starts.
fn remember(app: &App, job: &ActionsJob) {
    let Ok(plan) = serde_json::to_string(job) else {
        return;
    };
    let id = job.job_id as i64;
    let written = app.store.write_blocking(move |conn| {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO actions_waiting (job_id, plan, queued_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(rusqlite::params![id, plan, crate::queue::now_ms()])?;
        Ok(())
    });
    if let Err(e) = written {
        tracing::warn!("Actions job {id}: not kept on disk (a restart would forget it): {e}");
    }
}

fn forget(app: &App, job_id: u64) {
    let id = job_id as i64;
    let written = app.store.write_blocking(move |conn| {
        conn.prepare_cached("DELETE FROM actions_waiting WHERE job_id = ?1")?
            .execute([id])?;
        Ok(())
    });
    if let Err(e) = written {
        tracing::warn!("Actions job {id}: cannot drop it from actions_waiting: {e}");
    }
}

/// At start: the Actions jobs that were waiting for a machine when the
/// host stopped take their places in the FIFO again, oldest first. One
/// that GitHub completed meanwhile gets a runner no job reaches, freed
/// after `pickup_timeout`. Returns how many.
pub fn resume(app: &App) -> usize {
    let rows = app.store.read_blocking(|conn| {
        let mut q = conn.prepare("SELECT plan FROM actions_waiting ORDER BY queued_at, job_id")?;
        let plans = q
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(plans)
    });
    let plans = match rows {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("reading the waiting Actions jobs: {e}");
            return 0;
        }
    };
    let mut n = 0;
    for plan in plans {
        match serde_json::from_str::<ActionsJob>(&plan) {
            Ok(job) => {
                let id = job.job_id;
                // Outside the macro: a disabled level evaluates no argument.
                let outcome = take(app, job);
                tracing::info!("Actions job {id}: queued again after a restart: {outcome}");
                n += 1;
            }
            Err(e) => tracing::error!("a waiting Actions job cannot be read: {e}"),
        }
    }
    n
}

/// The pool's id of the lease: one per GitHub job.
fn lease_id(job: &ActionsJob) -> Option<JobId> {
    JobId::parse(&format!("actions-{}", job.job_id)).ok()
}

fn run_slot(
    app: &App,
    config: &ActionsConfig,
    job: &ActionsJob,
    key: u64,
    cancel: &std::sync::atomic::AtomicBool,
) {
    let Some(lease) = lease_id(job) else {
        tracing::error!("Actions job {}: no lease id can be made", job.job_id);
        return;
    };
    let queued_at = Instant::now();
    tracing::info!(
        "Actions job {} ({}) of {}: waiting for a machine of Qubes {}",
        job.job_id,
        job.name,
        job.slug,
        job.qubes
    );
    let client = match crate::github::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("Actions job {}: no HTTP client: {e}", job.job_id);
            return;
        }
    };
    let runs = app.actions.clone();
    // The runner's lease: its pickup wait and one job, bounded by the
    // server's job timeout.
    let timeout = config.pickup_timeout + app.config.job_timeout;
    let lent = app
        .executor
        .lend(&lease, &job.qubes, cancel, timeout, &mut |machine| {
            tracing::info!(
                "Actions job {}: machine {} booted {:.3}s after it was queued",
                job.job_id,
                machine.name(),
                queued_at.elapsed().as_secs_f64()
            );
            on_machine(app, config, &client, &runs, job, key, machine)
        });
    match lent {
        Ok(end) => tracing::info!("Actions job {}: {}", job.job_id, end.description),
        Err(NotStarted::Canceled) => tracing::info!(
            "Actions job {}: it completed while waiting for a machine; none started",
            job.job_id
        ),
        Err(NotStarted::Refused(why) | NotStarted::Failed(why)) => {
            tracing::error!("Actions job {}: no machine: {why}", job.job_id);
        }
    }
}

fn end(state: State, description: String) -> EngineEnd {
    EngineEnd { state, description }
}

/// How often the runner and the deliveries are looked at.
const POLL: Duration = Duration::from_millis(100);

fn on_machine(
    app: &App,
    config: &ActionsConfig,
    client: &reqwest::blocking::Client,
    runs: &Arc<ActionsRuns>,
    job: &ActionsJob,
    key: u64,
    machine: &dyn EngineMachine,
) -> EngineEnd {
    if runs.seen(key).canceled {
        return end(
            State::Canceled,
            "the Actions job completed before its runner started".into(),
        );
    }
    let name = format!("qci-{}-{}", machine.name(), crate::queue::now_ms());
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    // Known before GitHub answers: an `in_progress` may come right after.
    runs.set_runner(key, &name);
    let jit = match generate_jitconfig(app, config, client, job, &name) {
        Ok(j) => j,
        Err(e) => return end(State::Error, format!("no runner config: {e}")),
    };
    if jit.runner.name != name {
        runs.set_runner(key, &jit.runner.name);
    }
    let pid = match machine.start(&name, &config.command, &jit.encoded_jit_config) {
        Ok(pid) => pid,
        Err(e) => return end(State::Error, format!("cannot start the runner: {e}")),
    };
    // From here the job is the runner's: a host that dies now leaves it to
    // GitHub, and its machine to the pool's reconcile.
    forget(app, job.job_id);
    tracing::info!(
        "Actions job {}: runner {} (id {}) started on {}",
        job.job_id,
        jit.runner.name,
        jit.runner.id,
        machine.name()
    );
    let started = Instant::now();
    let mut failing_since: Option<Instant> = None;
    loop {
        let seen = runs.seen(key);
        match machine.exited(pid) {
            Ok(Some(0)) => return end(State::Success, format!("runner {name} exited")),
            Ok(Some(code)) => {
                return end(State::Failure, format!("runner {name} exited with {code}"));
            }
            Ok(None) => failing_since = None,
            Err(e) => {
                if failing_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_secs(60)
                {
                    return end(State::Error, format!("runner {name}: machine lost: {e}"));
                }
            }
        }
        if seen.completed {
            return end(
                State::Success,
                format!("runner {name}: GitHub says its job completed"),
            );
        }
        if !seen.picked && seen.canceled {
            remove_runner(app, client, job, jit.runner.id);
            return end(
                State::Canceled,
                format!("runner {name}: its job completed before reaching it"),
            );
        }
        if !seen.picked && started.elapsed() >= config.pickup_timeout {
            remove_runner(app, client, job, jit.runner.id);
            return end(
                State::Error,
                format!(
                    "runner {name}: no job reached it within {}s",
                    config.pickup_timeout.as_secs()
                ),
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `POST /repos/{slug}/actions/runners/generate-jitconfig`: a runner
/// registered for one job, named `name`, with the job's labels.
fn generate_jitconfig(
    app: &App,
    config: &ActionsConfig,
    client: &reqwest::blocking::Client,
    job: &ActionsJob,
    name: &str,
) -> Result<JitConfig, ActionsError> {
    let token = app
        .github
        .token(client, &job.slug)
        .map_err(|e| ActionsError::Token {
            slug: job.slug.clone(),
            why: e.to_string(),
        })?;
    let url = format!(
        "{}/repos/{}/actions/runners/generate-jitconfig",
        app.config.github_api_url.trim_end_matches('/'),
        job.slug
    );
    let body = serde_json::json!({
        "name": name,
        "runner_group_id": config.runner_group_id,
        "labels": config.runner_labels(&job.label),
        "work_folder": config.work_folder,
    });
    let reply = qci_github::authorized(client.post(&url), &token)
        .json(&body)
        .send()
        .map_err(|e| ActionsError::Unanswered {
            url: url.clone(),
            source: e.without_url(),
        })?;
    let status = reply.status();
    let text = reply.text().unwrap_or_default();
    if !status.is_success() {
        return Err(ActionsError::Refused {
            url,
            status,
            body: text.chars().take(200).collect(),
        });
    }
    serde_json::from_str(&text).map_err(|source| ActionsError::Unexpected { url, source })
}

/// A runner that took no job is removed from the repository (a courtesy:
/// GitHub drops offline just-in-time runners itself).
fn remove_runner(app: &App, client: &reqwest::blocking::Client, job: &ActionsJob, id: u64) {
    let Ok(token) = app.github.token(client, &job.slug) else {
        return;
    };
    let url = format!(
        "{}/repos/{}/actions/runners/{id}",
        app.config.github_api_url.trim_end_matches('/'),
        job.slug
    );
    if let Err(e) = qci_github::authorized(client.delete(&url), &token).send() {
        tracing::warn!("removing runner {id}: {}", e.without_url());
    }
}
