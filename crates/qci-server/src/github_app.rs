//! GitHub App authentication (`[server.github_app]`): the host signs a
//! short JWT with the App's private key, trades it for an installation
//! token (`POST /app/installations/ID/access_tokens`), and keeps each
//! installation's token until shortly before it expires. Callers ask for a
//! token each time they send ([`GithubApp::token_for`],
//! [`GithubApp::token_for_installation`]) and always get one still valid.
//!
//! Blocking, like the outbox's senders and the resolver, which each send on
//! their own thread with their own blocking client ([`github::client`]) and
//! pass it in: a blocking client must not be made or dropped inside the
//! async `serve`. One [`GithubApp`] is shared by all of them (`Arc`), and a
//! token is fetched once however many ask at once.
//!
//! The JWT is made with `jsonwebtoken` rather than with `rsa` and `sha2`
//! directly: it reads the key in both PEM forms (GitHub hands out PKCS#1;
//! `openssl` writes PKCS#8 by default), does the JWT's base64url framing and
//! its RS256 signature as the standard says, and the tests' fake GitHub
//! verifies with the same crate's `decode` and `Validation` instead of code
//! of our own. Its `rust_crypto` backend is `rsa` and `sha2` underneath, in
//! pure Rust (the `aws_lc_rs` one would add a C build to every host build).

use crate::config::{ConfigError, GithubAppConfig};
use crate::github::{self, GithubError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use qci_core::retry::Failure;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::HeaderValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// How far back the JWT's `iat` is set, for a GitHub clock a little behind.
const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// The JWT's life from now; GitHub refuses more than 10 minutes.
const JWT_LIFE: Duration = Duration::from_secs(9 * 60);
/// A token is replaced this long before it expires, or at half its life
/// when that comes first (a short-lived token still gets refreshed in time).
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Why no installation token could be had; one line each.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Key(#[from] ConfigError),
    #[error(
        "server.github_app.private_key ({origin}) is not an RSA private key in PEM form: {source}"
    )]
    BadKey {
        origin: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign the GitHub App's JWT: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// GitHub said 401 to the JWT: the wrong key, app id, or clock.
    #[error(
        "{url} refused the GitHub App's JWT (HTTP 401): check server.github_app's app_id and private_key, and the host's clock"
    )]
    JwtRefused { url: String },
    /// The repository's owner has not installed the App on it.
    #[error("the GitHub App is not installed on {repo} ({url} answered HTTP 404)")]
    NotInstalled { repo: String, url: String },
    /// No answer, or one that may pass later (5xx, rate limit).
    #[error(transparent)]
    Transient(GithubError),
    #[error(transparent)]
    Github(GithubError),
    #[error("{url}: the installation token is not usable in an HTTP header")]
    BadToken { url: String },
    #[error("{url}: expires_at {value:?} is not an RFC 3339 time")]
    BadExpiry { url: String, value: String },
}

impl AppError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl From<Failure<GithubError>> for AppError {
    fn from(failure: Failure<GithubError>) -> Self {
        match failure {
            Failure::Transient { error, .. } => Self::Transient(error),
            Failure::Permanent(error) => Self::Github(error),
        }
    }
}

/// No token yet, as a failed request to GitHub: tried again within the
/// budget when GitHub may give one later, given up on at once otherwise
/// (the App not installed, its key refused).
impl From<AppError> for Failure<GithubError> {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Transient(error) => Failure::Transient { error, wait: None },
            AppError::Github(error) => Failure::Permanent(error),
            other => Failure::Permanent(GithubError::NoToken(other.to_string())),
        }
    }
}

/// The JWT's claims, as GitHub wants them.
#[derive(serde::Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

/// `POST /app/installations/ID/access_tokens` answers this (and more).
#[derive(serde::Deserialize)]
struct AccessToken {
    token: String,
    expires_at: String,
}

/// `GET /repos/OWNER/REPO/installation` answers this (and more).
#[derive(serde::Deserialize)]
struct Installation {
    id: u64,
}

