//! App mode's GitHub messages: one check run per job instead of commit
//! statuses. The job's first message that reaches GitHub creates the check
//! run (`POST /repos/{o}/{r}/check-runs`) and its id is kept in the job's
//! row; every later message updates it (`PATCH .../check-runs/{id}`), the
//! last with the conclusion, the output and the annotations, in requests
//! of at most 50 ([`check_run::update`]). The bodies are
//! [`crate::check_run`]'s; this only sends them.
//!
//! Each message is sent as its own state (the `job_state` the outbox wrote
//! with it) over the job's row, not as the row stands when it is sent: the
//! sender may be behind, and GitHub must still see queued, then in
//! progress, then completed.
//!
//! Sent at least once, not exactly once: a crash (or a request that timed
//! out after GitHub acted) between the create and the id being recorded
//! sends the create again, and GitHub then shows a second check run of the
//! same name on the commit, the newer of which carries the job's later
//! states. A resent final message appends its annotations again.

use crate::app::App;
use crate::check_run::{self, Report};
use crate::github::{self, GithubError};
use crate::github_app::GithubApp;
use crate::pages::sections::{self, Section};
use crate::queue::results::JobTests;
use crate::queue::{self, Job, Outgoing};
use crate::store::StoreError;
use qci_core::JobId;
use qci_core::retry::{self, Failure, RetryPolicy, Stop};
use reqwest::blocking::Client;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Why a job's check run could not be brought to a message's state.
#[derive(Debug, thiserror::Error)]
pub enum CheckRunError {
    /// Refused for good, or tried until the budget ran out.
    #[error(transparent)]
    Github(#[from] Stop<GithubError>),
    #[error("bad outbox entry: {0}")]
    BadEntry(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} is gone")]
    JobGone(JobId),
    #[error("{url}: the answer names no check run id")]
    NoId { url: String },
}

/// What the outbox wrote of a GitHub message
/// ([`crate::queue::outbox`]'s `enqueue_github`).
#[derive(serde::Deserialize)]
struct Message {
    description: String,
    /// Absent in a message an older qci wrote: the job's row says then.
    #[serde(default)]
    job_state: Option<String>,
}

/// Brings `msg`'s job's check run to the message's state: creates it if
/// the job has none yet, updates it otherwise.
pub fn send(
    app: &App,
    client: &Client,
    api_url: &str,
    policy: &RetryPolicy,
    github_app: &GithubApp,
    msg: &Outgoing,
) -> Result<(), CheckRunError> {
    let message: Message =
        serde_json::from_str(&msg.body).map_err(|e| CheckRunError::BadEntry(e.to_string()))?;
    let (job, known_id) = app.store.read_blocking(|conn| {
        Ok((
            queue::get(conn, &msg.job)?,
            queue::outbox::check_run_id(conn, &msg.job)?,
        ))
    })?;
    let mut job = job.ok_or_else(|| CheckRunError::JobGone(msg.job.clone()))?;
    if let Some(word) = &message.job_state {
        job.state = queue::parse_state(word).map_err(|e| CheckRunError::BadEntry(e.to_string()))?;
        job.description = message.description;
    }
    let read = if job.is_final() {
        read_results(app, &job)?
    } else {
        Results::default()
    };
    let details_url = app.job_url(job.id.as_str());
    let report = Report {
        job: &job,
        details_url: &details_url,
        sections: &read.steps,
        tests: read.tests.as_ref(),
        log_tail: read.tail.as_deref(),
    };
    let runs = format!(
        "{}/repos/{}/check-runs",
        api_url.trim_end_matches('/'),
        job.repo
    );
    let caller = Caller {
        client,
        policy,
        github_app,
        repo: &job.repo,
        job: &job.id,
    };
    // GitHub changes a completed check run no more: a fork's job waiting
    // for approval (`action_required`) gets a new one once approved.
    let waiting = check_run::conclusion(&job) == Some(check_run::Conclusion::ActionRequired);
    let id = match known_id {
        Some(id) => id,
        None => {
            let reply = caller.call(Method::POST, &runs, &check_run::create(&report))?;
            let id = reply["id"]
                .as_i64()
                .ok_or_else(|| CheckRunError::NoId { url: runs.clone() })?;
            tracing::debug!(
                job = job.id.as_str(),
                check_run = id,
                "created the check run"
            );
            // The create carries the status and output; a final one still
            // needs its annotations, which only updates carry.
            if !job.is_final() {
                return keep_id(app, &job.id, (!waiting).then_some(id));
            }
            keep_id(app, &job.id, Some(id))?;
            id
        }
    };
    let url = format!("{runs}/{id}");
    for request in check_run::update(&report) {
        caller.call(Method::PATCH, &url, &request)?;
    }
    if waiting {
        keep_id(app, &job.id, None)?;
    }
    Ok(())
}

/// Records the job's check run, or that the next message needs a new one.
fn keep_id(app: &App, job: &JobId, id: Option<i64>) -> Result<(), CheckRunError> {
    let key = job.clone();
    app.store
        .write_durable_blocking("the check run's id", move |conn| {
            queue::outbox::set_check_run_id(conn, &key, id)
        })?;
    Ok(())
}

/// What a finished job's check run shows beside the job: none while it runs.
#[derive(Default)]
struct Results {
    steps: Vec<Section>,
    tests: Option<JobTests>,
    tail: Option<String>,
}

/// A finished job's log in steps, its tests and its log's tail, as its
/// page shows them; a log already pruned (or never written) gives none.
fn read_results(app: &App, job: &Job) -> Result<Results, CheckRunError> {
    let path = app.logs.path(job.id.as_str());
    let steps = std::fs::File::open(&path)
        .and_then(|file| sections::read(std::io::BufReader::new(file), job.state));
    let steps = steps.unwrap_or_else(|e| {
        tracing::debug!(
            job = job.id.as_str(),
            "no log in steps for the check run: {e}"
        );
        Vec::new()
    });
    let tail = check_run::read_log_tail(&path)
        .inspect_err(|e| tracing::debug!(job = job.id.as_str(), "no log tail: {e}"))
        .ok();
    let tests = app
        .store
        .read_blocking(|conn| queue::results::job_tests(conn, job.id.as_str()))?;
    Ok(Results { steps, tests, tail })
}

/// Sends one request about a repository with its installation token.
struct Caller<'a> {
    client: &'a Client,
    policy: &'a RetryPolicy,
    github_app: &'a GithubApp,
    repo: &'a str,
    job: &'a JobId,
}

