//! What a job left: its tests (failures first, with their history), its
//! files as downloads, the screenshot of its machine; and `/tests`, the
//! flakiest and longest-failing tests of every repository.
//!
//! Every file came out of a Qubes machine where the code under test ran
//! with sudo, so none is ever rendered on our origin: each is sent as an
//! attachment, as bytes (`application/octet-stream`, with `nosniff` from
//! the router). The one exception is the screenshot, which the host took
//! from the hypervisor, not the machine, and whose PNG signature it
//! checked: it is sent as `image/png` for the page to show.

use super::{page, unavailable};
use crate::app::App;
use crate::queue::results::{self, Artifact, JobTests, TestResult, TestSummary};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use qci_core::status::clean_line;
use qci_pool::artifacts::{PNG_SIGNATURE, SCREENSHOT};
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

/// How much of a failure's text and output a page shows; the API has all.
const TEXT_SHOWN: usize = 16 * 1024;
/// How many tests `/tests` lists in each table.
const OVERVIEW_ROWS: usize = 50;

/// Where the pool keeps a job's files.
pub fn artifact_dir(app: &App, job: &str) -> PathBuf {
    app.artifacts.join(job)
}

fn test_name(t: &TestResult) -> String {
    if t.classname.is_empty() {
        clean_line(&t.name)
    } else {
        clean_line(&format!("{}::{}", t.classname, t.name))
    }
}

/// A text of several lines (a traceback, a test's output) as the page
/// shows it: cut on a character boundary, each line without its terminal
/// escapes and control characters.
fn shown(text: &str) -> String {
    let mut end = text.len().min(TEXT_SHOWN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .lines()
        .map(|line| qci_core::log::sanitize(line.as_bytes()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A path as it goes into a link: each byte a URL's path could misread
/// (`?`, `#`, `%`, a space, markup) percent-encoded, its `/` kept.
fn url_path(path: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(path, KEEP).to_string()
}

fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else {
        format!("{:.1} GiB", b / KIB / KIB / KIB)
    }
}

/// The job page's part: tests, screenshot, files.
pub fn section(job: &str, tests: Option<&JobTests>, artifacts: &[Artifact]) -> Markup {
    let screenshot = artifacts.iter().any(|a| a.path == SCREENSHOT);
    // Always there, empty while the job runs: the page's script swaps in
    // the served one when the job ends.
    html! { div #results {
        @if let Some(tests) = tests {
            h2 { "Tests" }
            p #test-counts class={ "tests " @if tests.failing.is_empty() { "passed" } @else { "failed" } } {
                (tests.counts.to_string())
            }
            @if !tests.failing.is_empty() {
                table #failed-tests {
                    tr { th { "Test" } th { "Result" } th { "Message" } th { "History" } }
                    @for f in &tests.failing {
                        tr class="failed-test" {
                            td {
                                code { (test_name(&f.test)) }
                                @if let Some(file) = &f.test.file {
                                    br; small { (clean_line(file))
                                        @if let Some(line) = f.test.line { ":" (line) } }
                                }
                            }
                            td class={ "outcome " (f.test.outcome.as_str()) } { (f.test.outcome.as_str()) }
                            td { (clean_line(f.test.message.as_deref().unwrap_or(""))) }
                            td class="history" {
                                (f.since.to_string())
                                @if let Some(flaky) = f.flaky { br; span class="flaky" { (flaky.to_string()) } }
                            }
                        }
                        @if f.test.details.is_some() || f.test.output.is_some() {
                            tr class="failure-text" {
                                td colspan="4" {
                                    details {
                                        summary { "Failure and output" }
                                        @if let Some(text) = &f.test.details { pre { (shown(text)) } }
                                        @if let Some(text) = &f.test.output { pre class="output" { (shown(text)) } }
                                    }
                                }
                            }
                        }
                    }
                }
                @if tests.failing.len() < tests.counts.failed + tests.counts.errored {
                    p { "The first " (tests.failing.len()) " failures are listed." }
                }
            }
            @if !tests.flaky.is_empty() {
                h3 { "Flaky tests that passed here" }
                ul #flaky-tests {
                    @for (t, f) in &tests.flaky {
                        li { code { (test_name(t)) } " \u{2014} " (f.to_string()) }
                    }
                }
            }
        }
        @if screenshot {
            h2 { "Screenshot" }
            p { "The machine's screen when the job ended." }
            img #screenshot src={ "/jobs/" (job) "/screenshot.png" } alt="The machine's screen when the job ended";
        }
        @if !artifacts.is_empty() {
            h2 { "Artifacts" }
            ul #artifacts {
                @for a in artifacts {
                    li {
                        a href={ "/jobs/" (job) "/artifacts/" (url_path(&a.path)) } download { (clean_line(&a.path)) }
                        " (" (size(a.bytes)) ")"
                    }
                }
            }
        }
    } }
}

