//! A hardened reader of JUnit XML test reports, pytest's `--junitxml` first,
//! so a job can say which tests failed and why.
//!
//! Every report is hostile input: it comes out of a Qubes machine where the
//! code under test ran as dom0's user with sudo. So the reader refuses what
//! could make it blow up or lie rather than guess: a DOCTYPE (no DTD, so no
//! entity expansion and no billion laughs), any entity but the five
//! predefined ones and numeric character references, invalid UTF-8,
//! nesting deeper than [`Limits::max_depth`], more cases than
//! [`Limits::max_cases`], a report over [`Limits::max_bytes`] (checked before
//! reading), malformed XML, and a report cut short. What it accepts comes
//! out bounded and clean: every text field is cut on a character boundary
//! to its limit, and holds no control character but `\n` and `\t` (names
//! and messages none at all: they are one line).
//!
//! It runs on the host only: dom0 never links it.

#![forbid(unsafe_code)]

use quick_xml::Reader;
use quick_xml::escape::{EscapeError, resolve_predefined_entity};
use quick_xml::events::{BytesRef, BytesStart, Event};
use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a report says: its test cases, in the order it lists them, from
/// every suite at any depth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub cases: Vec<TestCase>,
}

impl Report {
    /// How many cases ended each way.
    pub fn counts(&self) -> Counts {
        Counts::of(&self.cases)
    }
}

/// The number of cases of each outcome in a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    pub skipped: usize,
}

impl Counts {
    /// Of cases from any number of reports (a job's, together).
    pub fn of(cases: &[TestCase]) -> Self {
        let mut counts = Self::default();
        for case in cases {
            match case.outcome {
                Outcome::Passed => counts.passed += 1,
                Outcome::Failed => counts.failed += 1,
                Outcome::Errored => counts.errored += 1,
                Outcome::Skipped => counts.skipped += 1,
            }
        }
        counts
    }

    pub fn total(&self) -> usize {
        self.passed + self.failed + self.errored + self.skipped
    }
}

/// "2 of 148 tests failed (140 passed, 6 skipped)", "3 of 3 tests passed":
/// the one line that leads a job's test summary wherever it is shown (the
/// terminal, the job page, GitHub).
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bad = self.failed + self.errored;
        let total = self.total();
        let noun = if total == 1 { "test" } else { "tests" };
        if bad == 0 {
            write!(f, "{} of {total} {noun} passed", self.passed)?;
        } else {
            write!(f, "{bad} of {total} {noun} failed")?;
        }
        let mut parts = Vec::new();
        if bad > 0 {
            parts.push(format!("{} passed", self.passed));
        }
        if self.errored > 0 {
            parts.push(format!("{} errored", self.errored));
        }
        if self.skipped > 0 {
            parts.push(format!("{} skipped", self.skipped));
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// One `<testcase>`. Every text is cleaned and within its limit: names,
/// paths and the message are one line of at most [`Limits::max_name`] or
/// [`Limits::max_message`] bytes; details and output keep their lines and
/// are at most [`Limits::max_text`] bytes. A cut text ends with `" […cut]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    /// `testcase@name`.
    pub name: String,
    /// `testcase@classname`, `""` when absent.
    pub classname: String,
    pub outcome: Outcome,
    /// `testcase@time` in seconds; `None` when absent, negative, not a
    /// number or too large.
    pub duration: Option<Duration>,
    /// The `message` of the element that decided the outcome.
    pub message: Option<String>,
    /// The text of the `<failure>` or `<error>` that decided the outcome:
    /// the traceback.
    pub details: Option<String>,
    /// The case's `<system-out>`, then its `<system-err>`.
    pub output: Option<String>,
    /// `testcase@file` (pytest's legacy family sets it).
    pub file: Option<String>,
    /// `testcase@line`.
    pub line: Option<u32>,
}