impl Caller<'_> {
    /// Sends `body` until GitHub takes it, within the retry policy, and
    /// gives its answer. The token is asked for at each attempt (it may
    /// have been refreshed); a 401 drops it and tries once more with a new
    /// one, as GitHub may revoke a token before its announced expiry. A
    /// second 401 in a row is the App's credential itself: given up on.
    fn call(
        &self,
        method: Method,
        url: &str,
        body: &impl serde::Serialize,
    ) -> Result<Value, CheckRunError> {
        let mut refused_once = false;
        let attempt = || -> Result<Value, Failure<GithubError>> {
            let token = self.github_app.token_for(self.client, self.repo)?;
            let request = self.client.request(method.clone(), url).json(body);
            let reply = github::authorized(request, &token)
                .send()
                .map_err(|e| github::unanswered(url, e))?;
            let status = reply.status();
            if status == StatusCode::UNAUTHORIZED && !refused_once {
                refused_once = true;
                self.github_app.invalidate(self.repo, &token);
                return Err(Failure::Transient {
                    error: GithubError::Refused {
                        url: url.to_owned(),
                        status,
                    },
                    wait: Some(Duration::ZERO),
                });
            }
            if !status.is_success() {
                return Err(github::refused(url, &reply));
            }
            let bytes = reply.bytes().map_err(|e| github::unanswered(url, e))?;
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).map_err(|source| {
                Failure::Permanent(GithubError::NotJson {
                    url: url.to_owned(),
                    source,
                })
            })
        };
        let what = format!("{method} a check run of job {}", self.job);
        Ok(retry::retry(self.policy, &what, attempt)?)
    }
}
