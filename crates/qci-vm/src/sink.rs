//! Forwards status events to the job's sink: the dev VM is where dom0's
//! status reports leave the Qubes machine.

use crate::paths::Paths;
use qci_core::StatusEvent;
use qci_core::job_file::{JobFile, RetrySettings, Sink, valid_slug};
use qci_core::retry::{self, RetryPolicy, Stop};
use qci_github::Verdict;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// GitHub cuts commit status descriptions at this many characters.
const GITHUB_DESCRIPTION_CHARS: usize = 140;
/// How much of a refusal's body goes into the error: enough to see why.
const ERROR_BODY_BYTES: usize = 200;
/// The first backoff ceiling for GitHub; it doubles per retry up to the cap.
const GITHUB_BASE_DELAY: Duration = Duration::from_secs(1);
/// Past half a minute, waiting longer between tries only loses time.
const GITHUB_MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot append status to {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the job file has no repository.slug (OWNER/REPO), which the github sink needs")]
    NoSlug,
    #[error("repository slug must be OWNER/REPO, got {0:?}")]
    BadSlug(String),
    #[error("the job file has no commit, which the github sink needs")]
    NoCommit,
    #[error("the GitHub token: {0}")]
    Token(#[from] qci_core::secret::SecretError),
    #[error("the GitHub token in {0} is not usable in an HTTP header")]
    TokenInvalid(PathBuf),
    #[error("the relay sink's token is empty or not usable in an HTTP header")]
    RelayTokenInvalid,
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("no answer from {url} within {secs}s")]
    Timeout {
        url: String,
        secs: u64,
        #[source]
        source: reqwest::Error,
    },
    /// The whole cause chain is in the message: callers print only the top
    /// error, and reqwest's own message hides the cause (refused, DNS, TLS).
    #[error("cannot post the status to {url}: {}", with_causes(.source))]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} refused the status with HTTP {status} {}: {body}", reason_phrase(*.status))]
    Rejected {
        url: String,
        status: u16,
        /// The start of the reply, with the token masked should it be echoed.
        body: String,
    },
    /// `last` is in the message, not the source chain: callers print only
    /// the top error, and the last failure is what explains it.
    #[error(
        "{to} status not posted after {attempts} attempt{} in {:.1}s{}: last error: {last}",
        if *.attempts == 1 { "" } else { "s" },
        .elapsed.as_secs_f64(),
        .note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
    )]
    GaveUp {
        /// `GitHub` or `relay`: who was not told.
        to: &'static str,
        attempts: u32,
        elapsed: Duration,
        note: Option<String>,
        last: Box<SinkError>,
    },
}

