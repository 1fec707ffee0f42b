//! Runs chosen per repository: by a version label on a pull request
//! (`pull_requests = "label"`), or by a comment command (`/qci run`,
//! `/qci retry`, `/qci cancel`) from someone GitHub says may write. Who
//! may is always asked of GitHub's permission API, after the webhook is
//! answered; those who may not get nothing run and nothing posted.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[expect(dead_code, reason = "each test file uses part of the support")]
mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

/// The head of `pull_request-labeled-version.json` (label `qci:4.3`) ...
const LABEL_SHA: &str = "5b1d3c7e9f2a4b6c8d0e1f3a5b7c9d1e3f5a7b9c";
/// ... and of `pull_request-synchronize.json`, the push after it.
const SYNC_SHA: &str = "6c2e4d8f0a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d";
const PR: u64 = 1234;
/// `issue_comment-command.json`'s comment.
const COMMENT: u64 = 2500000002;
const FORK: &str = "contributor-x/securedrop-workstation";
const LABEL_MODE: &str = "pull_requests = \"label\"";

fn qubes_of(host: &Host, jobs: &[String]) -> Vec<String> {
    jobs.iter()
        .map(|j| host.job(j)["qubes"].as_str().unwrap().to_owned())
        .collect()
}

/// The label fixture, as if the pull request came from a fork and
/// `sender` labelled it.
fn fork_labeled(sender: &str) -> Vec<u8> {
    edited(
        "pull_request-labeled-version.json",
        &[
            ("pull_request/head/repo/full_name", json!(FORK)),
            (
                "pull_request/head/repo/clone_url",
                json!(format!("https://github.com/{FORK}.git")),
            ),
            ("sender/login", json!(sender)),
        ],
    )
}

/// `/qci ...` by `user`, as the command fixture's comment.
fn command(body: &str, user: &str) -> Vec<u8> {
    edited(
        "issue_comment-command.json",
        &[
            ("comment/body", json!(body)),
            ("comment/user/login", json!(user)),
        ],
    )
}

/// App mode: the webhook's `installation.id` is what the host uses, with
/// no lookup of the repository's installation.
#[test]
fn in_label_mode_a_pull_request_runs_the_versions_its_labels_name() {
    let pool = Scripted::on(true, &["4.2", "4.3"]);
    let host = Host::start_app_repo("", LABEL_MODE, Duration::from_secs(3600), pool.clone());

    // Opened without a label: nothing runs, and the delivery says why.
    let unlabeled = edited(
        "pull_request-synchronize.json",
        &[
            ("action", json!("opened")),
            ("pull_request/labels", json!([])),
        ],
    );
    let (code, body) = host.webhook("pull_request", "l1", &unlabeled);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("has no qci:VERSION label"), "{body}");
    assert_eq!(host.count("jobs"), 0);

    // Labelled `qci:4.3`: 4.3 runs on the head, and 4.3 only.
    let labeled = host.deliver(
        "pull_request",
        "l2",
        &fixture("pull_request-labeled-version.json"),
    );
    assert_eq!(qubes_of(&host, &labeled), ["4.3"]);
    let job = host.job(&labeled[0]);
    assert_eq!(
        (&job["sha"], &job["git_ref"], &job["context"]),
        (
            &json!(LABEL_SHA),
            &json!("refs/pull/1234/head"),
            &json!("qci/qubes-4.3")
        )
    );
    host.wait_state(&labeled[0], "success");

    // A push while the label stays: 4.3 runs again, on the new head.
    let pushed = host.deliver(
        "pull_request",
        "l3",
        &fixture("pull_request-synchronize.json"),
    );
    assert_eq!(qubes_of(&host, &pushed), ["4.3"]);
    assert_eq!(host.job(&pushed[0])["sha"], SYNC_SHA);
    host.wait_state(&pushed[0], "success");

    // The label removed, the next push runs nothing.
    let removed = edited(
        "pull_request-synchronize.json",
        &[("pull_request/labels", json!([]))],
    );
    let (code, body) = host.webhook("pull_request", "l4", &removed);
    assert_eq!(code, 200, "{body}");
    assert_eq!(host.count("jobs"), 2);

    host.wait_outbox_sent();
    let seen = host.github.seen();
    eprintln!("GitHub saw: {seen:#?}");
    let lookup = format!("GET /repos/{REPO}/installation");
    assert!(!seen.contains(&lookup), "the installation was looked up");
    assert_eq!(host.github.exchanges(), 1);
    // Not a fork's: nobody's permission needed asking.
    assert!(!seen.iter().any(|s| s.contains("/permission")), "{seen:?}");
    assert!(
        host.github.refused().is_empty(),
        "{:?}",
        host.github.refused()
    );
    let contexts: Vec<String> = host
        .github
        .posted()
        .into_iter()
        .map(|p| p.context)
        .collect();
    assert!(
        contexts.iter().all(|c| c == "qci/qubes-4.3"),
        "{contexts:?}"
    );
}

