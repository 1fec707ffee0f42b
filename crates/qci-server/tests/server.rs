//! `qci serve` over real HTTP: GitHub webhooks in, commit statuses out to a
//! fake GitHub that checks them, the relay with its tokens, the queue's
//! rules, and every refusal leaving nothing behind.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[expect(dead_code, reason = "each test file uses part of the support")]
mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

const MAIN_SHA: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
const PR_SHA: &str = "e83c5163316f89bfbde7d9ab23ca2e25604af290";
const CONTEXT: &str = "qci/qubes-4.2";

#[test]
fn a_push_runs_and_github_sees_queued_running_then_success_after_the_log() {
    let pool = Scripted::new(true);
    let host = Host::start("", pool.clone());
    let base = host.base.clone();
    // When the final status reaches GitHub, its log must be complete at its link.
    let seen_log = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = seen_log.clone();
    host.github.on_post(move |p| {
        if p.state == "success" {
            let log = reqwest::blocking::get(format!("{}/log", p.target_url))
                .and_then(|r| r.text())
                .unwrap_or_default();
            *record.lock().unwrap() = Some(log);
        }
    });

    let jobs = host.deliver("push", "d-push-1", &fixture("push.json"));
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    host.wait_state(job, "success");
    host.github
        .wait_for("the final status", Duration::from_secs(30), |p| {
            p.iter().any(|p| p.state == "success")
        });

    assert_eq!(
        host.github.states(CONTEXT),
        [
            ("pending".into(), "Queued".into()),
            ("pending".into(), "Running make test".into()),
            ("success".into(), "All steps passed".into()),
        ]
    );
    let posted = host.github.posted();
    for p in &posted {
        assert_eq!(p.repo, REPO);
        assert_eq!(p.sha, MAIN_SHA);
        assert_eq!(p.target_url, format!("{base}/jobs/{job}"));
    }
    assert_eq!(
        seen_log.lock().unwrap().as_deref(),
        Some("building\nall tests passed\n"),
        "the log was not published when success was posted"
    );
    assert!(
        host.github.refused().is_empty(),
        "{:?}",
        host.github.refused()
    );

    // The job file names the relay with a token, and holds no GitHub token.
    let file = pool.job_files.lock().unwrap()[0].clone();
    let text = serde_json::to_string(&file).unwrap();
    assert!(!text.contains(GITHUB_TOKEN), "{text}");
    match &file.sink {
        qci_core::job_file::Sink::Relay { url, token, .. } => {
            assert_eq!(url, &format!("{base}/api/jobs/{job}/status"));
            assert_eq!(token.len(), 64);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(file.commit.unwrap().as_str(), MAIN_SHA);
    assert_eq!(file.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(file.author, "Ro Sharma");
    assert_eq!(
        file.repository.url,
        "https://github.com/freedomofpress/securedrop-workstation.git"
    );

    // The pages show it.
    let (code, page) = host.get(&format!("/jobs/{job}"));
    assert_eq!(code, 200);
    assert!(
        page.contains("Pin the Fedora template") && page.contains("success"),
        "{page}"
    );
    let (code, monitor) = host.get("/");
    assert_eq!(code, 200);
    assert!(monitor.contains(&format!("/jobs/{job}")) && monitor.contains("3f786850e387"));
    let (_, metrics) = host.get("/metrics");
    assert!(
        metrics.contains("qci_jobs{state=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qci_webhooks_total{code=\"202\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("qci_webhook_seconds_count 1"), "{metrics}");
}

#[test]
fn forged_malformed_and_replayed_webhooks_are_refused_and_leave_nothing() {
    let host = Host::start("", Scripted::new(false));
    let push = fixture("push.json");
    let sig = qci_server::webhook::sign(SECRET.as_bytes(), &push);
    let (code, _) = host.webhook("ping", "d-ping", &fixture("ping.json"));
    assert_eq!(code, 200);
    let before = host.footprint();

    let forged = qci_server::webhook::sign(b"not the secret", &push);
    let cases: Vec<(&str, u16, (u16, String))> = vec![
        (
            "forged signature",
            401,
            host.webhook_with("push", "d1", &push, Some(&forged), "application/json"),
        ),
        (
            "missing signature",
            401,
            host.webhook_with("push", "d2", &push, None, "application/json"),
        ),
        (
            "signature of another body",
            401,
            host.webhook_with("push", "d3", b"{}", Some(&sig), "application/json"),
        ),
        (
            "replayed delivery",
            409,
            host.webhook("ping", "d-ping", &fixture("ping.json")),
        ),
        (
            "oversized body",
            413,
            host.webhook("push", "d4", &vec![b' '; 70_000]),
        ),
        (
            "malformed JSON",
            400,
            host.webhook("push", "d5", b"{\"ref\": "),
        ),
        (
            "wrong JSON shape",
            400,
            host.webhook("push", "d6", b"{\"ref\": 1}"),
        ),
        (
            "unknown event",
            400,
            host.webhook("deployment", "d7", &push),
        ),
        (
            "wrong content type",
            415,
            host.webhook_with(
                "push",
                "d8",
                &push,
                Some(&sig),
                "application/x-www-form-urlencoded",
            ),
        ),
    ];
    for (what, want, (code, body)) in cases {
        assert_eq!(code, want, "{what}: {body}");
        assert_eq!(host.footprint(), before, "{what} left something behind");
    }
    assert_eq!(host.github.requests(), 0);
    // The same signed push delivered twice runs once.
    let twice = host.deliver("push", "d-twice", &push);
    host.wait_state(&twice[0], "running");
    let after = host.footprint();
    let (code, body) = host.webhook("push", "d-twice", &push);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("received already"), "{body}");
    assert_eq!(host.footprint(), after);
    assert_eq!(host.count("jobs"), 1);
}

#[test]
fn the_relay_refuses_wrong_tokens_other_jobs_ended_jobs_and_going_back() {
    let pool = Scripted::new(false);
    let mut p = std::sync::Arc::into_inner(pool).unwrap();
    p.capacity = 2;
    let pool = std::sync::Arc::new(p);
    let host = Host::start("", pool.clone());
    let a = host.deliver("push", "r1", &fixture("push.json"))[0].clone();
    let tag = host.deliver("push", "r2", &fixture("push-tag.json"))[0].clone();
    wait_for("both jobs to run", Duration::from_secs(30), || {
        pool.started() == 2
    });
    host.wait_state(&a, "running");
    host.wait_state(&tag, "running");
    let token_of = |job: &str| {
        pool.job_files
            .lock()
            .unwrap()
            .iter()
            .find_map(|f| match &f.sink {
                qci_core::job_file::Sink::Relay { url, token, .. }
                    if url.contains(&format!("/{job}/")) =>
                {
                    Some((url.clone(), token.clone()))
                }
                _ => None,
            })
            .unwrap()
    };
    host.github
        .wait_for("both jobs' statuses", Duration::from_secs(30), |p| {
            p.len() == 4
        });
    let (url_a, token_a) = token_of(&a);
    let (_, token_tag) = token_of(&tag);
    let before = host.footprint();
    let github_before = host.github.requests();

    let ok = event(&a, "success", "All steps passed");
    assert_eq!(
        relay_post(&url_a, "0123456789abcdef", &ok),
        401,
        "wrong token"
    );
    // Another job's token is told no more than a made-up one.
    assert_eq!(
        relay_reply(&url_a, &token_tag, &ok),
        relay_reply(&url_a, "0123456789abcdef", &ok),
        "another job's token"
    );
    assert_eq!(
        relay_post(&url_a, &token_tag, &ok),
        401,
        "another job's token"
    );
    assert_eq!(
        relay_post(&url_a, &token_a, &event(&a, "queued", "back")),
        409,
        "backwards"
    );
    assert_eq!(
        relay_post(&url_a, &token_a, &event(&tag, "success", "x")),
        400,
        "event for another job"
    );
    let no_auth = reqwest::blocking::Client::new()
        .post(&url_a)
        .body(ok.clone())
        .send()
        .unwrap();
    assert_eq!(no_auth.status().as_u16(), 401);
    let big = event(&a, "running", &"x".repeat(10_000));
    assert_eq!(relay_post(&url_a, &token_a, &big), 413, "oversized");
    let unknown = url_a.replace(&a, "999-q4.2");
    assert_eq!(
        relay_post(&unknown, &token_a, &event("999-q4.2", "running", "x")),
        404
    );
    assert_eq!(
        host.footprint(),
        before,
        "a refused status left something behind"
    );
    // Nothing new is in the outbox (the footprint above), and what was in
    // it is sent: GitHub's count can no longer change on its own.
    host.wait_outbox_sent();
    assert_eq!(
        host.github.requests(),
        github_before,
        "a refused status reached GitHub"
    );

    // The right token moves the job on once; after its end the token is dead.
    assert_eq!(relay_post(&url_a, &token_a, &ok), 204);
    host.wait_state(&a, "success");
    let ended = host.footprint();
    assert_eq!(
        relay_post(&url_a, &token_a, &event(&a, "failure", "late")),
        409,
        "token after the end"
    );
    assert_eq!(
        relay_post(&url_a, &token_a, &event(&a, "running", "late")),
        409
    );
    assert_eq!(host.footprint(), ended);
    assert_eq!(host.job(&a)["state"], "success");
    pool.open();
}

#[test]
fn a_newer_push_supersedes_queued_and_running_jobs_of_the_branch() {
    let pool = Scripted::new(false);
    let host = Host::start("", pool.clone());
    let first = host.deliver("push", "s1", &fixture("push.json"))[0].clone();
    wait_for("the first job to run", Duration::from_secs(30), || {
        pool.started() == 1
    });
    let second_sha = "1111111111111111111111111111111111111111";
    let third_sha = "2222222222222222222222222222222222222222";
    let second = host.deliver(
        "push",
        "s2",
        &edited("push.json", &[("after", json!(second_sha))]),
    )[0]
    .clone();
    // The second supersedes the running first: it waits for the machine,
    // or already runs if the first has stopped. The third supersedes it
    // either way.
    wait_for(
        "the second job to wait or run",
        Duration::from_secs(30),
        || ["queued", "running"].contains(&host.job(&second)["state"].as_str().unwrap_or("")),
    );
    let third = host.deliver(
        "push",
        "s3",
        &edited("push.json", &[("after", json!(third_sha))]),
    )[0]
    .clone();
    let first_job = host.job(&first);
    assert_eq!(first_job["state"], "error");
    assert_eq!(
        first_job["description"],
        format!("Superseded by {second_sha}")
    );
    let second_job = host.job(&second);
    assert_eq!(second_job["state"], "error");
    assert_eq!(
        second_job["description"],
        format!("Superseded by {third_sha}")
    );
    wait_for(
        "the running job to be stopped",
        Duration::from_secs(30),
        || pool.canceled.lock().unwrap().contains(&first),
    );
    // A tag push is never superseded by a branch push.
    let tag = host.deliver("push", "s4", &fixture("push-tag.json"))[0].clone();
    pool.open();
    host.wait_state(&third, "success");
    host.wait_state(&tag, "success");
    host.github
        .wait_for("the superseded statuses", Duration::from_secs(30), |p| {
            p.iter()
                .filter(|p| p.description.starts_with("Superseded by"))
                .count()
                == 2
        });
    let first_sha_states: Vec<_> = host
        .github
        .posted()
        .into_iter()
        .filter(|p| p.sha == MAIN_SHA)
        .map(|p| p.state)
        .collect();
    assert_eq!(first_sha_states.last().map(String::as_str), Some("error"));
}

/// Proof that the dispatcher has passed over every job queued before now,
/// in place of a sleep: it takes jobs in order, so once a push queued after
/// them has run to its end, any of them it could have started, it has.
fn dispatcher_passed(host: &Host, n: u8) {
    let sha = format!("{n:x}").repeat(40);
    let push = edited(
        "push.json",
        &[("after", json!(sha)), ("head_commit/id", json!(sha))],
    );
    let jobs = host.deliver("push", &format!("sentinel-{n}"), &push);
    assert!(!jobs.is_empty(), "the sentinel push made no job");
    for job in &jobs {
        host.wait_state(job, "success");
    }
}

/// How many jobs the pool was handed for commit `sha`.
fn started_for(pool: &Scripted, sha: &str) -> usize {
    pool.job_files
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.commit.as_ref().is_some_and(|c| c.as_str() == sha))
        .count()
}

const NEXT_SHA: &str = "4444444444444444444444444444444444444444";

#[test]
fn a_forks_pull_request_waits_for_a_maintainers_label_or_comment() {
    let pool = Scripted::new(true);
    let host = Host::start("", pool.clone());
    // The maintainer who labels and comments, as GitHub's permission API says.
    host.github.permission("rosharma", "write");
    let job = host.deliver("pull_request", "p1", &fixture("pull_request-fork.json"))[0].clone();
    host.github
        .wait_for("the waiting status", Duration::from_secs(30), |p| {
            !p.is_empty()
        });
    assert!(host.github.posted()[0].description.contains("approval"));
    dispatcher_passed(&host, 1);
    assert_eq!(
        started_for(&pool, PR_SHA),
        0,
        "a fork's code ran without approval"
    );
    let j = host.job(&job);
    assert_eq!(j["state"], "queued");
    assert_eq!(j["needs_approval"], true);

    // A comment by someone without write access approves nothing: GitHub
    // is asked, after the webhook is answered.
    let stranger = edited(
        "issue_comment-approve.json",
        &[
            ("comment/author_association", json!("CONTRIBUTOR")),
            ("comment/user/login", json!("passer-by")),
        ],
    );
    let (code, body) = host.webhook("issue_comment", "p2", &stranger);
    assert_eq!(code, 202, "{body}");
    let refused = host.resolved("p2");
    assert!(
        refused["outcome"].as_str().unwrap().contains("may not"),
        "{refused}"
    );
    // A label for another commit approves nothing either.
    let stale = edited(
        "pull_request-labeled.json",
        &[(
            "pull_request/head/sha",
            json!("3333333333333333333333333333333333333333"),
        )],
    );
    host.webhook("pull_request", "p3", &stale);
    dispatcher_passed(&host, 2);
    assert_eq!(started_for(&pool, PR_SHA), 0);

    let (code, body) = host.webhook("pull_request", "p4", &fixture("pull_request-labeled.json"));
    assert_eq!(code, 202, "{body}");
    let approved = host.resolved("p4");
    assert!(
        approved["outcome"].as_str().unwrap().contains(&job),
        "{approved}"
    );
    host.wait_state(&job, "success");
    let file = pool
        .job_files
        .lock()
        .unwrap()
        .iter()
        .find(|f| f.commit.as_ref().is_some_and(|c| c.as_str() == PR_SHA))
        .cloned()
        .unwrap();
    assert_eq!(started_for(&pool, PR_SHA), 1);
    assert_eq!(
        file.repository.url,
        "https://github.com/contributor-x/securedrop-workstation.git"
    );
    assert_eq!(file.git_ref.as_deref(), Some("refs/pull/1234/head"));

    // A new push to the fork waits again; a maintainer's comment lets it run.
    let again = edited(
        "pull_request-fork.json",
        &[
            ("action", json!("synchronize")),
            ("pull_request/head/sha", json!(NEXT_SHA)),
        ],
    );
    let next = host.deliver("pull_request", "p5", &again)[0].clone();
    dispatcher_passed(&host, 3);
    assert_eq!(started_for(&pool, NEXT_SHA), 0);
    host.webhook(
        "issue_comment",
        "p6",
        &fixture("issue_comment-approve.json"),
    );
    host.wait_state(&next, "success");
}

#[test]
fn tags_run_by_pattern_and_other_refs_and_repos_are_ignored() {
    let pool = Scripted::new(true);
    let host = Host::start("", pool.clone());
    let job = host.deliver("push", "t1", &fixture("push-tag.json"))[0].clone();
    host.wait_state(&job, "success");
    assert_eq!(host.job(&job)["git_ref"], "refs/tags/v1.2.0");

    let cases = [
        edited("push-tag.json", &[("ref", json!("refs/tags/nightly-1"))]),
        edited("push.json", &[("ref", json!("refs/heads/feature/x"))]),
        edited(
            "push.json",
            &[("repository/full_name", json!("someone/else"))],
        ),
        edited("push.json", &[("deleted", json!(true))]),
    ];
    for (i, body) in cases.iter().enumerate() {
        let (code, reply) = host.webhook("push", &format!("t-ignored-{i}"), body);
        assert_eq!(code, 200, "{reply}");
        assert!(reply.contains("ignored"), "{reply}");
    }
    assert_eq!(host.count("jobs"), 1);
    assert_eq!(host.count("deliveries"), 5);
}

#[test]
fn operators_cancel_and_retry_with_the_token_and_qci_jobs_lists() {
    let pool = Scripted::new(false);
    let host = Host::start("", pool.clone());
    let running = host.deliver("push", "c1", &fixture("push.json"))[0].clone();
    let waiting = host.deliver("push", "c2", &fixture("push-tag.json"))[0].clone();
    wait_for("the first job to run", Duration::from_secs(30), || {
        pool.started() == 1
    });

    let before = host.footprint();
    assert_eq!(
        host.post(&format!("/api/jobs/{waiting}/cancel"), None).0,
        401
    );
    assert_eq!(
        host.post(&format!("/api/jobs/{waiting}/cancel"), Some("guess"))
            .0,
        401
    );
    assert_eq!(host.footprint(), before);
    assert_eq!(
        host.post("/api/jobs/9999-q4.2/cancel", Some(ADMIN_TOKEN)).0,
        404
    );

    let (code, body) = host.post(&format!("/api/jobs/{waiting}/cancel"), Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(host.job(&waiting)["state"], "canceled");
    let (code, body) = host.post(&format!("/api/jobs/{running}/cancel"), Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{body}");
    wait_for("the run to stop", Duration::from_secs(30), || {
        pool.canceled.lock().unwrap().contains(&running)
    });
    assert_eq!(host.job(&running)["state"], "canceled");
    assert_eq!(
        host.post(&format!("/api/jobs/{running}/cancel"), Some(ADMIN_TOKEN))
            .0,
        409
    );

    let (code, body) = host.post(&format!("/api/jobs/{running}/retry"), Some(ADMIN_TOKEN));
    assert_eq!(code, 202, "{body}");
    let retried: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new = retried["queued"].as_str().unwrap().to_owned();
    pool.open();
    host.wait_state(&new, "success");
    assert_eq!(host.job(&new)["retry_of"], running.as_str());
    host.github
        .wait_for("the canceled statuses", Duration::from_secs(30), |p| {
            p.iter()
                .filter(|p| p.description.starts_with("Canceled by"))
                .count()
                == 2
        });
}

#[test]
fn github_statuses_are_retried_through_a_5xx() {
    let pool = Scripted::new(true);
    let host = Host::start("", pool.clone());
    host.github.fail_next(2);
    let job = host.deliver("push", "g1", &fixture("push.json"))[0].clone();
    host.wait_state(&job, "success");
    host.github
        .wait_for("all three statuses", Duration::from_secs(30), |p| {
            p.len() == 3
        });
    assert!(host.github.requests() >= 5);
    let states: Vec<_> = host
        .github
        .states(CONTEXT)
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(states, ["pending", "pending", "success"]);
}

#[test]
fn a_finished_job_is_notified_and_a_failing_notifier_holds_nothing_up() {
    let hook = Receiver::start(200);
    // Slack is down: its retries must not delay the job or its status.
    let slack = Receiver::start(503);
    let dir = tempfile::tempdir().unwrap();
    let slack_file = dir.path().join("slack-url");
    std::fs::write(&slack_file, &slack.url).unwrap();
    // A secret file as its owner keeps it (qci refuses others reading it).
    std::fs::set_permissions(
        &slack_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let extra = format!(
        "[server.notify]\nwebhook_url = \"{}\"\nslack_url = {{ file = \"{}\" }}",
        hook.url,
        slack_file.display()
    );
    let pool = Scripted::new(true);
    let host = Host::start(&extra, pool);
    let job = host.deliver("push", "n1", &fixture("push.json"))[0].clone();
    host.github
        .wait_for("the final status", Duration::from_secs(30), |p| {
            p.iter().any(|p| p.state == "success")
        });
    wait_for("the notification", Duration::from_secs(30), || {
        !hook.got().is_empty()
    });
    let note = &hook.got()[0];
    assert_eq!(note["job"], job.as_str());
    assert_eq!(note["state"], "success");
    assert_eq!(note["sha"], MAIN_SHA);
    assert_eq!(note["url"], format!("{}/jobs/{job}", host.base));
    wait_for("Slack to be tried", Duration::from_secs(30), || {
        !slack.got().is_empty()
    });
    let text = slack.got()[0]["text"].as_str().unwrap().to_owned();
    assert!(text.contains(REPO) && text.contains("success"), "{text}");
    // The next job is not held up by Slack's retries either.
    let next = host.deliver("push", "n2", &fixture("push-tag.json"))[0].clone();
    host.wait_state(&next, "success");
    wait_for("the second notification", Duration::from_secs(30), || {
        hook.got().len() == 2
    });
}

#[test]
fn healthz_and_metrics_answer() {
    let host = Host::start("", Scripted::new(false));
    assert_eq!(host.get("/healthz"), (200, "ok\n".to_owned()));
    let first = host.deliver("push", "m1", &fixture("push.json"))[0].clone();
    host.wait_state(&first, "running");
    host.deliver("push", "m2", &fixture("push-tag.json"));
    host.webhook_with("push", "m3", b"{}", None, "application/json");
    let (code, text) = host.get("/metrics");
    assert_eq!(code, 200);
    for want in [
        "qci_queue_length{qubes=\"4.2\"} 1",
        "qci_jobs{state=\"queued\"} 1",
        "qci_jobs{state=\"running\"} 1",
        "qci_webhooks_total{code=\"202\"} 2",
        "qci_webhooks_total{code=\"401\"} 1",
        "qci_webhook_seconds_count 3",
        "# TYPE qci_webhook_seconds histogram",
        "qci_triggers_unresolved 0",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
}

#[test]
fn old_logs_are_pruned_and_the_job_stays_in_history() {
    let host = Host::start("keep_logs = \"1s\"", Scripted::new(true));
    let job = host.deliver("push", "k1", &fixture("push.json"))[0].clone();
    host.wait_state(&job, "success");
    let published = host.dir.path().join(format!("state/published/{job}.log"));
    wait_for("the log to be pruned", Duration::from_secs(30), || {
        !published.exists()
    });
    let (code, text) = host.get(&format!("/jobs/{job}/log"));
    assert_eq!(code, 200);
    assert!(text.contains("pruned"), "{text}");
    assert_eq!(host.job(&job)["state"], "success");
    assert!(host.get("/").1.contains(&format!("/jobs/{job}")));
}

const TAG_SHA: &str = "5b9e2d7c7a3f0a1e4c6d8b2f9e1a3c5d7f9b0e2a";
/// A `.qci.toml` running on the given Qubes versions.
fn pipeline(versions: &str) -> String {
    format!("qubes = [{versions}]\n[[steps]]\nname = \"test\"\ncommand = \"make test\"\n")
}

#[test]
fn a_commits_qci_toml_names_its_qubes_versions_one_job_and_context_each() {
    let pool = Scripted::on(true, &["4.2", "4.3"]);
    let host = Host::start("", pool.clone());
    host.github
        .pipeline(REPO, MAIN_SHA, &pipeline("\"4.3\", \"4.2\""));
    // GitHub is slow: the webhook is answered all the same, once committed,
    // without asking GitHub anything.
    host.github.hold_reads(true);
    let (code, reply) = host.webhook("push", "v1", &fixture("push.json"));
    assert_eq!(code, 202, "{reply}");
    let (_, pending) = host.get("/api/deliveries/v1");
    assert!(pending.contains("\"resolved\":false"), "{pending}");
    host.github.hold_reads(false);
    let jobs = host.resolved("v1")["jobs"].clone();
    let jobs: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs[0].ends_with("-q4.3") && jobs[1].ends_with("-q4.2"),
        "{jobs:?}"
    );
    for job in &jobs {
        host.wait_state(job, "success");
    }
    for context in ["qci/qubes-4.2", "qci/qubes-4.3"] {
        host.github.wait_for(context, Duration::from_secs(30), |p| {
            p.iter()
                .any(|p| p.context == context && p.state == "success")
        });
        assert_eq!(
            host.github.states(context),
            [
                ("pending".into(), "Queued".into()),
                ("pending".into(), "Running make test".into()),
                ("success".into(), "All steps passed".into()),
            ],
            "{context}"
        );
    }
    // Read once, at the commit, with the host's token and GitHub's media type.
    assert_eq!(
        host.github.reads(),
        [(REPO.to_owned(), MAIN_SHA.to_owned())]
    );
    assert!(
        host.github.refused().is_empty(),
        "{:?}",
        host.github.refused()
    );
    let contexts: Vec<String> = pool
        .job_files
        .lock()
        .unwrap()
        .iter()
        .map(|f| f.context.clone())
        .collect();
    assert_eq!(contexts.len(), 2);
    assert!(
        contexts.contains(&"qci/qubes-4.3".to_owned()),
        "{contexts:?}"
    );
}

#[test]
fn a_bad_qci_toml_or_a_version_without_machines_ends_in_a_clear_error() {
    let pool = Scripted::new(true);
    let host = Host::start("", pool.clone());
    // A version no machine runs: its own context ends as error at once;
    // the others run.
    host.github
        .pipeline(REPO, MAIN_SHA, &pipeline("\"4.2\", \"9.9\""));
    let jobs = host.deliver("push", "b1", &fixture("push.json"));
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let missing = host.job(&jobs[1]);
    assert_eq!(missing["state"], "error");
    assert_eq!(
        missing["description"],
        "No machine of this qci host runs Qubes 9.9 (it has: 4.2)"
    );
    host.wait_state(&jobs[0], "success");
    host.github
        .wait_for("the 9.9 status", Duration::from_secs(30), |p| {
            p.iter().any(|p| p.context == "qci/qubes-9.9")
        });
    assert_eq!(
        host.github.states("qci/qubes-9.9"),
        [(
            "error".into(),
            "No machine of this qci host runs Qubes 9.9 (it has: 4.2)".into()
        )],
        "one final status, never a pending one"
    );
    // Nor does a retry queue it where no machine would take it.
    let (code, body) = host.post(&format!("/api/jobs/{}/retry", jobs[1]), Some(ADMIN_TOKEN));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("Qubes 9.9, which no machine"), "{body}");

    // A file dom0 would refuse: the configured versions' contexts say why,
    // and nothing reaches a machine. GitHub failing at first is retried.
    host.github
        .pipeline(REPO, TAG_SHA, "qubes = [\"4.2\"]\n[[steps]\nname = \"x\"\n");
    host.github.fail_next_reads(2);
    let handed = pool.handed.lock().unwrap().len();
    let broken = host.deliver("push", "b2", &fixture("push-tag.json"));
    assert_eq!(broken.len(), 1);
    let job = host.job(&broken[0]);
    assert_eq!(job["state"], "error");
    assert_eq!(job["context"], "qci/qubes-4.2");
    let why = job["description"].as_str().unwrap();
    assert!(
        why.starts_with(".qci.toml is not valid: TOML parse error at line 2"),
        "{why}"
    );
    assert!(!why.contains('\n'), "{why:?}");
    host.github
        .wait_for("the tag's status", Duration::from_secs(30), |p| {
            p.iter().any(|p| p.sha == TAG_SHA)
        });
    let tag_states: Vec<_> = host
        .github
        .posted()
        .into_iter()
        .filter(|p| p.sha == TAG_SHA)
        .map(|p| p.state)
        .collect();
    assert_eq!(tag_states, ["error"]);
    assert_eq!(pool.handed.lock().unwrap().len(), handed, "it ran");
    assert_eq!(
        host.github
            .reads()
            .iter()
            .filter(|(_, sha)| sha == TAG_SHA)
            .count(),
        1,
        "the 502s are not counted as reads; one read got through"
    );
}

#[test]
fn a_job_the_pool_could_not_start_waits_and_goes_again_then_ends_after_its_attempts() {
    use qci_server::dispatch::NotStarted;
    let pool = Scripted::new(true);
    let unreachable =
        || NotStarted::Failed("machine q42-1: libvirt at test:///x: failed to connect".into());
    *pool.not_started.lock().unwrap() = vec![unreachable(), unreachable()];
    let host = Host::start(
        "start_retry_delay = \"300ms\"\nstart_attempts = 3",
        pool.clone(),
    );
    let job = host.deliver("push", "u1", &fixture("push.json"))[0].clone();
    host.wait_state(&job, "success");
    // Handed over three times, after 300 ms, then 600 ms: no tight loop.
    let at = pool.handed(&job);
    assert_eq!(at.len(), 3, "{at:?}");
    assert!(at[1] - at[0] >= Duration::from_millis(300), "{at:?}");
    assert!(at[2] - at[1] >= Duration::from_millis(600), "{at:?}");
    host.github
        .wait_for("the final status", Duration::from_secs(30), |p| {
            p.iter().any(|p| p.state == "success")
        });
    let states = host.github.states(CONTEXT);
    let waits = [
        "Queued: retrying in 300ms (attempt 1 of 3 could not start: machine q42-1: libvirt at test:///x: failed to connect)",
        "Queued: retrying in 600ms (attempt 2 of 3 could not start: machine q42-1: libvirt at test:///x: failed to connect)",
    ];
    let cut = |s: &str| s.chars().take(140).collect::<String>();
    assert_eq!(
        states,
        [
            ("pending".into(), "Queued".into()),
            ("pending".into(), cut(waits[0])),
            ("pending".into(), cut(waits[1])),
            ("pending".into(), "Running make test".into()),
            ("success".into(), "All steps passed".into()),
        ]
    );
    let events = host.get(&format!("/api/jobs/{job}")).1;
    assert!(events.contains(waits[1]), "{events}");

    // A pool that never starts it: three hand-overs, then a final error.
    *pool.not_started.lock().unwrap() = vec![unreachable(), unreachable(), unreachable()];
    let tag = host.deliver("push", "u2", &fixture("push-tag.json"))[0].clone();
    host.wait_state(&tag, "error");
    assert_eq!(
        host.job(&tag)["description"],
        "CI error: could not start on a machine in 3 attempts; last: machine q42-1: libvirt at test:///x: failed to connect"
    );
    assert_eq!(pool.handed(&tag).len(), 3);
    assert_eq!(host.job(&tag)["start_failures"], 3);

    // One that never can: ends at once.
    *pool.not_started.lock().unwrap() = vec![NotStarted::Refused(
        "no machine runs Qubes \"4.2\" in the pool".into(),
    )];
    let sha = "5555555555555555555555555555555555555555";
    let bad = host.deliver("push", "u3", &edited("push.json", &[("after", json!(sha))]))[0].clone();
    host.wait_state(&bad, "error");
    assert_eq!(
        host.job(&bad)["description"],
        "CI error: no machine runs Qubes \"4.2\" in the pool"
    );
    assert_eq!(pool.handed(&bad).len(), 1);
}

#[test]
fn every_response_says_nosniff_and_no_error_echoes_its_input() {
    let host = Host::start("", Scripted::new(false));
    let client = reqwest::blocking::Client::new();
    let hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let requests = [
        client.get(format!("{}/", host.base)),
        client.get(format!("{}/healthz", host.base)),
        client.get(format!("{}/metrics", host.base)),
        client.get(format!("{}/jobs/{hostile}", host.base)),
        client.get(format!("{}/jobs/{hostile}/log", host.base)),
        client.get(format!("{}/api/jobs/{hostile}", host.base)),
        client.get(format!("{}/api/jobs", host.base)),
        client.get(format!("{}/no/such/{hostile}", host.base)),
        client.post(format!("{}/webhook", host.base)).body("{}"),
        client.post(format!("{}/api/jobs/{hostile}/status", host.base)),
    ];
    for request in requests {
        let reply = request.send().unwrap();
        let url = reply.url().to_string();
        let nosniff = reply
            .headers()
            .get("x-content-type-options")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = reply.text().unwrap();
        assert_eq!(nosniff.as_deref(), Some("nosniff"), "{url}");
        assert!(!body.contains("alert(1)"), "{url} echoed its input: {body}");
    }
}

#[test]
fn a_flood_of_progress_from_one_job_reaches_github_as_a_handful() {
    let pool = Scripted::new(false);
    let host = Host::start("", pool.clone());
    let job = host.deliver("push", "flood-1", &fixture("push.json"))[0].clone();
    host.wait_state(&job, "running");
    // The job is `running` once its status is in, a moment before the pool
    // counts it as started with its job file.
    wait_for("the job file", Duration::from_secs(30), || {
        pool.started() == 1
    });
    let (url, token) = pool
        .job_files
        .lock()
        .unwrap()
        .iter()
        .find_map(|f| match &f.sink {
            qci_core::job_file::Sink::Relay { url, token, .. } => {
                Some((url.clone(), token.clone()))
            }
            _ => None,
        })
        .unwrap();
    let context = "qci/qubes-4.2";
    host.github
        .wait_for("queued and running", Duration::from_secs(30), |p| {
            p.len() == 2
        });

    let mut refused = 0;
    let flood = std::time::Instant::now();
    for i in 0..1000 {
        match relay_post(&url, &token, &event(&job, "running", &format!("step {i}"))) {
            204 => {}
            429 => refused += 1,
            code => panic!("progress {i}: HTTP {code}"),
        }
    }
    // A burst of 5, then one every 2 s: how many get through depends on how
    // long this machine took to send the flood, never more.
    let accepted = 1000 - refused;
    let allowed = 5 + flood.elapsed().as_secs() as usize / 2 + 1;
    assert!(
        accepted <= allowed,
        "{accepted} of 1000 accepted in {:?}",
        flood.elapsed()
    );
    pool.open();
    host.wait_state(&job, "success");
    host.github
        .wait_for("the final status", Duration::from_secs(30), |p| {
            p.iter().any(|p| p.state == "success")
        });
    // The outbox is drained once nothing for the job waits in it.
    host.wait_outbox_sent();
    let states = host.github.states(context);
    let finals = states.iter().filter(|s| s.0 != "pending").count();
    assert_eq!(finals, 1, "{states:?}");
    // queued, dom0's running, at most one per accepted progress, the final.
    assert!(
        states.len() <= 2 + accepted + 1,
        "GitHub got {} statuses for {accepted} accepted: {states:?}",
        states.len()
    );
    let events: i64 = host
        .db()
        .query_row("SELECT count(*) FROM events WHERE job = ?1", [&job], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        events <= qci_server::queue::MAX_EVENTS_PER_JOB + 1,
        "{events} events stored"
    );
}
