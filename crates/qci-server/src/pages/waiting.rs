//! Why a queued job waits, in words: `waiting for approval`, `no machine
//! of 4.2 is configured`, or `waiting for a 4.2 machine: 2 of 2 busy, 1
//! ahead`. From the server's queue (the jobs ahead), the pool's config
//! (its machines) and its lease store (the machines leased by any process:
//! a `qci run` or a nightly holds one too).

use crate::app::App;
use crate::queue::Job;
use qci_core::{JobId, State};
use std::collections::HashMap;

/// Whether the job waits in the server's queue (not yet handed to the pool).
pub fn waits(job: &Job) -> bool {
    job.state() == State::Queued && job.dispatched_at.is_none()
}

/// What is known of one Qubes version's machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machines {
    pub configured: usize,
    pub busy: usize,
}

/// The reason for one job, `ahead` of it the jobs of its version that go
/// first.
pub fn reason(job: &Job, ahead: usize, machines: Machines) -> String {
    if job.needs_approval {
        return "waiting for approval".into();
    }
    if machines.configured == 0 {
        return format!("no machine of {} is configured", job.qubes);
    }
    format!(
        "waiting for a {} machine: {} of {} busy, {ahead} ahead",
        job.qubes,
        machines.busy.min(machines.configured),
        machines.configured
    )
}

/// The reason of every job of `live` (oldest first, as the queue keeps
/// them) that waits.
pub async fn reasons(app: &App, live: &[Job]) -> HashMap<JobId, String> {
    let mut versions: Vec<String> = live
        .iter()
        .filter(|j| waits(j))
        .map(|j| j.qubes.clone())
        .collect();
    versions.sort();
    versions.dedup();
    let executor = app.executor.clone();
    let asked = versions.clone();
    // The lease store is a SQLite file: read off the async threads.
    let leased: Vec<usize> = tokio::task::spawn_blocking(move || {
        asked
            .iter()
            .map(|q| {
                executor.leased(q).unwrap_or_else(|e| {
                    tracing::warn!(qubes = q.as_str(), "cannot read the pool's leases: {e}");
                    0
                })
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    let configured = app.executor.versions();
    let mut machines = HashMap::new();
    for (i, q) in versions.iter().enumerate() {
        let known = configured.contains(q);
        machines.insert(
            q.clone(),
            Machines {
                configured: if known { app.executor.capacity(q) } else { 0 },
                busy: app.running.busy(q).max(leased.get(i).copied().unwrap_or(0)),
            },
        );
    }
    let mut ahead: HashMap<&str, usize> = HashMap::new();
    let mut out = HashMap::new();
    for job in live.iter().filter(|j| waits(j)) {
        let Some(m) = machines.get(&job.qubes) else {
            continue;
        };
        let n = ahead.entry(job.qubes.as_str()).or_default();
        out.insert(job.id.clone(), reason(job, *n, *m));
        if !job.needs_approval {
            *n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(qubes: &str, needs_approval: bool) -> Job {
        Job {
            id: JobId::for_queue(7, qubes).unwrap(),
            repo: "o/r".into(),
            clone_url: "/src".into(),
            sha: "a".repeat(40),
            git_ref: "refs/heads/main".into(),
            reason: qci_core::job_file::Reason::Push,
            author: "a".into(),
            message: "m".into(),
            qubes: qubes.into(),
            context: format!("qci/qubes-{qubes}"),
            pr: None,
            needs_approval,
            state: State::Queued,
            description: "Queued".into(),
            retry_of: None,
            start_failures: 0,
            created_at: 0,
            dispatched_at: None,
            started_at: None,
            finished_at: None,
            log_published: false,
            machine: None,
            snapshot: None,
        }
    }

    #[test]
    fn the_reason_names_what_the_job_waits_for() {
        let two_busy = Machines {
            configured: 2,
            busy: 2,
        };
        assert_eq!(
            reason(&job("4.2", false), 1, two_busy),
            "waiting for a 4.2 machine: 2 of 2 busy, 1 ahead"
        );
        assert_eq!(
            reason(&job("4.2", true), 0, two_busy),
            "waiting for approval"
        );
        let none = Machines {
            configured: 0,
            busy: 0,
        };
        assert_eq!(
            reason(&job("4.3", false), 0, none),
            "no machine of 4.3 is configured"
        );
        // A machine leased by a `qci run` too is counted once per machine.
        let over = Machines {
            configured: 1,
            busy: 3,
        };
        assert_eq!(
            reason(&job("4.2", false), 0, over),
            "waiting for a 4.2 machine: 1 of 1 busy, 0 ahead"
        );
    }
}