#[test]
fn a_label_on_a_forks_pull_request_runs_only_when_a_triager_added_it() {
    let pool = Scripted::on(true, &["4.2", "4.3"]);
    let host = Host::start_repo("", LABEL_MODE, pool.clone());
    host.github.permission("rosharma", "triage");

    // Someone with read access only (GitHub would not even let them label).
    let (code, body) = host.webhook("pull_request", "f1", &fork_labeled("passer-by"));
    assert_eq!(code, 202, "{body}");
    let refused = host.resolved("f1");
    eprintln!("read access: {}", refused["outcome"]);
    assert_eq!(
        refused["outcome"],
        "ignored: passer-by (read) may not do this on #1234: it takes triage access or more"
    );
    assert_eq!(host.count("jobs"), 0);
    assert_eq!(pool.started(), 0);

    // The same label event from a triager runs the fork's head on 4.3.
    let jobs = host.deliver("pull_request", "f2", &fork_labeled("rosharma"));
    assert_eq!(qubes_of(&host, &jobs), ["4.3"]);
    host.wait_state(&jobs[0], "success");
    let file = pool.job_files.lock().unwrap()[0].clone();
    assert_eq!(file.commit.unwrap().as_str(), LABEL_SHA);
    assert_eq!(
        file.repository.url,
        format!("https://github.com/{FORK}.git")
    );

    // A new push to the fork is unreviewed: it waits, label or not.
    let pushed = edited(
        "pull_request-synchronize.json",
        &[
            ("pull_request/head/repo/full_name", json!(FORK)),
            (
                "pull_request/head/repo/clone_url",
                json!(format!("https://github.com/{FORK}.git")),
            ),
        ],
    );
    let waiting = host.deliver("pull_request", "f3", &pushed);
    let job = host.job(&waiting[0]);
    assert_eq!(
        (&job["qubes"], &job["needs_approval"]),
        (&json!("4.3"), &json!(true))
    );
    assert_eq!(job["state"], "queued");
}

#[test]
fn a_run_command_runs_for_writers_and_does_nothing_for_others() {
    let pool = Scripted::on(true, &["4.2", "4.3"]);
    let host = Host::start("", pool.clone());
    host.github.permission("rosharma", "write");
    host.github
        .pull_request(REPO, PR, SYNC_SHA, REPO, "fix-retention");

    let jobs = host.deliver(
        "issue_comment",
        "c1",
        &fixture("issue_comment-command.json"),
    );
    assert_eq!(qubes_of(&host, &jobs), ["4.2"]);
    let job = host.job(&jobs[0]);
    assert_eq!(
        (&job["sha"], &job["git_ref"]),
        (&json!(SYNC_SHA), &json!("refs/pull/1234/head"))
    );
    host.wait_state(&jobs[0], "success");
    host.wait_outbox_sent();
    assert_eq!(
        host.github.reactions(),
        [(REPO.to_owned(), COMMENT, "+1".to_owned())]
    );

    // Someone without write access: GitHub is asked, and that is all.
    let seen = host.github.seen().len();
    let posted = host.github.posted().len();
    let (code, body) = host.webhook("issue_comment", "c2", &command("/qci run 4.2", "passer-by"));
    assert_eq!(code, 202, "{body}");
    let refused = host.resolved("c2");
    eprintln!("read access: {}", refused["outcome"]);
    assert_eq!(
        refused["outcome"],
        "ignored: passer-by (read) may not do this on #1234: it takes write access or more"
    );
    assert_eq!(refused["jobs"], json!([]));
    let asked = host.github.seen()[seen..].to_vec();
    assert_eq!(
        asked,
        [format!(
            "GET /repos/{REPO}/collaborators/passer-by/permission"
        )]
    );
    assert_eq!(host.github.posted().len(), posted);
    assert_eq!(host.github.reactions().len(), 1);
    assert_eq!(host.count("jobs"), 1);

    // A triager may label, not command.
    host.github.permission("triager", "triage");
    host.webhook("issue_comment", "c3", &command("/qci run", "triager"));
    assert!(
        host.resolved("c3")["outcome"]
            .as_str()
            .unwrap()
            .contains("(triage) may not"),
    );
    assert_eq!(host.count("jobs"), 1);
}

