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
use std::time::{Duration, Instant, SystemTime};

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
    /// Check runs: every request taken, and each run's repository.
    check_runs: Mutex<CheckRuns>,
    /// Status posts, then `.qci.toml` reads, still to answer 502.
    fail_next: AtomicUsize,
    fail_next_reads: AtomicUsize,
    /// While set, `.qci.toml` reads wait (GitHub slow or away).
    hold_reads: std::sync::atomic::AtomicBool,
    requests: AtomicUsize,
    /// Every request, as `METHOD PATH` (no query), in the order it came.
    seen: Mutex<Vec<String>>,
    /// The personal token every call must carry (token mode).
    token: String,
    /// App mode: calls carry installation tokens this fake issued.
    app: Option<AppAuth>,
    /// Where webhooks go, every delivery made, and the guids asked for again.
    hook: Mutex<Option<HookTarget>>,
    deliveries: Mutex<Vec<Delivery>>,
    redelivered: Mutex<Vec<String>>,
    /// The most deliveries listed on one page.
    page_size: AtomicUsize,
    /// This fake's own URL, for the absolute links GitHub gives.
    base: String,
    /// Called with each accepted status before GitHub answers.
    on_post: Mutex<Option<Hook>>,
    /// `.qci.toml` per `(OWNER/REPO, SHA)`.
    files: Mutex<HashMap<(String, String), String>>,
    /// Each contents request that passed the checks: `(OWNER/REPO, SHA)`.
    reads: Mutex<Vec<(String, String)>>,
    /// GitHub Actions: queued jobs, the runners registered, what they did.
    actions: Mutex<FakeActions>,
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

/// What GitHub knows of the App in App mode: its id and public key, the
/// installation tokens it issued (each with its expiry, as announced, and
/// its installation), and how long a new one lives.
pub struct AppAuth {
    pub app_id: u64,
    public_key: jsonwebtoken::DecodingKey,
    token_life: Mutex<Duration>,
    issued: Mutex<HashMap<String, SystemTime>>,
    exchanges: AtomicUsize,
    /// Calls made with an installation token that had expired.
    expired_uses: AtomicUsize,
    /// JWT-authenticated calls (`/app/...`) that passed the checks.
    jwt_calls: AtomicUsize,
}

/// A new App private key (PKCS#1, as GitHub hands them out; mode 0600) and
/// its public half, in `dir`: no key is committed.
pub fn app_key(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let private = dir.join("app.pem");
    let public = dir.join("app.pub.pem");
    for args in [
        vec![
            "genrsa".as_ref(),
            "-traditional".as_ref(),
            "-out".as_ref(),
            private.as_os_str(),
            "2048".as_ref(),
        ],
        vec![
            "rsa".as_ref(),
            "-in".as_ref(),
            private.as_os_str(),
            "-pubout".as_ref(),
            "-out".as_ref(),
            public.as_os_str(),
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    (private, public)
}

/// The fake's GitHub App, in App mode.
pub const APP_ID: u64 = 12345;

/// The one installation the fake App has: on every repository.
pub const INSTALLATION: u64 = 42;

#[derive(serde::Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
}

/// The credential after `Bearer `, with GitHub's media type and a User-Agent.
fn bearer<'h>(shared: &Shared, headers: &'h HeaderMap) -> Result<&'h str, (StatusCode, String)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !header("accept").contains("application/vnd.github") || header("user-agent").is_empty() {
        return Err(refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "missing Accept or User-Agent".into(),
        ));
    }
    header_bearer(headers)
        .ok_or_else(|| refuse(shared, StatusCode::UNAUTHORIZED, "Bad credentials".into()))
}

