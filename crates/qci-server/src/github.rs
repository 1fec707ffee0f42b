//! GitHub's REST API as the host speaks it, on `qci_github`'s rules: its
//! request timeout, its errors, and reading a commit's
//! `.qci.toml` through the contents API
//! (`GET /repos/OWNER/REPO/contents/.qci.toml?ref=SHA`).

use base64::Engine;
use qci_core::retry::Failure;
use qci_github::Verdict;
use reqwest::StatusCode;
use reqwest::blocking::Response;
use reqwest::header::HeaderValue;
use std::time::Duration;

pub use qci_github::authorized;

/// The bound on one request, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to GitHub (or a notification) did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The request never got an answer.
    #[error("{url}: {source}")]
    Unanswered {
        url: String,
        /// Without the URL, which the message gives once.
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Refused { url: String, status: StatusCode },
    #[error("{url}: not JSON: {source}")]
    NotJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{url}: unexpected answer: {source}")]
    Unexpected {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// No credential to send with (an App's installation token that
    /// could not be had), as [`crate::github_app::AppError`] words it.
    #[error("no GitHub token: {0}")]
    NoToken(String),
    #[error("{url}: bad base64 content: {source}")]
    BadBase64 {
        url: String,
        #[source]
        source: base64::DecodeError,
    },
}

/// The host's client for GitHub and notifications: [`qci_github::client`]
/// with [`REQUEST_TIMEOUT`].
pub fn client() -> reqwest::Result<reqwest::blocking::Client> {
    qci_github::client(REQUEST_TIMEOUT)
}

/// A request that never got an answer: worth another try.
pub fn unanswered(url: &str, e: reqwest::Error) -> Failure<GithubError> {
    Failure::Transient {
        error: GithubError::Unanswered {
            url: url.to_owned(),
            source: e.without_url(),
        },
        wait: None,
    }
}

/// An unsuccessful answer, retried or not as [`Verdict`] says.
pub fn refused(url: &str, reply: &Response) -> Failure<GithubError> {
    Verdict::of(reply).failure(GithubError::Refused {
        url: url.to_owned(),
        status: reply.status(),
    })
}

/// What a commit has at `.qci.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineFile {
    /// No such file (404): the repository's configured versions apply.
    Missing,
    Found(String),
    /// Something dom0 would refuse too (a directory, a symbolic link, too
    /// large, not UTF-8), and why.
    Unusable(String),
}

/// The contents API's answer for a file; a directory is a JSON array.
#[derive(serde::Deserialize)]
struct Content {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    size: u64,
    #[serde(default)]
    encoding: String,
    #[serde(default)]
    content: String,
}

