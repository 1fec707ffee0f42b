//! GitHub's REST API as the host speaks it: the headers every call
//! carries, which failures are worth retrying, and reading a commit's
//! `.qci.toml` through the contents API
//! (`GET /repos/OWNER/REPO/contents/.qci.toml?ref=SHA`).

use base64::Engine;
use qci_core::retry::{self, Failure};
use reqwest::StatusCode;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, USER_AGENT};
use std::time::{Duration, SystemTime};

/// The bound on one request, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A blocking client that follows no redirect: a status post must not be
/// replayed elsewhere, and a moved repository is an error to fix in the
/// config, not something to chase.
pub fn client() -> reqwest::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The token (`Bearer ...`, marked sensitive so it is never logged), and
/// GitHub's media type and API version.
pub fn authorized(request: RequestBuilder, token: &HeaderValue) -> RequestBuilder {
    request
        .header(USER_AGENT, "qci")
        .header(AUTHORIZATION, token.clone())
        .header(ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
}

/// A request that never got an answer: worth another try.
pub fn unanswered(url: &str, e: reqwest::Error) -> Failure<String> {
    Failure::Transient {
        error: format!("{url}: {}", e.without_url()),
        wait: None,
    }
}

/// What an unsuccessful answer means: 5xx, 429 and a rate-limited 403 may
/// pass (after the wait GitHub asks for, if it does); anything else will
/// fail the same way again.
pub fn refused(url: &str, reply: &Response) -> Failure<String> {
    let status = reply.status();
    let header = |name: &str| reply.headers().get(name).and_then(|v| v.to_str().ok());
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && retry::rate_limited(header));
    let error = format!("{url} answered HTTP {status}");
    if transient {
        Failure::Transient {
            error,
            wait: retry::server_wait(header, SystemTime::now()),
        }
    } else {
        Failure::Permanent(error)
    }
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
) -> Result<PipelineFile, Failure<String>> {
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
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::Permanent(format!("{url}: not JSON: {e}")))?;
    if value.is_array() {
        return Ok(PipelineFile::Unusable(format!(
            "{FILE_NAME} is a directory"
        )));
    }
    let file: Content = serde_json::from_value(value)
        .map_err(|e| Failure::Permanent(format!("{url}: unexpected answer: {e}")))?;
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
        .map_err(|e| Failure::Permanent(format!("{url}: bad base64 content: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(PipelineFile::Found(text)),
        Err(_) => Ok(PipelineFile::Unusable(format!("{FILE_NAME} is not UTF-8"))),
    }
}
