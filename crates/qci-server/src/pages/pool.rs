//! `/pool`: each machine of the pool, as `qci pool` shows it (the same
//! [`qci_pool::Pool::report`] and [`qci_pool::MachineReport::occupancy`]):
//! its Qubes version, who holds it (free, busy, a stale lease, another
//! host), the job on it, its snapshot and its last nightly.

use super::{page, unavailable};
use crate::app::App;
use crate::queue;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;
use qci_core::status::clean_line;
use qci_pool::{MachineReport, Occupancy};
use std::collections::HashSet;

/// The state's word (for the style sheet too) and what it says.
fn occupancy(o: &Occupancy) -> (&'static str, String) {
    match o {
        Occupancy::Free => ("free", "free".into()),
        Occupancy::Busy { pid, for_secs, .. } => {
            ("busy", format!("busy for {for_secs}s (pid {pid})"))
        }
        Occupancy::Stale { pid, host, .. } => (
            "stale",
            format!("stale lease: its holder (pid {pid} on {host}) is gone"),
        ),
        Occupancy::Foreign { host, .. } => ("foreign", format!("held by host {host}")),
    }
}

fn job_of(o: &Occupancy) -> Option<&str> {
    match o {
        Occupancy::Free => None,
        Occupancy::Busy { job, .. }
        | Occupancy::Stale { job, .. }
        | Occupancy::Foreign { job, .. } => Some(job),
    }
}

/// `/pool`: the machines. Asks each hypervisor, as `qci pool` does.
pub async fn pool(State(app): State<App>) -> Response {
    let executor = app.executor.clone();
    let report = match tokio::task::spawn_blocking(move || executor.report()).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return unavailable(format!("cannot read the pool: {e}")),
        Err(e) => return unavailable(e),
    };
    let now = qci_pool::lease::now();
    let rows: Vec<(&MachineReport, Occupancy)> =
        report.iter().map(|m| (m, m.occupancy(now))).collect();
    // A job is linked only if it is one of ours (a `qci run` or a nightly
    // holds machines too).
    let named: Vec<String> = rows
        .iter()
        .filter_map(|(m, o)| job_of(o).or(m.last_run.as_ref().map(|(job, _, _)| job.as_str())))
        .map(str::to_owned)
        .collect();
    let ours: HashSet<String> = app
        .store
        .read(move |conn| {
            let mut found = HashSet::new();
            for id in named {
                if queue::get(conn, &id)?.is_some() {
                    found.insert(id);
                }
            }
            Ok(found)
        })
        .await
        .unwrap_or_default();
    let job_link = |job: &str| {
        let job = clean_line(job);
        html! {
            @if ours.contains(&job) { a href={ "/jobs/" (job) } { (job) } } @else { (job) }
        }
    };
    let body = html! {
        p { a href="/" { "\u{2190} all jobs" } }
        h1 { "Machines" }
        @if rows.is_empty() {
            p { "No machine is configured." }
        } @else {
            table #machines {
                tr {
                    th { "Machine" } th { "Qubes" } th { "Backend" } th { "Power" } th { "State" }
                    th { "Job" } th { "Snapshot" } th { "Last nightly" } th { "Last job" }
                }
                @for (m, o) in &rows {
                    @let (word, said) = occupancy(o);
                    tr {
                        td { (clean_line(&m.name)) }
                        td { (clean_line(&m.qubes)) }
                        td { (clean_line(&m.backend)) }
                        td {
                            @match &m.power {
                                Ok(p) => { (p.to_string()) }
                                Err(e) => { "unknown: " (clean_line(&e.to_string())) }
                            }
                        }
                        td class={ "machine " (word) } { (said) }
                        td { @if let Some(job) = job_of(o) { (job_link(job)) } }
                        td { (clean_line(m.snapshot.as_deref().unwrap_or("(none)"))) }
                        td { (clean_line(m.last_nightly().unwrap_or("(none)"))) }
                        td {
                            @if let Some((job, state, _)) = &m.last_run {
                                (job_link(job)) " " (clean_line(state))
                            }
                        }
                    }
                }
            }
        }
    };
    page("qci machines", body).into_response()
}