/// Reads `.qci.toml` of `slug` at `sha`: one attempt, for
/// [`qci_core::retry::retry`].
pub fn pipeline_file(
    client: &reqwest::blocking::Client,
    api_url: &str,
    token: &HeaderValue,
    slug: &str,
    sha: &str,
) -> Result<PipelineFile, Failure<GithubError>> {
    use qci_core::pipeline::{FILE_NAME, MAX_FILE_BYTES};
    let url = format!(
        "{}/repos/{slug}/contents/{FILE_NAME}",
        api_url.trim_end_matches('/')
    );
    let reply = authorized(client.get(&url), token)
        .query(&[("ref", sha)])
        .send()
        .map_err(|e| unanswered(&url, e))?;
    if reply.status() == StatusCode::NOT_FOUND {
        return Ok(PipelineFile::Missing);
    }
    if !reply.status().is_success() {
        return Err(refused(&url, &reply));
    }
    let body = reply.bytes().map_err(|e| unanswered(&url, e))?;
    // A file's JSON is its base64 (4/3 of its bytes, in lines) and a few
    // short fields: anything much larger holds a file over the limit.
    if body.len() as u64 > 2 * MAX_FILE_BYTES + 16 * 1024 {
        return Ok(PipelineFile::Unusable(format!(
            "{FILE_NAME} is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|source| {
        Failure::Permanent(GithubError::NotJson {
            url: url.clone(),
            source,
        })
    })?;
    if value.is_array() {
        return Ok(PipelineFile::Unusable(format!(
            "{FILE_NAME} is a directory"
        )));
    }
    let file: Content = serde_json::from_value(value).map_err(|source| {
        Failure::Permanent(GithubError::Unexpected {
            url: url.clone(),
            source,
        })
    })?;
    // A symbolic link to a file is answered with that file, under its own
    // path; dom0 refuses a linked pipeline file, so the host does too.
    if file.kind != "file" || file.path != FILE_NAME {
        return Ok(PipelineFile::Unusable(format!(
            "{FILE_NAME} is not a regular file (a {} at {:?})",
            file.kind, file.path
        )));
    }
    if file.size > MAX_FILE_BYTES || file.encoding != "base64" {
        return Ok(PipelineFile::Unusable(format!(
            "{FILE_NAME} is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    // GitHub breaks the base64 into lines.
    let packed: String = file
        .content
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(packed)
        .map_err(|source| Failure::Permanent(GithubError::BadBase64 { url, source }))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(PipelineFile::Found(text)),
        Err(_) => Ok(PipelineFile::Unusable(format!("{FILE_NAME} is not UTF-8"))),
    }
}

/// What someone may do in a repository, least first: GitHub's roles
/// (`role_name` of the collaborator permission API).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    None,
    Read,
    Triage,
    Write,
    Maintain,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Read => "read",
            Self::Triage => "triage",
            Self::Write => "write",
            Self::Maintain => "maintain",
            Self::Admin => "admin",
        }
    }

    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "read" => Self::Read,
            "triage" => Self::Triage,
            "write" => Self::Write,
            "maintain" => Self::Maintain,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// `GET /repos/OWNER/REPO/collaborators/USER/permission` answers this (and more).
#[derive(serde::Deserialize)]
struct PermissionAnswer {
    permission: String,
    #[serde(default)]
    role_name: Option<String>,
}

/// `user`'s role in `slug`: one attempt, for [`qci_core::retry::retry`].
/// A custom role (an organization's own `role_name`) counts as the base
/// permission it extends (`permission`: admin, write, read or none); 404
/// (no such user) as none.
pub fn permission(
    client: &reqwest::blocking::Client,
    api_url: &str,
    token: &HeaderValue,
    slug: &str,
    user: &str,
) -> Result<Role, Failure<GithubError>> {
    let url = format!(
        "{}/repos/{slug}/collaborators/{user}/permission",
        api_url.trim_end_matches('/')
    );
    let reply = authorized(client.get(&url), token)
        .send()
        .map_err(|e| unanswered(&url, e))?;
    if reply.status() == StatusCode::NOT_FOUND {
        return Ok(Role::None);
    }
    if !reply.status().is_success() {
        return Err(refused(&url, &reply));
    }
    let answer: PermissionAnswer = read_json(&url, reply)?;
    Ok(answer
        .role_name
        .as_deref()
        .and_then(Role::named)
        .or_else(|| Role::named(&answer.permission))
        .unwrap_or(Role::None))
}

/// What a pull request's head is, from `GET /repos/OWNER/REPO/pulls/N`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PullRequest {
    pub title: String,
    pub state: String,
    pub user: Login,
    pub head: PullHead,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Login {
    pub login: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PullHead {
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// `null` when the fork was deleted.
    pub repo: Option<HeadRepo>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct HeadRepo {
    pub full_name: String,
    pub clone_url: String,
}

/// Pull request `number` of `slug`: one attempt.
pub fn pull_request(
    client: &reqwest::blocking::Client,
    api_url: &str,
    token: &HeaderValue,
    slug: &str,
    number: u64,
) -> Result<PullRequest, Failure<GithubError>> {
    let url = format!(
        "{}/repos/{slug}/pulls/{number}",
        api_url.trim_end_matches('/')
    );
    let reply = authorized(client.get(&url), token)
        .send()
        .map_err(|e| unanswered(&url, e))?;
    if !reply.status().is_success() {
        return Err(refused(&url, &reply));
    }
    read_json(&url, reply)
}

/// Reacts to comment `id` of `slug` (`+1`, `rocket`...): one attempt, and
/// only a courtesy, so its failure is for the log alone.
pub fn react(
    client: &reqwest::blocking::Client,
    api_url: &str,
    token: &HeaderValue,
    slug: &str,
    id: u64,
    content: &str,
) -> Result<(), GithubError> {
    let url = format!(
        "{}/repos/{slug}/issues/comments/{id}/reactions",
        api_url.trim_end_matches('/')
    );
    once(
        url.clone(),
        authorized(client.post(&url), token).json(&serde_json::json!({ "content": content })),
    )
}

/// Sends a courtesy request once: its failure is for the log alone.
fn once(url: String, request: reqwest::blocking::RequestBuilder) -> Result<(), GithubError> {
    let reply = request.send().map_err(|e| GithubError::Unanswered {
        url: url.clone(),
        source: e.without_url(),
    })?;
    if !reply.status().is_success() {
        return Err(GithubError::Refused {
            url,
            status: reply.status(),
        });
    }
    Ok(())
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

/// Registers a just-in-time runner where `runners_at` keeps them
/// (`repos/OWNER/REPO` or `orgs/ORG`), as `body` asks: one attempt.
pub fn generate_jitconfig(
    client: &reqwest::blocking::Client,
    api_url: &str,
    token: &HeaderValue,
    runners_at: &str,
    body: &serde_json::Value,
) -> Result<JitConfig, Failure<GithubError>> {
    let url = format!(
        "{}/{runners_at}/actions/runners/generate-jitconfig",
        api_url.trim_end_matches('/')
    );
    let reply = authorized(client.post(&url), token)
        .json(body)
        .send()
        .map_err(|e| unanswered(&url, e))?;
    let status = reply.status();
    if !status.is_success() {
        let failure = refused(&url, &reply);
        // GitHub says why (a runner group the App may not use, a name
        // taken): for the admin, who must mend the config.
        let why: String = reply.text().unwrap_or_default().chars().take(200).collect();
        tracing::warn!("{url} answered HTTP {status}: {why}");
        return Err(failure);
    }
    read_json(&url, reply)
}

/// Deletes runner `id` where `runners_at` keeps it: one attempt, a courtesy.
pub fn delete_runner(
    client: &reqwest::blocking::Client,
    api_url: &str,
    token: &HeaderValue,
    runners_at: &str,
    id: u64,
) -> Result<(), GithubError> {
    let url = format!(
        "{}/{runners_at}/actions/runners/{id}",
        api_url.trim_end_matches('/')
    );
    once(url.clone(), authorized(client.delete(&url), token))
}

/// Actions job `id` of `slug`: its `status` (`queued`, `in_progress`,
/// `completed`, …), one attempt.
pub fn actions_job_status(
    client: &reqwest::blocking::Client,
    api_url: &str,
    token: &HeaderValue,
    slug: &str,
    id: u64,
) -> Result<String, Failure<GithubError>> {
    #[derive(serde::Deserialize)]
    struct Job {
        status: String,
    }
    let url = format!(
        "{}/repos/{slug}/actions/jobs/{id}",
        api_url.trim_end_matches('/')
    );
    let reply = authorized(client.get(&url), token)
        .send()
        .map_err(|e| unanswered(&url, e))?;
    if !reply.status().is_success() {
        return Err(refused(&url, &reply));
    }
    read_json::<Job>(&url, reply).map(|job| job.status)
}

/// The answer's JSON body as `T`; one that is not is a permanent failure.
pub fn read_json<T: serde::de::DeserializeOwned>(
    url: &str,
    reply: Response,
) -> Result<T, Failure<GithubError>> {
    let body = reply.bytes().map_err(|e| unanswered(url, e))?;
    serde_json::from_slice(&body).map_err(|source| {
        Failure::Permanent(GithubError::Unexpected {
            url: url.to_owned(),
            source,
        })
    })
}
