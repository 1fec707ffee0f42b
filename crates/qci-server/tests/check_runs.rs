//! App mode: each job is one GitHub check run, created when the job is
//! queued and updated as it runs and ends, through the outbox, with the
//! App's installation tokens; never a commit status. The fake GitHub
//! checks every body against GitHub's documented limits with its own code
//! (not qci's `check_run::validate`), and takes check runs from an App only.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[expect(dead_code, reason = "each test file uses part of the support")]
mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::fake_github::{CheckRun, FakeGithub};
use support::*;

const MAIN_SHA: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
const WAIT: Duration = Duration::from_secs(60);

/// A failed JUnit test case at `file:line`.
fn failed_case(name: &str, file: Option<&str>, line: Option<u32>) -> qci_junit::TestCase {
    qci_junit::TestCase {
        name: name.into(),
        classname: "tests.test_vm".into(),
        outcome: qci_junit::Outcome::Failed,
        duration: None,
        message: Some(format!("assert {name} == 2")),
        details: Some("Traceback: ...".into()),
        output: None,
        file: file.map(str::to_owned),
        line,
    }
}

fn passed_case(name: &str) -> qci_junit::TestCase {
    qci_junit::TestCase {
        outcome: qci_junit::Outcome::Passed,
        message: None,
        details: None,
        ..failed_case(name, None, None)
    }
}

/// A pool whose jobs print `lines`, leave `tests` and end `failure`.
fn failing_pool(
    open: bool,
    lines: Vec<String>,
    tests: Vec<qci_junit::TestCase>,
) -> (Arc<Scripted>, tempfile::TempDir) {
    let mut pool = Scripted::new(open);
    let setup = Arc::get_mut(&mut pool).unwrap();
    setup.lines = lines;
    setup.last = "failure";
    let dir = tempfile::tempdir().unwrap();
    *pool.artifacts.lock().unwrap() = Some(qci_pool::artifacts::JobArtifacts {
        dir: dir.path().to_owned(),
        files: Vec::new(),
        reports: Vec::new(),
        screenshot: None,
        tests,
        report_problems: Vec::new(),
    });
    (pool, dir)
}

/// The check run requests that set a status, as `(method, status)`.
fn statuses(runs: &[CheckRun]) -> Vec<(String, String)> {
    runs.iter()
        .filter_map(|r| Some((r.method.clone(), r.status.clone()?)))
        .collect()
}

fn completed(runs: &[CheckRun]) -> bool {
    runs.iter()
        .any(|r| r.status.as_deref() == Some("completed"))
}

fn output_text<'a>(run: &'a CheckRun, field: &str) -> &'a str {
    run.output.as_ref().unwrap()[field].as_str().unwrap()
}

/// No request went to the statuses API, and GitHub refused nothing.
fn assert_only_check_runs(github: &FakeGithub) {
    let seen = github.seen();
    assert!(
        !seen.iter().any(|s| s.contains("/statuses/")),
        "a commit status in App mode: {seen:#?}"
    );
    assert!(github.refused().is_empty(), "{:?}", github.refused());
}

