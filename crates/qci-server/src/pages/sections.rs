//! A job's log cut into the sections its page shows: one per step, found
//! by dom0's own lines (`TIMESTAMP [qci] step NAME: COMMAND` starts one;
//! `step NAME passed in 1.2s`, `failed in 1.2s (exit 2)`, `timed out in
//! 1.2s` or `canceled in 1.2s` ends it), with what comes before the first
//! step ("Setup": fetching the code) and after a step ("Finish") on their
//! own. A step with no end line in a finished job is the one that ended the
//! job: its result is the job's state.
//!
//! The log is the machine's text, never trusted: a line is a step line only
//! in the exact shape dom0 writes, an end line only for the step that is
//! open, and nothing here is markup (the page escapes it). Memory is
//! bounded whatever the log: lines are read one at a time, each cut at
//! [`MAX_LINE_BYTES`], a section keeps its last [`MAX_LINES`] lines (and at
//! most [`MAX_SECTION_BYTES`]), counting the rest, and there are at most
//! [`MAX_SECTIONS`] sections (later step lines are plain lines of the last).

use qci_core::State;
use std::collections::VecDeque;
use std::io::BufRead;

/// The most lines a section shows: its last ones.
pub const MAX_LINES: usize = 10_000;
/// The most bytes a section keeps, however few its lines.
pub const MAX_SECTION_BYTES: usize = 2 * 1024 * 1024;
/// The longest line shown whole (dom0 cuts at 64 KiB; a page needs less).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
pub const MAX_SECTIONS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Setup,
    Step(String),
    Finish,
}

/// How a section's step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed {
        exit: Option<i32>,
    },
    TimedOut,
    Canceled,
    /// No end line, and the job ended with it: the job's state.
    EndedJob(State),
    /// No end line, and another step came after it.
    NoEnd,
}

impl Outcome {
    pub fn label(&self) -> String {
        match self {
            Self::Passed => "passed".into(),
            Self::Failed { exit: Some(code) } => format!("failed (exit {code})"),
            Self::Failed { exit: None } => "failed".into(),
            Self::TimedOut => "timed out".into(),
            Self::Canceled => "canceled".into(),
            Self::EndedJob(State::Success) => "ended".into(),
            Self::EndedJob(State::Failure) => "failed".into(),
            Self::EndedJob(state) => state.as_str().into(),
            Self::NoEnd => "no end line".into(),
        }
    }

    /// A word for the style sheet: the state it is like.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Passed | Self::EndedJob(State::Success) => "success",
            Self::Failed { .. } | Self::EndedJob(State::Failure) => "failure",
            Self::Canceled | Self::EndedJob(State::Canceled) => "canceled",
            Self::TimedOut | Self::EndedJob(_) | Self::NoEnd => "error",
        }
    }

    pub fn failed(&self) -> bool {
        self.state() != "success"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: Kind,
    /// Steps only, once ended.
    pub outcome: Option<Outcome>,
    /// As dom0 measured it (`in 1.2s`), or from the lines' stamps.
    pub duration: Option<String>,
    /// Its last lines, as written (escapes and all: the page renders them).
    pub lines: VecDeque<String>,
    /// Lines left out at its start to keep within the bounds.
    pub cut: usize,
    bytes: usize,
    first_stamp: Option<String>,
    last_stamp: Option<String>,
}

impl Section {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            outcome: None,
            duration: None,
            lines: VecDeque::new(),
            cut: 0,
            bytes: 0,
            first_stamp: None,
            last_stamp: None,
        }
    }

    pub fn title(&self) -> &str {
        match &self.kind {
            Kind::Setup => "Setup",
            Kind::Step(name) => name,
            Kind::Finish => "Finish",
        }
    }

    fn step(&self) -> Option<&str> {
        match (&self.kind, &self.outcome) {
            (Kind::Step(name), None) => Some(name),
            _ => None,
        }
    }

    fn add(&mut self, line: String) {
        if let Some(stamp) = line.split(' ').next() {
            if self.first_stamp.is_none() {
                self.first_stamp = Some(stamp.to_owned());
            }
            self.last_stamp = Some(stamp.to_owned());
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > MAX_LINES || self.bytes > MAX_SECTION_BYTES {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            self.cut += 1;
        }
    }

    /// From the first line's stamp to the last's.
    fn measured(&self) -> Option<String> {
        let at = |s: &Option<String>| humantime::parse_rfc3339(s.as_deref()?).ok();
        let took = at(&self.last_stamp)?
            .duration_since(at(&self.first_stamp)?)
            .ok()?;
        Some(format!("{:.1}s", took.as_secs_f64()))
    }
}

