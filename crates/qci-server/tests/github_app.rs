//! GitHub App authentication against a fake GitHub that checks what GitHub
//! checks: the JWT's RS256 signature against the App's public key, its
//! `iss`, `iat` and `exp`; installation tokens that expire (a short life,
//! set per test) and are refused with 401 once they have.
//!
//! The fake is this file's own, to count lookups and fail exchanges; the
//! shared one (`support/fake_github.rs`) has the same checks in App mode,
//! for the tests of whole jobs.
//!
//! The key pair is made for each test with `openssl genrsa` in a tempdir
//! (PKCS#1, the form GitHub hands out), so no private key is committed.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup and its fake too"
)]

#[expect(dead_code, reason = "only the scripted pool, for `qci serve` at start")]
mod support;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use qci_server::config::{GithubAppConfig, SecretSource};
use qci_server::github_app::{AppError, GithubApp};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const APP_ID: u64 = 12345;
const INSTALLATION: u64 = 42;
const REPO: &str = "freedomofpress/securedrop-client";
const REPO_INSTALLATION: u64 = 77;

/// A private key (mode 0600) and its public half, in `dir/name/`.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    support::fake_github::app_key(&dir)
}

#[derive(serde::Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
}

struct Shared {
    public_key: DecodingKey,
    token_life: Duration,
    /// How far the fake's clock runs ahead of the host's.
    clock_ahead: Duration,
    /// Installation tokens issued, and when each expires (as announced).
    issued: Mutex<HashMap<String, SystemTime>>,
    exchanges: AtomicUsize,
    /// Token exchanges still to answer 502 (GitHub away for a moment).
    fail_exchanges: AtomicUsize,
    lookups: AtomicUsize,
    /// Calls made with an installation token that had expired.
    expired_uses: AtomicUsize,
    /// Why each refused request was refused.
    refused: Mutex<Vec<String>>,
}

struct FakeGithub {
    base: String,
    shared: Arc<Shared>,
    _server: qci_test_http::HttpServer,
}

fn refuse(shared: &Shared, code: StatusCode, why: &str) -> (StatusCode, String) {
    shared.refused.lock().unwrap().push(why.to_owned());
    (code, serde_json::json!({ "message": why }).to_string())
}

fn unix_now(shared: &Shared) -> u64 {
    (SystemTime::now() + shared.clock_ahead)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// GitHub's headers, and the credential after `Bearer `.
fn credential<'h>(
    shared: &Shared,
    headers: &'h HeaderMap,
) -> Result<&'h str, (StatusCode, String)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !header("accept").contains("application/vnd.github")
        || header("x-github-api-version").is_empty()
        || header("user-agent").is_empty()
    {
        return Err(refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "missing Accept, X-GitHub-Api-Version or User-Agent",
        ));
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refuse(shared, StatusCode::UNAUTHORIZED, "no bearer credential"))
}

/// What GitHub checks of an App's JWT: RS256 by the App's key, `iss` the
/// App's id, `exp` not past and at most 10 minutes after `iat`, `iat` not
/// in the future.
fn check_jwt(shared: &Shared, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let jwt = credential(shared, headers)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[APP_ID.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    // Checked below, by the fake's own clock.
    validation.validate_exp = false;
    let claims = match jsonwebtoken::decode::<Claims>(jwt, &shared.public_key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            let why = match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature".to_owned(),
                other => format!("bad JWT: {other:?}"),
            };
            return Err(refuse(shared, StatusCode::UNAUTHORIZED, &why));
        }
    };
    let now = unix_now(shared);
    if claims.exp <= now {
        return Err(refuse(shared, StatusCode::UNAUTHORIZED, "expired JWT"));
    }
    if claims.iat > now || claims.exp.saturating_sub(claims.iat) > 600 {
        return Err(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "iat in the future or exp too far",
        ));
    }
    Ok(())
}

fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> (StatusCode, String) {
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            if let Err(refused) = check_jwt(shared, headers) {
                return refused;
            }
            if ![INSTALLATION.to_string(), REPO_INSTALLATION.to_string()].contains(&id.to_string())
            {
                return refuse(shared, StatusCode::NOT_FOUND, "no such installation");
            }
            let failing = shared
                .fail_exchanges
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return refuse(shared, StatusCode::BAD_GATEWAY, "Server Error");
            }
            let n = shared.exchanges.fetch_add(1, Ordering::SeqCst);
            let token = format!("ghs_installation{id}token{n}");
            let expires = SystemTime::now() + shared.token_life;
            let expires_at = humantime::format_rfc3339_seconds(expires).to_string();
            // Announced to the second, and held to what was announced.
            let expires = humantime::parse_rfc3339(&expires_at).unwrap();
            shared.issued.lock().unwrap().insert(token.clone(), expires);
            let body = serde_json::json!({
                "token": token, "expires_at": expires_at,
                "permissions": {"statuses": "write", "checks": "write"},
                "repository_selection": "all",
            });
            (StatusCode::CREATED, body.to_string())
        }
        ("GET", ["repos", owner, repo, "installation"]) => {
            if let Err(refused) = check_jwt(shared, headers) {
                return refused;
            }
            shared.lookups.fetch_add(1, Ordering::SeqCst);
            if format!("{owner}/{repo}").to_ascii_lowercase() != REPO {
                return refuse(shared, StatusCode::NOT_FOUND, "Not Found");
            }
            let body = serde_json::json!({"id": REPO_INSTALLATION, "app_id": APP_ID});
            (StatusCode::OK, body.to_string())
        }
        // Anything else a repository has: only with a live installation token.
        ("GET", ["repos", _, _, ..]) => {
            let token = match credential(shared, headers) {
                Ok(t) => t,
                Err(refused) => return refused,
            };
            let expires = shared.issued.lock().unwrap().get(token).copied();
            match expires {
                None => refuse(shared, StatusCode::UNAUTHORIZED, "Bad credentials"),
                Some(at) if SystemTime::now() >= at => {
                    shared.expired_uses.fetch_add(1, Ordering::SeqCst);
                    refuse(
                        shared,
                        StatusCode::UNAUTHORIZED,
                        "expired installation token",
                    )
                }
                Some(_) => (StatusCode::OK, "{}".into()),
            }
        }
        _ => refuse(shared, StatusCode::NOT_FOUND, "Not Found"),
    }
}

impl FakeGithub {
    fn start(public_key: &Path, token_life: Duration, clock_ahead: Duration) -> Self {
        let pem = std::fs::read(public_key).unwrap();
        let shared = Arc::new(Shared {
            public_key: DecodingKey::from_rsa_pem(&pem).unwrap(),
            token_life,
            clock_ahead,
            issued: Mutex::default(),
            exchanges: AtomicUsize::new(0),
            fail_exchanges: AtomicUsize::new(0),
            lookups: AtomicUsize::new(0),
            expired_uses: AtomicUsize::new(0),
            refused: Mutex::default(),
        });
        let state = shared.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap| {
            let shared = state.clone();
            async move { answer(&shared, &method, &uri, &headers) }
        };
        let server =
            qci_test_http::HttpServer::start("fake-github", axum::Router::new().fallback(handler));
        Self {
            base: server.url(),
            shared,
            _server: server,
        }
    }

    fn exchanges(&self) -> usize {
        self.shared.exchanges.load(Ordering::SeqCst)
    }

    fn refused(&self) -> Vec<String> {
        self.shared.refused.lock().unwrap().clone()
    }

    /// A call the way the outbox makes one, with an installation token.
    fn call_with(&self, token: &reqwest::header::HeaderValue) -> u16 {
        let client = qci_server::github::client().unwrap();
        let url = format!("{}/repos/{REPO}/commits/main", self.base);
        qci_server::github::authorized(client.get(url), token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    }
}

fn config(key: &Path, app_id: u64) -> GithubAppConfig {
    GithubAppConfig {
        app_id,
        private_key: SecretSource {
            file: Some(key.to_owned()),
            env: None,
        },
        installation_id: Some(INSTALLATION),
    }
}

#[test]
fn a_token_is_fetched_once_for_many_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "app");
    let github = FakeGithub::start(&public, Duration::from_secs(3600), Duration::ZERO);
    let app = Arc::new(GithubApp::new(&config(&key, APP_ID), &github.base).unwrap());
    assert_eq!(app.default_installation(), Some(INSTALLATION));
    // Several senders at once, as the outbox's threads ask.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            std::thread::spawn(move || {
                // Each sender has its own client, as the outbox's do.
                let client = qci_server::github::client().unwrap();
                (0..10)
                    .map(|_| app.token_for_installation(&client, INSTALLATION).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let tokens: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(tokens.len(), 40);
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(github.call_with(&tokens[0]), 200);
    assert_eq!(github.exchanges(), 1, "refused: {:?}", github.refused());
    // The token is never shown, even in debug output.
    assert!(!format!("{:?}", tokens[0]).contains("ghs_"));
}

