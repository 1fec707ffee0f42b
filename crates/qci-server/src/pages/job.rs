//! `/jobs/JOB`: the job, where and when it ran, its status events and its
//! log. A finished job's log is in sections, one per step with its result
//! and duration, the failing one open; a running job's log follows live
//! (the script, over `/jobs/JOB/events`), and is swapped for the sections
//! when the job ends.

use super::sections::{self, Section};
use super::{duration, no_such_job, page, results, sgr, unavailable, utc, waiting};
use crate::app::App;
use crate::queue::{self, Job};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use qci_core::status::clean_line;

/// Whether the log is complete: the job is final and its log published
/// (or it never reached a machine).
fn log_complete(job: &Job) -> bool {
    job.is_final() && (job.log_published || job.dispatched_at.is_none())
}

/// Which sections are open: each that failed; if none did in a job that
/// did not succeed, the last one (what it was doing when it ended).
fn open_sections(list: &[Section], job: &Job) -> Vec<bool> {
    let mut open: Vec<bool> = list
        .iter()
        .map(|s| s.outcome.as_ref().is_some_and(|o| o.failed()))
        .collect();
    if job.state() != qci_core::State::Success
        && !open.contains(&true)
        && let Some(last) = open.last_mut()
    {
        *last = true;
    }
    open
}

fn line(text: &str) -> Markup {
    html! {
        @for run in sgr::render(text) {
            @if run.class.is_empty() { (run.text) } @else { span class=(run.class) { (run.text) } }
        }
        "\n"
    }
}

fn section(job: &Job, s: &Section, open: bool) -> Markup {
    let lines = s.lines.len() + s.cut;
    html! {
        details.section open[open] {
            summary {
                span.name { (s.title()) }
                @if let Some(outcome) = &s.outcome {
                    " " span class={ "state " (outcome.state()) } { (outcome.label()) }
                }
                @if let Some(took) = &s.duration { " in " (took) }
                " " small { "(" (lines) @if lines == 1 { " line" } @else { " lines" } ")" }
            }
            @if s.cut > 0 {
                p.cut {
                    "\u{2026} " (s.cut) " lines cut; full text at "
                    a href={ "/jobs/" (job.id) "/log" } { "/jobs/" (job.id) "/log" }
                }
            }
            pre { @for text in &s.lines { (line(text)) } }
        }
    }
}

/// The whole log in sections, read a line at a time off the async threads.
async fn sectioned_log(app: &App, job: &Job) -> Markup {
    let path = app.logs.path(job.id.as_str());
    let state = job.state();
    let read = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(path)?;
        sections::read(std::io::BufReader::new(file), state)
    })
    .await;
    let list = match read {
        Ok(Ok(list)) => list,
        _ => return html! { div #log { p { "(no log, or pruned)" } } },
    };
    let open = open_sections(&list, job);
    html! {
        div #log {
            @if list.is_empty() { p { "(the log is empty)" } }
            @for (s, open) in list.iter().zip(open) { (section(job, s, open)) }
        }
    }
}

/// `/jobs/JOB`: the job and its log, live while it runs.
pub async fn job(State(app): State<App>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    let got = app
        .store
        .read(move |conn| {
            Ok((
                queue::get(conn, &key)?,
                queue::events(conn, &key)?,
                queue::overview(conn, 0)?.0,
                queue::results::job_tests(conn, &key)?,
                queue::results::artifacts(conn, &key)?,
            ))
        })
        .await;
    let (job, events, live, tests, artifacts) = match got {
        Ok((Some(job), events, live, tests, artifacts)) => (job, events, live, tests, artifacts),
        Ok((None, ..)) => return no_such_job(),
        Err(e) => return unavailable(e),
    };
    let why = if waiting::waits(&job) {
        waiting::reasons(&app, &live).await.remove(&job.id)
    } else {
        None
    };
    let log = if log_complete(&job) {
        sectioned_log(&app, &job).await
    } else {
        html! { div #log data-events={ "/jobs/" (job.id) "/events" } {} }
    };
    let state = job.state();
    let now = queue::now_ms();
    let started = job.started_at.or(job.dispatched_at);
    let none = "\u{2014}";
    let body = html! {
        p { a href="/" { "\u{2190} all jobs" } " \u{b7} " a href="/pool" { "machines" } }
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
            @if let Some(why) = &why {
                tr { th { "Waiting" } td #waiting .waiting { (why) } }
            }
            tr { th { "Machine" } td #machine { (clean_line(job.machine.as_deref().unwrap_or(none))) } }
            tr { th { "Snapshot" } td #snapshot { (clean_line(job.snapshot.as_deref().unwrap_or(none))) } }
            tr { th { "Queued (UTC)" } td { (utc(job.created_at)) } }
            tr { th { "Started (UTC)" } td #started { (started.map(utc).unwrap_or_else(|| none.into())) } }
            tr { th { "Ended (UTC)" } td #ended { (job.finished_at.map(utc).unwrap_or_else(|| none.into())) } }
            tr { th { "Duration" } td #duration { (duration(job.duration_ms(now))) } }
        }
        (results::section(job.id.as_str(), tests.as_ref(), &artifacts))
        h2 { "Status events" }
        table #events {
            tr { th { "Time (UTC)" } th { "State" } th { "Description" } th { "From" } }
            @for event in &events {
                tr {
                    td { (utc(event.at)) }
                    td { (event.state.as_str()) }
                    td { (clean_line(&event.description)) }
                    td { (clean_line(&event.source)) }
                }
            }
        }
        h2 { "Log " small { "(" a href={ "/jobs/" (job.id) "/log" } { "text" } ")" } }
        (log)
    };
    page(&format!("qci job {}", job.id), body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_keeps_its_colours_as_classes_and_its_markup_as_text() {
        let shown = line("\x1b[1;31m<script>alert(1)</script>\x1b[0m ok\x1b]0;t\x07").into_string();
        assert_eq!(
            shown,
            "<span class=\"sgr-bold sgr-fg1\">&lt;script&gt;alert(1)&lt;/script&gt;</span> ok\n"
        );
    }
}