/// How a test case ended. A case with a `<failure>` failed, one with an
/// `<error>` errored, one with `<skipped>` was skipped, and the rest passed.
/// A case with several (pytest adds an `<error>` for a failed teardown) takes
/// the first of failed, errored, skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Passed,
    Failed,
    Errored,
    Skipped,
}

impl Outcome {
    /// The word stored and shown for it; [`str::parse`] reads it back.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Errored => "errored",
            Outcome::Skipped => "skipped",
        }
    }

    /// Which outcome wins when a case has several elements: the higher.
    fn rank(self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Skipped => 1,
            Outcome::Errored => 2,
            Outcome::Failed => 3,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not an [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown test outcome {0:?}: expected passed, failed, errored or skipped")]
pub struct UnknownOutcome(pub String);

impl std::str::FromStr for Outcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passed" => Ok(Outcome::Passed),
            "failed" => Ok(Outcome::Failed),
            "errored" => Ok(Outcome::Errored),
            "skipped" => Ok(Outcome::Skipped),
            other => Err(UnknownOutcome(other.to_owned())),
        }
    }
}

/// The bounds a report must keep to (sizes in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest report read; a larger one is refused.
    pub max_bytes: u64,
    /// The deepest nesting of elements, the root being 1; deeper is refused.
    pub max_depth: usize,
    /// The most test cases; more are refused.
    pub max_cases: usize,
    /// A name, class name or file longer than this is cut.
    pub max_name: usize,
    /// A message longer than this is cut.
    pub max_message: usize,
    /// Details or output longer than this are cut.
    pub max_text: usize,
}

impl Default for Limits {
    /// Roomy for real suites (pytest writes about 200 bytes a passed case),
    /// small enough that a hostile report costs the host little.
    fn default() -> Self {
        Limits {
            max_bytes: 32 << 20,
            max_depth: 32,
            max_cases: 100_000,
            max_name: 4 << 10,
            max_message: 4 << 10,
            max_text: 64 << 10,
        }
    }
}

/// Why a report was refused. Each says it in one line, for a job's log.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("the report is larger than {}", size(*.limit))]
    TooLarge { limit: u64 },
    #[error("the report has a DOCTYPE: refused (no DTDs or entities)")]
    DocType,
    #[error(
        "the report uses the entity &{name};: refused (only &amp; &lt; &gt; &quot; &apos; and numeric character references)"
    )]
    Entity { name: String },
    #[error("invalid UTF-8 at byte {at}")]
    Utf8 { at: usize },
    #[error("nested deeper than {limit} elements")]
    TooDeep { limit: usize },
    #[error("more than {limit} test cases")]
    TooManyCases { limit: usize },
    /// quick-xml's refusal, with the byte it was found at.
    #[error("malformed XML at byte {at}: {}", shown(&.error.to_string()))]
    Malformed { at: u64, error: quick_xml::Error },
    #[error("the report ends with <{element}> left open: it was cut short")]
    Unclosed { element: String },
    #[error("not a JUnit report: the root element is <{root}>, not <testsuites> or <testsuite>")]
    NotJunit { root: String },
    #[error("not a JUnit report: it has no element")]
    NoRoot,
    #[error("the report has a second root element <{element}>")]
    SecondRoot { element: String },
    #[error("the report {} is a symlink: refused", .path.display())]
    Symlink { path: PathBuf },
    #[error("the report {} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot read the report {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the report at `path`, which must be a regular file and not a
/// symlink (`O_NOFOLLOW`: the machine under test made it). Its size is
/// checked before reading, and the read stops one byte past
/// [`Limits::max_bytes`], so a file that grows meanwhile is bounded too.
pub fn parse_file(path: &Path, limits: &Limits) -> Result<Report, JunitError> {
    let read_error = |source: std::io::Error| JunitError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is then
    // refused as not a regular file.
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                JunitError::Symlink {
                    path: path.to_owned(),
                }
            } else {
                read_error(e)
            }
        })?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(JunitError::NotAFile {
            path: path.to_owned(),
        });
    }
    let too_large = JunitError::TooLarge {
        limit: limits.max_bytes,
    };
    if meta.len() > limits.max_bytes {
        return Err(too_large);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_large);
    }
    parse(&bytes, limits)
}

