//! Dispatch: hands queued jobs to the machine pool, FIFO per Qubes version,
//! no more at once than the pool has machines for, and turns what the pool
//! reports into the published log and the job's end.
//!
//! The pool itself (leases, reverting, booting, the guest channel) is not
//! here: it sits behind [`Executor`].

use crate::app::App;
use crate::queue::{self, Job};
use qci_core::JobId;
use qci_core::job_file::{CommitSha, JobFile, Reason, Repository, Sink};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the pool reports while it runs a job.
pub trait Progress {
    /// The job file is in the dev VM and `begin` was started: from now on a
    /// host crash ends the job instead of queueing it again.
    fn started(&mut self);
    /// A new piece of dom0's log, as it arrives.
    fn log(&mut self, chunk: &[u8]);
}

/// One job for the pool to run.
pub struct RunRequest<'a> {
    pub job: &'a JobId,
    pub qubes: &'a str,
    pub job_file: &'a JobFile,
    pub timeout: Duration,
    /// Set when the job is canceled or superseded: stop, power off, free.
    pub cancel: &'a AtomicBool,
}

/// The machine pool, as dispatch sees it.
pub trait Executor: Send + Sync + 'static {
    /// How many jobs of Qubes `qubes` may run at once (its machines).
    fn capacity(&self, qubes: &str) -> usize;
    /// Runs a job to its end (blocking): lease, revert, boot, place the job
    /// file, start `begin`, follow the log, copy it out, power off, free.
    /// An `Err` says why the job could not run or finish.
    fn run(&self, request: RunRequest<'_>, progress: &mut dyn Progress) -> Result<(), String>;
}

/// The runs in flight: their cancel flags, and how many per Qubes version.
#[derive(Default)]
pub struct Running {
    cancel: Mutex<HashMap<String, Arc<AtomicBool>>>,
    per_version: Mutex<HashMap<String, usize>>,
}

impl Running {
    /// Asks a run to stop; false if it is not running here.
    pub fn cancel(&self, job: &str) -> bool {
        let flags = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
        flags.get(job).is_some_and(|f| {
            f.store(true, Ordering::SeqCst);
            true
        })
    }

    fn busy(&self, qubes: &str) -> usize {
        let counts = self.per_version.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(qubes).copied().unwrap_or(0)
    }

    fn add(&self, qubes: &str, delta: isize) {
        let mut counts = self.per_version.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(qubes.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
    }
}

/// Hands out queued jobs whenever something changed, forever.
pub async fn run(app: App) {
    loop {
        let changed = app.store.changed.clone();
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Err(e) = dispatch_ready(&app).await {
            tracing::error!("dispatch: {e}");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
    }
}

async fn dispatch_ready(app: &App) -> Result<(), crate::store::StoreError> {
    let versions = app.store.read(queue::waiting_versions).await?;
    for qubes in versions {
        while app.running.busy(&qubes) < app.executor.capacity(&qubes) {
            let (token, hash) = crate::relay::new_token();
            let v = qubes.clone();
            let Some(job) = app
                .store
                .write(move |conn| queue::claim_next(conn, &v, &hash))
                .await?
            else {
                break;
            };
            app.running.add(&qubes, 1);
            let flag = Arc::new(AtomicBool::new(false));
            app.running
                .cancel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.id.clone(), flag.clone());
            let app = app.clone();
            tokio::task::spawn_blocking(move || run_one(&app, job, token, &flag));
        }
    }
    Ok(())
}

/// The job file the dev VM gets: the commit, and the relay sink with the
/// job's token. No GitHub credential is in it.
pub fn job_file(app: &App, job: &Job, token: String) -> Result<JobFile, String> {
    let reason: Reason = serde_json::from_value(serde_json::Value::String(job.reason.clone()))
        .map_err(|e| e.to_string())?;
    Ok(JobFile {
        repository: Repository {
            url: job.clone_url.clone(),
            slug: Some(job.repo.clone()),
        },
        commit: Some(CommitSha::parse(&job.sha).map_err(|e| e.to_string())?),
        source: None,
        git_ref: Some(job.git_ref.clone()),
        reason,
        author: job.author.clone(),
        message: job.message.clone(),
        sink: Sink::relay(
            format!("{}/api/jobs/{}/status", app.config.relay_base(), job.id),
            token,
        ),
        context: job.context.clone(),
        timeout_secs: app.config.job_timeout.as_secs(),
    })
}

struct Reporter<'a> {
    app: &'a App,
    job: &'a str,
}

impl Progress for Reporter<'_> {
    fn started(&mut self) {
        let id = self.job.to_owned();
        if let Err(e) = self
            .app
            .store
            .write_blocking(move |conn| queue::mark_started(conn, &id))
        {
            tracing::error!(job = self.job, "cannot record the start: {e}");
        }
    }

    fn log(&mut self, chunk: &[u8]) {
        if let Err(e) = self.app.logs.append(self.job, chunk) {
            tracing::error!(job = self.job, "cannot append to the published log: {e}");
        }
    }
}

fn run_one(app: &App, job: Job, token: String, cancel: &AtomicBool) {
    let outcome = (|| {
        let id = JobId::parse(&job.id).map_err(|e| e.to_string())?;
        let file = job_file(app, &job, token)?;
        app.logs
            .start(&job.id)
            .map_err(|e| format!("cannot start the published log: {e}"))?;
        let request = RunRequest {
            job: &id,
            qubes: &job.qubes,
            job_file: &file,
            timeout: app.config.job_timeout,
            cancel,
        };
        let mut reporter = Reporter { app, job: &job.id };
        app.executor.run(request, &mut reporter)
    })();
    if let Err(e) = &outcome {
        tracing::error!(job = job.id, "the run failed: {e}");
    }
    // The log is complete: publish it, then the held final status may go.
    app.logs.finish(&job.id);
    let why = match outcome {
        Ok(()) => "Job ended without a final status".to_owned(),
        Err(e) => format!("CI error: {e}"),
    };
    let id = job.id.clone();
    if let Err(e) = app
        .store
        .write_blocking(move |conn| queue::publish(conn, &id, &why))
    {
        tracing::error!(job = job.id, "cannot publish: {e}");
    }
    app.running
        .cancel
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&job.id);
    app.running.add(&job.qubes, -1);
    app.store.changed.notify_one();
}
