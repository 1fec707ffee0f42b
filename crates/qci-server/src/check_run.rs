//! What a job's GitHub check run says: the bodies of `POST
//! /repos/{o}/{r}/check-runs` and `PATCH /repos/{o}/{r}/check-runs/{id}`,
//! built from the job, its log's steps, its tests and its log's tail.
//! Sending them (the App's token, the outbox) is elsewhere; this is plain
//! data, so the unit tests check it with their `validate`; the fake
//! GitHub checks GitHub's limits with its own code, so the product is not
//! judged by its own rules alone.
//!
//! Everything but our own words is the machine's or the tests' text, never
//! trusted: outside fences it goes into code spans (no Markdown, HTML,
//! links or autolinks inside one) sized to the text's own backticks, and
//! the log's tail goes into a fence longer than any run of backticks in it.
//! Each text is within GitHub's limits, counted in UTF-8 bytes as GitHub
//! counts them ([`MAX_OUTPUT_BYTES`]), cut on a character boundary with a
//! note saying what was left out, whatever the size of the log or the
//! number of failed tests.
//!
//! How a job's end reads as a conclusion ([`conclusion`]):
//! - `success`, `failure`, `canceled` map to `success`, `failure`, `cancelled`;
//! - `error` is CI's own (machine, network, pool) and maps to `failure`,
//!   with a title that says so ("CI error: ..."), except a timeout:
//! - a timeout is a job that ended `error` with a description that dom0
//!   or the pool write for one and nothing else does: `Job timed out
//!   ...` (the pool, the job's whole time; dom0, before a step) or `LABEL
//!   timed out after Ns (...)` (dom0, a step's or the job's timeout). The
//!   description is read, not the log: it is the job's recorded end, kept
//!   after the log is pruned, and a test cannot print it;
//! - a fork's pull request waiting for approval is `action_required`.

use crate::pages::sections::{Kind, Outcome, Section};
use crate::queue::job::Job;
use crate::queue::results::{Failing, JobTests};
use qci_core::State;
use qci_core::status::{clean_line, cut_bytes, cut_chars};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// The most GitHub takes in `output.title`, `summary` or `text`, in UTF-8
/// bytes: its docs say characters, but it refuses a longer body by bytes
/// ("exceeds a maximum bytesize of 65535", github/docs#35252), so a text
/// of multi-byte characters within 65,535 characters is refused whole.
pub const MAX_OUTPUT_BYTES: usize = 65_535;
/// The longest title we write: one line that reads in a PR's list of
/// checks. In bytes, as every limit of the body, to be safe whichever
/// way GitHub counts.
pub const MAX_TITLE_BYTES: usize = 255;
/// The most annotations GitHub takes in one request.
pub const MAX_ANNOTATIONS: usize = 50;
/// An annotation's `message` and `raw_details`: at most 64 KB each.
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;
/// An annotation's `raw_details` (the traceback), at most: well within
/// GitHub's 64 KB, so that a thousand of them stay small; the job's page
/// has it whole.
pub const MAX_RAW_DETAILS_BYTES: usize = 16 * 1024;
/// The most annotations a check run gets, in [`MAX_ANNOTATIONS`] a
/// request: as many as the job's page lists ([`MAX_LISTED`]).
///
/// [`MAX_LISTED`]: crate::queue::results::MAX_LISTED
pub const MAX_ANNOTATED: usize = crate::queue::results::MAX_LISTED;
/// An annotation's `title`: GitHub documents 255 characters; counted in
/// bytes, never more than the characters, it holds however GitHub counts.
pub const MAX_ANNOTATION_TITLE_BYTES: usize = 255;
/// How many of the log's last lines `output.text` shows.
pub const TAIL_LINES: usize = 100;
/// How much of the log's end is read for its tail: more than the text can
/// hold ([`MAX_OUTPUT_BYTES`]), and never the whole log.
pub const TAIL_BYTES: u64 = 256 * 1024;
/// A failed test's message in the summary, at most (the annotation and the
/// job page have it whole).
const MAX_MESSAGE_CHARS: usize = 300;

/// A check run's status, with the time or the conclusion that goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Queued,
    InProgress {
        started_at: String,
    },
    Completed {
        completed_at: String,
        conclusion: Conclusion,
    },
}

/// The conclusions qci gives (GitHub knows others: `neutral`, `skipped`, `stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
    TimedOut,
    ActionRequired,
}

/// `output`: what the check run's page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    /// One line.
    pub title: String,
    /// Markdown.
    pub summary: String,
    /// Markdown: the log's tail, fenced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
}

/// A failed test shown on its file's line. Plain text: GitHub renders
/// none of it as Markdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    /// Always `failure`: only failed tests become annotations.
    pub annotation_level: &'static str,
    pub title: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_details: Option<String>,
}

/// The body of `POST /repos/{owner}/{repo}/check-runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateCheckRun {
    pub name: String,
    pub head_sha: String,
    pub external_id: String,
    pub details_url: String,
    #[serde(flatten)]
    pub status: Status,
    pub output: Output,
}

/// The body of `PATCH /repos/{owner}/{repo}/check-runs/{id}`. A further
/// batch of annotations has no status: it only appends them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateCheckRun {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    pub output: Output,
}

/// What a check run is made of: the job, and what was read of it.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub job: &'a Job,
    /// The job's page ([`crate::app::App::job_url`]).
    pub details_url: &'a str,
    /// Its log in steps ([`crate::pages::sections::read`]); empty when
    /// there is no log (yet).
    pub sections: &'a [Section],
    /// Its tests with their history, if it left reports.
    pub tests: Option<&'a JobTests>,
    /// The log's last lines ([`read_log_tail`]), if there is a log.
    pub log_tail: Option<&'a str>,
}

/// `qci / qubes-4.2`: the job's status context (`qci/qubes-4.2`) as a
/// check run's name, or from its Qubes version when it has none.
pub fn name(job: &Job) -> String {
    let context = clean_line(&job.context);
    match context.split_once('/') {
        Some((tool, rest)) if !tool.is_empty() && !rest.is_empty() => {
            format!("{} / {}", tool.trim(), rest.trim())
        }
        _ if !context.is_empty() => context,
        _ => format!("qci / qubes-{}", clean_line(&job.qubes)),
    }
}

/// Whether the job ended because a timeout stopped it (see the module's
/// doc for why the description tells).
pub fn timed_out(job: &Job) -> bool {
    job.state == State::Error
        && (job.description.starts_with("Job timed out ")
            || job.description.contains(" timed out after "))
}