/// Reads a report from memory: a `<testsuites>` root with `<testsuite>`s
/// nested at any depth within the limit, or a bare `<testsuite>` root.
/// Unknown elements and attributes are skipped.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Report, JunitError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(JunitError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    // Checked whole first, so the refusal can say where.
    let text = std::str::from_utf8(bytes).map_err(|e| JunitError::Utf8 {
        at: e.valid_up_to(),
    })?;
    // quick-xml's defaults check that end tags match and never expand an
    // entity: each reference comes as its own event, resolved below.
    let mut reader = Reader::from_str(text);
    let mut parser = Parser::new(limits);
    loop {
        let start = reader.buffer_position();
        let event = reader.read_event().map_err(|error| JunitError::Malformed {
            at: reader.error_position(),
            error,
        })?;
        // For errors found in an event quick-xml returned: its tag ends here.
        let at = reader.buffer_position();
        let malformed_here = |error| JunitError::Malformed { at, error };
        match event {
            Event::DocType(_) => return Err(JunitError::DocType),
            Event::Start(e) => parser.open(&e, start, at)?,
            Event::Empty(e) => {
                parser.open(&e, start, at)?;
                parser.close();
            }
            Event::End(_) => parser.close(),
            Event::Text(t) => parser.text(&t.decode().map_err(|e| malformed_here(e.into()))?),
            Event::CData(t) => parser.text(&t.decode().map_err(|e| malformed_here(e.into()))?),
            Event::GeneralRef(r) => parser.text(resolve(&r, &mut [0; 4]).map_err(|e| match e {
                Resolve::Unknown(name) => JunitError::Entity { name },
                Resolve::Bad(error) => malformed_here(error),
            })?),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    parser.finish(text)
}

/// The marker that ends a cut text.
const CUT: &str = " […cut]";

/// How much hostile text (a name, quick-xml's message) an error shows.
const SHOWN: usize = 200;

/// What an element is to the reader, from its name and its parent's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Suites,
    Suite,
    Case,
    /// The `<failure>` or `<error>` that decides its case: its text is
    /// the details.
    Details,
    SystemOut,
    SystemErr,
    /// Anything else, and whatever is inside it.
    Other,
}

/// The reader's state between events.
struct Parser<'l> {
    limits: &'l Limits,
    /// The open elements, the root first: their kind and (to name one in
    /// a report cut short) where their start tag is.
    open: Vec<(Kind, u64)>,
    seen_root: bool,
    case: Option<CaseBuilder>,
    cases: Vec<TestCase>,
}

/// A test case being read.
struct CaseBuilder {
    name: String,
    classname: String,
    outcome: Outcome,
    duration: Option<Duration>,
    message: Option<String>,
    details: Text,
    out: Text,
    err: Text,
    file: Option<String>,
    line: Option<u32>,
}

impl<'l> Parser<'l> {
    fn new(limits: &'l Limits) -> Self {
        Parser {
            limits,
            open: Vec::new(),
            seen_root: false,
            case: None,
            cases: Vec::new(),
        }
    }

