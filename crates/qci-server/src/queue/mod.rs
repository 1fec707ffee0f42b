//! The queue's rules, as transactions on the database. Each function runs
//! inside one [`crate::store::Store`] write (or read), so each rule holds
//! atomically:
//!
//! - [`job`]: a job's row; [`record`]: events and a job's end, as every change writes them
//! - [`intake`]: deliveries, triggers, and the jobs they make
//! - [`operator`]: canceling and retrying, for the job API
//! - [`dispatch`]: taking jobs for the pool, their runs' statuses and ends
//! - [`reconcile`]: what start-up repairs after a crash
//! - [`outbox`]: the statuses and notifications still to send
//! - [`history`]: reading jobs, events and deliveries back
//! - [`results`]: a job's tests and artifacts, and each test's history

pub mod dispatch;
pub mod history;
pub mod intake;
pub mod job;
pub mod operator;
pub mod outbox;
pub mod reconcile;
pub mod record;
pub mod results;

pub use dispatch::{
    MAX_EVENTS_PER_JOB, RelayRefusal, Requeued, claim_next, mark_machine, mark_snapshot,
    mark_started, publish, record_final, relay, requeue, runnable,
};
pub use history::{Counts, Delivery, counts, delivery, events, expired_logs, get, overview};
pub use intake::{
    Applied, Queued, Trigger, Version, apply, approve, close_pr, had_commit, head_jobs,
    next_trigger, run_commit, trigger_done,
};
pub use job::{Job, UnknownWord, now_ms, parse_reason, parse_state, reason_str};
pub use operator::{CancelOutcome, RetryOutcome, cancel, retry};
pub use outbox::{Kind, Outgoing, outgoing, sent};
pub use reconcile::reconcile;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::{self, SCHEMA};
    use crate::webhook::{Commit, Plan};
    use qci_core::JobId;
    use qci_core::job_file::{CommitSha, Reason};
    use rusqlite::Connection;

    fn commit(branch: &str) -> Commit {
        Commit {
            slug: "o/r".into(),
            clone_url: "/src".into(),
            sha: CommitSha::parse(&"a".repeat(40)).unwrap(),
            git_ref: format!("refs/heads/{branch}"),
            reason: Reason::Push,
            author: "a".into(),
            message: "m".into(),
            supersede_key: Some(format!("o/r#branch:{branch}")),
            pr: None,
            needs_approval: false,
        }
    }

    /// A delivery for each branch, resolved into one job on Qubes 4.2.
    fn queue(conn: &Connection, branches: &[&str]) -> Vec<JobId> {
        let mut jobs = Vec::new();
        for b in branches {
            let plan = Plan::Run(commit(b));
            apply(conn, &format!("d-{b}"), "push", &plan).unwrap();
            let trigger = next_trigger(conn).unwrap().unwrap();
            let v = Version {
                qubes: "4.2".into(),
                context: "qci/qubes-4.2".into(),
                refused: None,
            };
            jobs.extend(
                run_commit(conn, &trigger, &commit(b), &[v], false)
                    .unwrap()
                    .jobs,
            );
            trigger_done(conn, &trigger, "done").unwrap();
        }
        jobs
    }

    fn memory() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn).unwrap();
        conn
    }

    #[test]
    fn a_database_from_before_the_retry_columns_gets_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        let old = SCHEMA
            .replace(
                "    start_failures INTEGER NOT NULL DEFAULT 0,  -- hand-overs to the pool that did not start\n",
                "",
            )
            .replace(
                "    not_before     INTEGER,            -- not handed over again before this\n",
                "",
            );
        assert_ne!(old, SCHEMA);
        conn.execute_batch(&old).unwrap();
        schema::migrate(&mut conn).unwrap();
        schema::migrate(&mut conn).unwrap();
        assert_eq!(queue(&conn, &["a"]).len(), 1);
        assert!(claim_next(&conn, "4.2", "h").unwrap().is_some());
    }

    #[test]
    fn each_github_message_keeps_its_own_job_state_and_coalescing_keeps_the_first() {
        let conn = memory();
        let jobs = queue(&conn, &["a"]);
        let job = claim_next(&conn, "4.2", "h1").unwrap().unwrap();
        for description in ["Running 1", "Running 2"] {
            relay(&conn, &job.id, "h1", qci_core::State::Running, description)
                .unwrap()
                .unwrap();
        }
        let bodies: Vec<serde_json::Value> = outgoing(&conn, Kind::Github, 100)
            .unwrap()
            .iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect();
        // The first (it creates the check run in App mode) stays; the
        // waiting progress one is replaced by the latest.
        let states: Vec<(&str, &str, &str)> = bodies
            .iter()
            .map(|b| {
                (
                    b["job_state"].as_str().unwrap(),
                    b["state"].as_str().unwrap(),
                    b["description"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(states.len(), 2, "{states:?}");
        assert_eq!((states[0].0, states[0].1), ("queued", "pending"));
        assert_eq!(states[1], ("running", "pending", "Running 2"));
        assert_eq!(outbox::check_run_id(&conn, &jobs[0]).unwrap(), None);
        outbox::set_check_run_id(&conn, &jobs[0], Some(41_000_000_001)).unwrap();
        assert_eq!(
            outbox::check_run_id(&conn, &jobs[0]).unwrap(),
            Some(41_000_000_001)
        );
    }

    #[test]
    fn reconcile_requeues_what_never_started_and_ends_what_ran() {
        let conn = memory();
        let queued = queue(&conn, &["a", "b", "c"]);
        let started = claim_next(&conn, "4.2", "h1").unwrap().unwrap();
        mark_started(&conn, &started.id).unwrap();
        let handed = claim_next(&conn, "4.2", "h2").unwrap().unwrap();
        assert_eq!([&started.id, &handed.id], [&queued[0], &queued[1]], "FIFO");

        let (requeued, ended) = reconcile(&conn).unwrap();

        assert_eq!(requeued, std::slice::from_ref(&handed.id));
        assert_eq!(ended, std::slice::from_ref(&started.id));
        let ran = get(&conn, &started.id).unwrap().unwrap();
        assert_eq!(
            (ran.state.as_str(), ran.description.as_str()),
            ("error", "host restarted")
        );
        assert!(ran.log_published);
        let again = get(&conn, &handed.id).unwrap().unwrap();
        assert_eq!(
            (again.state.as_str(), again.dispatched_at),
            ("queued", None)
        );
        // It goes first again, and its final status is sendable at once.
        assert_eq!(
            claim_next(&conn, "4.2", "h3").unwrap().unwrap().id,
            handed.id
        );
        let github = outgoing(&conn, Kind::Github, 100).unwrap();
        assert!(
            github
                .iter()
                .any(|m| m.job == started.id && m.body.contains("host restarted"))
        );
        assert!(matches!(
            apply(&conn, "d-a", "push", &Plan::Run(commit("a"))).unwrap(),
            Applied::Duplicate
        ));
    }

    #[test]
    fn a_job_that_could_not_start_waits_its_delay_at_its_place_then_ends() {
        let conn = memory();
        let jobs = queue(&conn, &["a", "b"]);
        let first = claim_next(&conn, "4.2", "h1").unwrap().unwrap();
        assert_eq!(first.id, jobs[0]);
        let delay = std::time::Duration::from_secs(3600);
        let again = requeue(&conn, &first.id, "libvirt unreachable", 3, delay).unwrap();
        assert!(
            matches!(again, Requeued::Waiting { attempt: 1, .. }),
            "{again:?}"
        );
        let job = get(&conn, &first.id).unwrap().unwrap();
        assert_eq!(job.state.as_str(), "queued");
        assert!(job.description.contains("libvirt unreachable"), "{job:?}");
        // While it waits, the next job goes; then nothing is runnable.
        assert_eq!(claim_next(&conn, "4.2", "h2").unwrap().unwrap().id, jobs[1]);
        assert!(!runnable(&conn, "4.2").unwrap());
        // Its delay over, it goes again, and ends after the last attempt.
        let zero = std::time::Duration::ZERO;
        conn.execute("UPDATE jobs SET not_before = 0", []).unwrap();
        assert_eq!(claim_next(&conn, "4.2", "h3").unwrap().unwrap().id, jobs[0]);
        let second = requeue(&conn, &jobs[0], "still unreachable", 3, zero).unwrap();
        assert!(matches!(second, Requeued::Waiting { attempt: 2, .. }));
        claim_next(&conn, "4.2", "h4").unwrap().unwrap();
        assert_eq!(
            requeue(&conn, &jobs[0], "unreachable", 3, zero).unwrap(),
            Requeued::Ended
        );
        let ended = get(&conn, &jobs[0]).unwrap().unwrap();
        assert_eq!(ended.state.as_str(), "error");
        assert_eq!(
            ended.description,
            "CI error: could not start on a machine in 3 attempts; last: unreachable"
        );
        assert!(ended.log_published, "its final status is not held");
        assert_eq!(
            requeue(&conn, &jobs[0], "late", 3, zero).unwrap(),
            Requeued::Final
        );
        let states: Vec<String> = outgoing(&conn, Kind::Github, 100)
            .unwrap()
            .into_iter()
            .filter(|m| m.job == jobs[0])
            .map(|m| m.body)
            .collect();
        assert_eq!(states.len(), 4, "{states:?}");
        assert!(states[1].contains("attempt 1 of 3") && states[1].contains("pending"));
        assert!(states[3].contains("\"error\""), "{states:?}");
    }
}
