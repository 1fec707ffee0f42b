//! What people see: the monitor page, a job's page with its log live over
//! server-sent events, the log as plain text, `/healthz` and `/metrics`.
//! Plain HTML and a little JavaScript, served from the binary: no build
//! step and nothing fetched from elsewhere.

use crate::app::App;
use crate::logs::read_lines;
use crate::queue::{self, Job};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::Stream;
use std::convert::Infallible;
use std::fmt::Write;
use std::time::Duration;

/// How much of a log one event carries at most.
const EVENT_BYTES: usize = 256 * 1024;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;width:100%;margin-bottom:1.5em}\
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;font-size:.9em}\
th{background:#f4f4f4}td:first-child{white-space:nowrap}code,pre{font-family:monospace}\
pre#log{background:#111;color:#ddd;padding:1em;overflow-x:auto;min-height:10em;white-space:pre-wrap}\
.state{font-weight:bold}.success{color:#1a7f37}.failure,.error{color:#cf222e}\
.canceled{color:#777}.running{color:#9a6700}.queued{color:#0969da}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\
         <style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    ))
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

fn row(job: &Job, now: i64) -> String {
    let state = if job.needs_approval && job.state.as_str() == "queued" {
        "awaiting approval"
    } else {
        job.state.as_str()
    };
    format!(
        "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{repo}</td><td>{git_ref}</td>\
         <td><code>{sha}</code></td><td>{author}</td><td class=\"state {class}\">{state}</td>\
         <td>{dur}</td><td>{desc}</td></tr>",
        id = escape(job.id.as_str()),
        repo = escape(&job.repo),
        git_ref = escape(&job.git_ref),
        sha = escape(&job.sha[..job.sha.len().min(12)]),
        author = escape(&job.author),
        class = escape(job.state.as_str()),
        state = escape(state),
        dur = duration(job.duration_ms(now)),
        desc = escape(&job.description),
    )
}

fn table(title: &str, jobs: &[&Job], now: i64) -> String {
    let mut out = format!("<h2>{title} ({})</h2>", jobs.len());
    if jobs.is_empty() {
        out.push_str("<p>None.</p>");
        return out;
    }
    out.push_str(
        "<table><tr><th>Job</th><th>Repository</th><th>Ref</th><th>Commit</th><th>Author</th>\
         <th>State</th><th>Duration</th><th>Description</th></tr>",
    );
    for job in jobs {
        out.push_str(&row(job, now));
    }
    out.push_str("</table>");
    out
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

/// `/`: running, queued and recent jobs. Refreshes itself every 5 s.
pub async fn monitor(State(app): State<App>) -> Response {
    let (live, recent) = match app.store.read(|conn| queue::overview(conn, 50)).await {
        Ok(x) => x,
        Err(e) => return unavailable(e),
    };
    let now = queue::now_ms();
    let running: Vec<&Job> = live
        .iter()
        .filter(|j| j.state.as_str() == "running" || j.dispatched_at.is_some())
        .collect();
    let queued: Vec<&Job> = live
        .iter()
        .filter(|j| j.state.as_str() == "queued" && j.dispatched_at.is_none())
        .collect();
    let recent: Vec<&Job> = recent.iter().collect();
    let mut body =
        String::from("<h1>qci</h1><p>CI on Qubes OS machines. This page refreshes itself.</p>");
    body.push_str(&table("Running", &running, now));
    body.push_str(&table("Queued", &queued, now));
    body.push_str(&table("Recent", &recent, now));
    body.push_str("<script>setTimeout(function(){location.reload()},5000)</script>");
    page("qci", &body).into_response()
}

/// `/jobs/JOB`: the job and its whole log, live while it runs.
pub async fn job(State(app): State<App>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    let got = app
        .store
        .read(move |conn| Ok((queue::get(conn, &key)?, queue::events(conn, &key)?)))
        .await;
    let (job, events) = match got {
        Ok((Some(job), events)) => (job, events),
        Ok((None, _)) => return (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => return unavailable(e),
    };
    let id = escape(job.id.as_str());
    let mut body = format!(
        "<p><a href=\"/\">&larr; all jobs</a></p><h1>Job {id}</h1><table>\
         <tr><th>Repository</th><td>{}</td></tr><tr><th>Ref</th><td>{}</td></tr>\
         <tr><th>Commit</th><td><code>{}</code></td></tr><tr><th>Author</th><td>{}</td></tr>\
         <tr><th>Message</th><td>{}</td></tr><tr><th>Context</th><td>{}</td></tr>\
         <tr><th>State</th><td id=\"state\" class=\"state {}\">{} &mdash; {}</td></tr></table>",
        escape(&job.repo),
        escape(&job.git_ref),
        escape(&job.sha),
        escape(&job.author),
        escape(&job.message),
        escape(&job.context),
        escape(job.state.as_str()),
        escape(job.state.as_str()),
        escape(&job.description),
    );
    body.push_str("<h2>Status events</h2><table id=\"events\"><tr><th>Time (UTC)</th><th>State</th><th>Description</th><th>From</th></tr>");
    for (at, state, description, source) in &events {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(*at as u64);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            qci_core::log::timestamp(at),
            escape(state),
            escape(description),
            escape(source)
        );
    }
    let _ = write!(
        body,
        "</table><h2>Log <small>(<a href=\"/jobs/{id}/log\">text</a>)</small></h2>\
         <pre id=\"log\"></pre>\
         <script>\
         var log=document.getElementById('log');\
         var es=new EventSource('/jobs/{id}/events');\
         es.onmessage=function(e){{var end=window.innerHeight+window.scrollY>=document.body.offsetHeight-40;\
         log.appendChild(document.createTextNode(e.data+'\\n'));if(end)window.scrollTo(0,document.body.scrollHeight);}};\
         es.addEventListener('end',function(e){{var s=document.getElementById('state');\
         var d=JSON.parse(e.data);s.textContent=d.state+' \\u2014 '+d.description;s.className='state '+d.state;es.close();\
         fetch(location.href).then(function(r){{return r.text();}}).then(function(t){{\
         var n=new DOMParser().parseFromString(t,'text/html').getElementById('events');\
         if(n)document.getElementById('events').replaceWith(n);}});}});\
         </script>"
    );
    page(&format!("qci job {}", job.id), &body).into_response()
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
            return Event::default().data(text.strip_suffix('\n').unwrap_or(&text));
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
                let data = serde_json::json!({"state": job.state, "description": job.description});
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
    for (qubes, n) in &counts.queued {
        let _ = writeln!(out, "qci_queue_length{{qubes=\"{}\"}} {n}", escape(qubes));
    }
    out.push_str(
        "# HELP qci_triggers_unresolved Deliveries whose jobs are not worked out yet.\n\
         # TYPE qci_triggers_unresolved gauge\n",
    );
    let _ = writeln!(out, "qci_triggers_unresolved {}", counts.unresolved);
    out.push_str("# HELP qci_jobs Jobs by state.\n# TYPE qci_jobs gauge\n");
    for (state, n) in &counts.by_state {
        let _ = writeln!(out, "qci_jobs{{state=\"{}\"}} {n}", escape(state));
    }
    app.metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