/// What a `[qci]` line of dom0 says about steps.
#[derive(Debug, PartialEq, Eq)]
enum Note<'a> {
    Start(&'a str),
    End {
        step: &'a str,
        outcome: Outcome,
        took: Option<&'a str>,
    },
}

/// A valid step name, as `.qci.toml` allows (1 to 32 of `A-Za-z0-9_.-`).
fn step_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `in 1.2s` at the start of `rest`: the duration's text.
fn took(rest: &str) -> Option<&str> {
    let t = rest.strip_prefix(" in ")?;
    let t = &t[..t.find(' ').unwrap_or(t.len())];
    let number = t.strip_suffix('s')?;
    number
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.')
        .then_some(t)
}

fn note(line: &str) -> Option<Note<'_>> {
    let (_stamp, rest) = line.split_once(' ')?;
    let text = rest.strip_prefix("[qci] step ")?;
    if let Some((name, _command)) = text.split_once(": ")
        && step_name(name)
    {
        return Some(Note::Start(name));
    }
    let (name, rest) = text.split_once(' ')?;
    if !step_name(name) {
        return None;
    }
    let (outcome, after) = if let Some(r) = rest.strip_prefix("passed") {
        (Outcome::Passed, r)
    } else if let Some(r) = rest.strip_prefix("failed") {
        let exit = r
            .rsplit_once("(exit ")
            .and_then(|(_, code)| code.strip_suffix(')'))
            .and_then(|code| code.parse().ok());
        (Outcome::Failed { exit }, r)
    } else if let Some(r) = rest.strip_prefix("timed out") {
        (Outcome::TimedOut, r)
    } else if let Some(r) = rest.strip_prefix("canceled") {
        (Outcome::Canceled, r)
    } else {
        return None;
    };
    Some(Note::End {
        step: name,
        outcome,
        took: took(after),
    })
}

/// What one line says of steps, for the live page's script, which keeps
/// which step is open: the same reading of dom0's lines as [`Sections`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// A step starts: its name.
    Start(String),
    /// A step ends, if it is the one open.
    End {
        step: String,
        /// As the page says it (`failed (exit 2)`).
        result: String,
        /// The state it is like, for the style sheet.
        state: &'static str,
        took: Option<String>,
    },
}

pub fn mark(line: &str) -> Option<Mark> {
    match note(line)? {
        Note::Start(name) => Some(Mark::Start(name.to_owned())),
        Note::End {
            step,
            outcome,
            took,
        } => Some(Mark::End {
            step: step.to_owned(),
            result: outcome.label(),
            state: outcome.state(),
            took: took.map(str::to_owned),
        }),
    }
}

/// Cuts a log into sections, a line at a time.
#[derive(Debug, Default)]
pub struct Sections {
    sections: Vec<Section>,
}

impl Sections {
    pub fn new() -> Self {
        Self::default()
    }

    /// One line of the log, without its newline.
    pub fn push(&mut self, line: &str) {
        let line = cut_line(line);
        let room = self.sections.len() < MAX_SECTIONS;
        match note(&line) {
            Some(Note::Start(name)) if room => {
                if let Some(open) = self.sections.last_mut()
                    && open.step().is_some()
                {
                    open.outcome = Some(Outcome::NoEnd);
                }
                self.sections
                    .push(Section::new(Kind::Step(name.to_owned())));
                self.last().add(line);
            }
            Some(Note::End {
                step,
                outcome,
                took,
            }) if self.sections.last().and_then(Section::step) == Some(step) => {
                let took = took.map(str::to_owned);
                let open = self.last();
                open.add(line);
                open.duration = took.or_else(|| open.measured());
                open.outcome = Some(outcome);
            }
            _ => {
                let after_step = self
                    .sections
                    .last()
                    .is_some_and(|s| matches!(s.kind, Kind::Step(_)) && s.outcome.is_some());
                if self.sections.is_empty() || (after_step && room) {
                    let kind = if self.sections.is_empty() {
                        Kind::Setup
                    } else {
                        Kind::Finish
                    };
                    self.sections.push(Section::new(kind));
                }
                self.last().add(line);
            }
        }
    }