    /// An element's start tag, from byte `start` to `at`.
    fn open(&mut self, e: &BytesStart<'_>, start: u64, at: u64) -> Result<(), JunitError> {
        let limits = self.limits;
        if self.open.len() >= limits.max_depth {
            return Err(JunitError::TooDeep {
                limit: limits.max_depth,
            });
        }
        let name = e.name();
        let name = name.as_ref();
        // Every attribute is checked, used or not: no entity gets through.
        let attrs = attributes(e, at)?;
        let attr = |key: &[u8]| {
            attrs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_ref())
        };
        let kind = match self.open.last().map(|(kind, _)| *kind) {
            None if self.seen_root => {
                return Err(JunitError::SecondRoot {
                    element: shown_bytes(name),
                });
            }
            None => match name {
                b"testsuites" => Kind::Suites,
                b"testsuite" => Kind::Suite,
                _ => {
                    return Err(JunitError::NotJunit {
                        root: shown_bytes(name),
                    });
                }
            },
            Some(Kind::Suites) if name == b"testsuite" => Kind::Suite,
            Some(Kind::Suite) if name == b"testsuite" => Kind::Suite,
            Some(Kind::Suite) if name == b"testcase" => {
                if self.cases.len() >= limits.max_cases {
                    return Err(JunitError::TooManyCases {
                        limit: limits.max_cases,
                    });
                }
                let one_line = |key: &[u8], limit| attr(key).map(|v| one_line(v, limit));
                self.case = Some(CaseBuilder {
                    name: one_line(b"name", limits.max_name).unwrap_or_default(),
                    classname: one_line(b"classname", limits.max_name).unwrap_or_default(),
                    outcome: Outcome::Passed,
                    duration: attr(b"time").and_then(seconds),
                    message: None,
                    details: Text::default(),
                    out: Text::default(),
                    err: Text::default(),
                    file: one_line(b"file", limits.max_name).filter(|f| !f.is_empty()),
                    line: attr(b"line").and_then(|l| l.trim().parse().ok()),
                });
                Kind::Case
            }
            Some(Kind::Case) => match (name, self.case.as_mut()) {
                (b"system-out", _) => Kind::SystemOut,
                (b"system-err", _) => Kind::SystemErr,
                (b"failure" | b"error" | b"skipped", Some(case)) => {
                    let outcome = match name {
                        b"failure" => Outcome::Failed,
                        b"error" => Outcome::Errored,
                        _ => Outcome::Skipped,
                    };
                    if outcome.rank() > case.outcome.rank() {
                        case.outcome = outcome;
                        case.message = attr(b"message")
                            .map(|m| one_line(m, limits.max_message))
                            .filter(|m| !m.is_empty());
                        case.details = Text::default();
                        if outcome == Outcome::Skipped {
                            Kind::Other
                        } else {
                            Kind::Details
                        }
                    } else {
                        Kind::Other
                    }
                }
                _ => Kind::Other,
            },
            Some(_) => Kind::Other,
        };
        self.seen_root = true;
        self.open.push((kind, start));
        Ok(())
    }

    /// The innermost open element ends (quick-xml checked it is that one).
    fn close(&mut self) {
        if let Some((Kind::Case, _)) = self.open.pop()
            && let Some(case) = self.case.take()
        {
            self.cases.push(case.finish(self.limits));
        }
    }

    /// Text, a CDATA section or a resolved reference.
    fn text(&mut self, piece: &str) {
        let (Some((kind, _)), Some(case)) = (self.open.last(), self.case.as_mut()) else {
            return;
        };
        let limit = self.limits.max_text;
        match kind {
            Kind::Details => case.details.push(piece, limit, false),
            Kind::SystemOut => case.out.push(piece, limit, false),
            Kind::SystemErr => case.err.push(piece, limit, false),
            _ => {}
        }
    }

    /// The report ends; `text` is the whole of it.
    fn finish(self, text: &str) -> Result<Report, JunitError> {
        if let Some(&(_, start)) = self.open.last() {
            let tag = usize::try_from(start)
                .ok()
                .and_then(|start| text.get(start + 1..))
                .unwrap_or_default();
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/' || c == '>')
                .next()
                .unwrap_or_default();
            return Err(JunitError::Unclosed {
                element: shown(name),
            });
        }
        if !self.seen_root {
            return Err(JunitError::NoRoot);
        }
        Ok(Report { cases: self.cases })
    }
}

impl CaseBuilder {
    fn finish(self, limits: &Limits) -> TestCase {
        // Output is system-out then system-err, whatever their order in
        // the file, on separate lines.
        let mut output = self.out;
        if !output.s.is_empty() && !self.err.s.is_empty() && !output.s.ends_with('\n') {
            output.s.push('\n');
        }
        output.s.push_str(&self.err.s);
        output.cut |= self.err.cut || output.s.len() > limits.max_text;
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        TestCase {
            name: self.name,
            classname: self.classname,
            outcome: self.outcome,
            duration: self.duration,
            message: self.message,
            details: non_empty(self.details.finish(limits.max_text)),
            output: non_empty(output.finish(limits.max_text)),
            file: self.file,
            line: self.line,
        }
    }
}

