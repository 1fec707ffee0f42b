//! A stand-in for GitHub's statuses and contents APIs: a real HTTP server on
//! 127.0.0.1 that checks each request as GitHub would (path, token, media
//! type, the body's JSON schema) and records the statuses it accepted. It
//! serves the `.qci.toml` files it is given, per repository and commit, the
//! way the contents API does (base64 in a JSON object; 404 for no file).
//! It can be told to fail the next requests with a 5xx, to exercise
//! retries. Shared by qci-server's tests and the end-to-end tests (`#[path]`).

#![expect(dead_code, reason = "each test binary uses part of the shared support")]

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One commit status GitHub accepted.
#[derive(Debug, Clone)]
pub struct Posted {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub description: String,
    pub context: String,
    pub target_url: String,
    pub at: Instant,
}

type Hook = Box<dyn Fn(&Posted) + Send>;

#[derive(Default)]
struct Shared {
    posted: Mutex<Vec<Posted>>,
    refused: Mutex<Vec<String>>,
    /// Status posts, then `.qci.toml` reads, still to answer 502.
    fail_next: AtomicUsize,
    fail_next_reads: AtomicUsize,
    /// While set, `.qci.toml` reads wait (GitHub slow or away).
    hold_reads: std::sync::atomic::AtomicBool,
    requests: AtomicUsize,
    /// Called with each accepted status before GitHub answers.
    on_post: Mutex<Option<Hook>>,
    /// `.qci.toml` per `(OWNER/REPO, SHA)`.
    files: Mutex<HashMap<(String, String), String>>,
    /// Each contents request that passed the checks: `(OWNER/REPO, SHA)`.
    reads: Mutex<Vec<(String, String)>>,
}

pub struct FakeGithub {
    pub base: String,
    pub token: String,
    shared: Arc<Shared>,
    _server: qci_test_http::HttpServer,
}

/// What GitHub answers to a status it refuses: 422 with a reason.
fn refuse(shared: &Shared, code: StatusCode, why: String) -> (StatusCode, String) {
    shared.refused.lock().unwrap().push(why.clone());
    (code, serde_json::json!({"message": why}).to_string())
}

fn sha_ok(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What every API call needs: the token, GitHub's media type, a User-Agent.
fn check_headers(
    shared: &Shared,
    token: &str,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, String)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("authorization") != format!("Bearer {token}") {
        return Err(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "Bad credentials".into(),
        ));
    }
    if !header("accept").contains("application/vnd.github") || header("user-agent").is_empty() {
        return Err(refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "missing Accept or User-Agent".into(),
        ));
    }
    Ok(())
}

/// `GET /repos/OWNER/REPO/contents/.qci.toml?ref=SHA`, as the contents API
/// answers it: the file as base64 in a JSON object, or 404.
fn contents(shared: &Shared, token: &str, uri: &Uri, headers: &HeaderMap) -> (StatusCode, String) {
    if let Err(refused) = check_headers(shared, token, headers) {
        return refused;
    }
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let sha = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ref="))
        .unwrap_or("");
    let repo = match parts.as_slice() {
        ["repos", owner, repo, "contents", ".qci.toml"] if sha_ok(sha) => format!("{owner}/{repo}"),
        _ => {
            return refuse(
                shared,
                StatusCode::NOT_FOUND,
                format!("Not Found: GET {uri}"),
            );
        }
    };
    shared
        .reads
        .lock()
        .unwrap()
        .push((repo.clone(), sha.to_owned()));
    let file = shared
        .files
        .lock()
        .unwrap()
        .get(&(repo, sha.to_owned()))
        .cloned();
    let Some(text) = file else {
        let reply = serde_json::json!({
            "message": "Not Found",
            "documentation_url": "https://docs.github.com/rest/repos/contents#get-repository-content",
            "status": "404",
        });
        return (StatusCode::NOT_FOUND, reply.to_string());
    };
    // GitHub breaks the base64 into lines of 60.
    let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let reply = serde_json::json!({
        "type": "file", "encoding": "base64", "size": text.len(),
        "name": ".qci.toml", "path": ".qci.toml",
        "content": lines.join("\n") + "\n",
        "sha": "0123456789abcdef0123456789abcdef01234567",
    });
    (StatusCode::OK, reply.to_string())
}