/// An installation token, when to fetch the next, and when it expires.
struct Cached {
    token: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

/// The host as a GitHub App: its key, and the installation tokens it holds.
pub struct GithubApp {
    app_id: u64,
    key: EncodingKey,
    default_installation: Option<u64>,
    api_url: String,
    /// `owner/repo` (lower case) → its installation, looked up once.
    installations: Mutex<HashMap<String, u64>>,
    /// One slot per installation, so a fetch for one holds up no other.
    tokens: Mutex<HashMap<u64, Arc<Mutex<Option<Cached>>>>>,
}

impl std::fmt::Debug for GithubApp {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves a cache that is still a valid cache.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl GithubApp {
    /// Reads the private key (refused when group or others may read its
    /// file) and signs one JWT with it, so a key that cannot sign is said
    /// at start rather than at the first status.
    pub fn new(config: &GithubAppConfig, api_url: &str) -> Result<Self, AppError> {
        let pem = config.private_key.read()?;
        let bad_key = |source| AppError::BadKey {
            origin: config.private_key.origin(),
            source,
        };
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(bad_key)?;
        let app = Self {
            app_id: config.app_id,
            key,
            default_installation: config.installation_id,
            api_url: api_url.trim_end_matches('/').to_owned(),
            installations: Mutex::default(),
            tokens: Mutex::default(),
        };
        app.jwt().map_err(|e| match e {
            AppError::Sign(e) => bad_key(e),
            other => other,
        })?;
        Ok(app)
    }

    /// The installation named in the config, if any.
    pub fn default_installation(&self) -> Option<u64> {
        self.default_installation
    }

