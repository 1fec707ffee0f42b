//! Hostile text on the pages: an author, a branch, a commit message, a
//! status description and a log line that carry markup and terminal
//! escapes are shown as text on every page, never as markup, and the
//! pages' policy would stop a script that got through anyway.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[expect(dead_code, reason = "this test uses part of the shared support")]
mod support;

use reqwest::blocking::Response;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// Markup that would run if a page let it through as markup.
const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img src=x onerror=alert(1)>";
/// What a page shows for them once escaped (maud escapes `&<>"`).
const SCRIPT_SHOWN: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";
const IMG_SHOWN: &str = "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;";
/// A colour and a window title, as a terminal would act on them.
const ANSI: &str = "\u{1b}[31m\u{1b}]0;title\u{7}";
/// The repository whose branches are any (`**`), so that a branch may hold `/`.
const HOSTILE_REPO: &str = "hostile/pages";

fn hostile(what: &str) -> String {
    format!("{what} {SCRIPT} {IMG} {ANSI}end")
}

struct Page {
    url: String,
    content_type: String,
    csp: Option<String>,
    nosniff: Option<String>,
    cache: Option<String>,
    body: String,
}

fn fetch(host: &Host, path: &str) -> Page {
    let reply: Response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{}{path}", host.base))
        .send()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200, "{path}");
    let header = |name: &str| {
        reply
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let csp = header("content-security-policy");
    let nosniff = header("x-content-type-options");
    let cache = header("cache-control");
    // The events of a finished job end with `end`, and the stream closes.
    let body = reply.text().unwrap();
    Page {
        url: path.to_owned(),
        content_type,
        csp,
        nosniff,
        cache,
        body,
    }
}

/// The policy's directive `name`, as its sources.
fn directive<'a>(csp: &'a str, name: &str) -> Option<Vec<&'a str>> {
    csp.split(';').find_map(|d| {
        let mut words = d.split_whitespace();
        (words.next() == Some(name)).then(|| words.collect())
    })
}

fn assert_safe_html(page: &Page) {
    let Page { url, body, .. } = page;
    assert!(
        page.content_type.starts_with("text/html"),
        "{url}: {}",
        page.content_type
    );
    assert_eq!(page.nosniff.as_deref(), Some("nosniff"), "{url}");
    let csp = page
        .csp
        .as_deref()
        .unwrap_or_else(|| panic!("{url}: no Content-Security-Policy"));
    let scripts = directive(csp, "script-src").unwrap_or_else(|| panic!("{url}: {csp}"));
    assert_eq!(scripts, ["'self'"], "{url}: {csp}");
    assert!(!csp.contains("'unsafe-inline'"), "{url}: {csp}");
    assert_eq!(directive(csp, "default-src"), Some(vec!["'none'"]), "{csp}");
    assert_eq!(directive(csp, "frame-ancestors"), Some(vec!["'none'"]));
    assert_eq!(directive(csp, "base-uri"), Some(vec!["'none'"]));

    assert!(!body.contains("<script>alert"), "{url}: {body}");
    assert!(!body.contains("<img"), "{url}: {body}");
    assert!(!body.contains('\u{1b}'), "{url} holds ESC: {body:?}");
    assert!(!body.contains('\u{7}'), "{url} holds BEL: {body:?}");
    assert!(!body.contains("<style"), "{url}: inline style: {body}");
    // Every script is a `src` one, with nothing inside.
    for (at, _) in body.match_indices("<script") {
        let tag = &body[at..];
        let open = &tag[..tag.find('>').unwrap_or(tag.len())];
        assert!(open.contains(" src=\"/static/"), "{url}: {open}");
        assert!(
            tag[open.len()..].starts_with("></script>"),
            "{url}: an inline script: {tag}"
        );
    }
}