fn check(
    shared: &Shared,
    token: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Result<Posted, (StatusCode, String)> {
    check_headers(shared, token, headers)?;
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let (repo, sha) = match parts.as_slice() {
        ["repos", owner, repo, "statuses", sha] if sha_ok(sha) => {
            (format!("{owner}/{repo}"), sha.to_string())
        }
        _ => {
            return Err(refuse(
                shared,
                StatusCode::NOT_FOUND,
                format!("Not Found: {}", uri.path()),
            ));
        }
    };
    if method != Method::POST {
        return Err(refuse(
            shared,
            StatusCode::NOT_FOUND,
            format!("{method} not allowed"),
        ));
    }
    let value: Value = serde_json::from_str(body).map_err(|e| {
        refuse(
            shared,
            StatusCode::BAD_REQUEST,
            format!("Problems parsing JSON: {e}"),
        )
    })?;
    let obj = value.as_object().ok_or_else(|| {
        refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "body is not an object".into(),
        )
    })?;
    // The statuses API schema: state required; the rest optional strings.
    for key in obj.keys() {
        if !["state", "target_url", "description", "context"].contains(&key.as_str()) {
            return Err(refuse(
                shared,
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("unknown field {key}"),
            ));
        }
    }
    let text = |k: &str| -> Result<String, (StatusCode, String)> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(refuse(
                shared,
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{k} is not a string"),
            )),
        }
    };
    let state = text("state")?;
    if !["error", "failure", "pending", "success"].contains(&state.as_str()) {
        return Err(refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("state {state:?} is not valid"),
        ));
    }
    let description = text("description")?;
    if description.chars().count() > 140 {
        return Err(refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "description is too long (maximum is 140 characters)".into(),
        ));
    }
    let target_url = text("target_url")?;
    if !target_url.is_empty() && !target_url.starts_with("http") {
        return Err(refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "target_url is not a URL".into(),
        ));
    }
    Ok(Posted {
        repo,
        sha,
        state,
        description,
        context: text("context")?,
        target_url,
        at: Instant::now(),
    })
}

impl FakeGithub {
    pub fn start(token: &str) -> Self {
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let expected = token.to_owned();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
            let shared = state.clone();
            let token = expected.clone();
            async move {
                shared.requests.fetch_add(1, Ordering::SeqCst);
                let read = method == Method::GET;
                while read && shared.hold_reads.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let counter = if read {
                    &shared.fail_next_reads
                } else {
                    &shared.fail_next
                };
                let failing = counter
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    return (StatusCode::BAD_GATEWAY, "Bad Gateway".to_owned());
                }
                if read {
                    return contents(&shared, &token, &uri, &headers);
                }
                match check(&shared, &token, &method, &uri, &headers, &body) {
                    Ok(posted) => {
                        if let Some(hook) = shared.on_post.lock().unwrap().as_ref() {
                            // The hook may make blocking requests.
                            tokio::task::block_in_place(|| hook(&posted));
                        }
                        shared.posted.lock().unwrap().push(posted.clone());
                        let reply = serde_json::json!({
                            "id": 1, "state": posted.state, "description": posted.description,
                            "target_url": posted.target_url, "context": posted.context,
                        });
                        (StatusCode::CREATED, reply.to_string())
                    }
                    Err(refused) => refused,
                }
            }
        };
        // A hook blocks in place, which needs a multi-thread runtime.
        let server = qci_test_http::Listener::bind()
            .multi_thread(1)
            .serve("fake-github", axum::Router::new().fallback(handler));
        Self {
            base: server.url(),
            token: token.to_owned(),
            shared,
            _server: server,
        }
    }

    pub fn posted(&self) -> Vec<Posted> {
        self.shared.posted.lock().unwrap().clone()
    }

    /// The statuses of one context, in the order GitHub got them: `(state, description)`.
    pub fn states(&self, context: &str) -> Vec<(String, String)> {
        self.posted()
            .into_iter()
            .filter(|p| p.context == context)
            .map(|p| (p.state, p.description))
            .collect()
    }

    /// Serves `text` as `.qci.toml` of `repo` at `sha`.
    pub fn pipeline(&self, repo: &str, sha: &str, text: &str) {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert((repo.to_owned(), sha.to_owned()), text.to_owned());
    }

    /// The `.qci.toml` reads that passed the checks: `(OWNER/REPO, SHA)`.
    pub fn reads(&self) -> Vec<(String, String)> {
        self.shared.reads.lock().unwrap().clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.shared.refused.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answers the next `n` status posts with 502 Bad Gateway.
    pub fn fail_next(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answers the next `n` `.qci.toml` reads with 502 Bad Gateway.
    pub fn fail_next_reads(&self, n: usize) {
        self.shared.fail_next_reads.store(n, Ordering::SeqCst);
    }

    /// Holds `.qci.toml` reads unanswered until called with `false`.
    pub fn hold_reads(&self, hold: bool) {
        self.shared.hold_reads.store(hold, Ordering::SeqCst);
    }

    pub fn on_post(&self, hook: impl Fn(&Posted) + Send + 'static) {
        *self.shared.on_post.lock().unwrap() = Some(Box::new(hook));
    }

    /// Waits until `ready` holds for the statuses posted so far.
    pub fn wait_for(&self, what: &str, timeout: Duration, ready: impl Fn(&[Posted]) -> bool) {
        let end = Instant::now() + timeout;
        loop {
            let posted = self.posted();
            if ready(&posted) {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; GitHub got {posted:#?}, refused {:?}",
                self.refused()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