#[test]
fn a_token_is_refreshed_before_it_expires() {
    let client = qci_server::github::client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "app");
    let github = FakeGithub::start(&public, Duration::from_secs(3), Duration::ZERO);
    let app = GithubApp::new(&config(&key, APP_ID), &github.base).unwrap();
    let first = app.token_for_installation(&client, INSTALLATION).unwrap();
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let token = app.token_for_installation(&client, INSTALLATION).unwrap();
        assert_eq!(
            github.call_with(&token),
            200,
            "call {calls} at {:?}",
            start.elapsed()
        );
        calls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(calls > 20, "{calls} calls");
    assert_eq!(github.shared.expired_uses.load(Ordering::SeqCst), 0);
    // A 3-second token, refreshed at half its life: one every 1 to 1.5 s.
    let exchanges = github.exchanges();
    assert!((3..=10).contains(&exchanges), "{exchanges} exchanges");
    // The fake does refuse a token past its time.
    assert_eq!(github.call_with(&first), 401);
    assert_eq!(github.refused(), ["expired installation token"]);
}

#[test]
fn the_installation_is_looked_up_by_repository() {
    let client = qci_server::github::client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "app");
    let github = FakeGithub::start(&public, Duration::from_secs(3600), Duration::ZERO);
    let app = GithubApp::new(&config(&key, APP_ID), &github.base).unwrap();
    // GitHub's names are case-insensitive; so is the cache.
    let token = app
        .token_for(&client, "FreedomOfPress/securedrop-client")
        .unwrap();
    assert_eq!(app.token_for(&client, REPO).unwrap(), token);
    assert_eq!(
        app.installation_of(&client, REPO).unwrap(),
        REPO_INSTALLATION
    );
    assert_eq!(github.shared.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(github.exchanges(), 1);
    assert_eq!(github.call_with(&token), 200);
    // Not the configured installation's token: its own.
    assert_ne!(
        app.token_for_installation(&client, INSTALLATION).unwrap(),
        token
    );

    let err = app.token_for(&client, "someone/else").unwrap_err();
    assert!(matches!(err, AppError::NotInstalled { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "the GitHub App is not installed on someone/else ({}/repos/someone/else/installation answered HTTP 404)",
            github.base
        )
    );
}

#[test]
fn a_key_readable_by_others_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = key_pair(dir.path(), "app");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = GithubApp::new(&config(&key, APP_ID), "http://127.0.0.1:9").unwrap_err();
    let path = key.display();
    assert_eq!(
        err.to_string(),
        format!(
            "secret file {path} is readable by others (mode 0644); it must be readable by its owner only: chmod 600 {path}"
        )
    );

    // Not a key at all: said at start too.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = GithubApp::new(&config(&junk, APP_ID), "http://127.0.0.1:9").unwrap_err();
    assert!(matches!(err, AppError::BadKey { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "server.github_app.private_key (file {}) is not an RSA private key in PEM form: InvalidKeyFormat",
            junk.display()
        )
    );
}

#[test]
fn a_jwt_the_fake_rejects_is_a_clear_error() {
    let client = qci_server::github::client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "app");
    let (other_key, _) = key_pair(dir.path(), "other");
    let refusal = |github: &FakeGithub, app: &GithubApp| {
        let err = app
            .token_for_installation(&client, INSTALLATION)
            .unwrap_err();
        assert!(matches!(err, AppError::JwtRefused { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            format!(
                "{}/app/installations/{INSTALLATION}/access_tokens refused the GitHub App's JWT (HTTP 401): \
                 check server.github_app's app_id and private_key, and the host's clock",
                github.base
            )
        );
        github.refused()
    };

    let github = FakeGithub::start(&public, Duration::from_secs(3600), Duration::ZERO);
    // Signed with a key that is not the App's.
    let app = GithubApp::new(&config(&other_key, APP_ID), &github.base).unwrap();
    assert_eq!(refusal(&github, &app), ["bad signature"]);
    // The App's key, another App's id.
    let app = GithubApp::new(&config(&key, APP_ID + 1), &github.base).unwrap();
    assert_eq!(refusal(&github, &app), ["bad signature", "wrong issuer"]);
    assert_eq!(github.exchanges(), 0);

    // GitHub's clock 20 minutes ahead: the JWT has expired by its clock.
    let ahead = FakeGithub::start(
        &public,
        Duration::from_secs(3600),
        Duration::from_secs(1200),
    );
    let app = GithubApp::new(&config(&key, APP_ID), &ahead.base).unwrap();
    assert_eq!(refusal(&ahead, &app), ["expired JWT"]);
    // The lookup by repository says the same of its JWT.
    let err = app.token_for(&client, REPO).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}/repos/{REPO}/installation refused the GitHub App's JWT (HTTP 401): \
             check server.github_app's app_id and private_key, and the host's clock",
            ahead.base
        )
    );
}