/// How the job's end reads on GitHub; `None` while it is queued (not
/// waiting for approval) or running.
pub fn conclusion(job: &Job) -> Option<Conclusion> {
    Some(match job.state {
        State::Queued if job.needs_approval => Conclusion::ActionRequired,
        State::Queued | State::Running => return None,
        State::Success => Conclusion::Success,
        State::Failure => Conclusion::Failure,
        State::Canceled => Conclusion::Cancelled,
        State::Error if timed_out(job) => Conclusion::TimedOut,
        State::Error => Conclusion::Failure,
    })
}

/// The job's status now, as a check run's.
pub fn status(job: &Job) -> Status {
    match conclusion(job) {
        Some(conclusion) => Status::Completed {
            completed_at: time(job.finished_at.or(job.started_at).unwrap_or(job.created_at)),
            conclusion,
        },
        None if job.state == State::Running => Status::InProgress {
            started_at: time(
                job.started_at
                    .or(job.dispatched_at)
                    .unwrap_or(job.created_at),
            ),
        },
        None => Status::Queued,
    }
}

/// Unix ms as GitHub's ISO 8601 (`2026-12-03T10:00:00Z`).
fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The request that creates the job's check run, in the job's status now,
/// without annotations ([`update`] sends them).
pub fn create(report: &Report<'_>) -> CreateCheckRun {
    let job = report.job;
    CreateCheckRun {
        name: name(job),
        head_sha: job.sha.clone(),
        external_id: job.id.as_str().to_owned(),
        details_url: report.details_url.to_owned(),
        status: status(job),
        output: output(report),
    }
}

/// The requests that bring the check run to the job's status now, to send
/// in order: the first sets the status and output with the first
/// [`MAX_ANNOTATIONS`] annotations, each further one appends the next.
pub fn update(report: &Report<'_>) -> Vec<UpdateCheckRun> {
    let notes = match (report.job.is_final(), report.tests) {
        (true, Some(tests)) => annotations(&tests.failing),
        _ => Vec::new(),
    };
    batches(status(report.job), output(report), notes)
}

/// Splits annotations into requests of at most [`MAX_ANNOTATIONS`], in
/// the order given; the first carries `status`. Each repeats the output:
/// GitHub takes no annotations without a title and summary.
pub fn batches(
    status: Status,
    output: Output,
    annotations: Vec<Annotation>,
) -> Vec<UpdateCheckRun> {
    let mut requests = Vec::with_capacity(annotations.len().div_ceil(MAX_ANNOTATIONS).max(1));
    let mut rest = annotations.into_iter().peekable();
    let mut status = Some(status);
    loop {
        let batch: Vec<Annotation> = rest.by_ref().take(MAX_ANNOTATIONS).collect();
        requests.push(UpdateCheckRun {
            status: status.take(),
            output: Output {
                annotations: batch,
                ..output.clone()
            },
        });
        if rest.peek().is_none() {
            return requests;
        }
    }
}

/// The failed tests that name a file and a line, ordered by file, line and
/// test (a stable order, whatever order the reports came in), the first
/// [`MAX_ANNOTATED`].
pub fn annotations(failing: &[Failing]) -> Vec<Annotation> {
    // Sorted and cut before the texts are copied: 5,000 failures make no
    // more than [`MAX_ANNOTATED`] annotations' worth of text.
    let mut placed: Vec<(String, u32, String, &Failing)> = failing
        .iter()
        .filter_map(|f| {
            let path = clean_line(f.test.file.as_deref()?);
            let path = path.trim_start_matches("./");
            let line = f.test.line?.max(1);
            let title = cut_bytes(&test_name(f), MAX_ANNOTATION_TITLE_BYTES).into_owned();
            (!path.is_empty()).then(|| (path.to_owned(), line, title, f))
        })
        .collect();
    placed.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)));
    placed.truncate(MAX_ANNOTATED);
    placed
        .into_iter()
        .map(|(path, line, title, f)| {
            let t = &f.test;
            let mut message = t.message.clone().unwrap_or_default();
            if message.trim().is_empty() {
                message = format!("{} {}", title, t.outcome.as_str());
            }
            let _ = write!(message, "\n{}", f.since);
            if let Some(flaky) = f.flaky {
                let _ = write!(message, "; {flaky}");
            }
            Annotation {
                path,
                start_line: line,
                end_line: line,
                annotation_level: "failure",
                title,
                message: cut_bytes(&message, MAX_ANNOTATION_BYTES - 1).into_owned(),
                raw_details: t
                    .details
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .map(|d| cut_bytes(d, MAX_RAW_DETAILS_BYTES).into_owned()),
            }
        })
        .collect()
}

/// `classname.name`, or the name alone.
fn test_name(f: &Failing) -> String {
    if f.test.classname.is_empty() {
        f.test.name.clone()
    } else {
        format!("{}.{}", f.test.classname, f.test.name)
    }
}

/// The check run's output for the job as it stands, without annotations.
pub fn output(report: &Report<'_>) -> Output {
    Output {
        title: title(report),
        summary: summary(report),
        text: report.log_tail.map(text),
        annotations: Vec::new(),
    }
}

/// The first failed step, if the log shows one.
fn failed_step(sections: &[Section]) -> Option<&Section> {
    sections.iter().find(|s| {
        matches!(s.kind, Kind::Step(_)) && s.outcome.as_ref().is_some_and(Outcome::failed)
    })
}