/// `e` followed by each of its causes.
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn reason_phrase(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Delivers `event` to `job.sink`. The github sink retries transient
/// failures within the job file's retry budget; see [`RetryPolicy`].
pub fn forward(event: &StatusEvent, job: &JobFile, paths: &Paths) -> Result<(), SinkError> {
    forward_with(event, job, paths, None)
}

/// [`forward`], with `policy` replacing the job file's retry settings
/// (tests shrink the delays to milliseconds).
fn forward_with(
    event: &StatusEvent,
    job: &JobFile,
    paths: &Paths,
    policy: Option<RetryPolicy>,
) -> Result<(), SinkError> {
    match &job.sink {
        Sink::File { path } => append_line(
            &paths.resolve(path),
            &event.to_json(),
            event.state.is_final(),
        ),
        Sink::Github {
            api_url,
            token_file,
            target_url,
            retry: settings,
        } => {
            let token = read_token(&paths.resolve(token_file))?;
            let body = GithubStatus {
                state: event.state.github_state(),
                description: event
                    .description
                    .chars()
                    .take(GITHUB_DESCRIPTION_CHARS)
                    .collect(),
                context: &job.context,
                target_url: target_url.as_deref(),
            };
            let policy = policy.unwrap_or_else(|| retry_policy(settings));
            post_github(api_url, job, &token, &body, settings.timeout_secs, &policy)
        }
        Sink::Relay {
            url,
            token,
            retry: settings,
        } => {
            let token = relay_token(token)?;
            let policy = policy.unwrap_or_else(|| retry_policy(settings));
            // The host wants the event as dom0 sent it; it maps states itself.
            let post = Post {
                to: "relay",
                url,
                token: &token,
                timeout_secs: settings.timeout_secs,
            };
            post.send(|r| r, event, &policy)
        }
    }
}

/// How hard a sink tries, from its job file's settings: GitHub's backoff
/// for both, as the relay forwards to GitHub.
fn retry_policy(settings: &RetrySettings) -> RetryPolicy {
    RetryPolicy {
        base: GITHUB_BASE_DELAY,
        cap: GITHUB_MAX_DELAY,
        budget: Duration::from_secs(settings.retry_budget_secs),
        max_attempts: settings.max_attempts,
    }
}

/// One `write_all` on an `O_APPEND` file keeps concurrent writers' lines
/// whole. A `durable` line is on disk when this returns (fsync of the file
/// and of its directory, which an earlier line may have created), so a
/// final status survives a crash; a `running` status is not worth the wait:
/// the next one, and the final one, replace it.
fn append_line(path: &Path, json: &str, durable: bool) -> Result<(), SinkError> {
    let err = |source| SinkError::File {
        path: path.to_owned(),
        source,
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(err)?;
    file.write_all(format!("{json}\n").as_bytes())
        .map_err(err)?;
    if !durable {
        return Ok(());
    }
    file.sync_all().map_err(err)?;
    if let Some(dir) = parent {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// The credentials this job's sink holds, so `begin` can mask them in the
/// log it shows. A token that cannot be read is nothing to mask.
pub fn secrets(job: &JobFile, paths: &Paths) -> Vec<String> {
    match &job.sink {
        Sink::Github { token_file, .. } => read_token(&paths.resolve(token_file))
            .map(|t| vec![t.raw])
            .unwrap_or_default(),
        Sink::Relay { token, .. } => vec![token.clone()],
        Sink::File { .. } => Vec::new(),
    }
}

/// The relay's token is inline in the job file, not a secret file: it is
/// checked here, not by `read_secret`.
fn relay_token(raw: &str) -> Result<Token, SinkError> {
    let header = qci_github::bearer(raw)
        .filter(|_| !raw.is_empty())
        .ok_or(SinkError::RelayTokenInvalid)?;
    Ok(Token {
        header,
        raw: raw.to_owned(),
    })
}

/// A token, as a header value marked sensitive so it never shows in debug output.
struct Token {
    header: HeaderValue,
    raw: String,
}

fn read_token(path: &Path) -> Result<Token, SinkError> {
    let raw = qci_core::secret::read_secret(path)?;
    let header =
        qci_github::bearer(&raw).ok_or_else(|| SinkError::TokenInvalid(path.to_owned()))?;
    Ok(Token { header, raw })
}

/// The body of GitHub's "create a commit status" call.
#[derive(Serialize)]
struct GithubStatus<'a> {
    state: &'static str,
    description: String,
    context: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
}

fn post_github(
    api_url: &str,
    job: &JobFile,
    token: &Token,
    body: &GithubStatus<'_>,
    timeout_secs: u64,
    policy: &RetryPolicy,
) -> Result<(), SinkError> {
    let slug = job.repository.slug.as_deref().ok_or(SinkError::NoSlug)?;
    if !valid_slug(slug) {
        return Err(SinkError::BadSlug(slug.chars().take(100).collect()));
    }
    let sha = job.commit.as_ref().ok_or(SinkError::NoCommit)?;
    let url = format!(
        "{}/repos/{slug}/statuses/{sha}",
        api_url.trim_end_matches('/')
    );

    let post = Post {
        to: "GitHub",
        url: &url,
        token,
        timeout_secs,
    };
    post.send(qci_github::github_api, body, policy)
}

/// One status to deliver with a bearer token, retried on what may pass.
struct Post<'a> {
    to: &'static str,
    url: &'a str,
    token: &'a Token,
    timeout_secs: u64,
}

impl Post<'_> {
    /// Posts `body` as JSON; `extra` adds the receiver's own headers.
    fn send(
        &self,
        extra: impl Fn(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder,
        body: &impl Serialize,
        policy: &RetryPolicy,
    ) -> Result<(), SinkError> {
        let (url, token, timeout_secs) = (self.url, self.token, self.timeout_secs);
        let client =
            qci_github::client(Duration::from_secs(timeout_secs)).map_err(SinkError::Client)?;
        let attempt = || {
            let request = qci_github::identified(client.post(url), &token.header);
            let reply = extra(request)
                .json(body)
                .send()
                // Refused, reset, timed out: the next try may well get through.
                .map_err(|e| retry::Failure::Transient {
                    error: request_error(url, timeout_secs, e),
                    wait: None,
                })?;
            let status = reply.status();
            if status.is_success() {
                return Ok(());
            }
            let verdict = Verdict::of(&reply);
            Err(verdict.failure(SinkError::Rejected {
                url: url.to_owned(),
                status: status.as_u16(),
                body: qci_github::refusal_body(reply, &token.raw, ERROR_BODY_BYTES),
            }))
        };
        let what = format!("posting the {} status", self.to);
        match retry::retry(policy, &what, attempt) {
            Ok(()) => Ok(()),
            Err(Stop::Permanent(error)) => Err(error),
            Err(Stop::GaveUp {
                attempts,
                elapsed,
                last,
                note,
            }) => Err(SinkError::GaveUp {
                to: self.to,
                attempts,
                elapsed,
                note,
                last: Box::new(last),
            }),
        }
    }
}

/// A request that got no answer: timed out, or why not (without the URL,
/// which the message gives once).
fn request_error(url: &str, secs: u64, e: reqwest::Error) -> SinkError {
    if e.is_timeout() {
        return SinkError::Timeout {
            url: url.to_owned(),
            secs,
            source: e,
        };
    }
    SinkError::Request {
        url: url.to_owned(),
        source: e.without_url(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use qci_core::JobId;
    use qci_core::State;
    use qci_core::job_file::{CommitSha, Reason, Repository};
    use serde_json::{Value, json};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    use std::time::{Instant, SystemTime};

    /// A token file as its owner keeps it: readable by the owner only.
    fn write_token(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    pub(crate) const TOKEN: &str = "ghp_SECRETSECRETSECRET";

    /// One request as the fake GitHub saw it.
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        method: String,
        path: String,
        authorization: String,
        accept: String,
        pub(crate) body: Value,
        at: SystemTime,
    }

    /// One scripted answer; `status: None` never answers.
    #[derive(Debug, Clone)]
    struct Reply {
        status: Option<u16>,
        headers: Vec<(&'static str, String)>,
        body: String,
    }

    fn reply(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status: Some(status),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    impl Reply {
        fn header(mut self, name: &'static str, value: impl ToString) -> Self {
            self.headers.push((name, value.to_string()));
            self
        }
    }

    /// A real HTTP server on 127.0.0.1 that records requests and answers
    /// the n-th one with the n-th reply of its script, the last one repeating.
    pub(crate) struct FakeGithub {
        pub(crate) base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        _server: qci_test_http::HttpServer,
    }

    impl FakeGithub {
        pub(crate) fn start(status: Option<u16>, body: impl Into<String>) -> Self {
            Self::script(vec![Reply {
                status,
                headers: Vec::new(),
                body: body.into(),
            }])
        }

        fn script(replies: Vec<Reply>) -> Self {
            use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
            assert!(!replies.is_empty());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let record = record.clone();
                let replies = replies.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    let n = {
                        let mut seen = record.lock().unwrap();
                        seen.push(Seen {
                            method: method.to_string(),
                            path: uri.path().to_owned(),
                            authorization: header("authorization"),
                            accept: header("accept"),
                            body: serde_json::from_str(&body).unwrap_or(Value::Null),
                            at: SystemTime::now(),
                        });
                        seen.len() - 1
                    };
                    let reply = &replies[n.min(replies.len() - 1)];
                    let mut out = HeaderMap::new();
                    for (name, value) in &reply.headers {
                        out.insert(HeaderName::from_static(name), value.parse().unwrap());
                    }
                    match reply.status {
                        Some(code) => {
                            (StatusCode::from_u16(code).unwrap(), out, reply.body.clone())
                        }
                        None => std::future::pending().await,
                    }
                }
            };
            let server = qci_test_http::HttpServer::start(
                "fake-github",
                axum::Router::new().fallback(handler),
            );
            Self {
                base: server.url(),
                seen,
                _server: server,
            }
        }

        pub(crate) fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn job(sink: Sink) -> JobFile {
        JobFile {
            repository: Repository {
                url: "https://github.com/freedomofpress/securedrop-workstation".into(),
                slug: Some("freedomofpress/securedrop-workstation".into()),
            },
            commit: Some(CommitSha::parse(SHA).unwrap()),
            source: None,
            git_ref: None,
            reason: Reason::Manual,
            author: String::new(),
            message: String::new(),
            sink,
            context: "qci/qubes-4.2".into(),
            timeout_secs: 60,
        }
    }

    fn event(state: State, description: &str) -> StatusEvent {
        StatusEvent::new(&JobId::parse("J1").unwrap(), state, description)
    }

    fn github_sink(api_url: &str, timeout_secs: u64) -> Sink {
        Sink::Github {
            api_url: api_url.to_owned(),
            token_file: "token".into(),
            target_url: Some("https://ci.example/J1.log".into()),
            retry: RetrySettings {
                timeout_secs,
                retry_budget_secs: 120,
                max_attempts: 8,
            },
        }
    }

    /// A home with a token file, and a github sink pointing at `api_url`.
    pub(crate) fn github_setup(
        api_url: &str,
        timeout_secs: u64,
    ) -> (tempfile::TempDir, Paths, JobFile) {
        let home = tempfile::tempdir().unwrap();
        write_token(&home.path().join("token"), &format!("  {TOKEN}\n"));
        let paths = Paths {
            home: home.path().to_owned(),
        };
        let job = job(github_sink(api_url, timeout_secs));
        (home, paths, job)
    }

    /// Millisecond backoff, so retry tests take no real time.
    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
            budget: Duration::from_secs(3),
            max_attempts,
        }
    }

    /// Posts `x` as running with the `fast` policy.
    fn post(job: &JobFile, paths: &Paths, max_attempts: u32) -> Result<(), SinkError> {
        let event = event(State::Running, "x");
        forward_with(&event, job, paths, Some(fast(max_attempts)))
    }

    /// The error `GaveUp` wraps, after checking the attempt count.
    fn gave_up(err: &SinkError, attempts_seen: usize) -> &SinkError {
        match err {
            SinkError::GaveUp { attempts, last, .. } => {
                assert_eq!(*attempts as usize, attempts_seen, "{err}");
                last
            }
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    pub(crate) fn assert_no_token(text: &str) {
        assert!(!text.contains(TOKEN), "the token leaked: {text}");
        assert!(!text.contains("SECRET"), "part of the token leaked: {text}");
    }

    #[test]
    fn github_posts_the_commit_status() {
        let gh = FakeGithub::start(Some(201), "{}");
        let (_home, paths, job) = github_setup(&format!("{}/", gh.base), 10);

        forward(&event(State::Running, "Running make dev"), &job, &paths).unwrap();

        let seen = gh.seen();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.path,
            format!("/repos/freedomofpress/securedrop-workstation/statuses/{SHA}")
        );
        assert_eq!(req.authorization, format!("Bearer {TOKEN}"));
        assert_eq!(req.accept, "application/vnd.github+json");
        assert_eq!(
            req.body,
            json!({
                "state": "pending",
                "description": "Running make dev",
                "context": "qci/qubes-4.2",
                "target_url": "https://ci.example/J1.log",
            })
        );
    }

    #[test]
    fn github_maps_final_states() {
        let gh = FakeGithub::start(Some(201), "{}");
        let (_home, paths, job) = github_setup(&gh.base, 10);

        forward(&event(State::Success, "All steps passed"), &job, &paths).unwrap();
        forward(&event(State::Canceled, "Canceled"), &job, &paths).unwrap();

        let states: Vec<_> = gh.seen().iter().map(|s| s.body["state"].clone()).collect();
        assert_eq!(states, [json!("success"), json!("error")]);
    }

    #[test]
    fn github_honours_an_enterprise_path_prefix_and_omits_no_target_url() {
        let gh = FakeGithub::start(Some(201), "{}");
        let (_home, paths, mut job) = github_setup("", 10);
        job.sink = Sink::Github {
            api_url: format!("{}/api/v3", gh.base),
            token_file: "token".into(),
            target_url: None,
            retry: RetrySettings {
                timeout_secs: 10,
                retry_budget_secs: 120,
                max_attempts: 8,
            },
        };

        forward(&event(State::Queued, "queued"), &job, &paths).unwrap();

        let seen = gh.seen();
        assert_eq!(
            seen[0].path,
            format!("/api/v3/repos/freedomofpress/securedrop-workstation/statuses/{SHA}")
        );
        assert_eq!(
            seen[0].body,
            json!({"state": "pending", "description": "queued", "context": "qci/qubes-4.2"})
        );
    }

    #[test]
    fn github_truncates_long_descriptions_on_a_char_boundary() {
        let gh = FakeGithub::start(Some(201), "{}");
        let (_home, paths, job) = github_setup(&gh.base, 10);

        forward(&event(State::Failure, &"é".repeat(300)), &job, &paths).unwrap();

        let sent = gh.seen()[0].body["description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(sent, "é".repeat(140));
    }

    #[test]
    fn github_does_not_retry_a_422_and_names_the_code_not_the_token() {
        let gh = FakeGithub::start(Some(422), r#"{"message":"Validation Failed"}"#);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();

        assert_eq!(gh.seen().len(), 1);
        let text = err.to_string();
        assert!(
            matches!(err, SinkError::Rejected { status: 422, .. }),
            "{err:?}"
        );
        assert!(
            text.contains("HTTP 422 Unprocessable Entity") && text.contains("Validation Failed"),
            "{text}"
        );
        assert_no_token(&text);
        assert_no_token(&format!("{err:?}"));
    }

    #[test]
    fn github_does_not_retry_a_403_that_is_no_rate_limit() {
        let gh = FakeGithub::start(Some(403), r#"{"message":"Resource not accessible"}"#);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        let err = post(&job, &paths, 5).unwrap_err();

        assert!(
            matches!(err, SinkError::Rejected { status: 403, .. }),
            "{err:?}"
        );
        assert_eq!(gh.seen().len(), 1);
    }

    #[test]
    fn github_refusal_quotes_at_most_200_bytes_of_body_and_masks_the_token() {
        // The token straddles the cut: masking first leaves none of it.
        let body = format!("{}{TOKEN}{}", "x".repeat(190), "x".repeat(5000));
        let gh = FakeGithub::start(Some(400), body);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        match post(&job, &paths, 5) {
            Err(SinkError::Rejected { status, body, .. }) => {
                assert_eq!(status, 400);
                assert_eq!(body.len(), 200);
                assert_eq!(body, format!("{}***{}", "x".repeat(190), "x".repeat(7)));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn github_retries_a_502_once_with_the_same_request() {
        let gh = FakeGithub::script(vec![reply(502, "Bad Gateway"), reply(201, "{}")]);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        post(&job, &paths, 5).unwrap();

        let seen = gh.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].body, seen[1].body);
        assert_eq!(seen[0].authorization, format!("Bearer {TOKEN}"));
        assert_eq!(seen[0].authorization, seen[1].authorization);
        assert_eq!(seen[0].path, seen[1].path);
    }

    #[test]
    fn github_waits_out_a_403_with_retry_after() {
        let gh = FakeGithub::script(vec![
            reply(403, "secondary rate limit").header("retry-after", 1),
            reply(201, "{}"),
        ]);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        let start = Instant::now();
        post(&job, &paths, 5).unwrap();

        let seen = gh.seen();
        assert_eq!(seen.len(), 2);
        let waited = seen[1].at.duration_since(seen[0].at).unwrap();
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(start.elapsed() < fast(5).budget, "{:?}", start.elapsed());
    }

    #[test]
    fn github_waits_for_the_rate_limit_reset_on_a_429() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let reset = now + 1;
        let gh = FakeGithub::script(vec![
            reply(429, "rate limited")
                .header("x-ratelimit-remaining", 0)
                .header("x-ratelimit-reset", reset),
            reply(201, "{}"),
        ]);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        post(&job, &paths, 5).unwrap();

        let seen = gh.seen();
        assert_eq!(seen.len(), 2);
        let retried_at = seen[1].at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert!(
            retried_at >= Duration::from_secs(reset),
            "retried at {retried_at:?}, before the reset at {reset}s"
        );
    }

    #[test]
    fn github_gives_up_on_a_persistent_500_after_max_attempts() {
        let gh = FakeGithub::start(Some(500), "boom");
        let (_home, paths, job) = github_setup(&gh.base, 10);

        let start = Instant::now();
        let err = post(&job, &paths, 4).unwrap_err();

        assert!(start.elapsed() < fast(4).budget, "{:?}", start.elapsed());
        assert_eq!(gh.seen().len(), 4);
        let last = gave_up(&err, 4);
        assert!(
            matches!(last, SinkError::Rejected { status: 500, .. }),
            "{last:?}"
        );
        let text = err.to_string();
        let seconds = text
            .strip_prefix("GitHub status not posted after 4 attempts in ")
            .and_then(|rest| rest.split_once("s: "))
            .and_then(|(secs, _)| secs.parse::<f64>().ok());
        assert!(seconds.is_some_and(|s| s < 3.0), "{text}");
        assert!(text.ends_with(&format!("last error: {last}")), "{text}");
        assert!(
            text.contains("HTTP 500 Internal Server Error: boom"),
            "{text}"
        );
    }

    #[test]
    fn github_gives_up_on_a_persistent_503_when_the_budget_is_spent() {
        let gh = FakeGithub::start(Some(503), "down");
        let (_home, paths, job) = github_setup(&gh.base, 10);
        let policy = RetryPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(50),
            budget: Duration::from_millis(400),
            max_attempts: 1000,
        };

        let start = Instant::now();
        let err =
            forward_with(&event(State::Running, "x"), &job, &paths, Some(policy)).unwrap_err();

        // Stops once the budget is spent; the slack is for a loaded machine.
        let elapsed = start.elapsed();
        assert!(
            elapsed < policy.budget + Duration::from_secs(2),
            "{elapsed:?}"
        );
        let seen = gh.seen().len();
        assert!(seen > 1, "{seen}");
        gave_up(&err, seen);
    }

    #[test]
    fn github_gives_up_at_once_when_retry_after_exceeds_the_budget() {
        let gh = FakeGithub::script(vec![
            reply(403, "slow down").header("retry-after", 3600),
            reply(201, "{}"),
        ]);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        let start = Instant::now();
        let err = post(&job, &paths, 5).unwrap_err();

        // It never sleeps the hour it was asked to.
        assert!(start.elapsed() < Duration::from_secs(10), "{err}");
        gave_up(&err, 1);
        assert_eq!(gh.seen().len(), 1);
        let text = err.to_string();
        assert!(text.contains("asked to wait 3600.0s"), "{text}");
    }

    #[test]
    fn github_retries_a_refused_connection_then_gives_up() {
        // A port that was just free: nothing listens there any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (_home, paths, job) = github_setup(&format!("http://127.0.0.1:{port}"), 1);

        let err = post(&job, &paths, 3).unwrap_err();

        let last = gave_up(&err, 3);
        assert!(matches!(last, SinkError::Request { .. }), "{last:?}");
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[test]
    fn github_retries_a_timeout() {
        let gh = FakeGithub::start(None, "");
        let (_home, paths, job) = github_setup(&gh.base, 1);

        let start = Instant::now();
        let err = post(&job, &paths, 2).unwrap_err();

        let last = gave_up(&err, 2);
        assert!(
            matches!(last, SinkError::Timeout { secs: 1, .. }),
            "{last:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(gh.seen().len(), 2);
    }

    fn relay_job(url: &str) -> JobFile {
        job(Sink::relay(url.to_owned(), "relay-token-J1".into()))
    }

    #[test]
    fn relay_posts_the_event_as_sent_with_the_job_token() {
        let gh = FakeGithub::start(Some(204), "");
        let job = relay_job(&format!("{}/api/jobs/J1/status", gh.base));
        let paths = Paths {
            home: "/nonexistent".into(),
        };
        let sent = event(State::Running, "Running make dev");

        forward(&sent, &job, &paths).unwrap();

        let seen = gh.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].path, "/api/jobs/J1/status");
        assert_eq!(seen[0].authorization, "Bearer relay-token-J1");
        assert_eq!(seen[0].body, serde_json::to_value(&sent).unwrap());
        assert_eq!(secrets(&job, &paths), ["relay-token-J1"]);
    }

    #[test]
    fn relay_retries_a_503_but_not_a_refusal() {
        let gh = FakeGithub::script(vec![reply(503, ""), reply(204, "")]);
        let job = relay_job(&format!("{}/api/jobs/J1/status", gh.base));
        let paths = Paths {
            home: "/nonexistent".into(),
        };
        post(&job, &paths, 3).unwrap();
        assert_eq!(gh.seen().len(), 2);

        let gh = FakeGithub::start(Some(409), "job J1 has ended");
        let job = relay_job(&format!("{}/api/jobs/J1/status", gh.base));
        let err = post(&job, &paths, 3).unwrap_err();
        assert!(
            matches!(err, SinkError::Rejected { status: 409, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("job J1 has ended"), "{err}");
        assert_eq!(gh.seen().len(), 1);

        let gh = FakeGithub::start(Some(500), "");
        let job = relay_job(&format!("{}/api/jobs/J1/status", gh.base));
        let err = post(&job, &paths, 2).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("relay status not posted after 2 attempts"),
            "{err}"
        );
    }

    /// What `tracing` wrote during the tests, all tests together.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Installs one process-wide subscriber on first use. A per-thread one
    /// (`with_default`) loses events: a test on another thread hitting the
    /// same `warn!` first makes tracing cache that nobody listens.
    fn logs() -> String {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        let logs = LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            logs
        });
        String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned()
    }

    #[test]
    fn github_token_is_in_no_error_and_no_log() {
        logs();
        // A server that echoes the token back must not make it leak either.
        let gh = FakeGithub::start(Some(500), format!("bad credentials Bearer {TOKEN}"));
        let (_home, paths, job) = github_setup(&gh.base, 10);

        let err = post(&job, &paths, 3).unwrap_err();

        assert_eq!(gh.seen()[0].authorization, format!("Bearer {TOKEN}"));
        let all = logs();
        // The reason names the URL, so the server's address picks our lines.
        let ours: Vec<_> = all.lines().filter(|l| l.contains(&gh.base)).collect();
        assert_eq!(ours.len(), 2, "{all}");
        for line in &ours {
            assert!(line.contains("WARN") && line.contains("retrying"), "{line}");
            assert!(
                line.contains("delay_ms=") && line.contains("HTTP 500"),
                "{line}"
            );
        }
        assert!(ours[0].contains("attempt=1") && ours[1].contains("attempt=2"));
        assert_no_token(&all);
        assert_no_token(&err.to_string());
        assert_no_token(&format!("{err:?}"));
        assert!(err.to_string().contains("Bearer ***"), "{err}");
    }

    #[test]
    fn github_takes_the_retry_budget_from_the_job_file() {
        let gh = FakeGithub::start(Some(502), "");
        let (_home, paths, mut job) = github_setup(&gh.base, 10);
        let sink = |retry_budget_secs, max_attempts| Sink::Github {
            api_url: gh.base.clone(),
            token_file: "token".into(),
            target_url: None,
            retry: RetrySettings {
                timeout_secs: 10,
                retry_budget_secs,
                max_attempts,
            },
        };

        // Two attempts, one real backoff of at most the 1 s base.
        job.sink = sink(120, 2);
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        gave_up(&err, 2);
        assert_eq!(gh.seen().len(), 2);

        // No budget: one attempt, no wait.
        job.sink = sink(0, 8);
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        gave_up(&err, 1);
        assert_eq!(gh.seen().len(), 3);
    }

    #[test]
    fn github_needs_a_token_file_slug_and_commit() {
        let (home, paths, job) = github_setup("http://127.0.0.1:9", 1);

        fs::remove_file(home.path().join("token")).unwrap();
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        assert!(
            matches!(
                err,
                SinkError::Token(qci_core::secret::SecretError::Read { .. })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("token"), "{err}");

        write_token(&home.path().join("token"), " \n");
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        assert!(
            matches!(
                err,
                SinkError::Token(qci_core::secret::SecretError::Empty { .. })
            ),
            "{err:?}"
        );

        // Readable by others: refused, saying how to fix it.
        fs::write(home.path().join("token"), TOKEN).unwrap();
        fs::set_permissions(home.path().join("token"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        write_token(&home.path().join("token"), TOKEN);
        let mut no_slug = job.clone();
        no_slug.repository.slug = None;
        let err = forward(&event(State::Running, "x"), &no_slug, &paths).unwrap_err();
        assert!(matches!(err, SinkError::NoSlug), "{err:?}");

        let mut bad_slug = job.clone();
        bad_slug.repository.slug = Some("../../user".into());
        let err = forward(&event(State::Running, "x"), &bad_slug, &paths).unwrap_err();
        assert!(matches!(err, SinkError::BadSlug(_)), "{err:?}");

        let mut no_commit = job.clone();
        no_commit.commit = None;
        let err = forward(&event(State::Running, "x"), &no_commit, &paths).unwrap_err();
        assert!(matches!(err, SinkError::NoCommit), "{err:?}");
    }

    #[test]
    fn file_sink_appends_one_json_line_per_event() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths {
            home: home.path().to_owned(),
        };
        let job = job(Sink::File {
            path: "status/J1.jsonl".into(),
        });
        let first = event(State::Running, "Running make dev");
        let second = event(State::Success, "All steps passed");

        forward(&first, &job, &paths).unwrap();
        forward(&second, &job, &paths).unwrap();

        let text = fs::read_to_string(home.path().join("status/J1.jsonl")).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert!(text.ends_with('\n'));
        assert_eq!(lines.len(), 2);
        let job_id = JobId::parse("J1").unwrap();
        assert_eq!(
            StatusEvent::parse_for(lines[0].as_bytes(), &job_id).unwrap(),
            first
        );
        assert_eq!(
            StatusEvent::parse_for(lines[1].as_bytes(), &job_id).unwrap(),
            second
        );
    }
}