#[test]
fn a_push_is_one_check_run_queued_then_in_progress_then_completed() {
    let mut lines: Vec<String> = (0..300).map(|i| format!("output line {i}\n")).collect();
    lines.push("FAILED tests/test_vm.py::test_new - assert 1 == 2\n".into());
    let tests = vec![
        passed_case("test_ok"),
        failed_case("test_new", Some("tests/test_vm.py"), Some(12)),
    ];
    let (pool, _artifacts) = failing_pool(true, lines, tests);
    let host = Host::start_app("", Duration::from_secs(3600), pool);
    let jobs = host.deliver("push", "d-push-1", &fixture("push.json"));
    assert_eq!(jobs, ["1-q4.2"]);
    host.wait_state(&jobs[0], "failure");
    let runs = host
        .github
        .wait_check_runs("the completed check run", WAIT, completed);
    host.wait_outbox_sent();
    let runs_now = host.github.check_runs();
    eprintln!(
        "check run requests: {:?}",
        runs_now
            .iter()
            .map(|r| (&r.method, r.id, &r.status, &r.conclusion, r.annotations))
            .collect::<Vec<_>>()
    );
    assert_eq!(runs.len(), runs_now.len(), "nothing after completed");

    // One check run, created queued, then in progress, then completed.
    let first = &runs[0];
    assert_eq!(first.method, "POST");
    assert!(runs.iter().all(|r| r.id == first.id), "{runs:#?}");
    let mut seen = statuses(&runs);
    seen.dedup();
    let want = |m: &str, s: &str| (m.to_owned(), s.to_owned());
    assert_eq!(
        seen,
        [
            want("POST", "queued"),
            want("PATCH", "in_progress"),
            want("PATCH", "completed")
        ]
    );
    assert_eq!(first.name.as_deref(), Some("qci / qubes-4.2"));
    assert_eq!(first.head_sha.as_deref(), Some(MAIN_SHA));
    assert_eq!(first.external_id.as_deref(), Some("1-q4.2"));
    let in_progress = runs
        .iter()
        .find(|r| r.status.as_deref() == Some("in_progress"))
        .unwrap();
    assert!(in_progress.started_at.is_some(), "{in_progress:?}");

    // Completed: a failure, naming the failed test, with the log's tail.
    let done = runs
        .iter()
        .find(|r| r.status.as_deref() == Some("completed"))
        .unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("failure"));
    assert_eq!(output_text(done, "title"), "1 of 2 tests failed (1 passed)");
    let summary = output_text(done, "summary");
    assert!(summary.contains("tests.test_vm.test_new"), "{summary}");
    let text = output_text(done, "text");
    assert!(
        text.contains("FAILED tests/test_vm.py::test_new - assert 1 == 2\n"),
        "{text}"
    );
    assert!(text.contains("output line 299\n"), "{text}");
    assert!(
        !text.contains("output line 200\n"),
        "only the last 100 lines"
    );
    assert_eq!(done.annotations, 1);
    let note = &done.output.as_ref().unwrap()["annotations"][0];
    assert_eq!(
        (&note["path"], &note["start_line"]),
        (&json!("tests/test_vm.py"), &json!(12))
    );

    // Its details link is the job's page.
    let details = first.details_url.clone().unwrap();
    assert_eq!(details, format!("{}/jobs/1-q4.2", host.base));
    let page = reqwest::blocking::get(&details).unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("Job 1-q4.2"));

    // The job row keeps the check run's id; GitHub got no status.
    let stored: i64 = host
        .db()
        .query_row(
            "SELECT check_run_id FROM jobs WHERE id = '1-q4.2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored as u64, first.id);
    assert_only_check_runs(&host.github);
    assert!(host.github.posted().is_empty());
}

#[test]
fn installation_tokens_refreshed_or_revoked_mid_job_keep_every_request_accepted() {
    // Tokens of 6 s are refreshed at half their life: the job's queued and
    // running requests use the first, its end (4 s later) a second.
    let pool = Scripted::new(false);
    let host = Host::start_app("", Duration::from_secs(6), pool.clone());
    let jobs = host.deliver("push", "d-push-1", &fixture("push.json"));
    host.github
        .wait_check_runs("the check run in progress", WAIT, |runs| {
            runs.iter()
                .any(|r| r.status.as_deref() == Some("in_progress"))
        });
    assert_eq!(host.github.exchanges(), 1);
    std::thread::sleep(Duration::from_secs(4));
    pool.open();
    host.wait_state(&jobs[0], "success");
    host.github
        .wait_check_runs("the completed check run", WAIT, completed);
    host.wait_outbox_sent();
    assert_eq!(host.github.exchanges(), 2, "refreshed once, before expiry");
    assert_eq!(host.github.expired_uses(), 0);
    assert_only_check_runs(&host.github);
    let runs = host.github.check_runs();
    assert_eq!(runs.last().unwrap().conclusion.as_deref(), Some("success"));

    // GitHub revokes the tokens before their time: the next request is
    // refused (401), the host drops its token, fetches one, and retries.
    // (A re-run reads nothing from GitHub: its check run is the first call.)
    host.github.set_token_life(Duration::from_secs(3600));
    let exchanges = host.github.exchanges();
    host.github.revoke_tokens();
    let rerun = edited(
        "check_run-rerequested.json",
        &[
            ("check_run/id", json!(runs[0].id)),
            ("check_run/external_id", json!(jobs[0])),
            ("check_run/head_sha", json!(MAIN_SHA)),
        ],
    );
    let again = host.deliver("check_run", "r-1", &rerun);
    assert_eq!(again, ["2-q4.2"]);
    host.wait_state(&again[0], "success");
    let runs = host
        .github
        .wait_check_runs("the re-run's end", WAIT, |runs| {
            runs.iter()
                .filter(|r| r.status.as_deref() == Some("completed"))
                .count()
                == 2
        });
    host.wait_outbox_sent();
    eprintln!(
        "exchanges: {}, expired uses: {}, refused: {:?}",
        host.github.exchanges(),
        host.github.expired_uses(),
        host.github.refused()
    );
    assert_eq!(host.github.exchanges(), exchanges + 1);
    assert_eq!(host.github.expired_uses(), 0);
    assert_eq!(
        host.github.refused(),
        ["Bad credentials"],
        "one 401, then accepted"
    );
    let new_run = runs
        .iter()
        .find(|r| r.external_id.as_deref() == Some("2-q4.2"));
    assert!(new_run.is_some(), "{runs:#?}");
}