fn header_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// What every repository call needs: the personal token (token mode) or a
/// live installation token (App mode), GitHub's media type, a User-Agent.
fn check_headers(shared: &Shared, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let credential = bearer(shared, headers)?;
    let Some(app) = &shared.app else {
        if credential != shared.token {
            return Err(refuse(
                shared,
                StatusCode::UNAUTHORIZED,
                "Bad credentials".into(),
            ));
        }
        return Ok(());
    };
    let expires = app.issued.lock().unwrap().get(credential).copied();
    match expires {
        None => Err(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "Bad credentials".into(),
        )),
        Some(at) if SystemTime::now() >= at => {
            app.expired_uses.fetch_add(1, Ordering::SeqCst);
            Err(refuse(
                shared,
                StatusCode::UNAUTHORIZED,
                "expired installation token".into(),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// What GitHub checks of an App's JWT: RS256 by the App's key, `iss` the
/// App's id, `exp` not past and at most 10 minutes after `iat`, `iat` not
/// in the future. Refused (401) in token mode: there is no App.
fn check_jwt(shared: &Shared, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let jwt = bearer(shared, headers)?;
    let Some(app) = &shared.app else {
        return Err(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded".into(),
        ));
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[app.app_id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    // Checked below, to the second.
    validation.validate_exp = false;
    let claims = match jsonwebtoken::decode::<Claims>(jwt, &app.public_key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return Err(refuse(
                shared,
                StatusCode::UNAUTHORIZED,
                format!("bad JWT: {:?}", e.kind()),
            ));
        }
    };
    let now = unix(SystemTime::now());
    if claims.exp <= now {
        return Err(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "expired JWT".into(),
        ));
    }
    if claims.iat > now || claims.exp.saturating_sub(claims.iat) > 600 {
        return Err(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "iat in the future or exp too far".into(),
        ));
    }
    app.jwt_calls.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// `POST /app/installations/ID/access_tokens`: a new token, announced to
/// the second and held to what was announced.
fn access_token(shared: &Shared, id: &str, headers: &HeaderMap) -> (StatusCode, String) {
    if let Err(refused) = check_jwt(shared, headers) {
        return refused;
    }
    let Some(app) = &shared.app else {
        unreachable!("check_jwt refuses without an App")
    };
    if id != INSTALLATION.to_string() {
        return refuse(shared, StatusCode::NOT_FOUND, "Not Found".into());
    }
    let (token, expires_at) = issue(app);
    let body = serde_json::json!({
        "token": token, "expires_at": expires_at,
        "permissions": {"checks": "write", "contents": "read", "pull_requests": "read"},
        "repository_selection": "all",
    });
    (StatusCode::CREATED, body.to_string())
}

/// A new installation token and its expiry as announced (to the second).
fn issue(app: &AppAuth) -> (String, String) {
    let n = app.exchanges.fetch_add(1, Ordering::SeqCst);
    let token = format!("ghs_installation{INSTALLATION}token{n}");
    let expires = SystemTime::now() + *app.token_life.lock().unwrap();
    let expires_at = humantime::format_rfc3339_seconds(expires).to_string();
    let expires = humantime::parse_rfc3339(&expires_at).unwrap();
    app.issued.lock().unwrap().insert(token.clone(), expires);
    (token, expires_at)
}

/// `GET /repos/OWNER/REPO/contents/.qci.toml?ref=SHA`, as the contents API
/// answers it: the file as base64 in a JSON object, or 404.
fn contents(shared: &Shared, uri: &Uri, headers: &HeaderMap) -> (StatusCode, String) {
    if let Err(refused) = check_headers(shared, headers) {
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
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Result<Posted, (StatusCode, String)> {
    check_headers(shared, headers)?;
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

/// Answers 502 if `counter` still asks for failures (and counts one down).
fn failing(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

const BAD_GATEWAY: (StatusCode, &str) = (StatusCode::BAD_GATEWAY, "Bad Gateway");

/// Every request, by its method and path, to the API it is for.
async fn route(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared
        .seen
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let answer = match (&method, path.as_slice()) {
        (&Method::GET, ["repos", _, _, "contents", ..]) => {
            while shared.hold_reads.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if failing(&shared.fail_next_reads) {
                return (BAD_GATEWAY.0, BAD_GATEWAY.1).into_response();
            }
            contents(&shared, &uri, &headers)
        }
        (_, ["repos", _, _, "statuses", ..]) => {
            if failing(&shared.fail_next) {
                return (BAD_GATEWAY.0, BAD_GATEWAY.1).into_response();
            }
            statuses(&shared, &method, &uri, &headers, &body)
        }
        (&Method::POST, ["app", "installations", id, "access_tokens"]) => {
            access_token(&shared, id, &headers)
        }
        (&Method::GET, ["repos", _, _, "installation"] | ["orgs", _, "installation"]) => {
            match check_jwt(&shared, &headers) {
                Ok(()) => {
                    let app_id = shared.app.as_ref().map_or(0, |a| a.app_id);
                    let body = serde_json::json!({"id": INSTALLATION, "app_id": app_id});
                    (StatusCode::OK, body.to_string())
                }
                Err(refused) => refused,
            }
        }
        // Check runs.
        (_, ["repos", owner, repo, "check-runs", rest @ ..]) => {
            let repo = format!("{owner}/{repo}");
            check_runs(&shared, &method, &repo, rest, &headers, &body)
        }
        // Hook deliveries and their redelivery: the App's (JWT), or a
        // repository's (its one hook, id 1).
        (&Method::GET, ["app", "hook", "deliveries"]) => {
            return match check_jwt(&shared, &headers) {
                Ok(()) => deliveries_page(&shared, &uri),
                Err(refused) => refused.into_response(),
            };
        }
        (&Method::GET, ["repos", _, _, "hooks", "1", "deliveries"]) => {
            return match check_headers(&shared, &headers) {
                Ok(()) => deliveries_page(&shared, &uri),
                Err(refused) => refused.into_response(),
            };
        }
        (&Method::POST, ["app", "hook", "deliveries", id, "attempts"]) => {
            match check_jwt(&shared, &headers) {
                Ok(()) => redeliver(&shared, id),
                Err(refused) => refused,
            }
        }
        (&Method::POST, ["repos", _, _, "hooks", "1", "deliveries", id, "attempts"]) => {
            match check_headers(&shared, &headers) {
                Ok(()) => redeliver(&shared, id),
                Err(refused) => refused,
            }
        }
        (&Method::GET, ["repos", _, _, "hooks"]) => match check_headers(&shared, &headers) {
            Ok(()) => {
                let url = shared.hook.lock().unwrap().as_ref().map(|h| h.url.clone());
                let hooks = serde_json::json!([{
                    "type": "Repository", "id": 1, "name": "web", "active": true,
                    "events": ["push", "pull_request"],
                    "config": {"content_type": "json", "insecure_ssl": "0", "url": url},
                }]);
                (StatusCode::OK, hooks.to_string())
            }
            Err(refused) => refused,
        },
        // Collaborators' permissions, pull requests, reactions.
        (&Method::GET, ["repos", _, _, "collaborators", _, "permission"])
            if failing(&people(&shared).fail_permissions) =>
        {
            (BAD_GATEWAY.0, BAD_GATEWAY.1.into())
        }
        (&Method::GET, ["repos", owner, repo, "collaborators", user, "permission"]) => {
            collaborator_permission(&shared, &headers, &format!("{owner}/{repo}"), user)
        }
        (&Method::GET, ["repos", owner, repo, "pulls", number]) => {
            pull_request(&shared, &headers, &format!("{owner}/{repo}"), number)
        }
        (&Method::POST, ["repos", owner, repo, "issues", "comments", id, "reactions"]) => {
            reaction(&shared, &headers, &format!("{owner}/{repo}"), id, &body)
        }
        // GitHub Actions: just-in-time runners, and the stand-in runner's
        // side of the runner protocol (`/_fake/runner/...`).
        (
            &Method::POST,
            [
                "repos",
                owner,
                repo,
                "actions",
                "runners",
                "generate-jitconfig",
            ],
        ) => generate_jitconfig(&shared, &headers, &format!("{owner}/{repo}"), &body),
        // A job's status, as `GET /repos/O/R/actions/jobs/ID` documents it.
        (&Method::GET, ["repos", owner, repo, "actions", "jobs", id]) => {
            match check_headers(&shared, &headers) {
                Ok(()) => actions_job_status(&shared, &format!("{owner}/{repo}"), id),
                Err(refused) => refused,
            }
        }
        // An organization's runners take any of its repositories' jobs.
        (&Method::POST, ["orgs", org, "actions", "runners", "generate-jitconfig"]) => {
            generate_jitconfig(&shared, &headers, org, &body)
        }
        (
            &Method::DELETE,
            ["repos", _, _, "actions", "runners", id] | ["orgs", _, "actions", "runners", id],
        ) => match check_headers(&shared, &headers) {
            Ok(()) => delete_runner(&shared, &path, id),
            Err(refused) => refused,
        },
        (&Method::GET, ["_fake", "runner", "jobs"]) => runner_takes_job(&shared, &uri),
        (&Method::POST, ["_fake", "runner", "result"]) => runner_reports(&shared, &body),
        _ => refuse(
            &shared,
            StatusCode::NOT_FOUND,
            format!("Not Found: {method} {}", uri.path()),
        ),
    };
    answer.into_response()
}

/// Where the fake delivers webhooks, signed with the webhook secret.
struct HookTarget {
    url: String,
    secret: String,
}

/// One delivery the fake made (or tried): what the deliveries API lists.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub body: Vec<u8>,
    /// What qci answered; 0 when no connection could be made.
    pub status_code: u16,
    pub redelivery: bool,
    pub delivered_at: SystemTime,
}

/// Makes one delivery as GitHub does: signed, with its event and guid;
/// recorded whatever the answer, with GitHub's 10 s timeout.
fn deliver(shared: &Shared, event: &str, guid: &str, body: &[u8], redelivery: bool) -> u16 {
    let (url, secret) = {
        let hook = shared.hook.lock().unwrap();
        let hook = hook.as_ref().expect("FakeGithub::hook_to first");
        (hook.url.clone(), hook.secret.clone())
    };
    let reply = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(url)
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", guid)
        .header(
            "X-Hub-Signature-256",
            qci_server::webhook::sign(secret.as_bytes(), body),
        )
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/fake")
        .body(body.to_vec())
        .send();
    let status_code = reply.map_or(0, |r| r.status().as_u16());
    let mut deliveries = shared.deliveries.lock().unwrap();
    let id = 12_000_000_000 + deliveries.len() as u64;
    deliveries.push(Delivery {
        id,
        guid: guid.to_owned(),
        event: event.to_owned(),
        body: body.to_vec(),
        status_code,
        redelivery,
        delivered_at: SystemTime::now(),
    });
    status_code
}

/// A page of deliveries, newest first, as GitHub lists them: `per_page`
/// (at most 100, and at most the fake's page size), a `cursor`, and a
/// `Link` header to the next page.
fn deliveries_page(shared: &Shared, uri: &Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let query = |key: &str| {
        uri.query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let per_page = query("per_page")
        .unwrap_or(30)
        .min(100)
        .min(shared.page_size.load(Ordering::SeqCst));
    let from = query("cursor").unwrap_or(0);
    let all: Vec<Delivery> = shared
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .rev()
        .cloned()
        .collect();
    let page: Vec<Value> = all
        .iter()
        .skip(from)
        .take(per_page)
        .map(|d| {
            serde_json::json!({
                "id": d.id, "guid": d.guid,
                "delivered_at": humantime::format_rfc3339_seconds(d.delivered_at).to_string(),
                "redelivery": d.redelivery, "duration": 0.01,
                "status": if d.status_code == 0 { "failed to connect".to_owned() } else { d.status_code.to_string() },
                "status_code": d.status_code, "event": d.event, "action": null,
                "installation_id": INSTALLATION, "repository_id": 1,
            })
        })
        .collect();
    let mut reply = (StatusCode::OK, Value::Array(page).to_string()).into_response();
    if from + per_page < all.len() {
        let next = format!(
            "<{}{}?per_page={per_page}&cursor={}>; rel=\"next\"",
            shared.base,
            uri.path(),
            from + per_page
        );
        reply.headers_mut().insert("link", next.parse().unwrap());
    }
    reply
}

/// `POST .../deliveries/ID/attempts`: 202 now, and the delivery made
/// again soon after, with its guid, as GitHub does.
fn redeliver(shared: &Arc<Shared>, id: &str) -> (StatusCode, String) {
    let found = shared
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .find(|d| d.id.to_string() == id)
        .cloned();
    let Some(d) = found else {
        return refuse(shared, StatusCode::NOT_FOUND, "Not Found".into());
    };
    shared.redelivered.lock().unwrap().push(d.guid.clone());
    let shared = shared.clone();
    std::thread::spawn(move || deliver(&shared, &d.event, &d.guid, &d.body, true));
    (StatusCode::ACCEPTED, "{}".into())
}

/// `POST /repos/OWNER/REPO/statuses/SHA`: checked, recorded, answered 201.
fn statuses(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> (StatusCode, String) {
    match check(shared, method, uri, headers, body) {
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

impl FakeGithub {
    /// A GitHub that takes `token` (a personal token) on every call.
    pub fn start(token: &str) -> Self {
        Self::serve(Shared {
            token: token.to_owned(),
            ..Shared::default()
        })
    }

    /// A GitHub with the App `app_id` whose public key is the PEM file
    /// `public_key`, installed on every repository ([`INSTALLATION`]):
    /// repository calls need a live installation token, which lives
    /// `token_life` from when it is issued.
    pub fn start_app(app_id: u64, public_key: &std::path::Path, token_life: Duration) -> Self {
        let pem = std::fs::read(public_key).unwrap();
        Self::serve(Shared {
            app: Some(AppAuth {
                app_id,
                public_key: jsonwebtoken::DecodingKey::from_rsa_pem(&pem).unwrap(),
                token_life: Mutex::new(token_life),
                issued: Mutex::default(),
                exchanges: AtomicUsize::new(0),
                expired_uses: AtomicUsize::new(0),
                jwt_calls: AtomicUsize::new(0),
            }),
            ..Shared::default()
        })
    }

    fn serve(mut shared: Shared) -> Self {
        shared.page_size.store(100, Ordering::SeqCst);
        // A hook blocks in place, which needs a multi-thread runtime.
        let listener = qci_test_http::Listener::bind().multi_thread(1);
        shared.base = listener.url();
        let token = shared.token.clone();
        let shared = Arc::new(shared);
        let state = shared.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
            route(state.clone(), method, uri, headers, body)
        };
        let server = listener.serve("fake-github", axum::Router::new().fallback(handler));
        Self {
            base: server.url(),
            token,
            shared,
            _server: server,
        }
    }

    fn app(&self) -> &AppAuth {
        self.shared.app.as_ref().expect("a fake GitHub in App mode")
    }

    /// An installation token, as an exchange would issue it: for a test
    /// that calls the fake itself, without an App's key to sign a JWT.
    pub fn installation_token(&self) -> String {
        issue(self.app()).0
    }

    /// Installation tokens issued so far.
    pub fn exchanges(&self) -> usize {
        self.app().exchanges.load(Ordering::SeqCst)
    }

    /// Calls that came with an installation token that had expired.
    pub fn expired_uses(&self) -> usize {
        self.app().expired_uses.load(Ordering::SeqCst)
    }

    /// Delivers webhooks to `url` from now on, signed with `secret`.
    pub fn hook_to(&self, url: &str, secret: &str) {
        *self.shared.hook.lock().unwrap() = Some(HookTarget {
            url: url.to_owned(),
            secret: secret.to_owned(),
        });
    }

    /// Sends a webhook as GitHub does, and records the delivery: what qci
    /// answered, or 0 when it could not be reached.
    pub fn send_webhook(&self, event: &str, guid: &str, body: &[u8]) -> u16 {
        deliver(&self.shared, event, guid, body, false)
    }

    /// Every delivery made so far, in order, redeliveries included.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// The guids qci asked to have redelivered, in order.
    pub fn redelivered(&self) -> Vec<String> {
        self.shared.redelivered.lock().unwrap().clone()
    }

    /// Lists at most `n` deliveries a page, so that paging is used.
    pub fn page_size(&self, n: usize) {
        self.shared.page_size.store(n, Ordering::SeqCst);
    }

    /// How long the tokens issued from now on live.
    pub fn set_token_life(&self, life: Duration) {
        *self.app().token_life.lock().unwrap() = life;
    }

    /// Every request so far, as `METHOD PATH`, in order.
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
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

/// One check run request GitHub took, as it came: `POST` (create) or
/// `PATCH` (update), with what it set. Fields it did not send are `None`.
#[derive(Debug, Clone)]
pub struct CheckRun {
    pub method: String,
    pub id: u64,
    pub repo: String,
    pub name: Option<String>,
    pub head_sha: Option<String>,
    pub external_id: Option<String>,
    pub details_url: Option<String>,
    pub status: Option<String>,
    pub started_at: Option<String>,
    pub conclusion: Option<String>,
    pub output: Option<Value>,
    /// How many annotations this request carried.
    pub annotations: usize,
    pub at: Instant,
}

/// The check runs GitHub holds: each run's repository by id, and every
/// request taken, in order.
#[derive(Default)]
struct CheckRuns {
    repos: HashMap<u64, String>,
    requests: Vec<CheckRun>,
    /// Runs made `completed`: GitHub changes their status no more.
    completed: std::collections::HashSet<u64>,
}

/// The first check run's id: as large as GitHub's are (more than 32 bits).
const FIRST_CHECK_RUN: u64 = 41_000_000_001;

/// `POST /repos/OWNER/REPO/check-runs` and `PATCH .../check-runs/ID`:
/// authenticated, by an App only (403 to a personal token, as GitHub
/// answers), the body checked against GitHub's documented limits by
/// [`check_run_violation`] (422 with the first violation), recorded,
/// answered 201 or 200 with the run's id.
fn check_runs(
    shared: &Shared,
    method: &Method,
    repo: &str,
    rest: &[&str],
    headers: &HeaderMap,
    body: &str,
) -> (StatusCode, String) {
    if let Err(refused) = check_headers(shared, headers) {
        return refused;
    }
    if shared.app.is_none() {
        return refuse(
            shared,
            StatusCode::FORBIDDEN,
            "Resource not accessible by personal access token".into(),
        );
    }
    let create = match (method, rest) {
        (&Method::POST, []) => true,
        (&Method::PATCH, [_]) => false,
        _ => {
            return refuse(
                shared,
                StatusCode::NOT_FOUND,
                format!("Not Found: {method} check-runs/{}", rest.join("/")),
            );
        }
    };
    let value: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                shared,
                StatusCode::BAD_REQUEST,
                format!("Problems parsing JSON: {e}"),
            );
        }
    };
    if let Some(violation) = check_run_violation(create, &value) {
        return refuse(shared, StatusCode::UNPROCESSABLE_ENTITY, violation);
    }
    let mut runs = shared.check_runs.lock().unwrap();
    let id = match rest {
        [] => {
            let id = FIRST_CHECK_RUN + runs.repos.len() as u64;
            runs.repos.insert(id, repo.to_owned());
            id
        }
        [id] => match id.parse::<u64>() {
            Ok(id) if runs.repos.get(&id).is_some_and(|r| r == repo) => id,
            _ => {
                drop(runs);
                return refuse(
                    shared,
                    StatusCode::NOT_FOUND,
                    format!("Not Found: check run {id} of {repo}"),
                );
            }
        },
        _ => unreachable!("matched above"),
    };
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    let changes_status = value.get("status").is_some() || value.get("conclusion").is_some();
    if runs.completed.contains(&id) && changes_status {
        drop(runs);
        return refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("check run {id} is completed: its status and conclusion cannot change"),
        );
    }
    if text("status").as_deref() == Some("completed") || value.get("conclusion").is_some() {
        runs.completed.insert(id);
    }
    let output = value.get("output").cloned();
    let annotations = output
        .as_ref()
        .and_then(|o| o.get("annotations"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let run = CheckRun {
        method: method.to_string(),
        id,
        repo: repo.to_owned(),
        name: text("name"),
        head_sha: text("head_sha"),
        external_id: text("external_id"),
        details_url: text("details_url"),
        status: text("status"),
        started_at: text("started_at"),
        conclusion: text("conclusion"),
        output,
        annotations,
        at: Instant::now(),
    };
    runs.requests.push(run.clone());
    let reply = serde_json::json!({
        "id": id, "name": run.name, "head_sha": run.head_sha,
        "external_id": run.external_id, "details_url": run.details_url,
        "status": run.status.as_deref().unwrap_or("queued"), "conclusion": run.conclusion,
        "html_url": format!("https://github.com/{repo}/runs/{id}"),
    });
    let code = if create {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (code, reply.to_string())
}

/// GitHub's documented limits, in the fake's own code so that qci's bodies
/// are judged by GitHub's rules, not by qci's (`check_run::validate`).
/// Texts are measured in UTF-8 bytes: GitHub refuses a summary "exceeding
/// a maximum bytesize of 65535" although its docs say characters
/// (github/docs#35252). `stale` is GitHub's to set, never a caller's.
fn check_run_violation(create: bool, body: &Value) -> Option<String> {
    const STATUSES: [&str; 6] = [
        "queued",
        "in_progress",
        "completed",
        "waiting",
        "requested",
        "pending",
    ];
    const CONCLUSIONS: [&str; 7] = [
        "action_required",
        "cancelled",
        "failure",
        "neutral",
        "success",
        "skipped",
        "timed_out",
    ];
    const LEVELS: [&str; 3] = ["notice", "warning", "failure"];
    const MAX_TEXT_BYTES: usize = 65_535;
    const MAX_NOTE_BYTES: usize = 64 * 1024;
    let Some(body) = body.as_object() else {
        return Some("the body is not a JSON object".into());
    };
    let text = |v: Option<&Value>, field: &str| -> Result<Option<String>, String> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{field} is not a string")),
        }
    };
    let check = || -> Result<(), String> {
        if create {
            let name = text(body.get("name"), "name")?.unwrap_or_default();
            if name.is_empty() {
                return Err("name is missing".into());
            }
            let sha = text(body.get("head_sha"), "head_sha")?.unwrap_or_default();
            if !sha_ok(&sha) {
                return Err(format!("head_sha {sha:?} is not 40 hex digits"));
            }
        }
        let status = text(body.get("status"), "status")?;
        let conclusion = text(body.get("conclusion"), "conclusion")?;
        for (field, value, allowed) in [
            ("status", &status, &STATUSES[..]),
            ("conclusion", &conclusion, &CONCLUSIONS[..]),
        ] {
            if let Some(v) = value
                && !allowed.contains(&v.as_str())
            {
                return Err(format!("{field} {v:?} is not one of {allowed:?}"));
            }
        }
        // A conclusion completes the run; `completed` needs one.
        let completed_at = text(body.get("completed_at"), "completed_at")?;
        let fits = match (status.as_deref(), conclusion.as_deref()) {
            (Some("completed"), None) => false,
            (Some(s), Some(_)) => s == "completed",
            (_, None) => completed_at.is_none(),
            (None, Some(_)) => true,
        };
        if !fits {
            return Err(format!(
                "status {:?} does not go with conclusion {:?}",
                status.as_deref(),
                conclusion.as_deref()
            ));
        }
        for field in ["started_at", "completed_at"] {
            if let Some(at) = text(body.get(field), field)?
                && humantime::parse_rfc3339_weak(&at).is_err()
            {
                return Err(format!("{field} {at:?} is not an ISO 8601 time"));
            }
        }
        let output = match body.get("output") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(o)) => o,
            Some(_) => return Err("output is not an object".into()),
        };
        for (field, required) in [("title", true), ("summary", true), ("text", false)] {
            match text(output.get(field), &format!("output.{field}"))? {
                None if required => return Err(format!("output.{field} is missing")),
                Some(t) if t.len() > MAX_TEXT_BYTES => {
                    return Err(format!(
                        "output.{field} exceeds a maximum bytesize of {MAX_TEXT_BYTES} ({} bytes)",
                        t.len()
                    ));
                }
                _ => {}
            }
        }
        let notes = match output.get("annotations") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(notes)) => notes,
            Some(_) => return Err("output.annotations is not an array".into()),
        };
        if notes.len() > 50 {
            return Err(format!(
                "{} annotations in one request, more than 50",
                notes.len()
            ));
        }
        for (i, note) in notes.iter().enumerate() {
            let at = |f: &str| format!("output.annotations[{i}].{f}");
            for f in ["start_line", "end_line"] {
                if note.get(f).and_then(Value::as_u64).is_none_or(|n| n < 1) {
                    return Err(format!("{} is not a line number", at(f)));
                }
            }
            for f in ["path", "annotation_level", "message"] {
                if text(note.get(f), &at(f))?.is_none_or(|t| t.is_empty()) {
                    return Err(format!("{} is missing", at(f)));
                }
            }
            let level = note["annotation_level"].as_str().unwrap_or_default();
            if !LEVELS.contains(&level) {
                return Err(format!(
                    "{} {level:?} is not one of {LEVELS:?}",
                    at("annotation_level")
                ));
            }
            for f in ["message", "raw_details"] {
                if let Some(t) = text(note.get(f), &at(f))?
                    && t.len() >= MAX_NOTE_BYTES
                {
                    return Err(format!("{} is over 64 KB ({} bytes)", at(f), t.len()));
                }
            }
            if let Some(title) = text(note.get("title"), &at("title"))?
                && title.chars().count() > 255
            {
                return Err(format!("{} is over 255 characters", at("title")));
            }
        }
        Ok(())
    };
    check().err()
}

impl FakeGithub {
    /// Revokes every installation token issued so far, as GitHub may
    /// before their announced expiry: calls with them get 401.
    pub fn revoke_tokens(&self) {
        self.app().issued.lock().unwrap().clear();
    }

    /// Every check run request taken, in order.
    pub fn check_runs(&self) -> Vec<CheckRun> {
        self.shared.check_runs.lock().unwrap().requests.clone()
    }

    /// Waits until `ready` holds for the check run requests taken so far.
    pub fn wait_check_runs(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&[CheckRun]) -> bool,
    ) -> Vec<CheckRun> {
        let end = Instant::now() + timeout;
        loop {
            let runs = self.check_runs();
            if ready(&runs) {
                return runs;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; GitHub took {runs:#?}, refused {:?}",
                self.refused()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the tests tell the fake of collaborators and pull requests, and
/// the reactions it got. Kept beside [`Shared`] (one per fake, found by
/// its `Arc`), so the fake's other parts stay as they are.
#[derive(Default)]
struct People {
    /// `login` → `role_name`; anyone else is `read` (a public repository).
    roles: Mutex<HashMap<String, String>>,
    /// `(OWNER/REPO, NUMBER)` → the pull request as the API answers it.
    pulls: Mutex<HashMap<(String, u64), Value>>,
    /// `(OWNER/REPO, COMMENT, CONTENT)`, in order.
    reactions: Mutex<Vec<(String, u64, String)>>,
    /// Permission requests still to answer 502.
    fail_permissions: AtomicUsize,
}

type PeopleOf = Vec<(std::sync::Weak<Shared>, Arc<People>)>;

/// The fake's [`People`]. A `Weak` keeps its fake's allocation, so no later
/// fake can take its address; entries of dropped fakes are let go here.
fn people(shared: &Arc<Shared>) -> Arc<People> {
    static ALL: std::sync::OnceLock<Mutex<PeopleOf>> = std::sync::OnceLock::new();
    let mut all = ALL.get_or_init(Mutex::default).lock().unwrap();
    all.retain(|(weak, _)| weak.strong_count() > 0);
    let me = Arc::downgrade(shared);
    if let Some((_, found)) = all.iter().find(|(weak, _)| weak.ptr_eq(&me)) {
        return found.clone();
    }
    let fresh = Arc::new(People::default());
    all.push((me, fresh.clone()));
    fresh
}

/// `GET /repos/OWNER/REPO/collaborators/USER/permission`: the role the
/// test gave, `read` otherwise, with the base permission GitHub pairs it with.
fn collaborator_permission(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    repo: &str,
    user: &str,
) -> (StatusCode, String) {
    if let Err(refused) = check_headers(shared, headers) {
        return refused;
    }
    let role = people(shared)
        .roles
        .lock()
        .unwrap()
        .get(user)
        .cloned()
        .unwrap_or_else(|| "read".into());
    let permission = match role.as_str() {
        "admin" => "admin",
        "maintain" | "write" => "write",
        "none" => "none",
        _ => "read",
    };
    let body = serde_json::json!({
        "permission": permission,
        "role_name": role,
        "user": {"login": user, "type": "User", "site_admin": false},
        "repository": repo,
    });
    (StatusCode::OK, body.to_string())
}

/// `GET /repos/OWNER/REPO/pulls/N`: a pull request the test registered.
fn pull_request(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    repo: &str,
    number: &str,
) -> (StatusCode, String) {
    if let Err(refused) = check_headers(shared, headers) {
        return refused;
    }
    let found = number.parse::<u64>().ok().and_then(|n| {
        people(shared)
            .pulls
            .lock()
            .unwrap()
            .get(&(repo.to_owned(), n))
            .cloned()
    });
    match found {
        Some(pr) => (StatusCode::OK, pr.to_string()),
        None => refuse(
            shared,
            StatusCode::NOT_FOUND,
            format!("Not Found: pull request {number} of {repo}"),
        ),
    }
}

/// `POST /repos/OWNER/REPO/issues/comments/ID/reactions`: GitHub's
/// reactions only, recorded, answered 201.
fn reaction(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    repo: &str,
    id: &str,
    body: &str,
) -> (StatusCode, String) {
    if let Err(refused) = check_headers(shared, headers) {
        return refused;
    }
    let content = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["content"].as_str().map(str::to_owned));
    let known = [
        "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
    ];
    let (Some(content), Ok(id)) = (content, id.parse::<u64>()) else {
        return refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: content".into(),
        );
    };
    if !known.contains(&content.as_str()) {
        return refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Validation Failed: content {content:?}"),
        );
    }
    people(shared)
        .reactions
        .lock()
        .unwrap()
        .push((repo.to_owned(), id, content.clone()));
    let body = serde_json::json!({"id": 1, "content": content, "user": {"login": "qci[bot]"}});
    (StatusCode::CREATED, body.to_string())
}

impl FakeGithub {
    /// Gives `user` the role `role` (`read`, `triage`, `write`, `maintain`,
    /// `admin`, `none`) in every repository.
    pub fn permission(&self, user: &str, role: &str) {
        people(&self.shared)
            .roles
            .lock()
            .unwrap()
            .insert(user.to_owned(), role.to_owned());
    }

    /// Registers open pull request `number` of `repo`, its head `sha` on
    /// branch `branch` of `head_repo` (`repo` itself, or a fork).
    pub fn pull_request(&self, repo: &str, number: u64, sha: &str, head_repo: &str, branch: &str) {
        let pr = serde_json::json!({
            "url": format!("{}/repos/{repo}/pulls/{number}", self.base),
            "number": number,
            "state": "open",
            "title": "Update the RPM build for Fedora 41",
            "user": {"login": "contributor-x", "type": "User"},
            "head": {
                "label": format!("{}:{branch}", head_repo.split('/').next().unwrap_or("")),
                "ref": branch,
                "sha": sha,
                "repo": {
                    "full_name": head_repo,
                    "clone_url": format!("https://github.com/{head_repo}.git"),
                },
            },
            "base": {
                "ref": "main",
                "sha": "0000000000000000000000000000000000000001",
                "repo": {
                    "full_name": repo,
                    "clone_url": format!("https://github.com/{repo}.git"),
                },
            },
        });
        people(&self.shared)
            .pulls
            .lock()
            .unwrap()
            .insert((repo.to_owned(), number), pr);
    }

    /// Answers the next `n` permission requests with 502 Bad Gateway.
    pub fn fail_next_permissions(&self, n: usize) {
        people(&self.shared)
            .fail_permissions
            .store(n, Ordering::SeqCst);
    }

    /// The reactions posted: `(OWNER/REPO, COMMENT, CONTENT)`.
    pub fn reactions(&self) -> Vec<(String, u64, String)> {
        people(&self.shared).reactions.lock().unwrap().clone()
    }
}

/// One Actions job the fake holds: queued until a runner takes it.
#[derive(Debug, Clone)]
pub struct ActionsJob {
    pub id: u64,
    pub repo: String,
    /// The job's key in the workflow (what `act -j` names).
    pub name: String,
    pub labels: Vec<String>,
    /// The workflow's YAML.
    pub workflow: String,
    /// The matrix entry this job is (`key:value`, as `act --matrix` takes it).
    pub matrix: Vec<String>,
    /// The runner that took it, and its id.
    pub runner: Option<(String, u64)>,
    /// What the runner reported: `success` or `failure`, and its output.
    pub result: Option<(String, String)>,
    pub cancelled: bool,
}

/// A runner registered with `generate-jitconfig`.
#[derive(Debug, Clone)]
pub struct JitRunner {
    pub id: u64,
    pub name: String,
    /// The repository it was registered with, or the organization.
    pub repo: String,
    pub labels: Vec<String>,
    pub runner_group_id: u64,
    pub work_folder: String,
    /// The one-time token its encoded config carries.
    pub token: String,
    /// The token was used to take a job: a second use is refused.
    pub used: bool,
}

#[derive(Debug, Default)]
pub struct FakeActions {
    pub jobs: Vec<ActionsJob>,
    pub runners: Vec<JitRunner>,
    /// Runner ids removed with `DELETE .../actions/runners/ID`.
    pub removed: Vec<u64>,
    /// The runner group every `generate-jitconfig` must name.
    pub runner_group_id: u64,
    /// The labels every runner must have, besides its job's.
    pub required_labels: Vec<String>,
    /// Uses of a spent or unknown one-time token.
    pub refused_tokens: usize,
    /// The repository queued jobs are of (empty: the tests' usual one).
    pub repo: String,
}

/// A `workflow_job` payload as GitHub documents it, with the installation.
pub fn workflow_job_payload(job: &ActionsJob, action: &str, conclusion: Option<&str>) -> Vec<u8> {
    let (runner_name, runner_id) = match &job.runner {
        Some((n, id)) => (Value::from(n.clone()), Value::from(*id)),
        None => (Value::Null, Value::Null),
    };
    let status = match action {
        "in_progress" => "in_progress",
        "completed" => "completed",
        _ => "queued",
    };
    serde_json::to_vec(&serde_json::json!({
        "action": action,
        "workflow_job": {
            "id": job.id,
            "run_id": 9_000_000 + job.id,
            "workflow_name": "CI",
            "head_branch": "main",
            "run_url": format!("https://api.github.com/repos/{}/actions/runs/{}", job.repo, 9_000_000 + job.id),
            "run_attempt": 1,
            "node_id": "CR_kwDOAAAAAM8AAAAB",
            "head_sha": "f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3",
            "url": format!("https://api.github.com/repos/{}/actions/jobs/{}", job.repo, job.id),
            "html_url": format!("https://github.com/{}/actions/runs/{}/job/{}", job.repo, 9_000_000 + job.id, job.id),
            "status": status,
            "conclusion": conclusion,
            "created_at": "2026-12-04T01:00:00Z",
            "started_at": "2026-12-04T01:00:01Z",
            "completed_at": if action == "completed" { Value::from("2026-12-04T01:00:09Z") } else { Value::Null },
            "name": job.name,
            "steps": [],
            "check_run_url": format!("https://api.github.com/repos/{}/check-runs/{}", job.repo, job.id),
            "labels": job.labels,
            "runner_id": runner_id,
            "runner_name": runner_name,
            "runner_group_id": if job.runner.is_some() { Value::from(1) } else { Value::Null },
            "runner_group_name": if job.runner.is_some() { Value::from("Default") } else { Value::Null },
        },
        "repository": {
            "id": 1,
            "name": job.repo.split('/').nth(1).unwrap_or_default(),
            "full_name": job.repo,
            "private": false,
            "clone_url": format!("https://github.com/{}.git", job.repo),
        },
        "sender": {"login": "octocat", "id": 1, "type": "User"},
        "installation": {"id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNDI="},
    }))
    .unwrap()
}

/// `DELETE /repos/O/R/actions/runners/ID` or `/orgs/O/...`: 204 for a
/// runner registered there and not yet removed, else 404, as GitHub
/// answers; only a real removal is recorded.
fn delete_runner(shared: &Shared, path: &[&str], id: &str) -> (StatusCode, String) {
    // `repos/O/R` or `orgs/O`: where `generate-jitconfig` registered it.
    let scope = match path {
        ["repos", owner, repo, ..] => format!("{owner}/{repo}"),
        [_, org, ..] => (*org).to_owned(),
        _ => String::new(),
    };
    let mut actions = shared.actions.lock().unwrap();
    let registered = id.parse::<u64>().ok().filter(|id| {
        !actions.removed.contains(id)
            && actions
                .runners
                .iter()
                .any(|r| r.id == *id && r.repo == scope)
    });
    let Some(id) = registered else {
        drop(actions);
        return refuse(
            shared,
            StatusCode::NOT_FOUND,
            format!("Not Found: runner {id} of {scope}"),
        );
    };
    actions.removed.push(id);
    (StatusCode::NO_CONTENT, String::new())
}

fn generate_jitconfig(
    shared: &Shared,
    headers: &HeaderMap,
    repo: &str,
    body: &str,
) -> (StatusCode, String) {
    if let Err(refused) = check_headers(shared, headers) {
        return refused;
    }
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return refuse(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "body is not JSON".into(),
        );
    };
    let name = v["name"].as_str().unwrap_or_default().to_owned();
    let group = v["runner_group_id"].as_u64();
    let labels: Vec<String> = v["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let work_folder = v["work_folder"].as_str().unwrap_or_default().to_owned();
    let mut actions = shared.actions.lock().unwrap();
    let expected_group = actions.runner_group_id.max(1);
    let why = if name.is_empty() || name.len() > 64 {
        Some(format!("bad runner name {name:?}"))
    } else if group != Some(expected_group) {
        Some(format!("runner_group_id {group:?}, not {expected_group}"))
    } else if !labels.iter().any(|l| l == "self-hosted") {
        Some(format!("labels {labels:?} lack self-hosted"))
    } else if let Some(missing) = actions.required_labels.iter().find(|l| !labels.contains(l)) {
        Some(format!("labels {labels:?} lack {missing}"))
    } else if work_folder.is_empty() {
        Some("no work_folder".into())
    } else if actions.runners.iter().any(|r| r.name == name) {
        Some(format!("a runner named {name} exists already"))
    } else {
        None
    };
    if let Some(why) = why {
        drop(actions);
        return refuse(shared, StatusCode::UNPROCESSABLE_ENTITY, why);
    }
    let id = 100 + actions.runners.len() as u64;
    let token: String = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(id);
        format!("jit-{id}-{:016x}", h.finish())
    };
    actions.runners.push(JitRunner {
        id,
        name: name.clone(),
        repo: repo.to_owned(),
        labels: labels.clone(),
        runner_group_id: expected_group,
        work_folder,
        token: token.clone(),
        used: false,
    });
    let config = serde_json::json!({"url": shared.base, "runner_name": name, "token": token});
    let encoded = base64::engine::general_purpose::STANDARD.encode(config.to_string());
    let reply = serde_json::json!({
        "runner": {"id": id, "name": name, "os": "unknown", "status": "offline", "busy": false,
                   "labels": labels.iter().map(|l| serde_json::json!({"name": l, "type": "custom"})).collect::<Vec<_>>()},
        "encoded_jit_config": encoded,
    });
    (StatusCode::CREATED, reply.to_string())
}

fn actions_job_status(shared: &Shared, repo: &str, id: &str) -> (StatusCode, String) {
    let actions = shared.actions.lock().unwrap();
    let Some(job) = actions
        .jobs
        .iter()
        .find(|j| j.id.to_string() == id && j.repo == repo)
    else {
        return (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#.into());
    };
    let (status, conclusion) = match (&job.result, job.cancelled, &job.runner) {
        (Some((c, _)), _, _) => ("completed", Value::from(c.clone())),
        (None, true, _) => ("completed", Value::from("cancelled")),
        (None, false, Some(_)) => ("in_progress", Value::Null),
        (None, false, None) => ("queued", Value::Null),
    };
    let body = serde_json::json!({
        "id": job.id, "run_id": 9_000_000 + job.id, "status": status,
        "conclusion": conclusion, "name": job.name, "labels": job.labels,
    });
    (StatusCode::OK, body.to_string())
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// Delivers a `workflow_job` webhook on its own thread, if a hook is set:
/// as GitHub does, after it has answered the runner.
fn deliver_job_event(
    shared: &Arc<Shared>,
    job: &ActionsJob,
    action: &str,
    conclusion: Option<&str>,
) {
    if shared.hook.lock().unwrap().is_none() {
        return;
    }
    let body = workflow_job_payload(job, action, conclusion);
    let guid = format!("fake-{action}-{}", job.id);
    let shared = shared.clone();
    let event = "workflow_job".to_owned();
    std::thread::spawn(move || deliver(&shared, &event, &guid, &body, false));
}

/// `GET /_fake/runner/jobs?token=T`: the runner's one job, the oldest
/// queued one its labels fit; 204 while there is none. The token is spent
/// once a job is taken.
fn runner_takes_job(shared: &Arc<Shared>, uri: &Uri) -> (StatusCode, String) {
    let token = query_param(uri, "token").unwrap_or_default();
    let mut actions = shared.actions.lock().unwrap();
    let Some(r) = actions.runners.iter().position(|r| r.token == token) else {
        actions.refused_tokens += 1;
        return (StatusCode::UNAUTHORIZED, "unknown runner token".into());
    };
    if actions.runners[r].used {
        actions.refused_tokens += 1;
        return (
            StatusCode::UNAUTHORIZED,
            "the one-time token was used".into(),
        );
    }
    let runner = actions.runners[r].clone();
    let Some(j) = actions.jobs.iter().position(|j| {
        j.runner.is_none()
            && !j.cancelled
            && (j.repo == runner.repo
                || j.repo
                    .split_once('/')
                    .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(&runner.repo)))
            && j.labels
                .iter()
                .all(|l| runner.labels.iter().any(|rl| rl.eq_ignore_ascii_case(l)))
    }) else {
        return (StatusCode::NO_CONTENT, String::new());
    };
    actions.runners[r].used = true;
    actions.jobs[j].runner = Some((runner.name.clone(), runner.id));
    let job = actions.jobs[j].clone();
    drop(actions);
    deliver_job_event(shared, &job, "in_progress", None);
    let reply = serde_json::json!({
        "job_id": job.id, "name": job.name, "workflow": job.workflow, "matrix": job.matrix,
        "labels": job.labels,
    });
    (StatusCode::OK, reply.to_string())
}

/// `POST /_fake/runner/result` `{job_id, token, conclusion, output}`.
fn runner_reports(shared: &Arc<Shared>, body: &str) -> (StatusCode, String) {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, "not JSON".into());
    };
    let token = v["token"].as_str().unwrap_or_default();
    let mut actions = shared.actions.lock().unwrap();
    let Some(runner) = actions
        .runners
        .iter()
        .find(|r| r.token == token && r.used)
        .cloned()
    else {
        return (StatusCode::UNAUTHORIZED, "unknown runner token".into());
    };
    let conclusion = match v["conclusion"].as_str() {
        Some("success") => "success",
        _ => "failure",
    };
    let output = v["output"].as_str().unwrap_or_default().to_owned();
    let Some(job) = actions
        .jobs
        .iter_mut()
        .find(|j| j.runner.as_ref().is_some_and(|(n, _)| *n == runner.name))
    else {
        return (StatusCode::NOT_FOUND, "the runner took no job".into());
    };
    job.result = Some((conclusion.to_owned(), output));
    let job = job.clone();
    drop(actions);
    deliver_job_event(shared, &job, "completed", Some(conclusion));
    (StatusCode::OK, "{}".into())
}

impl FakeGithub {
    /// The runner group and labels every `generate-jitconfig` must name.
    pub fn expect_runners(&self, runner_group_id: u64, labels: &[&str]) {
        let mut a = self.shared.actions.lock().unwrap();
        a.runner_group_id = runner_group_id;
        a.required_labels = labels.iter().map(|l| (*l).to_owned()).collect();
    }

    /// Queues an Actions job and, when a hook is set, delivers its
    /// `queued` webhook; returns qci's answer (0 without a hook).
    pub fn queue_actions_job(
        &self,
        id: u64,
        name: &str,
        labels: &[&str],
        workflow: &str,
        matrix: &[&str],
    ) -> u16 {
        let job = ActionsJob {
            id,
            repo: self.actions_repo(),
            name: name.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            workflow: workflow.to_owned(),
            matrix: matrix.iter().map(|m| (*m).to_owned()).collect(),
            runner: None,
            result: None,
            cancelled: false,
        };
        self.shared.actions.lock().unwrap().jobs.push(job.clone());
        if self.shared.hook.lock().unwrap().is_none() {
            return 0;
        }
        deliver(
            &self.shared,
            "workflow_job",
            &format!("fake-queued-{id}"),
            &workflow_job_payload(&job, "queued", None),
            false,
        )
    }

    /// Cancels a job no runner took: GitHub sends `completed`, `cancelled`.
    /// Cancels job `id` with no webhook about it: one whose delivery was
    /// lost for good (outside the redelivery window).
    pub fn cancel_actions_job_unannounced(&self, id: u64) {
        let mut a = self.shared.actions.lock().unwrap();
        a.jobs.iter_mut().find(|j| j.id == id).unwrap().cancelled = true;
    }

    pub fn cancel_actions_job(&self, id: u64) -> u16 {
        let job = {
            let mut a = self.shared.actions.lock().unwrap();
            let job = a.jobs.iter_mut().find(|j| j.id == id).unwrap();
            job.cancelled = true;
            job.clone()
        };
        deliver(
            &self.shared,
            "workflow_job",
            &format!("fake-cancelled-{id}"),
            &workflow_job_payload(&job, "completed", Some("cancelled")),
            false,
        )
    }

    /// Which repository the Actions jobs are of.
    fn actions_repo(&self) -> String {
        let a = self.shared.actions.lock().unwrap();
        if a.repo.is_empty() {
            "freedomofpress/securedrop-workstation".into()
        } else {
            a.repo.clone()
        }
    }

    pub fn actions_jobs(&self) -> Vec<ActionsJob> {
        self.shared.actions.lock().unwrap().jobs.clone()
    }

    pub fn jit_runners(&self) -> Vec<JitRunner> {
        self.shared.actions.lock().unwrap().runners.clone()
    }

    pub fn removed_runners(&self) -> Vec<u64> {
        self.shared.actions.lock().unwrap().removed.clone()
    }

    pub fn refused_runner_tokens(&self) -> usize {
        self.shared.actions.lock().unwrap().refused_tokens
    }
}