/// `/jobs/JOB/artifacts/PATH`: one of the job's files, as a download.
/// Only a path the job's record lists is served.
pub async fn download(
    State(app): State<App>,
    Path((id, path)): Path<(String, String)>,
) -> Response {
    let (key, rel) = (id.clone(), path.clone());
    let listed = match app
        .store
        .read(move |conn| results::artifact(conn, &key, &rel))
        .await
    {
        Ok(Some(a)) => a,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such artifact\n").into_response(),
        Err(e) => return unavailable(e),
    };
    let file = match open_artifact(&app, &id, &listed.path).await {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, "no such artifact (pruned?)\n").into_response(),
    };
    let name = attachment_name(&listed.path);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CONTENT_LENGTH, listed.bytes.to_string()),
        ],
        Body::from_stream(chunks(file, listed.bytes)),
    )
        .into_response()
}

/// `/jobs/JOB/screenshot.png`, for the job page's `<img>`.
pub async fn screenshot(State(app): State<App>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    match app
        .store
        .read(move |conn| results::artifact(conn, &key, SCREENSHOT))
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => return (StatusCode::NOT_FOUND, "no screenshot\n").into_response(),
        Err(e) => return unavailable(e),
    }
    let Ok(mut file) = open_artifact(&app, &id, SCREENSHOT).await else {
        return (StatusCode::NOT_FOUND, "no screenshot (pruned?)\n").into_response();
    };
    let mut png = Vec::new();
    if file.read_to_end(&mut png).await.is_err() || !png.starts_with(PNG_SIGNATURE) {
        return (StatusCode::NOT_FOUND, "no screenshot\n").into_response();
    }
    ([(header::CONTENT_TYPE, "image/png")], png).into_response()
}

/// Opens a listed artifact as a regular file inside the job's directory,
/// through no symlink (the unpacker made none; this holds if it ever did).
async fn open_artifact(app: &App, job: &str, rel: &str) -> std::io::Result<tokio::fs::File> {
    let dir = artifact_dir(app, job);
    let path = dir.join(rel);
    let inside = tokio::fs::canonicalize(&path).await?;
    if !inside.starts_with(tokio::fs::canonicalize(&dir).await?) {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&inside)
        .await?;
    if !file.metadata().await?.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    Ok(file)
}

/// The file's name for the browser's save dialog: its last component, in
/// characters no header or file system can misread.
fn attachment_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("artifact{name}")
    } else {
        name
    }
}

/// The file in pieces, never more than it was listed with (a file that
/// grew is not sent past its recorded size).
fn chunks(
    file: tokio::fs::File,
    bytes: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    futures_util::stream::unfold((file.take(bytes), false), |(mut file, done)| async move {
        if done {
            return None;
        }
        let mut buf = vec![0; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), (file, false)))
            }
            Err(e) => Some((Err(e), (file, true))),
        }
    })
}

fn summary_rows(rows: &[TestSummary], flaky: bool) -> Markup {
    html! {
        @for s in rows {
            tr {
                td { (clean_line(&s.repo)) }
                td { (clean_line(&s.qubes)) }
                td { code { (clean_line(&format!("{}::{}", s.classname, s.name))) } }
                td { (clean_line(&s.git_ref)) }
                td {
                    @if flaky {
                        @if let Some(f) = s.flaky { (f.to_string()) }
                    } @else if let Some(since) = &s.since {
                        (since.to_string())
                    }
                }
                td { a href={ "/jobs/" (s.job) } { (s.job) } }
            }
        }
    }
}

/// `/tests`: the tests people should look at first.
pub async fn overview(State(app): State<App>) -> Response {
    let (flaky, failing) = match app
        .store
        .read(|conn| results::overview(conn, OVERVIEW_ROWS))
        .await
    {
        Ok(found) => found,
        Err(e) => return unavailable(e),
    };
    let head = html! {
        tr { th { "Repository" } th { "Qubes" } th { "Test" } th { "Ref" } th { "" } th { "Latest job" } }
    };
    let body = html! {
        p { a href="/" { "\u{2190} all jobs" } }
        h1 { "Tests" }
        h2 { "Failing longest" }
        @if failing.is_empty() { p { "No test fails on its latest run." } }
        @else { table #longest-failing { (head) (summary_rows(&failing, false)) } }
        h2 { "Flakiest" }
        p { "A test is flaky when one commit saw it pass and fail; its rate is how often it changed outcome over its last "
            (results::FLAKY_WINDOW) " runs." }
        @if flaky.is_empty() { p { "No flaky test." } }
        @else { table #flakiest { (head) (summary_rows(&flaky, true)) } }
    };
    page("qci tests", body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_link_encodes_what_a_url_would_misread() {
        assert_eq!(
            url_path("files/out/a b?#%.xml"),
            "files/out/a%20b%3F%23%25.xml"
        );
        assert_eq!(url_path("files/<é>"), "files/%3C%C3%A9%3E");
    }

    #[test]
    fn a_long_text_is_cut_and_loses_its_escapes_line_by_line() {
        assert_eq!(shown("a\x1b[31mb\x1b]0;t\x07\nc\td"), "ab\nc\td");
        let long = "é".repeat(TEXT_SHOWN);
        assert_eq!(shown(&long).len(), TEXT_SHOWN);
    }

    #[test]
    fn a_download_is_named_by_its_last_component_in_plain_characters() {
        assert_eq!(attachment_name("files/test-results/a.xml"), "a.xml");
        assert_eq!(attachment_name("files/x\"; evil=1.log"), "x___evil_1.log");
        assert_eq!(attachment_name("files/.hidden"), "artifact.hidden");
    }
}
