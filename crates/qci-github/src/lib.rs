//! How qci talks to GitHub's REST API: the headers every call carries, a
//! blocking client that follows no redirect, which failures are worth
//! retrying and how long GitHub asked us to wait, and a refusal's body
//! quoted without the token. The dev VM's sinks and the host's GitHub
//! client both speak through these rules, so they cannot drift apart.
//! dom0 never links this crate: it has no network code.

#![forbid(unsafe_code)]

use qci_core::retry::Failure;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};
use std::io::Read;
use std::time::{Duration, SystemTime};

/// GitHub's media type for its REST API.
pub const MEDIA_TYPE: &str = "application/vnd.github+json";
/// The REST API version qci was written against.
pub const API_VERSION: &str = "2022-11-28";

/// A blocking client that follows no redirect: the token must only ever go
/// to the configured URL, a status post must not be replayed elsewhere,
/// and a moved repository is an error to fix in the config, not something
/// to chase. `timeout` bounds each request, connecting included.
pub fn client(timeout: Duration) -> reqwest::Result<Client> {
    Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// `Bearer TOKEN` as a header value marked sensitive, so it never shows in
/// debug output; `None` if the token cannot go in a header.
pub fn bearer(token: &str) -> Option<HeaderValue> {
    let mut header = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// qci's User-Agent and the token: what every call with a token carries,
/// to GitHub or to the host's relay.
pub fn identified(request: RequestBuilder, token: &HeaderValue) -> RequestBuilder {
    request
        .header(USER_AGENT, "qci")
        .header(AUTHORIZATION, token.clone())
}

/// GitHub's media type and API version, which only GitHub wants.
pub fn github_api(request: RequestBuilder) -> RequestBuilder {
    request
        .header(ACCEPT, MEDIA_TYPE)
        .header("X-GitHub-Api-Version", API_VERSION)
}

/// Everything a call to GitHub carries: [`identified`] and [`github_api`].
pub fn authorized(request: RequestBuilder, token: &HeaderValue) -> RequestBuilder {
    github_api(identified(request, token))
}

/// What an unsuccessful answer means for the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 5xx, 429 and a rate-limited 403 may pass later; `wait` is what the
    /// server asked for, if it did (otherwise the backoff applies).
    Retry { wait: Option<Duration> },
    /// Anything else will fail the same way again.
    Stop,
}

impl Verdict {
    /// The verdict on an unsuccessful `reply`.
    pub fn of(reply: &Response) -> Self {
        Self::from_parts(reply.status(), reply.headers(), SystemTime::now())
    }

    /// [`Verdict::of`] from the status and headers, at `now`.
    pub fn from_parts(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Self {
        let transient = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN && rate_limited(headers));
        if transient {
            Self::Retry {
                wait: server_wait(headers, now),
            }
        } else {
            Self::Stop
        }
    }

    /// `error`, as the failure this verdict makes it.
    pub fn failure<E>(self, error: E) -> Failure<E> {
        match self {
            Self::Retry { wait } => Failure::Transient { error, wait },
            Self::Stop => Failure::Permanent(error),
        }
    }
}

/// Whether a 403 is a rate limit (retry later) rather than a permission
/// problem that retrying won't fix: only when GitHub says so in the headers.
pub fn rate_limited(headers: &HeaderMap) -> bool {
    header(headers, "retry-after").is_some()
        || header(headers, "x-ratelimit-remaining") == Some("0")
}

/// How long GitHub asked us to wait: `Retry-After` in seconds (GitHub does
/// not send the HTTP-date form), else until `x-ratelimit-reset` (epoch
/// seconds) when no requests remain. `None` leaves it to the backoff.
pub fn server_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(secs) = header(headers, "retry-after").and_then(|v| v.parse().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header(headers, "x-ratelimit-remaining") != Some("0") {
        return None;
    }
    let reset = header(headers, "x-ratelimit-reset")?.parse().ok()?;
    let reset = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(reset))?;
    // A reset already past (or a skewed clock) falls back to the backoff.
    reset.duration_since(now).ok().filter(|d| !d.is_zero())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The start of a refusal's body, which usually says why: at most
/// `max_bytes`, trimmed, cut on a character boundary. `token` is masked
/// before cutting, so a cut cannot leave half of it.
pub fn refusal_body(reply: Response, token: &str, max_bytes: usize) -> String {
    let mut head = Vec::new();
    let limit = (max_bytes + token.len()) as u64;
    // The body only explains the refusal; failing to read it changes nothing.
    let _ = reply.take(limit).read_to_end(&mut head);
    let text = String::from_utf8_lossy(&head);
    let text = if token.is_empty() {
        text
    } else {
        text.replace(token, "***").into()
    };
    let text = text.trim();
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_wait_reads_retry_after_then_the_rate_limit_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, value.parse().unwrap());
            }
            h
        };
        let wait = |pairs: &[(&'static str, &str)]| server_wait(&headers(pairs), now);

        assert_eq!(wait(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        let limited = [
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1010"),
        ];
        assert_eq!(wait(&limited), Some(Duration::from_secs(10)));
        // Requests left, a reset in the past, or nonsense: use the backoff.
        assert_eq!(
            wait(&[
                ("x-ratelimit-remaining", "5"),
                ("x-ratelimit-reset", "1010")
            ]),
            None
        );
        assert_eq!(
            wait(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "990")]),
            None
        );
        assert_eq!(
            wait(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "99999999999999999999")
            ]),
            None
        );
        assert_eq!(
            wait(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "18446744073709551615")
            ]),
            None
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            None
        );
        assert!(rate_limited(&headers(&[("retry-after", "soon")])));
        assert!(rate_limited(&headers(&limited)));
        assert!(!rate_limited(&headers(&[("x-ratelimit-remaining", "4")])));
    }

    #[test]
    fn only_5xx_429_and_a_rate_limited_403_are_retried() {
        let now = SystemTime::now();
        let none = HeaderMap::new();
        let mut limited = HeaderMap::new();
        limited.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        let verdict = |code: u16, headers: &HeaderMap| {
            Verdict::from_parts(StatusCode::from_u16(code).unwrap(), headers, now)
        };
        for code in [500, 502, 503, 429] {
            assert_eq!(
                verdict(code, &none),
                Verdict::Retry { wait: None },
                "{code}"
            );
        }
        assert_eq!(verdict(403, &limited), Verdict::Retry { wait: None });
        for code in [400, 401, 403, 404, 409, 422] {
            assert_eq!(verdict(code, &none), Verdict::Stop, "{code}");
        }
    }

    #[test]
    fn a_bearer_token_is_sensitive_and_must_fit_a_header() {
        let header = bearer("t0ken").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Bearer t0ken");
        assert!(bearer("bad\ntoken").is_none());
    }
}