#[test]
fn a_10_mb_log_and_5000_failed_tests_make_a_check_run_github_accepts() {
    // 10,000 lines of 1 KB.
    let lines: Vec<String> = (0..10_000)
        .map(|i| format!("{i:05} {}\n", "x€`".repeat(210)))
        .collect();
    assert!(lines.iter().map(String::len).sum::<usize>() >= 10 << 20);
    let tests: Vec<qci_junit::TestCase> = (0..5000u32)
        .map(|i| {
            let name = format!("test_{i:04}");
            // All but 10 on their file's line.
            match i % 500 {
                499 => failed_case(&name, None, None),
                _ => failed_case(&name, Some("tests/test_big.py"), Some(i + 1)),
            }
        })
        .collect();
    let (pool, _artifacts) = failing_pool(true, lines, tests);
    let host = Host::start_app("", Duration::from_secs(3600), pool);
    let jobs = host.deliver("push", "d-push-1", &fixture("push.json"));
    host.wait_state(&jobs[0], "failure");
    host.github.wait_check_runs(
        "the completed check run",
        Duration::from_secs(120),
        completed,
    );
    host.wait_outbox_sent();
    let runs = host.github.check_runs();
    assert_only_check_runs(&host.github);

    let done: Vec<&CheckRun> = runs
        .iter()
        .skip_while(|r| r.status.as_deref() != Some("completed"))
        .collect();
    let sizes: Vec<usize> = done.iter().map(|r| r.annotations).collect();
    eprintln!(
        "completed in {} requests, annotations {sizes:?}",
        done.len()
    );
    assert!(sizes.iter().all(|&n| n <= 50), "{sizes:?}");
    // The page lists 1,000 failed tests: those of them on a line.
    let annotated = sizes.iter().sum::<usize>();
    assert!((990..=1000).contains(&annotated), "{annotated}");
    assert_eq!(done.len(), annotated.div_ceil(50));
    assert!(done[1..].iter().all(|r| r.status.is_none()), "appends only");
    let last = done[0];
    assert_eq!(last.conclusion.as_deref(), Some("failure"));
    // GitHub counts bytes, and these texts are of multi-byte characters.
    for field in ["title", "summary", "text"] {
        let text = output_text(last, field);
        assert!(text.chars().count() <= 65_535, "{field}");
        assert!(text.len() <= 65_535, "{field}: {} bytes", text.len());
    }
    assert_eq!(
        output_text(last, "title"),
        "5000 of 5000 tests failed (0 passed)"
    );
    assert!(output_text(last, "text").contains("09999 "));
}

