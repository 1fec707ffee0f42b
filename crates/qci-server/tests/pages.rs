//! What the pages tell a person at a glance: a finished job's log in
//! sections by step (the failing one open), where and when it ran, why a
//! queued job waits, and the machines on `/pool`.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[expect(dead_code, reason = "this test uses part of the shared support")]
mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const T0: &str = "2026-12-03T10:00:00.000Z";
const T1: &str = "2026-12-03T10:00:03.000Z";

/// The text of the first element after `marker` in `page`, up to `end`.
fn after<'a>(page: &'a str, marker: &str, end: &str) -> &'a str {
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {page}"));
    let rest = &page[at + marker.len()..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

#[test]
fn a_finished_jobs_log_is_in_sections_by_step_the_failing_one_open() {
    let mut pool = Scripted::new(true);
    {
        let pool = Arc::get_mut(&mut pool).unwrap();
        pool.lines = [
            format!("{T0} [qci] fetching the code"),
            format!("{T0} [qci] step build: make"),
            format!("{T0} [build] \u{1b}[1;32mbuilt\u{1b}[0m fine"),
            format!("{T0} [qci] step build passed in 1.2s"),
            format!("{T0} [qci] step test: make test"),
            format!("{T1} [test] \u{1b}[31m<script>alert(1)</script> FAIL\u{1b}[m"),
        ]
        .map(|l| format!("{l}\n"))
        .to_vec();
        pool.last = "failure";
    }
    let host = Host::start("", pool.clone());
    let job = host.deliver("push", "d-sections", &fixture("push.json"))[0].clone();
    host.wait_state(&job, "failure");
    wait_for("the log to be published", Duration::from_secs(30), || {
        host.job(&job)["log_published"] == true
    });

    let (code, page) = host.get(&format!("/jobs/{job}"));
    assert_eq!(code, 200, "{page}");
    // Three sections: the setup and the passed step closed, the failing
    // step open, each with its result and duration.
    assert_eq!(page.matches("<details").count(), 3, "{page}");
    let setup = after(&page, "<details class=\"section\"><summary>", "</summary>");
    assert_eq!(
        setup,
        "<span class=\"name\">Setup</span> <small>(1 line)</small>"
    );
    let build = after(&page, "<span class=\"name\">build</span>", "</summary>");
    assert_eq!(
        build,
        " <span class=\"state success\">passed</span> in 1.2s <small>(3 lines)</small>"
    );
    assert!(
        page.contains("<details class=\"section\" open><summary><span class=\"name\">test</span>"),
        "{page}"
    );
    let test = after(&page, "<span class=\"name\">test</span>", "</summary>");
    assert_eq!(
        test,
        " <span class=\"state failure\">failed</span> in 3.0s <small>(2 lines)</small>"
    );
    // The colours are classes; the markup is text; no escape is left.
    assert!(
        page.contains("<span class=\"sgr-bold sgr-fg2\">built</span> fine"),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"sgr-fg1\">&lt;script&gt;alert(1)&lt;/script&gt; FAIL</span>"),
        "{page}"
    );
    assert!(!page.contains('\u{1b}'));
    // A finished job's log is all there: no live stream.
    assert!(!page.contains("data-events"), "{page}");
    // Where and when it ran.
    assert_eq!(after(&page, "<td id=\"machine\">", "</td>"), MACHINE);
    assert_eq!(after(&page, "<td id=\"snapshot\">", "</td>"), SNAPSHOT);
    let today = &qci_core::log::timestamp(std::time::SystemTime::now())[..10];
    for id in ["started", "ended"] {
        let at = after(&page, &format!("<td id=\"{id}\">"), "</td>");
        assert!(at.starts_with(today) && at.ends_with('Z'), "{id}: {at}");
    }
    let took = after(&page, "<td id=\"duration\">", "</td>");
    assert!(took.ends_with('s'), "{took}");
    // The live stream marks the steps for the page's script, and carries
    // the colours as classes.
    let (_, events) = host.get(&format!("/jobs/{job}/events"));
    for want in [
        r#"{"runs":[{"class":"","text":"2026-12-03T10:00:00.000Z [qci] step build: make"}],"start":"build"}"#,
        r#""end":{"step":"build","result":"passed","state":"success","took":"1.2s"}"#,
        r#"{"class":"sgr-bold sgr-fg2","text":"built"}"#,
    ] {
        assert!(events.contains(want), "no {want} in {events}");
    }
    assert!(!events.contains('\u{1b}'), "{events:?}");
    // The text log stays as the machine wrote it, escapes and all.
    let (_, text) = host.get(&format!("/jobs/{job}/log"));
    assert_eq!(text, pool.lines.concat());
}

