//! GitHub's Re-run button: `check_run` and `check_suite` `rerequested`
//! deliveries make new jobs, once per delivery, and the jobs they re-run
//! stay in history as they were. What is not ours is ignored, saying why.
//!
//! These hosts run in token mode, where no app id is configured: a check
//! run of another app is told by the job it names (none, or one on another
//! commit). The app id check is in `webhook.rs`'s unit tests, and the
//! re-run of a check run qci made in App mode in `check_runs.rs`.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[expect(dead_code, reason = "each test file uses part of the support")]
mod support;

use serde_json::json;
use support::*;

const MAIN_SHA: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
const OTHER_SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// The fixture's check run, naming `job` on `sha`.
fn check_run(job: &str, sha: &str) -> Vec<u8> {
    edited(
        "check_run-rerequested.json",
        &[
            ("check_run/external_id", json!(job)),
            ("check_run/head_sha", json!(sha)),
        ],
    )
}

#[test]
fn a_rerequested_check_run_reruns_its_finished_job_once() {
    let host = Host::start("", Scripted::new(true));
    let old = host.deliver("push", "p1", &fixture("push.json"));
    assert_eq!(old, ["1-q4.2"]);
    host.wait_state(&old[0], "success");
    let old_job = host.job(&old[0]);

    let new = host.deliver("check_run", "r1", &check_run(&old[0], MAIN_SHA));
    assert_eq!(new, ["2-q4.2"]);
    assert_eq!(
        host.resolved("r1")["outcome"],
        "re-run by rosharma: queued 2-q4.2"
    );
    let job = host.job(&new[0]);
    assert_eq!(
        (
            &job["sha"],
            &job["qubes"],
            &job["context"],
            &job["retry_of"]
        ),
        (
            &json!(MAIN_SHA),
            &json!("4.2"),
            &json!("qci/qubes-4.2"),
            &json!("1-q4.2")
        )
    );
    host.wait_state(&new[0], "success");
    // The first stays in history, as it was.
    let still = host.job(&old[0]);
    assert_eq!(
        (
            &still["state"],
            &still["description"],
            &still["finished_at"]
        ),
        (
            &old_job["state"],
            &old_job["description"],
            &old_job["finished_at"]
        )
    );

    // GitHub redelivering the same delivery makes no second job.
    let before = host.footprint();
    let (code, body) = host.webhook("check_run", "r1", &check_run(&old[0], MAIN_SHA));
    assert_eq!(
        (code, body.as_str()),
        (409, "delivery r1 was received already\n")
    );
    assert_eq!(host.footprint(), before);
    assert_eq!(host.count("jobs"), 2);
}

#[test]
fn check_runs_that_name_no_job_of_ours_run_nothing_and_say_why() {
    let host = Host::start("", Scripted::new(true));
    let old = host.deliver("push", "p1", &fixture("push.json"));
    host.wait_state(&old[0], "success");

    // Looked up when resolved: the delivery is accepted, then ignored.
    let cases = [
        (
            "f1",
            check_run("9999-q4.2", MAIN_SHA),
            "ignored: a re-run of 9999-q4.2: no such job on this host",
        ),
        (
            "f2",
            check_run(&old[0], OTHER_SHA),
            "ignored: a re-run of 1-q4.2: the job is of freedomofpress/securedrop-workstation \
             at 3f786850e387550fdab836ed7e6dc881de23001b, the check run of \
             freedomofpress/securedrop-workstation at 0123456789abcdef0123456789abcdef01234567",
        ),
    ];
    for (delivery, body, outcome) in cases {
        assert_eq!(
            host.deliver("check_run", delivery, &body),
            Vec::<String>::new()
        );
        assert_eq!(host.resolved(delivery)["outcome"], outcome, "{delivery}");
    }
    // Told from the payload alone: ignored at once.
    let cases = [
        (
            "f3",
            check_run("build #17", MAIN_SHA),
            "ignored: a re-run of a check run whose external_id \"build #17\" is no qci job id",
        ),
        (
            "f4",
            edited(
                "check_run-rerequested.json",
                &[("action", json!("created"))],
            ),
            "ignored: check_run action \"created\"",
        ),
        (
            "f5",
            edited(
                "check_run-rerequested.json",
                &[("repository/full_name", json!("someone/else"))],
            ),
            "ignored: repository someone/else is not configured",
        ),
    ];
    for (delivery, body, outcome) in cases {
        let (code, reply) = host.webhook("check_run", delivery, &body);
        assert_eq!(code, 200, "{delivery}: {reply}");
        assert_eq!(host.resolved(delivery)["outcome"], outcome, "{delivery}");
    }
    assert_eq!(host.count("jobs"), 1);
    assert_eq!(host.job(&old[0])["state"], "success");
}