#[test]
fn hostile_text_is_shown_as_text_on_every_page_under_a_strict_policy() {
    let mut pool = Scripted::new(false);
    Arc::get_mut(&mut pool).unwrap().lines = vec![
        "building\n".into(),
        format!("{}\n", hostile("log")),
        "all tests passed\n".into(),
    ];
    // A failed test and a file whose names and texts are hostile, as a
    // report from the machine can make them.
    let hostile_case = qci_junit::TestCase {
        name: hostile("test"),
        classname: hostile("class"),
        outcome: qci_junit::Outcome::Failed,
        duration: None,
        message: Some(hostile("failure")),
        details: Some(hostile("traceback")),
        output: Some(hostile("output")),
        file: Some(hostile("file")),
        line: Some(3),
    };
    let artifacts = tempfile::tempdir().unwrap();
    *pool.artifacts.lock().unwrap() = Some(qci_pool::artifacts::JobArtifacts {
        dir: artifacts.path().to_owned(),
        files: vec![qci_pool::artifacts::ArtifactFile {
            path: format!("files/{SCRIPT}{IMG}.log").into(),
            bytes: 3,
        }],
        reports: Vec::new(),
        screenshot: None,
        tests: vec![hostile_case],
        report_problems: Vec::new(),
    });
    let extra = format!("[[server.repos]]\nslug = \"{HOSTILE_REPO}\"\nbranches = [\"**\"]\n");
    let host = Host::start(&extra, pool.clone());

    let push = edited(
        "push.json",
        &[
            ("ref", json!(format!("refs/heads/{}", hostile("branch")))),
            ("repository/full_name", json!(HOSTILE_REPO)),
            ("head_commit/author/name", json!(hostile("author"))),
            ("head_commit/message", json!(hostile("message"))),
        ],
    );
    let jobs = host.deliver("push", "d-hostile-1", &push);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    wait_for("the job to start", Duration::from_secs(30), || {
        pool.started() == 1
    });
    // A status description from the machine, through the relay.
    let (url, token) = match &pool.job_files.lock().unwrap()[0].sink {
        qci_core::job_file::Sink::Relay { url, token, .. } => (url.clone(), token.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        relay_post(&url, &token, &event(job, "running", &hostile("status"))),
        204
    );
    pool.open();
    host.wait_state(job, "success");
    // Its page shows the log in sections once the log is published.
    wait_for("the log to be published", Duration::from_secs(30), || {
        host.job(job)["log_published"] == true
    });

    let api = fetch(&host, &format!("/api/jobs/{job}"));
    assert!(
        api.content_type.starts_with("application/json"),
        "{}",
        api.content_type
    );
    assert_eq!(api.nosniff.as_deref(), Some("nosniff"));
    assert!(api.csp.is_some(), "/api/jobs/{job}: no policy");
    // The API keeps the text as it came: JSON, not a page.
    let stored: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(stored["job"]["author"], hostile("author"), "{}", api.body);

    let monitor = fetch(&host, "/");
    assert_safe_html(&monitor);
    let page = fetch(&host, &format!("/jobs/{job}"));
    assert_safe_html(&page);
    for (page, fields) in [
        (&monitor, &["author", "branch"][..]),
        (
            &page,
            &[
                "author",
                "branch",
                "message",
                "status",
                "test",
                "class",
                "failure",
                "traceback",
                "output",
                "file",
            ][..],
        ),
    ] {
        for field in fields {
            // Shown, escaped and without the escapes: not dropped.
            let want = format!("{field} {SCRIPT_SHOWN} {IMG_SHOWN} end");
            assert!(
                page.body.contains(&want),
                "{}: no {want:?} in {}",
                page.url,
                page.body
            );
        }
    }
    // The file's name as its text, and in its link percent-encoded.
    assert!(
        page.body
            .contains(&format!(">files/{SCRIPT_SHOWN}{IMG_SHOWN}.log</a>")),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("/artifacts/files/%3Cscript%3Ealert%281%29%3C/script%3E"),
        "{}",
        page.body
    );
    let tests = fetch(&host, "/tests");
    assert_safe_html(&tests);
    assert!(
        tests
            .body
            .contains(&format!("test {SCRIPT_SHOWN} {IMG_SHOWN} end")),
        "{}",
        tests.body
    );
    // The pages' data for their script is in attributes.
    assert!(
        monitor.body.contains("data-reload-ms=\"5000\""),
        "{}",
        monitor.body
    );
    // A finished job's log is on its page, in sections: the line escaped,
    // its colour a class, its other escapes gone.
    assert!(
        page.body.contains(&format!(
            "log {SCRIPT_SHOWN} {IMG_SHOWN} <span class=\"sgr-fg1\">end</span>"
        )),
        "{}",
        page.body
    );

    // The machines' page, with names from the hypervisor and the lease store.
    *pool.machines.lock().unwrap() = vec![Machine {
        name: hostile("machine"),
        qubes: "4.2".into(),
        lease: Some((job.clone(), true)),
        snapshot: Some(hostile("snapshot")),
        last_run: Some((hostile("job"), hostile("state"))),
    }];
    let machines = fetch(&host, "/pool");
    assert_safe_html(&machines);
    for field in ["machine", "snapshot", "job", "state"] {
        let want = format!("{field} {SCRIPT_SHOWN} {IMG_SHOWN} end");
        assert!(
            machines.body.contains(&want),
            "no {want:?} in {}",
            machines.body
        );
    }

    let log = fetch(&host, &format!("/jobs/{job}/log"));
    assert!(
        log.content_type.starts_with("text/plain"),
        "{}",
        log.content_type
    );
    assert_eq!(log.nosniff.as_deref(), Some("nosniff"));
    assert!(log.body.contains(&hostile("log")), "{:?}", log.body);

    let events = fetch(&host, &format!("/jobs/{job}/events"));
    assert!(
        events.content_type.starts_with("text/event-stream"),
        "{}",
        events.content_type
    );
    assert_eq!(events.nosniff.as_deref(), Some("nosniff"));
    // The line as the page's script shows it (through textContent and
    // className): JSON runs, the colour a class, without escapes.
    let runs = json!({"runs": [{"class": "", "text": format!("log {SCRIPT} {IMG} ")},
        {"class": "sgr-fg1", "text": "end"}]});
    assert!(events.body.contains(&runs.to_string()), "{:?}", events.body);
    assert!(!events.body.contains('\u{1b}'), "{:?}", events.body);
    assert!(events.body.contains("event: end"), "{:?}", events.body);

    let script = fetch(&host, "/static/qci.js");
    assert_eq!(script.content_type, "text/javascript; charset=utf-8");
    assert_eq!(script.nosniff.as_deref(), Some("nosniff"));
    assert!(script.body.contains("EventSource"));
    assert!(script.cache.is_some_and(|c| c.contains("max-age")));
    let style = fetch(&host, "/static/qci.css");
    assert_eq!(style.content_type, "text/css; charset=utf-8");
    assert!(style.body.contains("pre#log"));
}
