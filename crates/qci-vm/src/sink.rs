//! Forwards status events to the job's sink: the dev VM is where dom0's
//! status reports leave the Qubes machine.

use crate::paths::Paths;
use qci_core::StatusEvent;
use qci_core::job_file::{JobFile, Sink};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, USER_AGENT};
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// GitHub cuts commit status descriptions at this many characters.
const GITHUB_DESCRIPTION_CHARS: usize = 140;
/// How much of a refusal's body goes into the error: enough to see why.
const ERROR_BODY_BYTES: u64 = 200;

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
    #[error("cannot read the GitHub token file {path}: {source}")]
    TokenRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the GitHub token file {0} is empty")]
    TokenEmpty(PathBuf),
    #[error("the GitHub token in {0} is not usable in an HTTP header")]
    TokenInvalid(PathBuf),
    #[error("cannot set up the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("no answer from {url} within {secs}s")]
    Timeout { url: String, secs: u64 },
    #[error("cannot post the status to {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url} refused the status with HTTP {status}: {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
}

/// Delivers `event` to `job.sink`. One attempt: the caller decides on retries.
pub fn forward(event: &StatusEvent, job: &JobFile, paths: &Paths) -> Result<(), SinkError> {
    match &job.sink {
        Sink::File { path } => append_line(&paths.resolve(path), &event.to_json()),
        Sink::Github {
            api_url,
            token_file,
            target_url,
            timeout_secs,
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
            post_github(api_url, job, &token, &body, *timeout_secs)
        }
    }
}

/// One `write_all` on an `O_APPEND` file keeps concurrent writers' lines
/// whole; the fsyncs make a reported status survive a crash.
fn append_line(path: &Path, json: &str) -> Result<(), SinkError> {
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
    file.sync_all().map_err(err)?;
    // The file may be new: its directory entry must reach the disk too.
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
        Sink::File { .. } => Vec::new(),
    }
}

/// A token, as a header value marked sensitive so it never shows in debug output.
struct Token {
    header: HeaderValue,
    raw: String,
}