#[test]
fn retry_reruns_only_the_failed_version_and_cancel_cancels() {
    let pool = Scripted::on(false, &["4.2", "4.3"]);
    let host = Host::start("", pool.clone());
    host.github.permission("rosharma", "maintain");
    host.github
        .pull_request(REPO, PR, SYNC_SHA, REPO, "fix-retention");

    let jobs = host.deliver(
        "issue_comment",
        "r1",
        &command("/qci run 4.2 4.3", "rosharma"),
    );
    assert_eq!(qubes_of(&host, &jobs), ["4.2", "4.3"]);
    wait_for("both jobs to run", Duration::from_secs(30), || {
        pool.started() == 2
    });
    // 4.2's tests fail (as the dev VM reports through the relay); 4.3 passes.
    let file = pool
        .job_files
        .lock()
        .unwrap()
        .iter()
        .find(|f| f.context == "qci/qubes-4.2")
        .cloned()
        .unwrap();
    let qci_core::job_file::Sink::Relay { url, token, .. } = &file.sink else {
        panic!("not a relay sink");
    };
    assert_eq!(
        relay_post(url, token, &event(&jobs[0], "failure", "2 tests failed")),
        204
    );
    pool.open();
    host.wait_state(&jobs[0], "failure");
    host.wait_state(&jobs[1], "success");

    let again = host.deliver("issue_comment", "r2", &command("/qci retry", "rosharma"));
    eprintln!("retry: {}", host.resolved("r2")["outcome"]);
    assert_eq!(qubes_of(&host, &again), ["4.2"]);
    assert_eq!(host.job(&again[0])["retry_of"], jobs[0]);
    host.wait_state(&again[0], "success");
    // A 👍 for `/qci run`, and one for this retry.
    wait_for("the retry's reaction", Duration::from_secs(10), || {
        host.github.reactions().len() == 2
    });
    // Nothing failed any more: a second retry runs nothing, and gets no 👍.
    assert!(
        host.deliver("issue_comment", "r3", &command("/qci retry", "rosharma"))
            .is_empty()
    );
    assert!(
        host.resolved("r3")["outcome"]
            .as_str()
            .unwrap()
            .starts_with("ignored: /qci retry: nothing failed")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        host.github.reactions().len(),
        2,
        "no 👍 for a retry that ran nothing"
    );

    // Cancel: the head's running job ends, and its run on the machine stops.
    let closed = Scripted::on(false, &["4.2"]);
    let host = Host::start("", closed.clone());
    host.github.permission("rosharma", "admin");
    host.github
        .pull_request(REPO, PR, SYNC_SHA, REPO, "fix-retention");
    let running = host.deliver("issue_comment", "k1", &command("/qci run 4.2", "rosharma"));
    host.wait_state(&running[0], "running");
    host.deliver("issue_comment", "k2", &command("/qci cancel", "rosharma"));
    let outcome = host.resolved("k2")["outcome"].clone();
    eprintln!("cancel: {outcome}");
    assert_eq!(outcome, format!("canceled by rosharma: {}", running[0]));
    host.wait_state(&running[0], "canceled");
    assert_eq!(host.job(&running[0])["description"], "Canceled by rosharma");
    wait_for("the run to stop", Duration::from_secs(30), || {
        closed.canceled.lock().unwrap().contains(&running[0])
    });
}

