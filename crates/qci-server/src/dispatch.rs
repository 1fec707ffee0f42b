//! Dispatch: hands queued jobs to the machine pool, FIFO per Qubes version,
//! no more at once than the pool has machines for, and turns what the pool
//! reports into the published log and the job's end.
//!
//! A job the pool could not start (the hypervisor unreachable, no machine
//! freed within the pool's queue timeout, the lease store failing) is not
//! lost, nor marked as run: it goes back to its place in the queue, and is
//! handed over again after `start_retry_delay`, doubled after each failure
//! up to [`MAX_START_RETRY_DELAY`], its status saying why it waits. After
//! `start_attempts` failed hand-overs it ends as `error` with the last
//! reason. A job that can never start (an unknown Qubes version) ends at
//! once.
//!
//! The pool itself (leases, reverting, booting, the guest channel) is not
//! here: it sits behind [`Executor`].

pub use crate::executor::{Executor, NotStarted};

use crate::app::App;
use crate::queue::results::Artifact;
use crate::queue::{self, Job};
use crate::store::StoreError;
use crate::tokens;
use qci_core::job_file::{CommitSha, JobFile, JobFileError, Repository, Sink};
use qci_core::{JobId, State};
use qci_pool::{Dom0, FinalStatus, JobEvents, JobRequest, Phase, Target};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The longest wait before a job that could not start is handed over again.
pub const MAX_START_RETRY_DELAY: Duration = Duration::from_secs(30 * 60);

/// The server's record of final statuses, for the pool: the jobs table,
/// fed by the relay. dom0 is never needed: the relay already told us.
pub struct Finals {
    pub app: App,
}

impl FinalStatus for Finals {
    fn final_state(&self, job: &JobId, _dom0: Option<&Dom0<'_>>) -> Option<(State, String)> {
        let found = self.app.store.read_blocking(|conn| queue::get(conn, job));
        match found {
            Ok(Some(j)) if j.is_final() => Some((j.state(), j.description)),
            _ => None,
        }
    }