/// "41 min", "12 s", "2 h 5 min".
fn human(took: Duration) -> String {
    let s = took.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// A section's duration as dom0 wrote it (`41.3s`).
fn section_took(s: &Section) -> Option<Duration> {
    let secs: f64 = s.duration.as_deref()?.strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// The failed step as dom0's description names it (`make dev failed (exit
/// 2)`: its command when short, else its name), or its name.
fn step_label<'a>(description: &'a str, step: &'a Section) -> &'a str {
    match description.split_once(" failed (") {
        Some((label, _)) if !label.is_empty() && label.chars().count() <= 32 => label,
        _ => step.title(),
    }
}

/// One line: what a maintainer reads in the PR's list of checks.
pub fn title(report: &Report<'_>) -> String {
    let job = report.job;
    let description = clean_line(&job.description);
    let failing_tests = report
        .tests
        .filter(|t| t.counts.failed + t.counts.errored > 0);
    let line = match conclusion(job) {
        None if job.state == State::Running => "Running".to_owned(),
        None => "Queued".to_owned(),
        Some(Conclusion::ActionRequired) => {
            "Waiting for approval: a fork's pull request runs once a maintainer approves it"
                .to_owned()
        }
        Some(Conclusion::Failure) if job.state == State::Error => {
            format!("CI error: {description}")
        }
        Some(Conclusion::Success) => match report.tests {
            Some(tests) if tests.counts.total() > 0 => tests.counts.to_string(),
            _ => description,
        },
        Some(Conclusion::Failure) => match (failing_tests, failed_step(report.sections)) {
            (Some(tests), _) => tests.counts.to_string(),
            (None, Some(step)) => {
                let took = section_took(step)
                    .or_else(|| {
                        let ms = job.duration_ms(job.finished_at.unwrap_or(job.created_at))?;
                        Some(Duration::from_millis(ms.max(0).unsigned_abs()))
                    })
                    .map(|d| format!(" after {}", human(d)))
                    .unwrap_or_default();
                format!("{} failed{took}", step_label(&description, step))
            }
            (None, None) => description,
        },
        Some(Conclusion::Cancelled | Conclusion::TimedOut) => description,
    };
    let line = if line.is_empty() {
        job.state.as_str().to_owned()
    } else {
        line
    };
    cut_bytes(&clean_line(&line), MAX_TITLE_BYTES).into_owned()
}

/// `text` as an inline code span: no Markdown, HTML or autolink inside,
/// whatever the text. On one line; empty text is shown as `(empty)`.
pub fn code(text: &str) -> String {
    let text = clean_line(text);
    if text.is_empty() {
        return "(empty)".to_owned();
    }
    let ticks = "`".repeat(longest_run(&text, '`') + 1);
    // The spaces keep a backtick at either end from joining the fence;
    // CommonMark strips one on each side.
    format!("{ticks} {text} {ticks}")
}

/// `text` as a table cell: a code span in which a `|` cannot end the cell.
/// A backslash is shown as `⧵`: before an escaped `|` it would escape the
/// escape (GFM splits cells before it reads code spans).
pub fn cell(text: &str) -> String {
    code(&text.replace('\\', "\u{29f5}")).replace('|', "\\|")
}

/// Our own words with outside bits in them (commit ids in [`Since`]'s
/// text): every ASCII punctuation character backslash-escaped, on one line.
///
/// [`Since`]: crate::queue::results::Since
pub fn markdown_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in clean_line(text).chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn longest_run(text: &str, of: char) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == of {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

/// Markdown: why it ended, the steps (a table), the failed tests with their
/// history, then the counts; at most [`MAX_OUTPUT_BYTES`].
pub fn summary(report: &Report<'_>) -> String {
    let job = report.job;
    let mut head = String::new();
    match conclusion(job) {
        Some(Conclusion::Failure) if job.state == State::Error => {
            head.push_str(
                "**An error of the CI (the machine, the network or the pool), \
                 not of the code under test.** Re-run it once the CI is fixed.\n\n",
            );
        }
        Some(Conclusion::ActionRequired) => head.push_str(
            "This pull request comes from a fork: it runs once a maintainer approves it.\n\n",
        ),
        _ => {}
    }
    let _ = writeln!(head, "{}\n", code(&job.description));
    let steps: Vec<&Section> = report
        .sections
        .iter()
        .filter(|s| matches!(s.kind, Kind::Step(_)))
        .collect();
    if !steps.is_empty() {
        head.push_str("| Step | Result | Duration |\n|---|---|---|\n");
        for s in steps {
            let result = s.outcome.as_ref().map_or("running".into(), Outcome::label);
            let took = s.duration.as_deref().unwrap_or("");
            let _ = writeln!(
                head,
                "| {} | {} | {} |",
                cell(s.title()),
                markdown_text(&result),
                if took.is_empty() {
                    String::new()
                } else {
                    cell(took)
                }
            );
        }
        head.push('\n');
    }
    let Some(tests) = report.tests else {
        if job.is_final() {
            head.push_str("No test reports.\n");
        }
        return cut_bytes(&head, MAX_OUTPUT_BYTES).into_owned();
    };
    let mut counts = format!(
        "### Tests\n\n{}\n",
        markdown_text(&tests.counts.to_string())
    );
    if !tests.flaky.is_empty() {
        let n = tests.flaky.len();
        let (noun, verb) = if n == 1 {
            ("test", "is")
        } else {
            ("tests", "are")
        };
        let _ = writeln!(
            counts,
            "\n{n} {noun} that passed here {verb} flaky: see the job's page."
        );
    }
    let bad = tests.counts.failed + tests.counts.errored;
    let mut list = String::new();
    let mut listed = 0;
    if !tests.failing.is_empty() {
        list.push_str("### Failed tests\n\n");
    }
    // Room for the note on what is left out, however large its number.
    let reserve = counts.len() + 100;
    let mut used = head.len() + list.len();
    for f in &tests.failing {
        let item = failed_test(f);
        let len = item.len();
        if used + len + reserve > MAX_OUTPUT_BYTES {
            break;
        }
        used += len;
        list.push_str(&item);
        listed += 1;
    }
    if bad > listed {
        let more = bad - listed;
        let noun = if more == 1 { "test" } else { "tests" };
        let _ = writeln!(
            list,
            "\n\u{2026} {more} more failed {noun}: see the job's page.",
        );
    }
    if !list.is_empty() {
        list.push('\n');
    }
    // The reserve keeps this whole; the cut is a last guard.
    cut_bytes(&format!("{head}{list}{counts}"), MAX_OUTPUT_BYTES).into_owned()
}

/// `- `name` — new failure; flaky: ...` and its message on the next line.
fn failed_test(f: &Failing) -> String {
    let mut item = format!(
        "- {} \u{2014} {}",
        code(&cut_bytes(&test_name(f), MAX_TITLE_BYTES)),
        markdown_text(&f.since.to_string())
    );
    if let Some(flaky) = f.flaky {
        let _ = write!(item, "; **{}**", markdown_text(&flaky.to_string()));
    }
    if f.test.outcome == qci_junit::Outcome::Errored {
        item.push_str(" (errored)");
    }
    item.push('\n');
    if let Some(message) = f.test.message.as_deref().filter(|m| !m.trim().is_empty()) {
        let _ = writeln!(item, "  {}", code(&cut_chars(message, MAX_MESSAGE_CHARS)));
    }
    item
}

/// The log's tail in a fence no line of it can close, at most
/// [`MAX_OUTPUT_BYTES`]: the newest lines are kept, the older cut.
pub fn text(tail: &str) -> String {
    let lines: Vec<&str> = tail.lines().collect();
    let fence = "`".repeat((longest_run(tail, '`') + 1).max(3));
    let open = format!("{fence}text\n");
    let close = format!("{fence}\n");
    // The note is at most this long.
    let reserve = open.len() + close.len() + 80;
    let mut kept = Vec::new();
    let mut used = 0;
    for line in lines.iter().rev().take(TAIL_LINES) {
        let len = line.len() + 1;
        if used + len + reserve > MAX_OUTPUT_BYTES {
            // A line too long alone keeps its end, from a character's start.
            if kept.is_empty() {
                let room = MAX_OUTPUT_BYTES - reserve - 2;
                let mut at = line.len().saturating_sub(room);
                while !line.is_char_boundary(at) {
                    at += 1;
                }
                kept.push(&line[at..]);
            }
            break;
        }
        used += len;
        kept.push(line);
    }
    kept.reverse();
    let shown = kept.len();
    let mut out = String::new();
    if shown < lines.len() {
        let noun = if shown == 1 { "line" } else { "lines" };
        let _ = writeln!(
            out,
            "The log's last {shown} {noun} (the whole log is on the job's page):\n"
        );
    }
    out.push_str(&open);
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&close);
    cut_bytes(&out, MAX_OUTPUT_BYTES).into_owned()
}

/// The last [`TAIL_LINES`] lines of the log at `path`, reading at most
/// [`TAIL_BYTES`] of its end; terminal escapes and control characters
/// removed.
pub fn read_log_tail(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let from = size.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut buf)?;
    let mut raw: &[u8] = &buf;
    // The first line is a piece of one when the read started inside it.
    if from > 0
        && let Some(i) = raw.iter().position(|&b| b == b'\n')
    {
        raw = &raw[i + 1..];
    }
    let lines: Vec<&[u8]> = raw
        .strip_suffix(b"\n")
        .unwrap_or(raw)
        .split(|&b| b == b'\n')
        .collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let mut tail = String::new();
    for line in &lines[start..] {
        tail.push_str(&qci_core::log::sanitize(line));
        tail.push('\n');
    }
    Ok(tail)
}

/// GitHub's schema and limits as the unit tests check bodies against
/// them. Test-only: the fake GitHub has its own, written apart, so the
/// product is never judged by its own reading of the rules alone.
#[cfg(test)]
mod rules {
    use super::*;
    use serde_json::Value;

    /// Which request a body is for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Request {
        Create,
        Update,
    }

    /// The first thing in a body that GitHub would refuse (with a 422).
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum Violation {
        #[error("the body is not a JSON object")]
        NotAnObject,
        #[error("{0} is missing")]
        Missing(String),
        #[error("{field} must be {expected}")]
        WrongType {
            field: String,
            expected: &'static str,
        },
        #[error("head_sha {0:?} is not 40 hex digits")]
        BadSha(String),
        #[error("{field} {value:?} is not one of {allowed}")]
        NotAllowed {
            field: String,
            value: String,
            allowed: &'static str,
        },
        #[error("status {status:?} does not go with conclusion {conclusion:?}")]
        Inconsistent {
            status: Option<String>,
            conclusion: Option<String>,
        },
        #[error("{field} {value:?} is not an ISO 8601 time")]
        BadTime { field: String, value: String },
        #[error("{field} is {len} bytes long, more than {max}")]
        TooLong {
            field: String,
            len: usize,
            max: usize,
        },
        #[error("{0} annotations in one request, more than 50")]
        TooManyAnnotations(usize),
        #[error("{field}: end_line {end} is before start_line {start}")]
        BadLines { field: String, start: u64, end: u64 },
    }

    pub const STATUSES: &str = "queued, in_progress, completed, waiting, requested, pending";
    pub const CONCLUSIONS: &str =
        "action_required, cancelled, failure, neutral, success, skipped, timed_out";
    pub const LEVELS: &str = "notice, warning, failure";

    /// Checks a check-run request body as GitHub does (its schema and limits):
    /// `name` and a 40-hex `head_sha` to create; a known `status` and
    /// `conclusion` that go together (a conclusion only with `completed` or no
    /// status, `completed` only with one); times in ISO 8601; output `title`
    /// and `summary` present, each text at most [`MAX_OUTPUT_BYTES`]; at most
    /// [`MAX_ANNOTATIONS`] annotations, each with a path, lines, a valid
    /// `annotation_level` and a message of at most 64 KB. Every length in
    /// bytes. For the tests, which build bodies with these limits' constants:
    /// the first violation found.
    pub fn validate(request: Request, body: &Value) -> Result<(), Violation> {
        let body = body.as_object().ok_or(Violation::NotAnObject)?;
        let string = |field: &str| -> Result<Option<&str>, Violation> {
            match body.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(Violation::WrongType {
                    field: field.to_owned(),
                    expected: "a string",
                }),
            }
        };
        let required = |field: &str| -> Result<&str, Violation> {
            string(field)?.ok_or_else(|| Violation::Missing(field.to_owned()))
        };
        if request == Request::Create {
            if required("name")?.is_empty() {
                return Err(Violation::Missing("name".into()));
            }
            let sha = required("head_sha")?;
            if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Violation::BadSha(sha.to_owned()));
            }
        }
        let status = string("status")?;
        let conclusion = string("conclusion")?;
        one_of("status", status, STATUSES)?;
        one_of("conclusion", conclusion, CONCLUSIONS)?;
        let consistent = match (status, conclusion) {
            (Some("completed"), None) => false,
            (Some(s), Some(_)) => s == "completed",
            _ => true,
        };
        if !consistent || (conclusion.is_none() && string("completed_at")?.is_some()) {
            return Err(Violation::Inconsistent {
                status: status.map(str::to_owned),
                conclusion: conclusion.map(str::to_owned),
            });
        }
        for field in ["started_at", "completed_at"] {
            if let Some(at) = string(field)?
                && humantime::parse_rfc3339_weak(at).is_err()
            {
                return Err(Violation::BadTime {
                    field: field.to_owned(),
                    value: at.to_owned(),
                });
            }
        }
        match body.get("output") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Object(output)) => validate_output(output),
            Some(_) => Err(Violation::WrongType {
                field: "output".into(),
                expected: "an object",
            }),
        }
    }

    fn one_of(field: &str, value: Option<&str>, allowed: &'static str) -> Result<(), Violation> {
        match value {
            Some(v) if !allowed.split(", ").any(|a| a == v) => Err(Violation::NotAllowed {
                field: field.to_owned(),
                value: v.to_owned(),
                allowed,
            }),
            _ => Ok(()),
        }
    }

    fn validate_output(output: &serde_json::Map<String, Value>) -> Result<(), Violation> {
        for (field, needed) in [("title", true), ("summary", true), ("text", false)] {
            match output.get(field) {
                None | Some(Value::Null) if needed => {
                    return Err(Violation::Missing(format!("output.{field}")));
                }
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    too_long(&format!("output.{field}"), s, MAX_OUTPUT_BYTES)?
                }
                Some(_) => {
                    return Err(Violation::WrongType {
                        field: format!("output.{field}"),
                        expected: "a string",
                    });
                }
            }
        }
        let notes = match output.get("annotations") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(notes)) => notes,
            Some(_) => {
                return Err(Violation::WrongType {
                    field: "output.annotations".into(),
                    expected: "an array",
                });
            }
        };
        if notes.len() > MAX_ANNOTATIONS {
            return Err(Violation::TooManyAnnotations(notes.len()));
        }
        for (i, note) in notes.iter().enumerate() {
            let at = |f: &str| format!("output.annotations[{i}].{f}");
            let note = note.as_object().ok_or_else(|| Violation::WrongType {
                field: format!("output.annotations[{i}]"),
                expected: "an object",
            })?;
            let text = |f: &str| -> Result<Option<&str>, Violation> {
                match note.get(f) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(_) => Err(Violation::WrongType {
                        field: at(f),
                        expected: "a string",
                    }),
                }
            };
            let line = |f: &str| -> Result<u64, Violation> {
                match note.get(f) {
                    None | Some(Value::Null) => Err(Violation::Missing(at(f))),
                    Some(v) => v
                        .as_u64()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| Violation::WrongType {
                            field: at(f),
                            expected: "a line number (1 or more)",
                        }),
                }
            };
            if text("path")?.is_none_or(str::is_empty) {
                return Err(Violation::Missing(at("path")));
            }
            let (start, end) = (line("start_line")?, line("end_line")?);
            if end < start {
                return Err(Violation::BadLines {
                    field: format!("output.annotations[{i}]"),
                    start,
                    end,
                });
            }
            let level = text("annotation_level")?
                .ok_or_else(|| Violation::Missing(at("annotation_level")))?;
            one_of(&at("annotation_level"), Some(level), LEVELS)?;
            let message = text("message")?.ok_or_else(|| Violation::Missing(at("message")))?;
            too_long_bytes(&at("message"), message)?;
            if let Some(details) = text("raw_details")? {
                too_long_bytes(&at("raw_details"), details)?;
            }
            if let Some(title) = text("title")? {
                too_long(&at("title"), title, MAX_ANNOTATION_TITLE_BYTES)?;
            }
        }
        Ok(())
    }

    fn too_long(field: &str, text: &str, max: usize) -> Result<(), Violation> {
        let len = text.len();
        if len > max {
            return Err(Violation::TooLong {
                field: field.to_owned(),
                len,
                max,
            });
        }
        Ok(())
    }

    /// 64 KB, in bytes (as GitHub says it for annotations).
    fn too_long_bytes(field: &str, text: &str) -> Result<(), Violation> {
        if text.len() >= MAX_ANNOTATION_BYTES {
            return Err(Violation::TooLong {
                field: field.to_owned(),
                len: text.len(),
                max: MAX_ANNOTATION_BYTES - 1,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::rules::*;
    use super::*;
    use crate::pages::sections;
    use crate::queue::results::{Flakiness, Since, TestResult};
    use qci_core::job_file::Reason;
    use qci_junit::Counts;
    use serde_json::Value;
    use serde_json::json;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const T0: &str = "2026-12-03T10:00:00.000Z";
    /// 2026-12-03T10:00:00Z in Unix ms.
    const AT: i64 = 1_796_292_000_000;

    fn job(state: State, description: &str) -> Job {
        Job {
            id: "42-q4.2".parse().unwrap(),
            repo: "o/r".into(),
            clone_url: "/src".into(),
            sha: SHA.into(),
            git_ref: "refs/heads/main".into(),
            reason: Reason::Push,
            author: "a".into(),
            message: "m".into(),
            qubes: "4.2".into(),
            context: "qci/qubes-4.2".into(),
            pr: None,
            needs_approval: false,
            state,
            description: description.into(),
            retry_of: None,
            start_failures: 0,
            created_at: AT,
            dispatched_at: Some(AT + 1_000),
            started_at: Some(AT + 2_000),
            finished_at: state.is_final().then_some(AT + 2_462_000),
            log_published: true,
            machine: None,
            snapshot: None,
        }
    }

    fn report<'a>(
        job: &'a Job,
        sections: &'a [Section],
        tests: Option<&'a JobTests>,
        tail: Option<&'a str>,
    ) -> Report<'a> {
        Report {
            job,
            details_url: "https://ci.example.org/jobs/42-q4.2",
            sections,
            tests,
            log_tail: tail,
        }
    }

    fn failing(name: &str, message: &str, since: Since, line: Option<u32>) -> Failing {
        Failing {
            test: TestResult {
                classname: "tests.test_vm".into(),
                name: name.into(),
                outcome: qci_junit::Outcome::Failed,
                duration_ms: Some(1500),
                message: Some(message.into()),
                details: Some("Traceback (most recent call last):\n  boom".into()),
                output: None,
                file: line.map(|_| "./tests/test_vm.py".into()),
                line,
            },
            since,
            flaky: None,
        }
    }

    fn tests_of(failing: Vec<Failing>, passed: usize) -> JobTests {
        JobTests {
            counts: Counts {
                passed,
                failed: failing.len(),
                errored: 0,
                skipped: 0,
            },
            failing,
            flaky: Vec::new(),
        }
    }

    fn log(lines: &[&str]) -> Vec<Section> {
        let text: String = lines.iter().map(|l| format!("{T0} {l}\n")).collect();
        sections::read(text.as_bytes(), State::Failure).unwrap()
    }

    fn body(value: &impl Serialize) -> Value {
        serde_json::to_value(value).unwrap()
    }

    #[test]
    fn each_end_of_a_job_has_its_conclusion() {
        let cases = [
            (job(State::Success, "All 3 steps passed"), "success"),
            (job(State::Failure, "make failed (exit 2)"), "failure"),
            (job(State::Canceled, "Job canceled"), "cancelled"),
            (job(State::Error, "Job timed out after 3600s"), "timed_out"),
            (
                job(State::Error, "make dev timed out after 60s (its timeout)"),
                "timed_out",
            ),
            (
                job(State::Error, "Job timed out before make dev"),
                "timed_out",
            ),
            (job(State::Error, "machine m1 lost: no answer"), "failure"),
        ];
        for (job, conclusion) in &cases {
            let create = body(&create(&report(job, &[], None, None)));
            assert_eq!(create["status"], "completed", "{}", job.description);
            assert_eq!(create["conclusion"], *conclusion, "{}", job.description);
            assert_eq!(create["completed_at"], "2026-12-03T10:41:02Z");
            validate(Request::Create, &create).unwrap();
        }
        let mut waiting = job(State::Queued, "Waiting for approval");
        waiting.needs_approval = true;
        let create = body(&create(&report(&waiting, &[], None, None)));
        assert_eq!(create["conclusion"], "action_required");
        assert!(
            create["output"]["title"]
                .as_str()
                .unwrap()
                .starts_with("Waiting for approval")
        );
        validate(Request::Create, &create).unwrap();

        let queued = create_of(&job(State::Queued, "Queued"));
        assert_eq!(
            (
                &queued["name"],
                &queued["head_sha"],
                &queued["external_id"],
                &queued["details_url"],
                &queued["status"],
            ),
            (
                &json!("qci / qubes-4.2"),
                &json!(SHA),
                &json!("42-q4.2"),
                &json!("https://ci.example.org/jobs/42-q4.2"),
                &json!("queued"),
            )
        );
        assert_eq!(queued.get("conclusion"), None);
        assert_eq!(queued.get("started_at"), None);
        let running = job(State::Running, "Running make");
        let updates = update(&report(&running, &[], None, None));
        assert_eq!(updates.len(), 1);
        let running = body(&updates[0]);
        assert_eq!(running["status"], "in_progress");
        assert_eq!(running["started_at"], "2026-12-03T10:00:02Z");
        assert_eq!(running.get("conclusion"), None);
        validate(Request::Update, &running).unwrap();
    }

    fn create_of(job: &Job) -> Value {
        let v = body(&create(&report(job, &[], None, None)));
        validate(Request::Create, &v).unwrap();
        v
    }

    #[test]
    fn the_name_comes_from_the_context_or_the_qubes_version() {
        let mut j = job(State::Queued, "Queued");
        assert_eq!(name(&j), "qci / qubes-4.2");
        j.context = String::new();
        j.qubes = "4.3".into();
        assert_eq!(name(&j), "qci / qubes-4.3");
        j.context = "nightly".into();
        assert_eq!(name(&j), "nightly");
    }

    #[test]
    fn the_title_says_in_one_line_what_went_wrong() {
        let steps = log(&[
            "[qci] step build: make dev",
            "[qci] step build failed in 2460.3s (exit 2)",
        ]);
        let failed = job(State::Failure, "make dev failed (exit 2)");
        assert_eq!(
            title(&report(&failed, &steps, None, None)),
            "make dev failed after 41 min"
        );
        let unnamed = job(State::Failure, "something else");
        assert_eq!(
            title(&report(&unnamed, &steps, None, None)),
            "build failed after 41 min"
        );
        let tests = tests_of(
            vec![
                failing("test_a", "x", Since::New { last_passed: None }, None),
                failing("test_b", "y", Since::New { last_passed: None }, None),
            ],
            146,
        );
        assert_eq!(
            title(&report(&failed, &steps, Some(&tests), None)),
            "2 of 148 tests failed (146 passed)"
        );
        let ci = job(State::Error, "machine m1 lost:\nno answer");
        assert_eq!(
            title(&report(&ci, &steps, Some(&tests), None)),
            "CI error: machine m1 lost: no answer"
        );
        let passed = job(State::Success, "All 3 steps passed");
        assert_eq!(
            title(&report(&passed, &[], None, None)),
            "All 3 steps passed"
        );
        assert_eq!(
            title(&report(&passed, &[], Some(&tests_of(Vec::new(), 3)), None)),
            "3 of 3 tests passed"
        );
        let timeout = job(State::Error, "make dev timed out after 60s (its timeout)");
        assert_eq!(
            title(&report(&timeout, &[], None, None)),
            "make dev timed out after 60s (its timeout)"
        );
        assert_eq!(
            title(&report(&job(State::Running, "r"), &[], None, None)),
            "Running"
        );
        let long = job(State::Error, &"é".repeat(2000));
        let t = title(&report(&long, &[], None, None));
        assert_eq!(t.len(), MAX_TITLE_BYTES);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn the_summary_shows_the_steps_then_the_failed_tests_with_their_history_then_the_counts() {
        let steps = log(&[
            "[qci] fetching",
            "[qci] step build: make",
            "[qci] step build passed in 12.5s",
            "[qci] step test: make test",
            "[qci] step test failed in 3.0s (exit 1)",
        ]);
        let mut flaky = failing(
            "test_flaky",
            "",
            Since::Failing {
                first: "a".repeat(40),
                runs: 3,
                last_passed: Some("b".repeat(40)),
            },
            None,
        );
        flaky.flaky = Some(Flakiness { flips: 4, runs: 10 });
        let tests = tests_of(
            vec![
                failing(
                    "test_new",
                    "assert 1 == 2",
                    Since::New { last_passed: None },
                    Some(12),
                ),
                flaky,
            ],
            5,
        );
        let failed = job(State::Failure, "make test failed (exit 1)");
        let summary = summary(&report(&failed, &steps, Some(&tests), None));
        assert_eq!(
            summary,
            "` make test failed (exit 1) `\n\n\
             | Step | Result | Duration |\n\
             |---|---|---|\n\
             | ` build ` | passed | ` 12.5s ` |\n\
             | ` test ` | failed \\(exit 1\\) | ` 3.0s ` |\n\
             \n\
             ### Failed tests\n\n\
             - ` tests.test_vm.test_new ` \u{2014} new failure\n  ` assert 1 == 2 `\n\
             - ` tests.test_vm.test_flaky ` \u{2014} failing since aaaaaaaaaaaa \\(3 runs\\)\\, \
             last passed at bbbbbbbbbbbb; **flaky\\: 4 flips in its last 10 runs \\(44\\%\\)**\n\
             \n\
             ### Tests\n\n\
             2 of 7 tests failed \\(5 passed\\)\n"
        );
        let mut tests = tests;
        let passed_flaky = tests.failing[0].test.clone();
        tests
            .flaky
            .push((passed_flaky, Flakiness { flips: 1, runs: 2 }));
        let with_flaky = super::summary(&report(&failed, &steps, Some(&tests), None));
        assert!(
            with_flaky.ends_with(
                "2 of 7 tests failed \\(5 passed\\)\n\n1 test that passed here is flaky: see the job's page.\n"
            ),
            "{with_flaky}"
        );
        let ci = job(State::Error, "machine lost");
        let summary = super::summary(&report(&ci, &[], None, None));
        assert!(
            summary.starts_with("**An error of the CI (the machine, the network or the pool), not of the code under test.**"),
            "{summary}"
        );
        assert!(summary.ends_with("No test reports.\n"), "{summary}");
    }

    #[test]
    fn hostile_names_and_messages_cannot_make_markup() {
        let hostile = "x`` | <img src=x onerror=alert(1)> ](javascript:alert(1)) [a](http://e.vil)";
        let tests = tests_of(
            vec![failing(
                hostile,
                hostile,
                Since::New { last_passed: None },
                Some(3),
            )],
            0,
        );
        let failed = job(State::Failure, hostile);
        let summary = summary(&report(&failed, &[], Some(&tests), None));
        // Each outside text sits whole in a code span of three backticks,
        // longer than its own two: nothing in it is Markdown or HTML.
        let span = format!("``` {hostile} ```");
        assert_eq!(summary.matches(&span).count(), 2, "{summary}");
        assert!(summary.contains(&format!("``` tests.test_vm.{hostile} ```")));
        let outside = summary
            .replace(&format!("``` tests.test_vm.{hostile} ```"), "")
            .replace(&span, "");
        for bad in ["<img", "](", "[a]", "javascript"] {
            assert!(
                !outside.contains(bad),
                "{bad} outside a code span: {outside}"
            );
        }
        assert_eq!(code("`a`"), "`` `a` ``");
        assert_eq!(code(""), "(empty)");
        assert_eq!(code("a\nb"), "` a b `");
        // In a table a pipe is escaped, and a backslash cannot escape the escape.
        assert_eq!(cell("a|b\\|c"), "` a\\|b\u{29f5}\\|c `");
        assert_eq!(markdown_text("<b>[x](y)|`"), "\\<b\\>\\[x\\]\\(y\\)\\|\\`");
        // Annotations are plain text: kept as they are, within their limits.
        let notes = annotations(&tests.failing);
        assert_eq!(notes[0].title, format!("tests.test_vm.{hostile}"));
        assert_eq!(notes[0].path, "tests/test_vm.py");
    }

    #[test]
    fn the_log_tail_is_in_a_fence_its_backticks_cannot_close() {
        let tail = "ok\n``````\n<img src=x>\n```\n";
        let text = text(tail);
        assert_eq!(text, "```````text\nok\n``````\n<img src=x>\n```\n```````\n");
        assert_eq!(super::text("plain\n"), "```text\nplain\n```\n");
        // 100 lines of 1,000 multi-byte characters (2,995 bytes each): the
        // newest whole lines that fit in the bytes, and a note saying how many.
        let tail: String = (0..100)
            .map(|i| format!("{i:03}{}\n", "€".repeat(997)))
            .collect();
        let text = super::text(&tail);
        assert!(text.chars().count() <= MAX_OUTPUT_BYTES);
        assert!(text.len() <= MAX_OUTPUT_BYTES, "{}", text.len());
        assert!(
            text.starts_with(
                "The log's last 21 lines (the whole log is on the job's page):\n\n```text\n079€"
            ),
            "{}",
            text.chars().take(80).collect::<String>()
        );
        assert!(text.ends_with(&format!("099{}\n```\n", "€".repeat(997))));
    }

    #[test]
    fn multi_byte_texts_are_cut_under_githubs_byte_limit_on_a_character_boundary() {
        // One line of 30,000 four-byte characters: 30,000 characters, well
        // within 65,535 of them, but 120,000 bytes, which GitHub refuses.
        let line = "𝄞".repeat(30_000);
        let text = text(&format!("{line}\n"));
        assert!(text.len() <= MAX_OUTPUT_BYTES, "{}", text.len());
        assert!(text.len() > MAX_OUTPUT_BYTES - 200, "the room is used");
        // A `String`: whole characters only. The line kept is its end.
        let fenced = text
            .strip_suffix("\n```\n")
            .and_then(|t| t.split_once("```text\n"))
            .map(|(_, kept)| kept)
            .unwrap();
        assert!(!fenced.is_empty());
        assert!(fenced.chars().all(|c| c == '𝄞'), "{fenced:.40}");
        assert!(line.ends_with(fenced));
        // A summary and a title of multi-byte characters, too.
        let long = job(State::Failure, &"€".repeat(30_000));
        let summary = summary(&report(&long, &[], None, None));
        assert!(summary.len() <= MAX_OUTPUT_BYTES, "{}", summary.len());
        assert!(summary.ends_with('…'), "cut, and says so");
        let title = title(&report(&long, &[], None, None));
        assert!(title.len() <= MAX_TITLE_BYTES);
        assert!(title.starts_with('€') && title.ends_with('…'), "{title}");
        for cut in [&summary, &title] {
            validate(
                Request::Update,
                &json!({"output": {"title": &title, "summary": cut}}),
            )
            .unwrap();
        }
    }

    #[test]
    fn the_tail_is_the_last_lines_read_from_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = String::new();
        for i in 0..500 {
            log.push_str(&format!("line {i} \x1b[31mred\x1b[0m\n"));
        }
        std::fs::write(&path, &log).unwrap();
        let tail = read_log_tail(&path).unwrap();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 400 red");
        assert_eq!(lines[99], "line 499 red");
        assert_eq!(
            read_log_tail(&dir.path().join("none")).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    /// A failed test with a long multi-byte message, on its own line.
    fn big_failure(i: usize) -> Failing {
        let mut f = failing(
            &format!("test_{i:05}_ü"),
            &"ünïcödé ".repeat(40),
            Since::New { last_passed: None },
            Some(u32::try_from(i).unwrap() + 1),
        );
        f.test.details = Some("é".repeat(500));
        f
    }

    #[test]
    fn a_10_mb_log_and_5000_failed_tests_give_bounded_valid_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        {
            use std::io::Write;
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            writeln!(file, "{T0} [qci] step test: make test").unwrap();
            let line = format!("{T0} [test] {}\n", "ĉ€𝄞`".repeat(60));
            while file.get_ref().metadata().unwrap().len() < 10 << 20 {
                for _ in 0..1000 {
                    file.write_all(line.as_bytes()).unwrap();
                }
                file.flush().unwrap();
            }
            // The last line alone is longer than the text may be.
            writeln!(file, "{}", "é".repeat(100_000)).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() >= 10 << 20);
        let started = std::time::Instant::now();
        let steps = sections::read(
            std::io::BufReader::new(std::fs::File::open(&path).unwrap()),
            State::Failure,
        )
        .unwrap();
        let tail = read_log_tail(&path).unwrap();
        let tests = tests_of((0..5000).map(big_failure).collect(), 10);
        let failed = job(State::Failure, "make test failed (exit 1)");
        let report = report(&failed, &steps, Some(&tests), Some(&tail));
        let create = body(&create(&report));
        let updates: Vec<Value> = update(&report).iter().map(body).collect();
        assert!(started.elapsed() < Duration::from_secs(60));

        validate(Request::Create, &create).unwrap();
        assert_eq!(
            updates.len(),
            20,
            "the first 1000 annotations, 50 a request"
        );
        for u in &updates {
            validate(Request::Update, u).unwrap();
        }
        let output = &updates[0]["output"];
        let summary = output["summary"].as_str().unwrap();
        let text = output["text"].as_str().unwrap();
        assert!(summary.chars().count() <= MAX_OUTPUT_BYTES);
        assert!(summary.len() <= MAX_OUTPUT_BYTES, "{}", summary.len());
        assert!(summary.len() > MAX_OUTPUT_BYTES - 2000, "the room is used");
        assert!(text.chars().count() <= MAX_OUTPUT_BYTES);
        assert!(text.len() <= MAX_OUTPUT_BYTES, "{}", text.len());
        assert_eq!(output["title"], "5000 of 5010 tests failed (10 passed)");
        // The summary says what it left out and still ends with the counts.
        let listed = summary.matches("\n- ").count();
        assert!(summary.contains(&format!(
            "\u{2026} {} more failed tests: see the job's page.",
            5000 - listed
        )));
        assert!(summary.ends_with("### Tests\n\n5000 of 5010 tests failed \\(10 passed\\)\n"));
        // The text keeps the end of the last line, whole characters, in its fence.
        assert!(text.ends_with(&format!("{}\n```\n", "é".repeat(1000))));
        assert!(text.starts_with(
            "The log's last 1 line (the whole log is on the job's page):\n\n```text\né"
        ));
        assert_eq!(updates[19]["output"]["annotations"][49]["start_line"], 1000);
        // Sorted by file and line, the first test is the last listed.
        let mut tests = tests;
        tests.failing.truncate(1);
        tests.failing[0].test.details = Some("é".repeat(100_000));
        let notes = annotations(&tests.failing);
        let details = notes[0].raw_details.as_deref().unwrap();
        assert!(details.len() <= MAX_RAW_DETAILS_BYTES);
        assert!(details.ends_with("é…"));
    }

    #[test]
    fn annotations_go_50_a_request_in_a_stable_order() {
        let mut failing: Vec<Failing> = (0..120).map(big_failure).collect();
        // Reports in another order give the same requests.
        failing.reverse();
        failing.push(failing_no_file());
        let tests = tests_of(failing, 0);
        let failed = job(State::Failure, "tests failed");
        let updates = update(&report(&failed, &[], Some(&tests), None));
        let sizes: Vec<usize> = updates.iter().map(|u| u.output.annotations.len()).collect();
        assert_eq!(sizes, [50, 50, 20]);
        assert!(matches!(
            updates[0].status,
            Some(Status::Completed {
                conclusion: Conclusion::Failure,
                ..
            })
        ));
        assert!(updates[1..].iter().all(|u| u.status.is_none()));
        assert_eq!(body(&updates[1]).get("status"), None);
        assert_eq!(body(&updates[0])["conclusion"], "failure");
        let lines: Vec<u32> = updates
            .iter()
            .flat_map(|u| u.output.annotations.iter().map(|a| a.start_line))
            .collect();
        assert_eq!(lines, (1..=120).collect::<Vec<_>>());
        for u in &updates {
            let v = body(u);
            validate(Request::Update, &v).unwrap();
            for a in &u.output.annotations {
                assert_eq!(a.annotation_level, "failure");
                assert_eq!(a.end_line, a.start_line);
                assert_eq!(a.path, "tests/test_vm.py");
            }
            assert_eq!(u.output.title, updates[0].output.title);
        }
        assert_eq!(
            updates[0].output.annotations[0].message,
            format!("{}\nnew failure", "ünïcödé ".repeat(40))
        );
        // No annotations: one request, the status.
        let none = update(&report(&failed, &[], None, None));
        assert_eq!(none.len(), 1);
        assert!(none[0].output.annotations.is_empty());
        assert_eq!(body(&none[0]).pointer("/output/annotations"), None);
    }

    fn failing_no_file() -> Failing {
        failing("test_nofile", "x", Since::New { last_passed: None }, None)
    }

    #[test]
    fn validate_refuses_what_github_refuses() {
        let good = create_of(&job(State::Failure, "f"));
        let with = |pointer: &str, value: Value| {
            let mut v = good.clone();
            *v.pointer_mut(pointer).unwrap() = value;
            v
        };
        let refused = |v: &Value| validate(Request::Create, v).unwrap_err();
        assert_eq!(
            refused(&with("/head_sha", json!("abc"))),
            Violation::BadSha("abc".into())
        );
        assert_eq!(
            refused(&with("/status", json!("in_progress"))),
            Violation::Inconsistent {
                status: Some("in_progress".into()),
                conclusion: Some("failure".into())
            }
        );
        assert_eq!(
            refused(&with("/conclusion", json!("stale"))),
            Violation::NotAllowed {
                field: "conclusion".into(),
                value: "stale".into(),
                allowed: CONCLUSIONS
            }
        );
        assert_eq!(
            refused(&with("/conclusion", Value::Null)),
            Violation::Inconsistent {
                status: Some("completed".into()),
                conclusion: None
            }
        );
        assert_eq!(
            refused(&with("/completed_at", json!("yesterday"))),
            Violation::BadTime {
                field: "completed_at".into(),
                value: "yesterday".into()
            }
        );
        assert_eq!(
            refused(&with(
                "/output/summary",
                json!("x".repeat(MAX_OUTPUT_BYTES + 1))
            )),
            Violation::TooLong {
                field: "output.summary".into(),
                len: MAX_OUTPUT_BYTES + 1,
                max: MAX_OUTPUT_BYTES
            }
        );
        // Bytes, not characters, as GitHub counts: 32,767 two-byte
        // characters are taken, one more is refused.
        validate(
            Request::Create,
            &with("/output/summary", json!("é".repeat(MAX_OUTPUT_BYTES / 2))),
        )
        .unwrap();
        assert_eq!(
            refused(&with(
                "/output/summary",
                json!("é".repeat(MAX_OUTPUT_BYTES / 2 + 1))
            )),
            Violation::TooLong {
                field: "output.summary".into(),
                len: MAX_OUTPUT_BYTES + 1,
                max: MAX_OUTPUT_BYTES
            }
        );
        let note = json!({"path": "a.py", "start_line": 1, "end_line": 1,
                          "annotation_level": "failure", "message": "m"});
        let notes = |n: usize, note: &Value| {
            with(
                "/output",
                json!({"title": "t", "summary": "s",
            "annotations": vec![note.clone(); n]}),
            )
        };
        validate(Request::Create, &notes(50, &note)).unwrap();
        assert_eq!(
            refused(&notes(51, &note)),
            Violation::TooManyAnnotations(51)
        );
        let mut bad = note.clone();
        bad["annotation_level"] = json!("error");
        assert_eq!(
            refused(&notes(1, &bad)),
            Violation::NotAllowed {
                field: "output.annotations[0].annotation_level".into(),
                value: "error".into(),
                allowed: LEVELS
            }
        );
        let mut bad = note.clone();
        bad["end_line"] = json!(0);
        assert_eq!(
            refused(&notes(1, &bad)),
            Violation::WrongType {
                field: "output.annotations[0].end_line".into(),
                expected: "a line number (1 or more)"
            }
        );
        assert_eq!(
            refused(&with("/output", json!({"title": "t"}))),
            Violation::Missing("output.summary".into())
        );
        let mut no_name = good.clone();
        no_name.as_object_mut().unwrap().remove("name");
        assert_eq!(refused(&no_name), Violation::Missing("name".into()));
        // An update needs neither, and may carry only output.
        validate(
            Request::Update,
            &json!({"output": {"title": "t", "summary": "s"}}),
        )
        .unwrap();
        assert_eq!(
            validate(Request::Update, &json!([]))
                .unwrap_err()
                .to_string(),
            "the body is not a JSON object"
        );
    }
}
