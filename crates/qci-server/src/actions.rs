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
use crate::github::{self, JitConfig};
use crate::github_app::AppError;
use crate::webhook::{ActionsJob, JobAction};
use qci_core::retry::{self, Failure};
use qci_core::{JobId, State};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
            let Some((key, cancel)) = app.actions.open(Some(job.job_id), &job.label) else {
                return format!("ignored: Actions job {} is queued already", job.job_id);
            };
            remember(app, &job);
            let id = job.job_id;
            let Some(plan) = SlotPlan::for_job(&config, job) else {
                app.actions.close(key, false);
                return format!("error: Actions job {id}: no lease id can be made");
            };
            match spawn_slot(app, config, plan, key, cancel) {
                Ok(()) => format!("Actions job {id}: waiting for a machine"),
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
/// host stopped take their places in the FIFO again, oldest first, but
/// for those GitHub says are running elsewhere or completed meanwhile.
/// Returns how many.
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
    let client = crate::github::client().ok();
    let mut n = 0;
    for plan in plans {
        match serde_json::from_str::<ActionsJob>(&plan) {
            Ok(job) => {
                let id = job.job_id;
                if let Some(status) = client.as_ref().and_then(|c| status_of(app, c, &job))
                    && matches!(status.as_str(), "in_progress" | "completed")
                {
                    tracing::info!(
                        "Actions job {id}: {status} while the host was down; not queued again"
                    );
                    forget(app, id);
                    continue;
                }
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

/// The job's `status` as GitHub has it now; `None` when it cannot be
/// told (one attempt: start-up does not wait on GitHub), and the job is
/// then queued again: a runner no job reaches is freed after
/// `pickup_timeout`.
fn status_of(app: &App, client: &reqwest::blocking::Client, job: &ActionsJob) -> Option<String> {
    let status = app
        .github
        .token(client, &job.slug)
        .map_err(Failure::from)
        .and_then(|token| {
            github::actions_job_status(
                client,
                &app.config.github_api_url,
                &token,
                &job.slug,
                job.job_id,
            )
        });
    match status {
        Ok(status) => Some(status),
        Err(Failure::Transient { error, .. } | Failure::Permanent(error)) => {
            tracing::warn!("Actions job {}: {error}", job.job_id);
            None
        }
    }
}

/// Where a runner registers with GitHub.
#[derive(Debug, Clone)]
enum Scope {
    /// `OWNER/REPO`: it takes that repository's jobs only.
    Repo(String),
    /// `[server.actions] organization`: any of its repositories' jobs.
    Org(String),
}

impl Scope {
    /// Where GitHub keeps its runners: `repos/OWNER/REPO` or `orgs/ORG`.
    fn api_path(&self) -> String {
        match self {
            Self::Repo(slug) => format!("repos/{slug}"),
            Self::Org(org) => format!("orgs/{org}"),
        }
    }

    /// The header for calls about its runners.
    fn token(
        &self,
        app: &App,
        client: &reqwest::blocking::Client,
    ) -> Result<reqwest::header::HeaderValue, AppError> {
        match self {
            Self::Repo(slug) => app.github.token(client, slug),
            Self::Org(org) => app.github.token_for_org(client, org),
        }
    }
}

/// What one slot leases a machine and starts a runner for.
struct SlotPlan {
    /// The pool's id of its lease.
    lease: JobId,
    qubes: String,
    label: String,
    scope: Scope,
    /// The job it was queued for; `None` for an idle runner (`min_idle`).
    job: Option<ActionsJob>,
    /// How long its runner may wait for a job once started.
    pickup: Duration,
}

/// How long an idle runner waits for a job before its machine is
/// reverted and a fresh one takes its place: a machine kept waiting is
/// renewed daily rather than left to age.
const IDLE_LIFE: Duration = Duration::from_secs(24 * 3600);

/// How long after an idle slot failed (no machine, no runner) the next
/// one of its label starts: a pool that fails to boot is not asked in a
/// loop.
const IDLE_RETRY: Duration = Duration::from_secs(30);

impl SlotPlan {
    fn for_job(config: &ActionsConfig, job: ActionsJob) -> Option<Self> {
        // One lease per GitHub job.
        let lease = JobId::parse(&format!("actions-{}", job.job_id)).ok()?;
        let scope = match &config.organization {
            Some(org)
                if job
                    .slug
                    .split_once('/')
                    .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(org)) =>
            {
                Scope::Org(org.clone())
            }
            _ => Scope::Repo(job.slug.clone()),
        };
        Some(Self {
            lease,
            qubes: job.qubes.clone(),
            label: job.label.clone(),
            scope,
            pickup: config.pickup_timeout,
            job: Some(job),
        })
    }

    fn idle(org: &str, label: &str, qubes: &str, key: u64) -> Option<Self> {
        let lease = JobId::parse(&format!("actions-idle-{key}-{}", crate::queue::now_ms())).ok()?;
        Some(Self {
            lease,
            qubes: qubes.to_owned(),
            label: label.to_owned(),
            scope: Scope::Org(org.to_owned()),
            job: None,
            pickup: IDLE_LIFE,
        })
    }

    /// What the logs call it.
    fn what(&self) -> String {
        match &self.job {
            Some(job) => format!("Actions job {} ({}) of {}", job.job_id, job.name, job.slug),
            None => format!("idle runner {} of {}", self.lease, self.label),
        }
    }
}

/// Runs `plan`'s slot on a thread of its own, until its machine is freed.
fn spawn_slot(
    app: &App,
    config: ActionsConfig,
    plan: SlotPlan,
    key: u64,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    let (app, runs) = (app.clone(), app.actions.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("qci-{}", plan.lease))
        .spawn(move || {
            let failed = run_slot(&app, &config, &plan, key, &cancel);
            if let Some(job) = &plan.job {
                forget(&app, job.job_id);
            }
            app.actions.close(key, failed);
        });
    if spawned.is_err() {
        runs.close(key, true);
    }
    spawned.map(|_| ())
}

/// Keeps `min_idle` runners of each label waiting, for as long as the
/// server runs: it looks once a second and starts the missing ones.
pub fn keep_idle(app: &App) {
    let Some(config) = app.config.actions.clone() else {
        return;
    };
    let Some(org) = config.organization.clone() else {
        return;
    };
    if config.min_idle == 0 || app.github.app().is_none() {
        return;
    }
    let app = app.clone();
    let kept = std::thread::Builder::new()
        .name("qci-actions-idle".into())
        .spawn(move || {
            loop {
                for (label, qubes) in &config.labels {
                    let (waiting, failed) = app.actions.idle(label);
                    if failed.is_some_and(|t| t.elapsed() < IDLE_RETRY) {
                        continue;
                    }
                    for _ in waiting..config.min_idle as usize {
                        open_idle(&app, &config, &org, label, qubes);
                    }
                }
                std::thread::sleep(POLL * 10);
            }
        });
    if let Err(e) = kept {
        tracing::error!("cannot keep idle Actions runners: {e}");
    }
}

fn open_idle(app: &App, config: &ActionsConfig, org: &str, label: &str, qubes: &str) {
    let Some((key, cancel)) = app.actions.open(None, label) else {
        return;
    };
    let Some(plan) = SlotPlan::idle(org, label, qubes, key) else {
        tracing::error!("an idle runner of {label}: no lease id can be made");
        app.actions.close(key, true);
        return;
    };
    if let Err(e) = spawn_slot(app, config.clone(), plan, key, cancel) {
        tracing::error!("an idle runner of {label}: cannot start a thread: {e}");
    }
}

/// Leases, boots and runs the slot's machine until its runner is done;
/// whether it failed (no machine, or the runner could not run).
fn run_slot(
    app: &App,
    config: &ActionsConfig,
    plan: &SlotPlan,
    key: u64,
    cancel: &std::sync::atomic::AtomicBool,
) -> bool {
    let queued_at = Instant::now();
    let what = plan.what();
    tracing::info!("{what}: waiting for a machine of Qubes {}", plan.qubes);
    let client = match crate::github::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{what}: no HTTP client: {e}");
            return true;
        }
    };
    let runs = app.actions.clone();
    // The runner's lease: its pickup wait and one job, bounded by the
    // server's job timeout.
    let timeout = plan.pickup + app.config.job_timeout;
    let lent = app
        .executor
        .lend(&plan.lease, &plan.qubes, cancel, timeout, &mut |machine| {
            tracing::info!(
                "{what}: machine {} booted {:.3}s after it was queued",
                machine.name(),
                queued_at.elapsed().as_secs_f64()
            );
            on_machine(app, config, &client, &runs, plan, key, machine)
        });
    match lent {
        Ok(end) => {
            tracing::info!("{what}: {}", end.description);
            matches!(end.state, State::Error | State::Failure)
        }
        Err(NotStarted::Canceled) => {
            tracing::info!("{what}: it completed while waiting for a machine; none started");
            false
        }
        Err(NotStarted::Refused(why) | NotStarted::Failed(why)) => {
            tracing::error!("{what}: no machine: {why}");
            true
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
    plan: &SlotPlan,
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
    let jit = match generate_jitconfig(app, config, client, plan, &name) {
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
    if let Some(job) = &plan.job {
        forget(app, job.job_id);
    }
    tracing::info!(
        "{}: runner {} (id {}) started on {}",
        plan.what(),
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
            remove_runner(app, client, &plan.scope, jit.runner.id);
            return end(
                State::Canceled,
                format!("runner {name}: its job completed before reaching it"),
            );
        }
        if !seen.picked && started.elapsed() >= plan.pickup {
            remove_runner(app, client, &plan.scope, jit.runner.id);
            // An idle runner's wait is over: the keeper starts a fresh one.
            let state = if seen.idle {
                State::Success
            } else {
                State::Error
            };
            return end(
                state,
                format!(
                    "runner {name}: no job reached it within {}s",
                    plan.pickup.as_secs()
                ),
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Registers a runner that takes one job, named `name`, with the slot's
/// labels, where its scope keeps runners; GitHub away for a moment is
/// asked again within the retry budget.
fn generate_jitconfig(
    app: &App,
    config: &ActionsConfig,
    client: &reqwest::blocking::Client,
    plan: &SlotPlan,
    name: &str,
) -> Result<JitConfig, String> {
    let body = serde_json::json!({
        "name": name,
        "runner_group_id": config.runner_group_id,
        "labels": config.runner_labels(&plan.label),
        "work_folder": config.work_folder,
    });
    let at = plan.scope.api_path();
    let policy = crate::outbox::policy(app.config.github_retry_budget);
    retry::retry(&policy, &format!("registering a runner at {at}"), || {
        let token = plan.scope.token(app, client)?;
        github::generate_jitconfig(client, &app.config.github_api_url, &token, &at, &body)
    })
    .map_err(|stop| stop.to_string())
}

/// A runner that took no job is removed from its repository or
/// organization (a courtesy: GitHub drops offline just-in-time runners
/// itself).
fn remove_runner(app: &App, client: &reqwest::blocking::Client, scope: &Scope, id: u64) {
    let Ok(token) = scope.token(app, client) else {
        return;
    };
    let at = scope.api_path();
    if let Err(e) = github::delete_runner(client, &app.config.github_api_url, &token, &at, id) {
        tracing::warn!("removing runner {id}: {e}");
    }
}