#[test]
fn a_rerequested_check_suite_runs_each_version_of_its_commit() {
    let host = Host::start("", Scripted::on(true, &["4.2", "4.3"]));
    host.github.pipeline(
        REPO,
        MAIN_SHA,
        "qubes = [\"4.2\", \"4.3\"]\n[[steps]]\nname = \"test\"\ncommand = \"make test\"\n",
    );
    let jobs = host.deliver(
        "check_suite",
        "s1",
        &fixture("check_suite-rerequested.json"),
    );
    assert_eq!(jobs, ["1-q4.2", "2-q4.3"]);
    for (id, qubes) in jobs.iter().zip(["4.2", "4.3"]) {
        let job = host.job(id);
        assert_eq!(
            (&job["sha"], &job["qubes"], &job["git_ref"]),
            (&json!(MAIN_SHA), &json!(qubes), &json!("refs/heads/main"))
        );
        host.wait_state(id, "success");
    }
    let before = host.footprint();
    let (code, _) = host.webhook(
        "check_suite",
        "s1",
        &fixture("check_suite-rerequested.json"),
    );
    assert_eq!(code, 409);
    assert_eq!(host.footprint(), before);
}

#[test]
fn forged_rerequests_are_refused_and_leave_nothing() {
    let host = Host::start("", Scripted::new(true));
    let old = host.deliver("push", "p1", &fixture("push.json"));
    host.wait_state(&old[0], "success");
    let before = host.footprint();
    for (event, body) in [
        ("check_run", check_run(&old[0], MAIN_SHA)),
        ("check_suite", fixture("check_suite-rerequested.json")),
    ] {
        let forged = qci_server::webhook::sign(b"not the secret", &body);
        let (code, reply) =
            host.webhook_with(event, "x1", &body, Some(&forged), "application/json");
        assert_eq!(
            (code, reply.as_str()),
            (401, "missing or wrong X-Hub-Signature-256\n"),
            "{event}"
        );
        let (code, reply) = host.webhook(event, "x2", b"{\"action\": \"rerequested\"}");
        assert_eq!(code, 400, "{event}: {reply}");
        assert!(
            reply.starts_with(&format!("malformed {event} payload: ")),
            "{reply}"
        );
        assert_eq!(host.footprint(), before, "{event}");
    }
    assert_eq!(host.count("jobs"), 1);
}

#[test]
fn a_check_run_of_a_job_still_running_is_not_rerun() {
    let pool = Scripted::new(false);
    let host = Host::start("", pool.clone());
    let old = host.deliver("push", "p1", &fixture("push.json"));
    host.wait_state(&old[0], "running");
    assert_eq!(
        host.deliver("check_run", "r1", &check_run(&old[0], MAIN_SHA)),
        Vec::<String>::new()
    );
    assert_eq!(
        host.resolved("r1")["outcome"],
        "ignored: a re-run of 1-q4.2: the job is still running"
    );
    pool.open();
    host.wait_state(&old[0], "success");
    assert_eq!(host.count("jobs"), 1);
}