#[test]
fn forged_replayed_and_malformed_triggers_are_refused_and_leave_nothing() {
    let host = Host::start_repo("", LABEL_MODE, Scripted::on(false, &["4.2", "4.3"]));
    host.github.permission("rosharma", "write");
    host.github
        .pull_request(REPO, PR, SYNC_SHA, REPO, "fix-retention");
    let kinds = [
        ("issue_comment", "issue_comment-command.json", "comment/id"),
        (
            "pull_request",
            "pull_request-labeled-version.json",
            "label/name",
        ),
        (
            "pull_request",
            "pull_request-synchronize.json",
            "pull_request/labels",
        ),
    ];
    // Each kind once, for real, to be replayed.
    for (i, (event, name, _)) in kinds.iter().enumerate() {
        assert!(
            !host
                .deliver(event, &format!("ok-{i}"), &fixture(name))
                .is_empty()
        );
    }
    // What a delivery writes when taken. Not the events and the outbox:
    // the jobs just queued go on starting and reporting meanwhile.
    let footprint = || ["deliveries", "triggers", "jobs"].map(|t| host.count(t));
    let before = footprint();
    for (i, (event, name, field)) in kinds.iter().enumerate() {
        let body = fixture(name);
        let forged = qci_server::webhook::sign(b"not the secret", &body);
        let bad_type = edited(name, &[(field, json!({"not": "this"}))]);
        let cases = [
            (
                "forged signature",
                401,
                host.webhook_with(
                    event,
                    &format!("x-{i}"),
                    &body,
                    Some(&forged),
                    "application/json",
                ),
            ),
            (
                "replayed delivery",
                409,
                host.webhook(event, &format!("ok-{i}"), &body),
            ),
            (
                "bad field type",
                400,
                host.webhook(event, &format!("y-{i}"), &bad_type),
            ),
            (
                "malformed JSON",
                400,
                host.webhook(event, &format!("z-{i}"), b"{\"action\": "),
            ),
        ];
        for (what, want, (code, reply)) in cases {
            assert_eq!(code, want, "{name}, {what}: {reply}");
            assert_eq!(footprint(), before, "{name}, {what} left something behind");
        }
    }
}

/// `pull_requests = "always"` (the default): every version runs, a label
/// narrows nothing, but a triager's version label approves a fork's
/// waiting jobs on the labelled commit.
#[test]
fn in_always_mode_a_triagers_label_approves_a_forks_waiting_jobs() {
    let pool = Scripted::on(true, &["4.2", "4.3"]);
    let host = Host::start_repo("", "qubes = [\"4.2\", \"4.3\"]", pool.clone());
    host.github.permission("rosharma", "triage");
    let opened = edited(
        "pull_request-fork.json",
        &[("pull_request/head/sha", json!(LABEL_SHA))],
    );
    let waiting = host.deliver("pull_request", "a1", &opened);
    assert_eq!(qubes_of(&host, &waiting), ["4.2", "4.3"]);
    for job in &waiting {
        assert_eq!(host.job(job)["needs_approval"], true);
    }
    // A reader's label approves nothing.
    host.webhook("pull_request", "a2", &fork_labeled("passer-by"));
    assert!(
        host.resolved("a2")["outcome"]
            .as_str()
            .unwrap()
            .contains("(read) may not"),
    );
    let approved = host.deliver("pull_request", "a3", &fork_labeled("rosharma"));
    assert!(
        approved.is_empty(),
        "a label in always mode queues nothing new"
    );
    let outcome = host.resolved("a3")["outcome"].clone();
    eprintln!("approval: {outcome}");
    assert_eq!(
        outcome,
        format!("approved by rosharma: {} {}", waiting[0], waiting[1])
    );
    for job in &waiting {
        host.wait_state(job, "success");
    }
    assert_eq!(pool.started(), 2);
}

/// GitHub's answers are network calls of the resolver: retried through a
/// 5xx like any other; a pull request GitHub does not give runs nothing.
#[test]
fn permission_checks_are_retried_and_an_unknown_pull_request_runs_nothing() {
    let host = Host::start("", Scripted::new(true));
    host.github.permission("rosharma", "write");
    host.github.fail_next_permissions(2);
    let (code, body) = host.webhook(
        "issue_comment",
        "u1",
        &fixture("issue_comment-command.json"),
    );
    assert_eq!(code, 202, "{body}");
    let outcome = host.resolved("u1")["outcome"].clone();
    eprintln!("no such pull request: {outcome}");
    let permission = format!("GET /repos/{REPO}/collaborators/rosharma/permission");
    let asked = host
        .github
        .seen()
        .iter()
        .filter(|s| **s == permission)
        .count();
    assert_eq!(asked, 3, "two 502s, then the answer");
    assert!(
        outcome
            .as_str()
            .unwrap()
            .starts_with("error: cannot read #1234: ")
            && outcome.as_str().unwrap().contains("HTTP 404"),
        "{outcome}"
    );
    assert_eq!(host.count("jobs"), 0);
    assert!(host.github.reactions().is_empty());

    host.github
        .pull_request(REPO, PR, SYNC_SHA, REPO, "fix-retention");
    let jobs = host.deliver("issue_comment", "u2", &command("/qci run", "rosharma"));
    assert_eq!(qubes_of(&host, &jobs), ["4.2"], "the repository's versions");
    host.wait_state(&jobs[0], "success");
}

