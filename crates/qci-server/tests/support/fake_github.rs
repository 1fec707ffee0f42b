//! A stand-in for GitHub's statuses API: a real HTTP server on 127.0.0.1
//! that checks each request as GitHub would (path, token, media type, the
//! body's JSON schema) and records the statuses it accepted. It can be
//! told to fail the next requests with a 5xx, to exercise retries.
//! Shared by qci-server's tests and the end-to-end tests (`#[path]`).

#![allow(dead_code)]

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;
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
    fail_next: AtomicUsize,
    requests: AtomicUsize,
    /// Called with each accepted status before GitHub answers.
    on_post: Mutex<Option<Hook>>,
}

pub struct FakeGithub {
    pub base: String,
    pub token: String,
    shared: Arc<Shared>,
}

/// What GitHub answers to a status it refuses: 422 with a reason.
fn refuse(shared: &Shared, code: StatusCode, why: String) -> (StatusCode, String) {
    shared.refused.lock().unwrap().push(why.clone());
    (code, serde_json::json!({"message": why}).to_string())
}

fn check(
    shared: &Shared,
    token: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Result<Posted, (StatusCode, String)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("authorization") != format!("Bearer {token}") {
        return Err(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "Bad credentials".into(),
        ));
    }
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let sha_ok = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
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
    if !header("accept").contains("application/vnd.github") || header("user-agent").is_empty() {
        return Err(refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "missing Accept or User-Agent".into(),
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
        let (tx, rx) = std::sync::mpsc::channel();
        let state = shared.clone();
        let expected = token.to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                    let shared = state.clone();
                    let token = expected.clone();
                    async move {
                        shared.requests.fetch_add(1, Ordering::SeqCst);
                        let failing = shared
                            .fail_next
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if failing {
                            return (StatusCode::BAD_GATEWAY, "Bad Gateway".to_owned());
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
                let app = axum::Router::new().fallback(handler);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        Self {
            base: format!("http://{addr}"),
            token: token.to_owned(),
            shared,
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

    pub fn refused(&self) -> Vec<String> {
        self.shared.refused.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answers the next `n` requests with 502 Bad Gateway.
    pub fn fail_next(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
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