fn read_token(path: &Path) -> Result<Token, SinkError> {
    let text = fs::read_to_string(path).map_err(|source| SinkError::TokenRead {
        path: path.to_owned(),
        source,
    })?;
    let raw = text.trim();
    if raw.is_empty() {
        return Err(SinkError::TokenEmpty(path.to_owned()));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {raw}"))
        .map_err(|_| SinkError::TokenInvalid(path.to_owned()))?;
    header.set_sensitive(true);
    Ok(Token {
        header,
        raw: raw.to_owned(),
    })
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

    let timeout = Duration::from_secs(timeout_secs);
    // No redirects: the token must only ever go to the configured API.
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(SinkError::Client)?;
    let reply = client
        .post(&url)
        .header(AUTHORIZATION, token.header.clone())
        .header(ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .header(USER_AGENT, "qci")
        .json(body)
        .send()
        .map_err(|e| request_error(&url, timeout_secs, e))?;

    let status = reply.status();
    if status.is_success() {
        return Ok(());
    }
    let mut head = Vec::new();
    // The body only explains the refusal; failing to read it changes nothing.
    let _ = reply.take(ERROR_BODY_BYTES).read_to_end(&mut head);
    let body = String::from_utf8_lossy(&head).replace(&token.raw, "***");
    Err(SinkError::Rejected {
        url,
        status: status.as_u16(),
        body: body.trim().to_owned(),
    })
}

/// The slug becomes part of the URL path, so it must be exactly two plain names.
fn valid_slug(slug: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    matches!(slug.split_once('/'), Some((owner, repo)) if plain(owner) && plain(repo))
}

/// reqwest's own message hides the cause (refused, DNS, TLS) in its source chain.
fn request_error(url: &str, secs: u64, e: reqwest::Error) -> SinkError {
    if e.is_timeout() {
        return SinkError::Timeout {
            url: url.to_owned(),
            secs,
        };
    }
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        reason.push_str(": ");
        reason.push_str(&c.to_string());
        cause = c.source();
    }
    SinkError::Request {
        url: url.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qci_core::JobId;
    use qci_core::State;
    use qci_core::job_file::{CommitSha, Reason, Repository};
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const TOKEN: &str = "ghp_SECRETSECRETSECRET";

    /// One request as the fake GitHub saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        authorization: String,
        accept: String,
        body: Value,
    }

    /// A real HTTP server on 127.0.0.1 that records requests and answers
    /// with `status`, or never answers when `status` is `None`.
    struct FakeGithub {
        base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl FakeGithub {
        fn start(status: Option<u16>, reply: impl Into<String>) -> Self {
            let reply: String = reply.into();
            use axum::http::{HeaderMap, Method, StatusCode, Uri};
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let handler =
                        move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                            let record = record.clone();
                            let reply = reply.clone();
                            async move {
                                let header = |name: &str| {
                                    headers
                                        .get(name)
                                        .map(|v| v.to_str().unwrap().to_owned())
                                        .unwrap_or_default()
                                };
                                record.lock().unwrap().push(Seen {
                                    method: method.to_string(),
                                    path: uri.path().to_owned(),
                                    authorization: header("authorization"),
                                    accept: header("accept"),
                                    body: serde_json::from_str(&body).unwrap_or(Value::Null),
                                });
                                match status {
                                    Some(code) => (StatusCode::from_u16(code).unwrap(), reply),
                                    None => std::future::pending().await,
                                }
                            }
                        };
                    let app = axum::Router::new().fallback(handler);
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    axum::serve(listener, app).await.unwrap();
                });
            });
            let addr = rx.recv().unwrap();
            Self {
                base: format!("http://{addr}"),
                seen,
            }
        }

        fn seen(&self) -> Vec<Seen> {
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

    /// A home with a token file, and a github sink pointing at `api_url`.
    fn github_setup(api_url: &str, timeout_secs: u64) -> (tempfile::TempDir, Paths, JobFile) {
        let home = tempfile::tempdir().unwrap();
        fs::write(home.path().join("token"), format!("  {TOKEN}\n")).unwrap();
        let paths = Paths {
            home: home.path().to_owned(),
        };
        let job = job(Sink::Github {
            api_url: api_url.to_owned(),
            token_file: "token".into(),
            target_url: Some("https://ci.example/J1.log".into()),
            timeout_secs,
        });
        (home, paths, job)
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
            timeout_secs: 10,
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
    fn github_refusal_names_the_code_and_not_the_token() {
        let gh = FakeGithub::start(Some(422), r#"{"message":"Validation Failed"}"#);
        let (_home, paths, job) = github_setup(&gh.base, 10);

        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();

        let text = err.to_string();
        assert!(
            matches!(err, SinkError::Rejected { status: 422, .. }),
            "{err:?}"
        );
        assert!(
            text.contains("422") && text.contains("Validation Failed"),
            "{text}"
        );
        assert!(!text.contains(TOKEN) && !format!("{err:?}").contains(TOKEN));
    }

    #[test]
    fn github_refusal_quotes_at_most_200_bytes_of_body() {
        let gh = FakeGithub::start(Some(500), "x".repeat(5000));
        let (_home, paths, job) = github_setup(&gh.base, 10);

        match forward(&event(State::Running, "x"), &job, &paths) {
            Err(SinkError::Rejected { status, body, .. }) => {
                assert_eq!(status, 500);
                assert_eq!(body.len(), 200);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn github_times_out_when_the_server_never_answers() {
        let gh = FakeGithub::start(None, "");
        let (_home, paths, job) = github_setup(&gh.base, 1);

        let start = std::time::Instant::now();
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();

        assert!(matches!(err, SinkError::Timeout { secs: 1, .. }), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(gh.seen().len(), 1);
    }

    #[test]
    fn github_needs_a_token_file_slug_and_commit() {
        let (home, paths, job) = github_setup("http://127.0.0.1:9", 1);

        fs::remove_file(home.path().join("token")).unwrap();
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        assert!(matches!(err, SinkError::TokenRead { .. }), "{err:?}");
        assert!(err.to_string().contains("token"), "{err}");

        fs::write(home.path().join("token"), " \n").unwrap();
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        assert!(matches!(err, SinkError::TokenEmpty(_)), "{err:?}");

        fs::write(home.path().join("token"), TOKEN).unwrap();
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

        // Nothing listens on the discard port: the cause must show.
        let err = forward(&event(State::Running, "x"), &job, &paths).unwrap_err();
        assert!(matches!(err, SinkError::Request { .. }), "{err:?}");
        assert!(err.to_string().contains("refused"), "{err}");
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