/// A text field being gathered from the pieces quick-xml gives, cleaned as
/// it comes, and never held past its limit.
#[derive(Default)]
struct Text {
    s: String,
    /// Something was left out for the limit.
    cut: bool,
}

impl Text {
    /// Appends `piece` without control characters (one line: tabs and
    /// newlines become spaces), up to `limit` bytes.
    fn push(&mut self, piece: &str, limit: usize, one_line: bool) {
        if self.cut {
            return;
        }
        for c in piece.chars() {
            let c = match c {
                '\n' | '\t' if one_line => ' ',
                '\n' | '\t' => c,
                c if c.is_control() => continue,
                c => c,
            };
            if self.s.len() + c.len_utf8() > limit {
                self.cut = true;
                return;
            }
            self.s.push(c);
        }
    }

    /// The text in at most `limit` bytes, ending with [`CUT`] when cut
    /// (unless the limit is too small to hold even that).
    fn finish(mut self, limit: usize) -> String {
        if self.cut {
            let marker = if limit >= CUT.len() { CUT } else { "" };
            let mut end = limit.saturating_sub(marker.len()).min(self.s.len());
            while !self.s.is_char_boundary(end) {
                end -= 1;
            }
            self.s.truncate(end);
            self.s.push_str(marker);
        }
        self.s
    }
}

/// An attribute's value as one clean line of at most `limit` bytes, without
/// surrounding white space.
fn one_line(value: &str, limit: usize) -> String {
    let mut text = Text::default();
    text.push(value.trim(), limit, true);
    let cut = text.cut;
    let s = text.finish(limit);
    if cut { s } else { s.trim().to_owned() }
}

/// `testcase@time`: seconds, as pytest writes them (`0.004`).
fn seconds(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// An attribute's name and its value, references resolved.
type Attribute<'e> = (&'e [u8], Cow<'e, str>);

/// The attributes of `e` with their references resolved, refusing any
/// entity but the predefined ones.
fn attributes<'e>(e: &'e BytesStart<'_>, at: u64) -> Result<Vec<Attribute<'e>>, JunitError> {
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|error| JunitError::Malformed {
            at,
            error: error.into(),
        })?;
        let value = attr
            .decode_and_unescape_value_with(e.decoder(), resolve_predefined_entity)
            .map_err(|error| match error {
                quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
                    JunitError::Entity { name: shown(&name) }
                }
                error => JunitError::Malformed { at, error },
            })?;
        attrs.push((attr.key.into_inner(), value));
    }
    Ok(attrs)
}

/// Why a reference in text was not resolved.
enum Resolve {
    Unknown(String),
    Bad(quick_xml::Error),
}

/// A reference in text: a numeric character reference (written into
/// `buf`, so a report of them costs no allocation) or a predefined entity;
/// nothing else.
fn resolve<'b>(r: &BytesRef<'_>, buf: &'b mut [u8; 4]) -> Result<&'b str, Resolve> {
    if let Some(c) = r.resolve_char_ref().map_err(Resolve::Bad)? {
        return Ok(c.encode_utf8(buf));
    }
    let name = r.decode().map_err(|e| Resolve::Bad(e.into()))?;
    resolve_predefined_entity(&name).ok_or_else(|| Resolve::Unknown(shown(&name)))
}

/// Hostile text quoted in an error: one clean line, short.
fn shown(text: &str) -> String {
    one_line(text, SHOWN)
}

fn shown_bytes(text: &[u8]) -> String {
    shown(&String::from_utf8_lossy(text))
}

/// A byte count as people write limits: `32 MiB`, `4 KiB`, `100 bytes`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}
