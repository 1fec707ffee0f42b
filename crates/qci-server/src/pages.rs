//! What people see: the monitor page, a job's page with its log live over
//! server-sent events, the log as plain text, `/healthz` and `/metrics`.
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
//! copy to a terminal would act on.

pub mod results;

use crate::app::App;
use crate::logs::read_lines;
use crate::queue::{self, Job};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::Stream;
use maud::{DOCTYPE, Markup, html};
use qci_core::State as JobState;
use qci_core::status::clean_line;
use std::convert::Infallible;
use std::fmt::Write;
use std::time::Duration;

/// How much of a log one event carries at most.
const EVENT_BYTES: usize = 256 * 1024;

/// Where the pages' script and style sheet are served.
pub const SCRIPT_PATH: &str = "/static/qci.js";
pub const STYLE_PATH: &str = "/static/qci.css";
const SCRIPT: &str = include_str!("../static/qci.js");
const STYLE: &str = include_str!("../static/qci.css");
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

fn page(title: &str, body: Markup) -> Html<String> {
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

fn duration(ms: Option<i64>) -> String {
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

fn row(job: &Job, now: i64) -> Markup {
    let state = job.state();
    let label = if job.needs_approval && state == JobState::Queued {
        "awaiting approval"
    } else {
        state.as_str()
    };
    // Commits are 40 hex; `get` keeps a stored oddity from panicking.
    let short_sha = job.sha.get(..12).unwrap_or(&job.sha);
    html! {
        tr {
            td { a href={ "/jobs/" (job.id) } { (job.id) } }
            td { (clean_line(&job.repo)) }
            td { (clean_line(&job.git_ref)) }
            td { code { (clean_line(short_sha)) } }
            td { (clean_line(&job.author)) }
            td class={ "state " (state.as_str()) } { (label) }
            td { (duration(job.duration_ms(now))) }
            td { (clean_line(&job.description)) }
        }
    }
}

fn table(title: &str, jobs: &[&Job], now: i64) -> Markup {
    html! {
        h2 { (title) " (" (jobs.len()) ")" }
        @if jobs.is_empty() {
            p { "None." }
        } @else {
            table {
                tr {
                    th { "Job" } th { "Repository" } th { "Ref" } th { "Commit" }
                    th { "Author" } th { "State" } th { "Duration" } th { "Description" }
                }
                @for job in jobs { (row(job, now)) }
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

/// How often the monitor reloads itself, in ms (read by the script).
const RELOAD_MS: u32 = 5000;

/// `/`: running, queued and recent jobs. Refreshes itself every 5 s.
pub async fn monitor(State(app): State<App>) -> Response {
    let (live, recent) = match app.store.read(|conn| queue::overview(conn, 50)).await {
        Ok(x) => x,
        Err(e) => return unavailable(e),
    };
    let now = queue::now_ms();
    let running: Vec<&Job> = live
        .iter()
        .filter(|j| j.state() == JobState::Running || j.dispatched_at.is_some())
        .collect();
    let queued: Vec<&Job> = live
        .iter()
        .filter(|j| j.state() == JobState::Queued && j.dispatched_at.is_none())
        .collect();
    let recent: Vec<&Job> = recent.iter().collect();
    let body = html! {
        main data-reload-ms=(RELOAD_MS) {
            h1 { "qci" }
            p { "CI on Qubes OS machines. This page refreshes itself." }
            (table("Running", &running, now))
            (table("Queued", &queued, now))
            (table("Recent", &recent, now))
        }
    };
    page("qci", body).into_response()
}

/// `/jobs/JOB`: the job and its whole log, live while it runs.
pub async fn job(State(app): State<App>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    let got = app
        .store
        .read(move |conn| {
            Ok((
                queue::get(conn, &key)?,
                queue::events(conn, &key)?,
                queue::results::job_tests(conn, &key)?,
                queue::results::artifacts(conn, &key)?,
            ))
        })
        .await;
    let (job, events, tests, artifacts) = match got {
        Ok((Some(job), events, tests, artifacts)) => (job, events, tests, artifacts),
        Ok((None, ..)) => return (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => return unavailable(e),
    };
    let state = job.state();
    let body = html! {
        p { a href="/" { "\u{2190} all jobs" } }
        h1 { "Job " (job.id) }
        table {
            tr { th { "Repository" } td { (clean_line(&job.repo)) } }
            tr { th { "Ref" } td { (clean_line(&job.git_ref)) } }
            tr { th { "Commit" } td { code { (clean_line(&job.sha)) } } }
            tr { th { "Author" } td { (clean_line(&job.author)) } }
            tr { th { "Message" } td { (clean_line(&job.message)) } }
            tr { th { "Context" } td { (clean_line(&job.context)) } }
            tr {
                th { "State" }
                td #state class={ "state " (state.as_str()) } {
                    (state.as_str()) " \u{2014} " (clean_line(&job.description))
                }
            }
        }
        (results::section(job.id.as_str(), tests.as_ref(), &artifacts))
        h2 { "Status events" }
        table #events {
            tr { th { "Time (UTC)" } th { "State" } th { "Description" } th { "From" } }
            @for event in &events {
                tr {
                    td { (qci_core::log::timestamp(
                        std::time::UNIX_EPOCH + Duration::from_millis(event.at.max(0) as u64)
                    )) }
                    td { (event.state.as_str()) }
                    td { (clean_line(&event.description)) }
                    td { (clean_line(&event.source)) }
                }
            }
        }
        h2 { "Log " small { "(" a href={ "/jobs/" (job.id) "/log" } { "text" } ")" } }
        pre #log data-events={ "/jobs/" (job.id) "/events" } {}
    };
    page(&format!("qci job {}", job.id), body).into_response()
}

/// `/jobs/JOB/log`: the log as plain text (what there is so far).
pub async fn log_text(State(app): State<App>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    match app.store.read(move |conn| queue::get(conn, &key)).await {
        Ok(Some(_)) => {}
        Ok(None) => return (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => return unavailable(e),
    }
    let path = app.logs.path(&id);
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response(),
        Err(_) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "(no log yet, or pruned)\n",
        )
            .into_response(),
    }
}

/// Where one log stream stands.
struct Cursor {
    app: App,
    job: String,
    offset: u64,
    watch: Option<tokio::sync::watch::Receiver<crate::logs::Progress>>,
    ended: bool,
}

/// `/jobs/JOB/events`: the log from its start, then each new line as it
/// arrives; an `end` event with the final state closes the stream.
pub async fn log_events(State(app): State<App>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    match app.store.read(move |conn| queue::get(conn, &key)).await {
        Ok(Some(_)) => {}
        Ok(None) => return (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => return unavailable(e),
    }
    let cursor = Cursor {
        app,
        job: id,
        offset: 0,
        watch: None,
        ended: false,
    };
    Sse::new(stream(cursor))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn stream(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(cursor, |mut c| async move {
        if c.ended {
            return None;
        }
        let event = next_event(&mut c).await;
        Some((Ok(event), c))
    })
}

/// Lines of the log as the page shows them: without terminal escapes or
/// other control characters (tabs kept), as in the page's other text. The
/// log as the machine wrote it stays at `/jobs/JOB/log`, as plain text.
fn live_lines(text: &str) -> String {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let lines: Vec<String> = text
        .split('\n')
        .map(|line| qci_core::log::sanitize(line.as_bytes()))
        .collect();
    lines.join("\n")
}

async fn job_state(c: &Cursor) -> Option<Job> {
    let id = c.job.clone();
    c.app
        .store
        .read(move |conn| queue::get(conn, &id))
        .await
        .ok()
        .flatten()
}

async fn next_event(c: &mut Cursor) -> Event {
    loop {
        if c.watch.is_none() {
            c.watch = c.app.logs.watch(&c.job);
        }
        let live = c.watch.as_ref().is_some_and(|w| !w.borrow().done);
        let path = c.app.logs.path(&c.job);
        let offset = c.offset;
        let (text, next) =
            tokio::task::spawn_blocking(move || read_lines(&path, offset, EVENT_BYTES, !live))
                .await
                .unwrap_or_default();
        if !text.is_empty() {
            c.offset = next;
            return Event::default().data(live_lines(&text));
        }
        if live {
            if let Some(w) = c.watch.as_mut()
                && w.changed().await.is_err()
            {
                // The run is over: read the rest, then end.
                c.watch = None;
            }
            continue;
        }
        // Not live: the log is complete once the job is final and published.
        match job_state(c).await {
            Some(job) if job.is_final() && (job.log_published || job.dispatched_at.is_none()) => {
                c.ended = true;
                let data = serde_json::json!({"state": job.state(), "description": clean_line(&job.description)});
                return Event::default().event("end").data(data.to_string());
            }
            None => {
                c.ended = true;
                return Event::default()
                    .event("end")
                    .data("{\"state\":\"gone\",\"description\":\"\"}");
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub async fn healthz(State(app): State<App>) -> Response {
    // Writes that fail (a full disk) are being retried: nothing is lost, but
    // nothing moves either, and the operator must hear of it.
    if let Some(why) = app.store.health.failing() {
        return unavailable(format!("the database cannot be written: {why}"));
    }
    match app
        .store
        .read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
    {
        Ok(_) => "ok\n".into_response(),
        Err(e) => unavailable(e),
    }
}

/// `/metrics`, in Prometheus text format.
pub async fn metrics(State(app): State<App>) -> Response {
    let counts = match app.store.read(queue::counts).await {
        Ok(x) => x,
        Err(e) => return unavailable(e),
    };
    let mut out = String::new();
    out.push_str(
        "# HELP qci_store_write_failures_total Database writes the disk refused (each is tried again).\n\
         # TYPE qci_store_write_failures_total counter\n",
    );
    let _ = writeln!(
        out,
        "qci_store_write_failures_total {}",
        app.store.health.failures()
    );
    out.push_str("# HELP qci_queue_length Jobs waiting for a machine, by Qubes version.\n");
    out.push_str("# TYPE qci_queue_length gauge\n");
    // Label values are written as they are, so each must be one that needs
    // no quoting in the exposition format (no `"`, `\` or newline). A Qubes
    // version was checked on the way in (the host's config and each
    // `.qci.toml`) to be `[A-Za-z0-9.]`; it is checked again here so that a
    // stored oddity is left out rather than breaking the page.
    for (qubes, n) in &counts.queued {
        if qci_core::pipeline::valid_qubes_version(qubes) {
            let _ = writeln!(out, "qci_queue_length{{qubes=\"{qubes}\"}} {n}");
        } else {
            tracing::warn!(
                qubes,
                "a queued job's Qubes version is not one: left out of /metrics"
            );
        }
    }
    out.push_str(
        "# HELP qci_triggers_unresolved Deliveries whose jobs are not worked out yet.\n\
         # TYPE qci_triggers_unresolved gauge\n",
    );
    let _ = writeln!(out, "qci_triggers_unresolved {}", counts.unresolved);
    out.push_str("# HELP qci_jobs Jobs by state.\n# TYPE qci_jobs gauge\n");
    // A state is one of `State`'s fixed words: nothing to escape.
    for (state, n) in &counts.by_state {
        let _ = writeln!(out, "qci_jobs{{state=\"{state}\"}} {n}");
    }
    app.metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
