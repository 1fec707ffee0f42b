//! Sends what the outbox holds, in order: commit statuses to GitHub (in
//! App mode, check runs instead: [`crate::check_run_sender`]), and
//! notifications (Slack, a generic JSON webhook) when a job finishes. Each
//! kind has its own sender, so a slow Slack never delays a commit status,
//! and nothing here ever holds up a job: the job is recorded as finished
//! first, and the message goes when it can, retried with backoff within a
//! budget. The outbox is in the database, so a restart resumes sending.

use crate::app::App;
use crate::check_run_sender::{self, CheckRunError};
use crate::github::{self, GithubError};
use crate::queue::{self, Kind, Outgoing};
use crate::store::StoreError;
use qci_core::JobId;
use qci_core::retry::{self, RetryPolicy, Stop};
use reqwest::header::{HeaderValue, USER_AGENT};
use std::time::Duration;

/// GitHub cuts commit status descriptions at this many characters.
const GITHUB_DESCRIPTION_CHARS: usize = 140;

/// Why a message was given up on; recorded with it in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Refused for good, or tried until the budget ran out.
    #[error(transparent)]
    Github(#[from] Stop<GithubError>),
    #[error("bad outbox entry: {0}")]
    BadEntry(#[source] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} is gone")]
    JobGone(JobId),
    #[error(transparent)]
    CheckRun(#[from] CheckRunError),
}

/// Where one kind of message goes, and with what credential.
#[derive(Clone)]
pub struct Destination {
    pub kind: Kind,
    /// GitHub's API base, or the notification URL.
    pub url: String,
    /// The credential sent: for commit statuses the host's token (token
    /// mode: in App mode the check-run sender asks for installation
    /// tokens itself), for notifications none.
    pub token: Option<HeaderValue>,
    pub policy: RetryPolicy,
}

/// Starts the sender of one kind on its own thread: it posts with a
/// blocking client, one message at a time, in order. Without a destination
/// (a notification not configured) messages are marked done unsent.
pub fn spawn(app: App, kind: Kind, dest: Option<Destination>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("qci-send-{}", kind.as_str()))
        .spawn(move || send_forever(&app, kind, dest.as_ref()))?;
    Ok(())
}

fn send_forever(app: &App, kind: Kind, dest: Option<&Destination>) {
    let client = match github::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot set up the HTTP client for {}: {e}", kind.as_str());
            return;
        }
    };
    loop {
        let seen = app.store.commit_count();
        let batch = app
            .store
            .read_blocking(|conn| queue::outgoing(conn, kind, 64))
            .unwrap_or_else(|e| {
                tracing::error!("outbox: {e}");
                Vec::new()
            });
        if batch.is_empty() {
            if dest.is_some() {
                app.store.wait_commit(seen, Duration::from_secs(5));
            } else {
                // Nothing to send to: only clear the outbox now and then.
                std::thread::sleep(Duration::from_secs(5));
            }
            continue;
        }
        // Sent in order; marked done together (one commit per batch). A
        // crash in between sends a few again, in order: harmless, as the
        // last status of a commit still wins.
        let mut done = Vec::with_capacity(batch.len());
        for msg in batch {
            let error = dest.and_then(|dest| send(app, &client, dest, &msg).err());
            if let Some(e) = &error {
                tracing::error!(
                    job = msg.job.as_str(),
                    "giving up on a {} message: {e}",
                    kind.as_str()
                );
            }
            // The outbox keeps why, as text, beside the message.
            done.push((msg, error.as_ref().map(SendError::to_string)));
        }
        if let Err(e) = app
            .store
            .write_durable_blocking("what was sent", move |conn| queue::sent(conn, &done))
        {
            tracing::error!("outbox: {e}");
        }
    }
}

/// The request for one message, built anew for each attempt.
fn send(
    app: &App,
    client: &reqwest::blocking::Client,
    dest: &Destination,
    msg: &Outgoing,
) -> Result<(), SendError> {
    // App mode: the job's check run, and never a commit status.
    if dest.kind == Kind::Github
        && let Some(github_app) = app.github.app()
    {
        return Ok(check_run_sender::send(
            app,
            client,
            &dest.url,
            &dest.policy,
            github_app,
            msg,
        )?);
    }
    let (url, body) = match dest.kind {
        Kind::Github => github_request(app, dest, msg)?,
        Kind::Slack | Kind::Webhook => notification(app, dest, msg)?,
    };
    let attempt = || {
        let request = client.post(&url).json(&body);
        // GitHub's headers name qci too; a header set twice is sent twice.
        let request = match &dest.token {
            Some(token) => github::authorized(request, token),
            None => request.header(USER_AGENT, "qci"),
        };
        let reply = request.send().map_err(|e| github::unanswered(&url, e))?;
        if reply.status().is_success() {
            return Ok(());
        }
        Err(github::refused(&url, &reply))
    };
    let what = format!(
        "sending a {} message for job {}",
        dest.kind.as_str(),
        msg.job
    );
    Ok(retry::retry(&dest.policy, &what, attempt)?)
}

fn github_request(
    app: &App,
    dest: &Destination,
    msg: &Outgoing,
) -> Result<(String, serde_json::Value), SendError> {
    let body: serde_json::Value = serde_json::from_str(&msg.body).map_err(SendError::BadEntry)?;
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    let url = format!(
        "{}/repos/{}/statuses/{}",
        dest.url.trim_end_matches('/'),
        text("repo"),
        text("sha")
    );
    let description: String = text("description")
        .chars()
        .take(GITHUB_DESCRIPTION_CHARS)
        .collect();
    Ok((
        url,
        serde_json::json!({
            "state": text("state"),
            "target_url": app.job_url(msg.job.as_str()),
            "description": description,
            "context": text("context"),
        }),
    ))
}

fn notification(
    app: &App,
    dest: &Destination,
    msg: &Outgoing,
) -> Result<(String, serde_json::Value), SendError> {
    let job = app
        .store
        .read_blocking(|conn| queue::get(conn, &msg.job))?
        .ok_or_else(|| SendError::JobGone(msg.job.clone()))?;
    let url = app.job_url(job.id.as_str());
    let short = &job.sha[..job.sha.len().min(12)];
    let body = match dest.kind {
        Kind::Slack => serde_json::json!({
            "text": format!(
                "qci: {} {} on {} {} ({}, {}): {} <{url}|log>",
                job.repo, job.git_ref, job.context, short, job.author, job.state,
                job.description
            ),
        }),
        _ => serde_json::json!({
            "job": job.id, "repository": job.repo, "ref": job.git_ref, "sha": job.sha,
            "context": job.context, "qubes": job.qubes, "state": job.state,
            "description": job.description, "author": job.author, "url": url,
            "duration_ms": job.duration_ms(queue::now_ms()),
        }),
    };
    Ok((dest.url.clone(), body))
}

/// The retry policy for a kind: statuses within the configured budget,
/// notifications within a few minutes.
pub fn policy(budget: Duration) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(30),
        budget,
        max_attempts: 50,
    }
}