    fn record(
        &self,
        job: &JobId,
        state: State,
        description: &str,
        _dom0: Option<&Dom0<'_>>,
    ) -> Result<(), qci_pool::RecordError> {
        let (id, why) = (job.clone(), description.to_owned());
        self.app
            .store
            .write_durable_blocking("the job's final status", move |conn| {
                queue::record_final(conn, &id, state, &why).map(|_| ())
            })
            .map(|_| ())
            .map_err(|e| qci_pool::RecordError::Store(Box::new(e)))
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

async fn dispatch_ready(app: &App) -> Result<(), StoreError> {
    for qubes in app.executor.versions() {
        while app.running.busy(&qubes) < app.executor.capacity(&qubes) {
            // A read first: a write that finds nothing would still ring
            // every waiter, this loop included.
            let v = qubes.clone();
            if !app
                .store
                .read(move |conn| queue::runnable(conn, &v))
                .await?
            {
                break;
            }
            let (token, hash) = tokens::new_token();
            let v = qubes.clone();
            let Some(job) = app
                .store
                .write(move |conn| queue::claim_next(conn, &v, &hash))
                .await?
            else {
                break;
            };
            let flag = app.running.start(&job.id, &qubes);
            let app = app.clone();
            tokio::task::spawn_blocking(move || run_one(&app, job, token, flag));
        }
    }
    Ok(())
}

/// The job file the dev VM gets: the commit, and the relay sink with the
/// job's token. No GitHub credential is in it.
pub fn job_file(app: &App, job: &Job, token: String) -> Result<JobFile, JobFileError> {
    Ok(JobFile {
        repository: Repository {
            url: job.clone_url.clone(),
            slug: Some(job.repo.clone()),
        },
        commit: Some(CommitSha::parse(&job.sha)?),
        source: None,
        git_ref: Some(job.git_ref.clone()),
        reason: job.reason,
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
}

impl JobEvents for Reporter<'_> {
    fn phase(&self, job: &JobId, phase: &Phase) {
        tracing::info!(job = %job, "{phase}");
        // Where it runs, for its page: the machine, then its snapshot.
        let noted = match phase {
            Phase::Leased { machine } => Some((machine.clone(), true)),
            Phase::Reverting { snapshot } => Some((snapshot.clone(), false)),
            _ => None,
        };
        if let Some((name, is_machine)) = noted {
            let id = job.clone();
            let written = self.app.store.write_blocking(move |conn| {
                if is_machine {
                    queue::mark_machine(conn, &id, &name)
                } else {
                    queue::mark_snapshot(conn, &id, &name)
                }
            });
            if let Err(e) = written {
                tracing::warn!(job = %job, "cannot record where the job runs: {e}");
            }
        }
        // `begin` runs: from now on a host crash ends the job instead of
        // queueing it again.
        if *phase == Phase::Running {
            let id = job.clone();
            if let Err(e) = self
                .app
                .store
                .write_durable_blocking("the job's start", move |conn| {
                    queue::mark_started(conn, &id)
                })
            {
                tracing::error!(job = %job, "cannot record the start: {e}");
            }
        }
    }

    fn log(&self, job: &JobId, chunk: &[u8]) {
        if let Err(e) = self.app.logs.append(job.as_str(), chunk) {
            tracing::error!(job = %job, "cannot append to the published log: {e}");
        }
    }
}

fn run_one(app: &App, job: Job, token: String, cancel: Arc<AtomicBool>) {
    let outcome = (|| {
        let request = JobRequest {
            job: job.id.clone(),
            target: Target::Qubes(job.qubes.clone()),
            job_file: job_file(app, &job, token).map_err(|e| NotStarted::Refused(e.to_string()))?,
            timeout: Some(app.config.job_timeout),
            cancel,
        };
        app.logs
            .start(job.id.as_str())
            .map_err(|e| NotStarted::Failed(format!("cannot start the published log: {e}")))?;
        let finals = Finals { app: app.clone() };
        app.executor.run_job(&request, &Reporter { app }, &finals)
    })();
    // The pool's copy of dom0's log is the record: it replaces what was
    // followed, then the log is complete and published.
    if let Ok(out) = &outcome
        && let Err(e) = app.logs.replace(job.id.as_str(), &out.log)
    {
        tracing::warn!(
            job = job.id.as_str(),
            "cannot publish the pool's copy of the log: {e}"
        );
    }
    app.logs.finish(job.id.as_str());
    let id = job.id.clone();
    let ended = match outcome {
        Ok(out) => {
            // Stored with the end, in one transaction: whatever reads the
            // job as ended (its page, what GitHub is sent) sees its tests.
            let results = out.artifacts.map(stored_results);
            app.store
                .write_durable_blocking("the job's end", move |conn| {
                    if let Some((tests, files)) = &results {
                        queue::results::record(conn, &id, tests, files)?;
                    }
                    queue::publish(conn, &id, "Job ended without a final status")
                })
        }
        Err(NotStarted::Failed(why)) => {
            tracing::warn!(job = job.id.as_str(), "the job could not start: {why}");
            let (attempts, delay) = (app.config.start_attempts, start_delay(app, &job));
            app.store
                .write_durable_blocking("the job's return to the queue", move |conn| {
                    queue::requeue(conn, &id, &why, attempts, delay)
                })
                .map(|requeued| tracing::info!(job = job.id.as_str(), "{requeued:?}"))
        }
        Err(NotStarted::Refused(why)) => {
            tracing::error!(job = job.id.as_str(), "the job cannot start: {why}");
            let why = format!("CI error: {why}");
            app.store
                .write_durable_blocking("the job's end", move |conn| {
                    queue::publish(conn, &id, &why)
                })
        }
        // Canceled or superseded: ended already; nothing ran.
        Err(NotStarted::Canceled) => app
            .store
            .write_durable_blocking("the job's end", move |conn| {
                queue::publish(conn, &id, "Canceled before it started")
            }),
    };
    if let Err(e) = ended {
        tracing::error!(job = job.id.as_str(), "cannot record the job's end: {e}");
    }
    app.running.end(&job.id, &job.qubes);
    app.store.changed.notify_one();
}

/// What of a job's artifacts the database keeps: its test cases, and the
/// list of its files (the screenshot among them) with their sizes.
fn stored_results(
    a: qci_pool::artifacts::JobArtifacts,
) -> (Vec<qci_junit::TestCase>, Vec<Artifact>) {
    let mut files: Vec<Artifact> = a
        .files
        .iter()
        .map(|f| Artifact {
            path: f.path.to_string_lossy().into_owned(),
            bytes: f.bytes,
        })
        .collect();
    if let Some(shot) = &a.screenshot
        && let Ok(meta) = std::fs::metadata(shot)
    {
        files.push(Artifact {
            path: qci_pool::artifacts::SCREENSHOT.to_owned(),
            bytes: meta.len(),
        });
    }
    (a.tests, files)
}

/// The wait before the next hand-over of a job that could not start:
/// `start_retry_delay` doubled for each earlier failure, within the cap.
fn start_delay(app: &App, job: &Job) -> Duration {
    let doublings = job.start_failures.clamp(0, 16) as u32;
    app.config
        .start_retry_delay
        .saturating_mul(1 << doublings)
        .min(MAX_START_RETRY_DELAY)
}