/// `qci serve` in App mode reads and checks the key before anything else
/// (the state stays untouched), and refuses a key others may read.
#[test]
fn qci_serve_checks_the_key_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, _) = key_pair(d, "app");
    let secret = d.join("webhook-secret");
    std::fs::write(&secret, support::SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = d.join("host.toml");
    std::fs::write(
        &path,
        format!(
            "[pool]\nstate_dir = \"{0}/state\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             public_url = \"http://127.0.0.1:9\"\ngithub_api_url = \"http://127.0.0.1:9\"\n\
             webhook_secret = {{ file = \"{0}/webhook-secret\" }}\n\
             [server.github_app]\napp_id = {APP_ID}\nprivate_key = {{ file = \"{1}\" }}\n",
            d.display(),
            key.display()
        ),
    )
    .unwrap();
    let serve = || {
        let config = qci_server::HostConfig::load(&path).unwrap();
        let lock = qci_server::StateLock::acquire(config.state_dir()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(qci_server::serve(
                config,
                support::Scripted::new(true),
                None,
                lock,
            ))
            .unwrap_err()
    };
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shown = key.display();
    let err = serve();
    // The operator's to fix: `qci serve` exits 2 on a config error.
    assert!(matches!(err, qci_server::ServeError::Config(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "secret file {shown} is readable by others (mode 0644); it must be readable by its owner only: chmod 600 {shown}"
        )
    );
    // Kept as it should be, but not a key: refused too, naming the file
    // and never showing what it holds.
    std::fs::write(&key, "ghp_notakey\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = serve();
    assert!(matches!(err, qci_server::ServeError::Config(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "server.github_app.private_key (file {shown}) is not an RSA private key in PEM form: InvalidKeyFormat"
        )
    );
    assert!(!d.join("state/server.sqlite").exists());
}

/// A refresh that fails for a moment (502) keeps the current token while it
/// lasts; the next call refreshes. A failure with no valid token is said.
#[test]
fn a_failed_refresh_keeps_the_token_while_it_lasts() {
    let client = qci_server::github::client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "app");
    let github = FakeGithub::start(&public, Duration::from_secs(4), Duration::ZERO);
    let app = GithubApp::new(&config(&key, APP_ID), &github.base).unwrap();
    let first = app.token_for_installation(&client, INSTALLATION).unwrap();
    // Past half its life (2 s, or less: expiry is said to the second).
    std::thread::sleep(Duration::from_millis(2100));
    github.shared.fail_exchanges.store(1, Ordering::SeqCst);
    assert_eq!(
        app.token_for_installation(&client, INSTALLATION).unwrap(),
        first
    );
    assert_eq!(github.call_with(&first), 200);
    let second = app.token_for_installation(&client, INSTALLATION).unwrap();
    assert_ne!(second, first);
    assert_eq!(github.exchanges(), 2);
    assert_eq!(github.refused(), ["Server Error"]);

    // No token yet, and GitHub failing: the error, marked worth a retry.
    github.shared.fail_exchanges.store(1, Ordering::SeqCst);
    let err = app
        .token_for_installation(&client, REPO_INSTALLATION)
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}/app/installations/{REPO_INSTALLATION}/access_tokens answered HTTP 502 Bad Gateway",
            github.base
        )
    );
}
