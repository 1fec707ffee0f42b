//! A job's log: as plain text, as the machine wrote it (`/jobs/JOB/log`),
//! and live over server-sent events (`/jobs/JOB/events`) for the page's
//! script: from its start, then each new line as it arrives, and an `end`
//! event with the final state.

use super::{no_such_job, sections, sgr, unavailable};
use crate::app::App;
use crate::logs::read_lines;
use crate::queue::{self, Job};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use qci_core::status::clean_line;
use std::convert::Infallible;
use std::time::Duration;

/// How much of a log one event carries at most.
const EVENT_BYTES: usize = 256 * 1024;

/// `/jobs/JOB/log`: the log as plain text (what there is so far).
pub async fn log_text(State(app): State<App>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    match app.store.read(move |conn| queue::get(conn, &key)).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_such_job(),
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
        Ok(None) => return no_such_job(),
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

/// One line of the log for the page's script: its runs, and what it says
/// of steps, if anything.
#[derive(serde::Serialize)]
struct LiveLine {
    runs: Vec<sgr::Run>,
    #[serde(flatten)]
    mark: Option<sections::Mark>,
}

/// Lines of the log as the page shows them, for its script: JSON, a list
/// of lines, each its runs (`{"class": "sgr-fg1", "text": "…"}`) as
/// [`sgr::render`] makes them for the page itself (colours kept as
/// classes, every other escape and control character but tab gone), and a
/// step's start or end ([`sections::mark`]) so that the live log is in
/// sections too. The script builds them with `textContent` and
/// `className` only. The log as the machine wrote it stays at
/// `/jobs/JOB/log`, as plain text.
fn live_lines(text: &str) -> String {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let lines: Vec<LiveLine> = text
        .split('\n')
        .map(|line| LiveLine {
            runs: sgr::render(line),
            mark: sections::mark(line),
        })
        .collect();
    serde_json::to_string(&lines).unwrap_or_else(|_| "[]".into())
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
