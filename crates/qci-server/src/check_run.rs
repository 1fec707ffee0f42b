//! What a job's GitHub check run says: the bodies of `POST
//! /repos/{o}/{r}/check-runs` and `PATCH /repos/{o}/{r}/check-runs/{id}`,
//! built from the job, its log's steps, its tests and its log's tail.
//! Sending them (the App's token, the outbox) is elsewhere; this is plain
//! data, so the fake GitHub can check it with [`validate`].
//!
//! Everything but our own words is the machine's or the tests' text, never
//! trusted: outside fences it goes into code spans (no Markdown, HTML,
//! links or autolinks inside one) sized to the text's own backticks, and
//! the log's tail goes into a fence longer than any run of backticks in it.
//! Each text is within GitHub's limits, cut on a character boundary with a
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
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// The most characters GitHub takes in `output.title`, `summary` or `text`.
pub const MAX_OUTPUT_CHARS: usize = 65_535;
/// The longest title we write: one line that reads in a PR's list of checks.
pub const MAX_TITLE_CHARS: usize = 255;
/// The most annotations GitHub takes in one request.
pub const MAX_ANNOTATIONS: usize = 50;
/// An annotation's `message` and `raw_details`: at most 64 KB each.
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;
/// An annotation's `title`.
pub const MAX_ANNOTATION_TITLE_CHARS: usize = 255;
/// How many of the log's last lines `output.text` shows.
pub const TAIL_LINES: usize = 100;
/// How much of the log's end is read for its tail: more than the text can
/// hold (65,535 characters of at most 4 bytes), and never the whole log.
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
/// test (a stable order, whatever order the reports came in).
pub fn annotations(failing: &[Failing]) -> Vec<Annotation> {
    let mut notes: Vec<Annotation> = failing
        .iter()
        .filter_map(|f| {
            let t = &f.test;
            let path = clean_line(t.file.as_deref()?);
            let path = path.trim_start_matches("./");
            let line = t.line?.max(1);
            if path.is_empty() {
                return None;
            }
            let title = cut_chars(&test_name(f), MAX_ANNOTATION_TITLE_CHARS).into_owned();
            let mut message = t.message.clone().unwrap_or_default();
            if message.trim().is_empty() {
                message = format!("{} {}", title, t.outcome.as_str());
            }
            let _ = write!(message, "\n{}", f.since);
            if let Some(flaky) = f.flaky {
                let _ = write!(message, "; {flaky}");
            }
            Some(Annotation {
                path: path.to_owned(),
                start_line: line,
                end_line: line,
                annotation_level: "failure",
                title,
                message: cut_bytes(&message, MAX_ANNOTATION_BYTES - 1).into_owned(),
                raw_details: t
                    .details
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .map(|d| cut_bytes(d, MAX_ANNOTATION_BYTES - 1).into_owned()),
            })
        })
        .collect();
    notes.sort_by(|a, b| (&a.path, a.start_line, &a.title).cmp(&(&b.path, b.start_line, &b.title)));
    notes
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
                format!("{} failed{took}", step.title())
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
    cut_chars(&clean_line(&line), MAX_TITLE_CHARS).into_owned()
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
pub fn escape(text: &str) -> String {
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
/// history, then the counts; at most [`MAX_OUTPUT_CHARS`].
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
                escape(&result),
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
        return cut_chars(&head, MAX_OUTPUT_CHARS).into_owned();
    };
    let counts = format!("### Tests\n\n{}\n", escape(&tests.counts.to_string()));
    let bad = tests.counts.failed + tests.counts.errored;
    let mut list = String::new();
    let mut listed = 0;
    if !tests.failing.is_empty() {
        list.push_str("### Failed tests\n\n");
    }
    // Room for the note on what is left out, however large its number.
    let reserve = counts.chars().count() + 100;
    let mut used = head.chars().count() + list.chars().count();
    for f in &tests.failing {
        let item = failed_test(f);
        let len = item.chars().count();
        if used + len + reserve > MAX_OUTPUT_CHARS {
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
    cut_chars(&format!("{head}{list}{counts}"), MAX_OUTPUT_CHARS).into_owned()
}

/// `- `name` — new failure; flaky: ...` and its message on the next line.
fn failed_test(f: &Failing) -> String {
    let mut item = format!(
        "- {} \u{2014} {}",
        code(&cut_chars(&test_name(f), MAX_TITLE_CHARS)),
        escape(&f.since.to_string())
    );
    if let Some(flaky) = f.flaky {
        let _ = write!(item, "; **{}**", escape(&flaky.to_string()));
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
/// [`MAX_OUTPUT_CHARS`]: the newest lines are kept, the older cut.
pub fn text(tail: &str) -> String {
    let lines: Vec<&str> = tail.lines().collect();
    let fence = "`".repeat((longest_run(tail, '`') + 1).max(3));
    let open = format!("{fence}text\n");
    let close = format!("{fence}\n");
    // The note is at most this long.
    let reserve = open.chars().count() + close.chars().count() + 80;
    let mut kept = Vec::new();
    let mut used = 0;
    for line in lines.iter().rev().take(TAIL_LINES) {
        let len = line.chars().count() + 1;
        if used + len + reserve > MAX_OUTPUT_CHARS {
            // A line too long alone keeps its end.
            if kept.is_empty() {
                let room = MAX_OUTPUT_CHARS - reserve - 2;
                let skip = line.chars().count().saturating_sub(room);
                let at = line.char_indices().nth(skip).map_or(0, |(i, _)| i);
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
        let _ = writeln!(
            out,
            "The log's last {shown} lines (the whole log is on the job's page):\n"
        );
    }
    out.push_str(&open);
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&close);
    cut_chars(&out, MAX_OUTPUT_CHARS).into_owned()
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
    #[error("{field} is {len} long, more than {max}")]
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

const STATUSES: &str = "queued, in_progress, completed, waiting, requested, pending";
const CONCLUSIONS: &str =
    "action_required, cancelled, failure, neutral, success, skipped, timed_out";
const LEVELS: &str = "notice, warning, failure";

/// Checks a check-run request body as GitHub does (its schema and limits):
/// `name` and a 40-hex `head_sha` to create; a known `status` and
/// `conclusion` that go together (a conclusion only with `completed` or no
/// status, `completed` only with one); times in ISO 8601; output `title`
/// and `summary` present, each text at most [`MAX_OUTPUT_CHARS`]; at most
/// [`MAX_ANNOTATIONS`] annotations, each with a path, lines, a valid
/// `annotation_level` and a message of at most 64 KB. For the fake GitHub
/// and the tests: the first violation found.
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
            Some(Value::String(s)) => too_long(&format!("output.{field}"), s, MAX_OUTPUT_CHARS)?,
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
        let level =
            text("annotation_level")?.ok_or_else(|| Violation::Missing(at("annotation_level")))?;
        one_of(&at("annotation_level"), Some(level), LEVELS)?;
        let message = text("message")?.ok_or_else(|| Violation::Missing(at("message")))?;
        too_long_bytes(&at("message"), message)?;
        if let Some(details) = text("raw_details")? {
            too_long_bytes(&at("raw_details"), details)?;
        }
        if let Some(title) = text("title")? {
            too_long(&at("title"), title, MAX_ANNOTATION_TITLE_CHARS)?;
        }
    }
    Ok(())
}

fn too_long(field: &str, text: &str, max: usize) -> Result<(), Violation> {
    let len = text.chars().count();
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