    fn last(&mut self) -> &mut Section {
        if self.sections.is_empty() {
            self.sections.push(Section::new(Kind::Setup));
        }
        let at = self.sections.len() - 1;
        &mut self.sections[at]
    }

    /// The sections of a log that is complete, of a job that ended in
    /// `state`: a step still open is the one that ended the job.
    pub fn finish(mut self, state: State) -> Vec<Section> {
        if let Some(open) = self.sections.iter_mut().rev().find(|s| s.step().is_some()) {
            open.duration = open.measured();
            open.outcome = Some(Outcome::EndedJob(state));
        }
        self.sections
    }
}

/// A line cut to [`MAX_LINE_BYTES`] on a character boundary.
fn cut_line(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_owned();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} \u{2026} (line cut)", &line[..end])
}

/// Reads a whole log into sections, a line at a time: a line longer than
/// [`MAX_LINE_BYTES`] is never held whole, its rest skipped.
pub fn read(mut reader: impl BufRead, state: State) -> std::io::Result<Vec<Section>> {
    let mut sections = Sections::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut long = false;
        let mut ended = false;
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                ended = true;
                break;
            }
            let (take, newline) = match memchr(buf) {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            let room = (MAX_LINE_BYTES + 1).saturating_sub(line.len());
            line.extend_from_slice(&buf[..take.min(room)]);
            long |= take > room;
            reader.consume(take + usize::from(newline));
            if newline {
                break;
            }
        }
        if ended && line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        if long {
            sections.push(&format!("{text}\u{2026}"));
        } else {
            sections.push(&text);
        }
        if ended {
            break;
        }
    }
    Ok(sections.finish(state))
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-12-03T10:00:00.000Z";
    const T1: &str = "2026-12-03T10:00:01.500Z";

    fn log(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn sections(text: &str, state: State) -> Vec<Section> {
        read(text.as_bytes(), state).unwrap()
    }

    fn summary(s: &[Section]) -> Vec<(String, Option<String>, Option<String>, usize)> {
        s.iter()
            .map(|s| {
                (
                    s.title().to_owned(),
                    s.outcome.as_ref().map(Outcome::label),
                    s.duration.clone(),
                    s.lines.len(),
                )
            })
            .collect()
    }

    #[test]
    fn steps_become_sections_with_setup_and_finish_around_them() {
        let text = log(&[
            &format!("{T0} [qci] fetching the code"),
            &format!("{T0} [qci] step build: make"),
            &format!("{T0} [build] compiling"),
            &format!("{T1} [qci] step build passed in 1.2s"),
            &format!("{T1} [qci] step test: make test"),
            &format!("{T1} [test] FAIL"),
            &format!("{T1} [qci] step test failed in 0.3s (exit 2)"),
            &format!("{T1} [qci] job failure"),
        ]);
        let s = sections(&text, State::Failure);
        assert_eq!(
            summary(&s),
            [
                ("Setup".into(), None, None, 1),
                (
                    "build".into(),
                    Some("passed".into()),
                    Some("1.2s".into()),
                    3
                ),
                (
                    "test".into(),
                    Some("failed (exit 2)".into()),
                    Some("0.3s".into()),
                    3
                ),
                ("Finish".into(), None, None, 1),
            ]
        );
        assert!(s[2].outcome.as_ref().unwrap().failed());
        assert!(!s[1].outcome.as_ref().unwrap().failed());
    }

    #[test]
    fn every_end_line_dom0_writes_is_understood() {
        for (end, label) in [
            ("step s timed out in 5.0s", "timed out"),
            ("step s timed out after 5s", "timed out"),
            ("step s canceled in 0.1s", "canceled"),
            ("step s canceled", "canceled"),
            ("step s failed in 1.0s (exit 127)", "failed (exit 127)"),
        ] {
            let text = log(&[
                &format!("{T0} [qci] step s: x"),
                &format!("{T1} [qci] {end}"),
            ]);
            let s = sections(&text, State::Error);
            assert_eq!(s.len(), 1, "{end}");
            assert_eq!(s[0].outcome.as_ref().unwrap().label(), label, "{end}");
        }
    }

    #[test]
    fn a_step_with_no_end_line_is_the_one_that_ended_the_job() {
        let text = log(&[
            &format!("{T0} [qci] step build: make"),
            &format!("{T0} [qci] step build passed in 0.1s"),
            &format!("{T0} [qci] step test: make test"),
            &format!("{T1} [test] boom"),
        ]);
        let s = sections(&text, State::Failure);
        assert_eq!(
            summary(&s),
            [
                (
                    "build".into(),
                    Some("passed".into()),
                    Some("0.1s".into()),
                    2
                ),
                ("test".into(), Some("failed".into()), Some("1.5s".into()), 2),
            ]
        );
        assert_eq!(
            sections(&text, State::Error)[1]
                .outcome
                .as_ref()
                .unwrap()
                .label(),
            "error"
        );
    }

    #[test]
    fn hostile_step_lines_are_plain_lines() {
        let text = log(&[
            &format!("{T0} [qci] step <script>alert(1)</script>: x"),
            &format!("{T0} [build] [qci] step fake: x"),
            &format!("{T0} [qci] step ok: x"),
            // The end of a step that is not open, and a made-up result.
            &format!("{T0} [qci] step other passed in 1s"),
            &format!("{T0} [qci] step ok exploded in 1s"),
            &format!("{T0} [qci] step ok passed in 1s <b>"),
        ]);
        let s = sections(&text, State::Success);
        assert_eq!(
            summary(&s),
            [
                ("Setup".into(), None, None, 2),
                ("ok".into(), Some("passed".into()), Some("1s".into()), 4),
            ]
        );
        assert!(s[0].lines[0].contains("<script>"), "kept as text");
    }

    #[test]
    fn the_live_page_gets_the_same_reading_of_a_line() {
        assert_eq!(
            mark(&format!("{T0} [qci] step build: make")),
            Some(Mark::Start("build".into()))
        );
        assert_eq!(
            mark(&format!("{T0} [qci] step build failed in 1.5s (exit 2)")),
            Some(Mark::End {
                step: "build".into(),
                result: "failed (exit 2)".into(),
                state: "failure",
                took: Some("1.5s".into()),
            })
        );
        assert_eq!(mark(&format!("{T0} [qci] step <b>: x")), None);
        assert_eq!(mark(&format!("{T0} [build] [qci] step x: y")), None);
        let start = serde_json::to_string(&mark(&format!("{T0} [qci] step b: m"))).unwrap();
        assert_eq!(start, r#"{"start":"b"}"#);
    }

    #[test]
    fn a_huge_log_keeps_the_last_lines_of_each_section_and_counts_the_rest() {
        let mut text = format!("{T0} [qci] step big: x\n");
        for i in 0..25_000 {
            text.push_str(&format!("{T0} [big] line {i}\n"));
        }
        // One line of a megabyte, and no newline at the end.
        text.push_str(&"y".repeat(1 << 20));
        let s = sections(&text, State::Failure);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].lines.len(), MAX_LINES);
        assert_eq!(s[0].cut, 25_002 - MAX_LINES);
        assert!(s[0].lines.back().unwrap().len() < MAX_LINE_BYTES + 20);
        assert!(s[0].lines[0].ends_with("line 15001"), "{}", s[0].lines[0]);
        // A million steps make at most MAX_SECTIONS sections.
        let many: String = (0..100_000)
            .map(|i| format!("{T0} [qci] step s{i}: x\n{T0} [qci] step s{i} passed in 1s\n"))
            .collect();
        assert_eq!(sections(&many, State::Success).len(), MAX_SECTIONS);
    }
}