/// `/qci run` on a fork's pull request approves the head the commenter
/// could have seen: one qci had before the comment runs at once, one that
/// came after (or that qci never had) waits for approval.
#[test]
fn a_run_command_approves_only_a_fork_head_qci_had_before_the_comment() {
    const PR_SHA: &str = "e83c5163316f89bfbde7d9ab23ca2e25604af290";
    let pool = Scripted::new(true);
    let host = Host::start("", pool.clone());
    host.github.permission("rosharma", "write");
    let waiting = host.deliver("pull_request", "w1", &fixture("pull_request-fork.json"));
    assert_eq!(host.job(&waiting[0])["needs_approval"], true);

    // The comment came after qci had the head (its time is in 2099).
    host.github
        .pull_request(REPO, PR, PR_SHA, FORK, "fix-retention");
    let later = edited(
        "issue_comment-command.json",
        &[("comment/created_at", json!("2099-01-01T00:00:00Z"))],
    );
    let ran = host.deliver("issue_comment", "w2", &later);
    let job = host.job(&ran[0]);
    assert_eq!(
        (&job["sha"], &job["needs_approval"]),
        (&json!(PR_SHA), &json!(false))
    );
    assert_eq!(job["clone_url"], format!("https://github.com/{FORK}.git"));
    host.wait_state(&ran[0], "success");

    // The head moved to a commit qci never had before the comment.
    host.github
        .pull_request(REPO, PR, SYNC_SHA, FORK, "fix-retention");
    let held = host.deliver("issue_comment", "w3", &later);
    let outcome = host.resolved("w3")["outcome"].clone();
    eprintln!("unseen fork head: {outcome}");
    assert!(
        outcome.as_str().unwrap().contains("waiting for approval"),
        "{outcome}"
    );
    let job = host.job(&held[0]);
    assert_eq!(
        (&job["sha"], &job["needs_approval"]),
        (&json!(SYNC_SHA), &json!(true))
    );
    assert_eq!(job["state"], "queued");
    assert_eq!(pool.started(), 1);
}

/// App mode: a fork's job waiting for approval is a completed check run
/// (`action_required`, which GitHub changes no more); once a triager
/// approves, the job runs under a new check run: queued, in progress,
/// completed.
#[test]
fn in_app_mode_a_forks_waiting_job_is_action_required_then_a_new_check_run_runs() {
    let pool = Scripted::on(true, &["4.2"]);
    let host = Host::start_app_repo("", "", Duration::from_secs(3600), pool.clone());
    host.github.permission("rosharma", "triage");
    let opened = edited(
        "pull_request-fork.json",
        &[("pull_request/head/sha", json!(LABEL_SHA))],
    );
    let waiting = host.deliver("pull_request", "w1", &opened);
    assert_eq!(waiting.len(), 1);
    let asked =
        host.github
            .wait_check_runs("the approval check run", Duration::from_secs(30), |r| {
                r.iter()
                    .any(|r| r.conclusion.as_deref() == Some("action_required"))
            });
    let first = asked[0].id;
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].head_sha.as_deref(), Some(LABEL_SHA));

    host.deliver("pull_request", "w2", &fork_labeled("rosharma"));
    host.wait_state(&waiting[0], "success");
    let runs = host
        .github
        .wait_check_runs("the run's check run", Duration::from_secs(30), |r| {
            r.iter().any(|r| r.conclusion.as_deref() == Some("success"))
        });
    let seen: Vec<(String, u64, Option<String>, Option<String>)> = runs
        .iter()
        .filter(|r| r.status.is_some())
        .map(|r| {
            (
                r.method.clone(),
                r.id,
                r.status.clone(),
                r.conclusion.clone(),
            )
        })
        .collect();
    eprintln!("{seen:?}");
    let second = runs.iter().map(|r| r.id).find(|id| *id != first).unwrap();
    let status = |s: &str| Some(s.to_owned());
    assert_eq!(
        seen,
        [
            (
                "POST".into(),
                first,
                status("completed"),
                status("action_required")
            ),
            ("POST".into(), second, status("queued"), None),
            ("PATCH".into(), second, status("in_progress"), None),
            (
                "PATCH".into(),
                second,
                status("completed"),
                status("success")
            ),
        ]
    );
    assert!(
        host.github.refused().is_empty(),
        "{:?}",
        host.github.refused()
    );
}