#[test]
fn a_rerequested_check_run_makes_one_new_job_and_one_new_check_run() {
    let host = Host::start_app("", Duration::from_secs(3600), Scripted::new(true));
    let old = host.deliver("push", "p1", &fixture("push.json"));
    assert_eq!(old, ["1-q4.2"]);
    host.wait_state(&old[0], "success");
    let runs = host
        .github
        .wait_check_runs("the completed check run", WAIT, completed);
    host.wait_outbox_sent();
    let old_id = runs[0].id;
    let old_job = host.job(&old[0]);

    // As GitHub sends it: our app's check run, naming the job.
    let rerun = edited(
        "check_run-rerequested.json",
        &[
            ("check_run/id", json!(old_id)),
            ("check_run/external_id", json!(old[0])),
            ("check_run/head_sha", json!(MAIN_SHA)),
            ("check_run/app/id", json!(APP_ID)),
        ],
    );
    let new = host.deliver("check_run", "r1", &rerun);
    assert_eq!(new, ["2-q4.2"]);
    host.wait_state(&new[0], "success");
    host.github
        .wait_check_runs("the re-run's end", WAIT, |runs| {
            runs.iter()
                .filter(|r| r.status.as_deref() == Some("completed"))
                .count()
                == 2
        });
    host.wait_outbox_sent();
    let runs = host.github.check_runs();
    let creates: Vec<&CheckRun> = runs.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(creates.len(), 2, "{runs:#?}");
    let new_run = creates[1];
    assert_ne!(new_run.id, old_id);
    assert_eq!(new_run.head_sha.as_deref(), Some(MAIN_SHA));
    assert_eq!(new_run.external_id.as_deref(), Some("2-q4.2"));
    assert_eq!(new_run.name.as_deref(), Some("qci / qubes-4.2"));
    // The old check run was left as it ended; the new job's went to the new one.
    let after_rerun = &runs[runs.iter().position(|r| r.id == new_run.id).unwrap()..];
    assert!(after_rerun.iter().all(|r| r.id == new_run.id), "{runs:#?}");
    let still = host.job(&old[0]);
    assert_eq!(
        (&still["state"], &still["finished_at"]),
        (&old_job["state"], &old_job["finished_at"])
    );

    // The same delivery again makes neither a job nor a check run.
    let before = (host.footprint(), host.github.check_runs().len());
    let (code, body) = host.webhook("check_run", "r1", &rerun);
    assert_eq!(
        (code, body.as_str()),
        (409, "delivery r1 was received already\n")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((host.footprint(), host.github.check_runs().len()), before);
    assert_eq!(host.count("jobs"), 2);
    assert_only_check_runs(&host.github);
}

/// A fake GitHub in App mode and an installation token for it.
fn app_github() -> (FakeGithub, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = support::fake_github::app_key(dir.path());
    let github = FakeGithub::start_app(APP_ID, &public, Duration::from_secs(3600));
    let token = github.installation_token();
    (github, token, dir)
}

/// `POST /repos/REPO/check-runs` with `body`, as `(code, body)`.
fn post_check_run(github: &FakeGithub, token: &str, body: &serde_json::Value) -> (u16, String) {
    let reply = reqwest::blocking::Client::new()
        .post(format!("{}/repos/{REPO}/check-runs", github.base))
        .bearer_auth(token)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "test")
        .json(body)
        .send()
        .unwrap();
    let code = reply.status().as_u16();
    (code, reply.text().unwrap())
}

#[test]
fn the_fake_github_refuses_an_invalid_check_run_with_422() {
    let (github, token, _dir) = app_github();
    let post = |body: serde_json::Value| post_check_run(&github, &token, &body);
    // Completed, without a conclusion.
    let (code, body) = post(json!({
        "name": "qci / qubes-4.2", "head_sha": MAIN_SHA, "status": "completed",
        "output": {"title": "t", "summary": "s"},
    }));
    eprintln!("{code} {body}");
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        github.refused(),
        ["status Some(\"completed\") does not go with conclusion None"]
    );
    assert!(github.check_runs().is_empty());
    // The same with its conclusion is taken.
    let (code, body) = post(json!({
        "name": "qci / qubes-4.2", "head_sha": MAIN_SHA, "status": "completed",
        "conclusion": "success", "output": {"title": "t", "summary": "s"},
    }));
    assert_eq!(code, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].clone();
    assert_eq!(github.check_runs()[0].id, id.as_u64().unwrap());
}

