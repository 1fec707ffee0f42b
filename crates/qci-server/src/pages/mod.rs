//! What people see: the monitor page, a job's page with its log in
//! sections (live over server-sent events while it runs), the log as plain
//! text, the machines (`/pool`), `/healthz` and `/metrics`.
//! Plain HTML, one script and one style sheet, served from the binary: no
//! build step and nothing fetched from elsewhere.
//!
//! Authors, refs, commit messages and log lines are hostile text, so the
//! HTML is written with maud: it escapes every value by default and checks
//! the markup at compile time, with no template files to ship or load. The
//! pages carry no inline script or style, and [`CONTENT_SECURITY_POLICY`]
//! forbids both, so text that ever got through as markup still could not run.
//! Text from outside is also shown through `clean_line`, without terminal
//! escapes and other control characters, which a browser would keep and a
//! copy to a terminal would act on. A log line's colours (SGR) are the one
//! exception, shown as classes ([`sgr`]).
//!
//! - this module: the layout, the script and style sheet, the policy
//! - [`monitor`]: `/`; [`job`]: `/jobs/JOB`; [`log`]: its log as text and live
//! - [`sections`]: a log cut into steps; [`sgr`]: a line's colours as classes
//! - [`waiting`]: why a queued job waits; [`pool`]: `/pool`
//! - [`results`]: a job's tests, screenshot and files; `/tests`
//! - [`health`]: `/healthz` and `/metrics`

pub mod health;
pub mod job;
pub mod log;
pub mod monitor;
pub mod pool;
pub mod results;
pub mod sections;
pub mod sgr;
pub mod waiting;

pub use health::{healthz, metrics};
pub use job::job;
pub use log::{log_events, log_text};
pub use monitor::monitor;
pub use pool::pool;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use std::time::Duration;

/// Where the pages' script and style sheet are served.
pub const SCRIPT_PATH: &str = "/static/qci.js";
pub const STYLE_PATH: &str = "/static/qci.css";
const SCRIPT: &str = include_str!("../../static/qci.js");
const STYLE: &str = include_str!("../../static/qci.css");
/// The paths are fixed, so the pages ask for them with the version: an
/// upgraded host is not answered from a browser's cache of the old files.
const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");
const ASSET_CACHE: &str = "public, max-age=3600";

/// Sent with every response: nothing but our own script and style sheet,
/// no inline script or style, connections only back to us (the live log
/// and the refresh of the events), and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    connect-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The layer that puts [`CONTENT_SECURITY_POLICY`] on every response.
pub async fn content_security_policy(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// `/static/qci.js`: the pages' behaviour.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `/static/qci.css`: the pages' look.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn page(title: &str, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width";
                title { (title) }
                link rel="stylesheet" href={ (STYLE_PATH) "?v=" (ASSET_VERSION) };
                script src={ (SCRIPT_PATH) "?v=" (ASSET_VERSION) } defer {}
            }
            body { (body) }
        }
    };
    Html(markup.into_string())
}

/// A duration in ms as a person reads it: `42s`, `3m 05s`, `1h 02m`.
pub(crate) fn duration(ms: Option<i64>) -> String {
    match ms {
        None => String::new(),
        Some(ms) => {
            let s = ms.max(0) / 1000;
            if s >= 3600 {
                format!("{}h {:02}m", s / 3600, s / 60 % 60)
            } else if s >= 60 {
                format!("{}m {:02}s", s / 60, s % 60)
            } else {
                format!("{s}s")
            }
        }
    }
}

/// A time in Unix ms, in UTC as the log stamps it.
pub(crate) fn utc(ms: i64) -> String {
    qci_core::log::timestamp(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

pub(crate) fn no_such_job() -> Response {
    (StatusCode::NOT_FOUND, "no such job\n").into_response()
}
