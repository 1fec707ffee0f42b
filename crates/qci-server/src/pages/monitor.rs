//! `/`: running, queued and recent jobs; a queued job says why it waits.
//! Refreshes itself every 5 s.

use super::{duration, page, unavailable, waiting};
use crate::app::App;
use crate::queue::{self, Job};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use qci_core::State as JobState;
use qci_core::status::clean_line;
use std::collections::HashMap;

/// How often the monitor reloads itself, in ms (read by the script).
const RELOAD_MS: u32 = 5000;

fn row(job: &Job, now: i64, why: Option<&String>) -> Markup {
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
            td {
                @if let Some(why) = why {
                    span class="waiting" { (why) }
                    @if !job.description.is_empty() { br; }
                }
                (clean_line(&job.description))
            }
        }
    }
}

fn table(title: &str, jobs: &[&Job], now: i64, why: &HashMap<qci_core::JobId, String>) -> Markup {
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
                @for job in jobs { (row(job, now, why.get(&job.id))) }
            }
        }
    }
}

/// `/`: running, queued and recent jobs. Refreshes itself every 5 s.
pub async fn monitor(State(app): State<App>) -> Response {
    let (live, recent) = match app.store.read(|conn| queue::overview(conn, 50)).await {
        Ok(x) => x,
        Err(e) => return unavailable(e),
    };
    let why = waiting::reasons(&app, &live).await;
    let now = queue::now_ms();
    let running: Vec<&Job> = live
        .iter()
        .filter(|j| j.state() == JobState::Running || j.dispatched_at.is_some())
        .collect();
    let queued: Vec<&Job> = live.iter().filter(|j| waiting::waits(j)).collect();
    let recent: Vec<&Job> = recent.iter().collect();
    let body = html! {
        main data-reload-ms=(RELOAD_MS) {
            h1 { "qci" }
            p { "CI on Qubes OS machines. This page refreshes itself. " a href="/pool" { "Machines" } }
            (table("Running", &running, now, &why))
            (table("Queued", &queued, now, &why))
            (table("Recent", &recent, now, &why))
        }
    };
    page("qci", body).into_response()
}