#[test]
fn the_fake_github_judges_check_runs_by_githubs_limits_in_bytes() {
    let (github, token, _dir) = app_github();
    let with_output = |output: serde_json::Value| json!({"name": "qci / qubes-4.2", "head_sha": MAIN_SHA, "output": output});
    // 32,767 two-byte characters fit in 65,535 bytes; one more does not,
    // though 32,768 characters are far fewer than 65,535.
    let fits = "é".repeat(32_767);
    let (code, body) = post_check_run(
        &github,
        &token,
        &with_output(json!({"title": "t", "summary": fits, "text": fits})),
    );
    assert_eq!(code, 201, "{body}");
    let over = "é".repeat(32_768);
    for field in ["summary", "text"] {
        let mut output = json!({"title": "t", "summary": "s"});
        output[field] = json!(over);
        let (code, body) = post_check_run(&github, &token, &with_output(output));
        assert_eq!(code, 422, "{field}: {body}");
        assert!(body.contains("maximum bytesize of 65535"), "{body}");
    }
    let note = json!({"path": "a.py", "start_line": 1, "end_line": 1,
                      "annotation_level": "failure", "message": "m"});
    let notes = |notes: Vec<serde_json::Value>| {
        with_output(json!({"title": "t", "summary": "s", "annotations": notes}))
    };
    let (code, body) = post_check_run(&github, &token, &notes(vec![note.clone(); 50]));
    assert_eq!(code, 201, "{body}");
    let mut refusals = vec![
        with_output(json!({"summary": "s"})),
        notes(vec![note.clone(); 51]),
        json!({"name": "n", "head_sha": MAIN_SHA, "status": "done"}),
        json!({"name": "n", "head_sha": MAIN_SHA, "conclusion": "stale"}),
    ];
    let mut bad = note.clone();
    bad["annotation_level"] = json!("error");
    refusals.push(notes(vec![bad]));
    for field in [
        "path",
        "start_line",
        "end_line",
        "annotation_level",
        "message",
    ] {
        let mut bad = note.clone();
        bad.as_object_mut().unwrap().remove(field);
        refusals.push(notes(vec![bad]));
    }
    let before = github.check_runs().len();
    for body in &refusals {
        let (code, reply) = post_check_run(&github, &token, body);
        assert_eq!(code, 422, "{body}: {reply}");
    }
    assert_eq!(github.check_runs().len(), before, "none taken");
    assert_eq!(github.refused().len(), 2 + refusals.len());
}

#[test]
fn the_fake_github_takes_no_check_run_from_a_personal_token() {
    let github = FakeGithub::start(GITHUB_TOKEN);
    let (code, body) = post_check_run(
        &github,
        GITHUB_TOKEN,
        &json!({
            "name": "qci / qubes-4.2", "head_sha": MAIN_SHA, "status": "completed",
            "conclusion": "success", "output": {"title": "t", "summary": "s"},
        }),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["message"],
        "Resource not accessible by personal access token"
    );
    let patch = reqwest::blocking::Client::new()
        .patch(format!("{}/repos/{REPO}/check-runs/1", github.base))
        .bearer_auth(GITHUB_TOKEN)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "test")
        .json(&json!({"output": {"title": "t", "summary": "s"}}))
        .send()
        .unwrap();
    assert_eq!(patch.status().as_u16(), 403);
    assert!(github.check_runs().is_empty());
    assert_eq!(
        github.refused(),
        [
            "Resource not accessible by personal access token",
            "Resource not accessible by personal access token"
        ]
    );
}

#[test]
fn token_mode_still_posts_commit_statuses_and_no_check_run() {
    let host = Host::start("", Scripted::new(true));
    let jobs = host.deliver("push", "d-push-1", &fixture("push.json"));
    host.wait_state(&jobs[0], "success");
    host.github.wait_for("the final status", WAIT, |p| {
        p.iter().any(|p| p.state == "success")
    });
    host.wait_outbox_sent();
    assert!(host.github.check_runs().is_empty());
    assert!(
        !host.github.seen().iter().any(|s| s.contains("check-runs")),
        "{:?}",
        host.github.seen()
    );
}