    /// A JWT that says "this is the App", good for [`JWT_LIFE`]: for the
    /// App's own calls (`/app/...`), such as its hook's deliveries.
    pub fn jwt(&self) -> Result<HeaderValue, AppError> {
        let now = SystemTime::now();
        let claims = Claims {
            iat: unix_secs(now.checked_sub(JWT_BACKDATE).unwrap_or(now)),
            exp: unix_secs(now.checked_add(JWT_LIFE).unwrap_or(now)),
            iss: self.app_id.to_string(),
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(AppError::Sign)?;
        // base64url and dots: always a valid header value.
        qci_github::bearer(&jwt).ok_or_else(|| AppError::BadToken {
            url: "the JWT".into(),
        })
    }

    /// A valid token for `repo` (`OWNER/REPO`): its installation is looked
    /// up once (`GET /repos/OWNER/REPO/installation`), then as
    /// [`Self::token_for_installation`].
    pub fn token_for(&self, client: &Client, repo: &str) -> Result<HeaderValue, AppError> {
        let id = self.installation_of(client, repo)?;
        self.token_for_installation(client, id)
    }

    /// A valid token for installation `id` (a webhook's `installation.id`):
    /// the cached one, or a fresh one once that is near its end.
    pub fn token_for_installation(
        &self,
        client: &Client,
        id: u64,
    ) -> Result<HeaderValue, AppError> {
        let slot = lock(&self.tokens).entry(id).or_default().clone();
        // Held across the exchange: whoever asks meanwhile waits for this
        // token instead of fetching one more.
        let mut cached = lock(&slot);
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        match self.exchange(client, id) {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *cached = Some(fresh);
                Ok(token)
            }
            // GitHub away for a moment: the old token while it lasts; the
            // next call tries again.
            Err(e) if e.is_transient() => match cached.as_ref() {
                Some(c) if Instant::now() < c.expires_at => {
                    tracing::warn!(
                        installation = id,
                        "cannot refresh the installation token yet, using the current one: {e}"
                    );
                    Ok(c.token.clone())
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Forgets `token`, `repo`'s cached installation token, after GitHub
    /// answered 401 to it (revoked, or expired earlier than announced): the
    /// next [`Self::token_for`] fetches a new one. A token cached since
    /// (another sender refreshed it) is kept.
    pub fn invalidate(&self, repo: &str, token: &HeaderValue) {
        let Some(id) = lock(&self.installations)
            .get(&repo.to_ascii_lowercase())
            .copied()
        else {
            return;
        };
        let Some(slot) = lock(&self.tokens).get(&id).cloned() else {
            return;
        };
        let mut cached = lock(&slot);
        if cached.as_ref().is_some_and(|c| c.token == *token) {
            tracing::info!(
                installation = id,
                "GitHub refused the installation token; fetching a new one"
            );
            *cached = None;
        }
    }

    /// Notes that `repo` is in installation `id`, as a signed webhook
    /// says (`installation.id`): its calls then need no lookup.
    pub fn remember_installation(&self, repo: &str, id: u64) {
        let name = repo.to_ascii_lowercase();
        let mut known = lock(&self.installations);
        if known.get(&name) != Some(&id) {
            tracing::debug!(installation = id, "{repo} is in installation {id}");
            known.insert(name, id);
        }
    }

    /// A valid token for organization `org`'s installation, for calls
    /// about the organization itself (its runners): looked up once with
    /// `GET /orgs/ORG/installation`.
    pub fn token_for_org(&self, client: &Client, org: &str) -> Result<HeaderValue, AppError> {
        let id = self.installation_at(client, &format!("orgs/{org}"), &format!("org:{org}"))?;
        self.token_for_installation(client, id)
    }

    /// `repo`'s installation id, asked of GitHub the first time.
    pub fn installation_of(&self, client: &Client, repo: &str) -> Result<u64, AppError> {
        self.installation_at(client, &format!("repos/{repo}"), repo)
    }

    /// The installation id behind `GET /PATH/installation` (`repos/OWNER/REPO`
    /// or `orgs/ORG`), asked of GitHub the first time and cached as `key`:
    /// a repository under its `OWNER/REPO`, as [`Self::remember_installation`]
    /// keeps it, an organization as `org:ORG` (no slug has a `:`).
    fn installation_at(&self, client: &Client, path: &str, key: &str) -> Result<u64, AppError> {
        let name = key.to_ascii_lowercase();
        if let Some(id) = lock(&self.installations).get(&name) {
            return Ok(*id);
        }
        let url = format!("{}/{path}/installation", self.api_url);
        let reply = github::authorized(client.get(&url), &self.jwt()?)
            .send()
            .map_err(|e| github::unanswered(&url, e))?;
        match reply.status() {
            StatusCode::UNAUTHORIZED => return Err(AppError::JwtRefused { url }),
            StatusCode::NOT_FOUND => {
                return Err(AppError::NotInstalled {
                    repo: key.to_owned(),
                    url,
                });
            }
            status if !status.is_success() => return Err(github::refused(&url, &reply).into()),
            _ => {}
        }
        let found: Installation = read_json(&url, reply)?;
        lock(&self.installations).insert(name, found.id);
        Ok(found.id)
    }

    /// Trades a fresh JWT for installation `id`'s token.
    fn exchange(&self, client: &Client, id: u64) -> Result<Cached, AppError> {
        let url = format!("{}/app/installations/{id}/access_tokens", self.api_url);
        let reply = github::authorized(client.post(&url), &self.jwt()?)
            .send()
            .map_err(|e| github::unanswered(&url, e))?;
        if reply.status() == StatusCode::UNAUTHORIZED {
            return Err(AppError::JwtRefused { url });
        }
        if !reply.status().is_success() {
            return Err(github::refused(&url, &reply).into());
        }
        let answer: AccessToken = read_json(&url, reply)?;
        let expires_at =
            humantime::parse_rfc3339(&answer.expires_at).map_err(|_| AppError::BadExpiry {
                url: url.clone(),
                value: answer.expires_at.clone(),
            })?;
        let token = qci_github::bearer(&answer.token)
            .ok_or_else(|| AppError::BadToken { url: url.clone() })?;
        // By this host's clock; a token already past (a skewed clock) is
        // used once and fetched again next time.
        let life = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let keep = life - REFRESH_MARGIN.min(life / 2);
        tracing::debug!(
            installation = id,
            "fetched an installation token for {}s",
            life.as_secs()
        );
        let now = Instant::now();
        Ok(Cached {
            token,
            refresh_at: now + keep,
            expires_at: now + life,
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    url: &str,
    reply: reqwest::blocking::Response,
) -> Result<T, AppError> {
    let body = reply.bytes().map_err(|e| github::unanswered(url, e))?;
    serde_json::from_slice(&body).map_err(|source| {
        AppError::Github(GithubError::Unexpected {
            url: url.to_owned(),
            source,
        })
    })
}