#[test]
fn a_queued_job_says_why_it_waits_on_the_monitor_and_its_page() {
    let pool = Scripted::new(false);
    let host = Host::start("", pool.clone());
    let running = host.deliver("push", "w1", &fixture("push.json"))[0].clone();
    wait_for("the first job to run", Duration::from_secs(30), || {
        pool.started() == 1
    });
    let branch = |b: &str| edited("push.json", &[("ref", json!(format!("refs/heads/{b}")))]);
    let second = host.deliver("push", "w2", &branch("release/1"))[0].clone();
    let third = host.deliver("push", "w3", &branch("release/2"))[0].clone();
    let fork = host.deliver("pull_request", "w4", &fixture("pull_request-fork.json"))[0].clone();

    let (_, monitor) = host.get("/");
    for (job, why) in [
        (&second, "waiting for a 4.2 machine: 1 of 1 busy, 0 ahead"),
        (&third, "waiting for a 4.2 machine: 1 of 1 busy, 1 ahead"),
        (&fork, "waiting for approval"),
    ] {
        let row = after(&monitor, &format!("<a href=\"/jobs/{job}\">"), "</tr>");
        assert!(
            row.contains(&format!("<span class=\"waiting\">{why}</span>")),
            "{job}: {row}"
        );
    }
    let running_row = after(&monitor, &format!("<a href=\"/jobs/{running}\">"), "</tr>");
    assert!(!running_row.contains("waiting"), "{running_row}");
    assert!(monitor.contains("<a href=\"/pool\">"), "{monitor}");

    let (_, page) = host.get(&format!("/jobs/{third}"));
    assert!(
        page.contains("waiting for a 4.2 machine: 1 of 1 busy, 1 ahead"),
        "{page}"
    );
    // A queued job's log is not there yet: the page follows it live.
    assert!(
        page.contains(&format!("data-events=\"/jobs/{third}/events\"")),
        "{page}"
    );
    let (_, page) = host.get(&format!("/jobs/{running}"));
    assert!(!page.contains("id=\"waiting\""), "{page}");
    pool.open();
    host.wait_state(&third, "success");
}

#[test]
fn the_pool_page_lists_each_machine_with_its_state_job_and_snapshots() {
    let pool = Scripted::new(false);
    let host = Host::start("", pool.clone());
    let job = host.deliver("push", "p1", &fixture("push.json"))[0].clone();
    wait_for("the job to run", Duration::from_secs(30), || {
        pool.started() == 1
    });
    *pool.machines.lock().unwrap() = vec![
        Machine {
            name: "m1".into(),
            qubes: "4.2".into(),
            lease: Some((job.clone(), true)),
            snapshot: Some("qci-2026-12-02".into()),
            last_run: Some((job.clone(), "running".into())),
        },
        Machine {
            name: "m2".into(),
            qubes: "4.2".into(),
            lease: Some(("run-by-hand".into(), false)),
            snapshot: Some("clean".into()),
            last_run: None,
        },
        Machine {
            name: "m3".into(),
            qubes: "4.3".into(),
            ..Machine::default()
        },
    ];
    let (code, page) = host.get("/pool");
    assert_eq!(code, 200, "{page}");
    let row = |m: &str| after(&page, &format!("<td>{m}</td>"), "</tr>").to_owned();
    let m1 = row("m1");
    assert!(m1.contains("<td>4.2</td>"), "{m1}");
    assert!(m1.contains("<td class=\"machine busy\">busy for"), "{m1}");
    assert!(
        m1.contains(&format!("<a href=\"/jobs/{job}\">{job}</a>")),
        "{m1}"
    );
    assert!(
        m1.contains("<td>qci-2026-12-02</td><td>qci-2026-12-02</td>"),
        "{m1}"
    );
    let m2 = row("m2");
    assert!(
        m2.contains(
            "<td class=\"machine stale\">stale lease: its holder (pid 1 on test-host) is gone</td>"
        ),
        "{m2}"
    );
    // Not one of the server's jobs: named, not linked.
    assert!(m2.contains("<td>run-by-hand</td>"), "{m2}");
    assert!(m2.contains("<td>clean</td><td>(none)</td>"), "{m2}");
    let m3 = row("m3");
    assert!(m3.contains("<td class=\"machine free\">free</td>"), "{m3}");
    pool.open();
    host.wait_state(&job, "success");
}
