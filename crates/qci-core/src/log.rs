//! The job log: one line per output line, `2026-11-22T10:15:00.123Z [step] text`,
//! stamped on arrival, cleaned of terminal escapes and invalid UTF-8, and
//! written through as it comes so a killed run still leaves its log.
//!
//! A step's colours are the one escape the log keeps: SGR sequences in
//! their plain form, `ESC [` digits and `;` `m` (bold, colours, reset), so
//! that the host's job page can show them and a terminal showing the log
//! only colours it. Every other sequence (titles, cursor moves, erases,
//! hyperlinks, private modes) and control character is removed. A line
//! holding a configured secret loses its colours too, so that a secret
//! spelled across colour codes is still masked.

use crate::JobId;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

/// `JOB.log`: the log's name in dom0's log directory. Status events name
/// it too, and the host looks for it there, so every side builds it here.
pub fn file_name(job: &JobId) -> String {
    format!("{job}.log")
}

/// The longest line kept whole. Output is untrusted and unbounded, so a
/// longer line is cut into pieces of this size instead of being buffered.
pub const MAX_LINE: usize = 64 * 1024;

/// Its owner's only, as every file of a dom0 service is under Qubes's umask
/// 0077: a log can show paths and names from dom0. (The host copies it out
/// as root.)
const LOG_MODE: u32 = 0o600;

/// Writes log lines to the log file and, optionally, echoes them (dom0's stdout).
pub struct LogWriter {
    file: File,
    echo: Option<Box<dyn Write + Send>>,
    mask: SecretMask,
    /// The text of the batch being put together, kept between batches so
    /// that its memory is reused.
    text: String,
}

impl LogWriter {
    /// Creates (truncating) the log file at `path`. A symlink there is
    /// refused rather than followed: it could point at any file in dom0.
    pub fn create(path: &Path, echo: Option<Box<dyn Write + Send>>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(LOG_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        // The mode above only applies to a new file and is cut by the umask.
        file.set_permissions(Permissions::from_mode(LOG_MODE))?;
        Ok(Self {
            file,
            echo,
            mask: SecretMask::default(),
            text: String::new(),
        })
    }

    /// The secrets this log masks, for a [`LineSplitter`] that feeds it.
    pub fn mask(&self) -> &SecretMask {
        &self.mask
    }

    /// Masks `secrets` in every line from now on, in the file and the echo.
    pub fn with_secrets(mut self, mask: SecretMask) -> Self {
        self.mask = mask;
        self
    }

    /// Writes one line for `step`, stamped now; `raw` is one output line
    /// without its newline.
    /// A line of qci's own, not a step's output: with no colours either,
    /// since it may quote what came from outside (a file name, a parser's
    /// error about a hostile stream), which must reach no terminal as an
    /// escape.
    pub fn note(&mut self, tag: &str, text: &str) -> io::Result<()> {
        self.line(tag, sanitize(text.as_bytes()).as_bytes())
    }

    pub fn line(&mut self, step: &str, raw: &[u8]) -> io::Result<()> {
        let mut batch = self.batch(step, SystemTime::now());
        batch.line(Line::new(raw));
        batch.write()
    }

    /// Starts a batch of lines for `step` that arrived together (one read of
    /// a step's output), all stamped `at`: the step executor stamps a read
    /// when it returns, so a slow log does not skew times. The batch is
    /// written with one write to the file and one to the echo: the cost of
    /// a syscall and a flush is paid per arrival, not per line.
    pub fn batch(&mut self, step: &str, at: SystemTime) -> Batch<'_> {
        let mut prefix = timestamp(at);
        prefix.push_str(" [");
        prefix.push_str(&clean(Line::new(step.as_bytes())));
        prefix.push_str("] ");
        self.text.clear();
        Batch { log: self, prefix }
    }

    /// Both the file and the echo are flushed every time: a killed run still
    /// leaves its log, and whoever follows the echo sees each line at once.
    /// The file is the record; if the echo fails (the caller went away) it
    /// is dropped with a warning and the run goes on.
    fn write_text(&mut self) -> io::Result<()> {
        self.file.write_all(self.text.as_bytes())?;
        self.file.flush()?;
        if let Some(echo) = &mut self.echo
            && let Err(e) = echo
                .write_all(self.text.as_bytes())
                .and_then(|()| echo.flush())
        {
            tracing::warn!("cannot echo the log any more, writing only the file: {e}");
            self.echo = None;
        }
        Ok(())
    }
}

/// Lines of one step that arrived together, written by [`Batch::write`].
/// Its memory is the log's, reused from batch to batch: it holds one read
/// of output, formatted.
pub struct Batch<'a> {
    log: &'a mut LogWriter,
    /// `STAMP [step] `.
    prefix: String,
}

impl Batch<'_> {
    /// Adds one output line, without its newline: cleaned, then masked.
    pub fn line(&mut self, line: Line<'_>) {
        let text = &mut self.log.text;
        text.push_str(&self.prefix);
        match line.as_printable() {
            // The common line: nothing to clean, nothing to mask.
            Some(plain) if self.log.mask.is_empty() => text.push_str(plain),
            _ if self.log.mask.is_empty() => text.push_str(&clean_keeping_sgr(line)),
            _ => {
                let coloured = clean_keeping_sgr(line);
                let plain = clean(line);
                let masked = self.log.mask.apply(&plain);
                // A secret shows only once its colour codes are gone (or is
                // whole either way): the line is written plain, masked.
                if masked != plain {
                    text.push_str(&masked);
                } else {
                    text.push_str(&coloured);
                }
            }
        }
        text.push('\n');
    }

    pub fn write(self) -> io::Result<()> {
        if self.log.text.is_empty() {
            return Ok(());
        }
        self.log.write_text()
    }
}

/// Replaces configured secret values by `***`.
///
/// Masking works on whole lines, after they are put together from however
/// many writes the step made, so a secret split across writes is still
/// caught; so is one at the [`MAX_LINE`] cut of an overlong line, which a
/// [`LineSplitter`] holding the mask moves back before the secret. Not
/// caught: a secret that spans a newline, or one the step's bytes only spell
/// after escapes are removed *and* that sits at such a cut.
#[derive(Debug, Clone, Default)]
pub struct SecretMask {
    /// Longest first, so a secret that contains another is masked whole.
    secrets: Vec<String>,
}

impl SecretMask {
    /// Empty values are ignored: they would match everywhere.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // By value within a length, so that `dedup` sees every duplicate.
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self { secrets }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Where to cut `buf` at or before `cut` so that no secret, whole or
    /// begun at the end of `buf`, has bytes on both sides: each piece is then
    /// masked on its own and still hides the secret whole. `cut` itself when
    /// no earlier cut would do (a secret longer than the piece).
    pub fn safe_cut(&self, buf: &[u8], mut cut: usize) -> usize {
        loop {
            let straddling = self
                .secrets
                .iter()
                .flat_map(|secret| {
                    let secret = secret.as_bytes();
                    (cut.saturating_sub(secret.len() - 1)..cut).filter(move |&i| {
                        // Whole in `buf`, or begun at its end and maybe
                        // completed by what comes next.
                        let end = (i + secret.len()).min(buf.len());
                        i + secret.len() > cut && secret.starts_with(&buf[i..end])
                    })
                })
                .min();
            match straddling {
                Some(i) if i > 0 => cut = i,
                _ => return cut,
            }
        }
    }

    pub fn apply<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        if self.secrets.is_empty() {
            return out;
        }
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(secret.as_str(), "***"));
            }
        }
        out
    }
}

/// `2026-11-22T10:15:00.123Z`: UTC with milliseconds, so lines from
/// different sources sort and compare without a time zone.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Removes ANSI escape sequences and other control characters (tab is kept)
/// and replaces invalid UTF-8, so a log viewed in a terminal or a browser
/// shows text only and the output of a step cannot drive the viewer.
///
/// Handled: CSI (`ESC [` .. final byte, and the 8-bit `0x9b` when it is not
/// part of a valid UTF-8 character), string sequences (OSC `ESC ]`, and DCS,
/// SOS, PM, APC) up to BEL or `ESC \`, and other `ESC` sequences (`ESC x`,
/// `ESC ( B`). An unterminated sequence swallows the rest of the line, as a
/// terminal would.
///
/// A `\r` inside a line is a progress bar redrawing itself: only the text
/// after the last `\r` is kept, unless that text is blank, in which case the
/// last non-blank text before it is (so `50%\r100%` gives `100%` and a CRLF
/// line `text\r` gives `text`).
pub fn sanitize(raw: &[u8]) -> String {
    clean(Line::new(raw)).into_owned()
}

/// [`sanitize`], but keeping a step's colours as the log writer does: SGR
/// sequences in their plain form (`ESC [` digits and `;` `m`), nothing
/// else. For whoever shows a log with its colours (the job page).
pub fn sanitize_keeping_sgr(raw: &[u8]) -> String {
    clean_keeping_sgr(Line::new(raw)).into_owned()
}

/// [`sanitize`] without a copy for the common line: valid UTF-8 without
/// control characters (but tabs), which needs no work.
fn clean(line: Line<'_>) -> std::borrow::Cow<'_, str> {
    clean_with(line, false)
}

/// [`clean`], but keeping SGR sequences in their plain form (`ESC [`
/// digits and `;` `m`): what the log writer writes.
fn clean_keeping_sgr(line: Line<'_>) -> std::borrow::Cow<'_, str> {
    clean_with(line, true)
}

fn clean_with(line: Line<'_>, keep_sgr: bool) -> std::borrow::Cow<'_, str> {
    if let Some(text) = line.as_printable() {
        return std::borrow::Cow::Borrowed(text);
    }
    let raw = line.bytes;
    if let Ok(text) = std::str::from_utf8(raw)
        && !has_controls(raw)
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut s = Sanitizer {
        keep_sgr,
        ..Sanitizer::default()
    };
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            s.push(c);
        }
        match chunk.invalid() {
            [] => {}
            [0x9b] => s.push('\u{9b}'),
            _ => s.push(char::REPLACEMENT_CHARACTER),
        }
    }
    std::borrow::Cow::Owned(s.finish())
}

/// Whether valid UTF-8 `text` holds a control character other than tab:
/// C0 and DEL are single bytes; C1 (U+0080 to U+009F) is `0xC2 0x80..0x9F`.
fn has_controls(text: &[u8]) -> bool {
    // A fold without early exit: the compiler turns it into vector code.
    let c0_or_del = text.iter().fold(false, |found, &b| {
        found | ((b < b' ' && b != b'\t') | (b == 0x7f))
    });
    c0_or_del
        || memchr::memchr_iter(0xc2, text)
            .any(|i| text.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)))
}

#[derive(Default)]
enum Escape {
    #[default]
    None,
    /// Just after `ESC`.
    Esc,
    /// After `ESC` and intermediate bytes (`ESC ( B`).
    EscIntermediate,
    /// In a CSI, until its final byte.
    Csi,
    /// In a string sequence (OSC and the like), until BEL or `ESC \`.
    Str,
    /// `ESC` seen inside a string sequence.
    StrEsc,
}

/// The longest SGR sequence kept (its parameters): a real one is short.
const MAX_SGR: usize = 32;

#[derive(Default)]
struct Sanitizer {
    /// Keep SGR sequences in their plain form (the log writer).
    keep_sgr: bool,
    /// The parameters of the CSI being read, while they could be an SGR.
    sgr: Option<String>,
    state: Escape,
    /// Text since the last `\r`.
    current: String,
    /// The last non-blank text before a `\r`.
    kept: String,
}

impl Sanitizer {
    fn push(&mut self, c: char) {
        self.state = match std::mem::take(&mut self.state) {
            Escape::None => return self.text(c),
            Escape::Esc => match c {
                '[' => {
                    self.sgr = self.keep_sgr.then(String::new);
                    Escape::Csi
                }
                ']' | 'P' | 'X' | '^' | '_' => Escape::Str,
                ' '..='/' => Escape::EscIntermediate,
                '0'..='~' => Escape::None,
                // Not a sequence after all: drop the ESC, keep the character.
                _ => return self.text(c),
            },
            Escape::EscIntermediate => match c {
                ' '..='/' => Escape::EscIntermediate,
                '0'..='~' => Escape::None,
                _ => return self.text(c),
            },
            Escape::Csi => match c {
                // Parameter and intermediate bytes.
                '0'..='?' | ' '..='/' => {
                    let sgr_byte = c.is_ascii_digit() || c == ';';
                    match &mut self.sgr {
                        Some(params) if sgr_byte && params.len() < MAX_SGR => params.push(c),
                        _ => self.sgr = None,
                    }
                    Escape::Csi
                }
                '@'..='~' => {
                    if let Some(params) = self.sgr.take()
                        && c == 'm'
                    {
                        self.current.push_str("\x1b[");
                        self.current.push_str(&params);
                        self.current.push('m');
                    }
                    Escape::None
                }
                _ => {
                    self.sgr = None;
                    return self.text(c);
                }
            },
            Escape::Str => match c {
                '\x07' => Escape::None,
                '\x1b' => Escape::StrEsc,
                _ => Escape::Str,
            },
            Escape::StrEsc => match c {
                '\\' => Escape::None,
                '\x1b' => Escape::StrEsc,
                _ => Escape::Str,
            },
        };
    }

    /// A character outside any escape sequence.
    fn text(&mut self, c: char) {
        match c {
            '\x1b' => self.state = Escape::Esc,
            '\u{9b}' => {
                self.sgr = None;
                self.state = Escape::Csi;
            }
            '\r' => {
                if !blank(&self.current) {
                    self.kept = std::mem::take(&mut self.current);
                } else {
                    self.current.clear();
                }
            }
            '\t' => self.current.push(c),
            // C0, DEL and C1 controls.
            c if c.is_control() => {}
            c => self.current.push(c),
        }
    }

    fn finish(self) -> String {
        if blank(&self.current) && !self.kept.is_empty() {
            self.kept
        } else {
            self.current
        }
    }
}

/// Whether cleaned text shows nothing: only spaces and kept SGR sequences.
fn blank(text: &str) -> bool {
    let mut rest = text;
    loop {
        match rest.find('\x1b') {
            None => return rest.trim().is_empty(),
            Some(at) if !rest[..at].trim().is_empty() => return false,
            Some(at) => {
                // A kept sequence always ends with its `m`.
                let after = &rest[at..];
                rest = after.find('m').map_or("", |m| &after[m + 1..]);
            }
        }
    }
}

/// One line from a [`LineSplitter`], without its `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub bytes: &'a [u8],
    /// Known to be printable ASCII and tabs only, from one look at the
    /// whole chunk it came in: such a line needs no cleaning.
    printable: bool,
}

impl<'a> Line<'a> {
    /// A line nothing is known about yet.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            printable: false,
        }
    }

    /// The line as text, if it is printable ASCII and tabs only.
    #[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
    pub fn as_printable(&self) -> Option<&'a str> {
        let printable = self.printable || printable_ascii(self.bytes, b'\t');
        // SAFETY: every byte is printable ASCII or a tab, and ASCII is
        // valid UTF-8.
        printable.then(|| unsafe { std::str::from_utf8_unchecked(self.bytes) })
    }
}

/// Whether `bytes` holds printable ASCII, tabs and `also` only. A fold
/// without early exit: the compiler turns it into vector code.
fn printable_ascii(bytes: &[u8], also: u8) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(b' ') < 95) | (b == b'\t') | (b == also))
    })
}

/// Cuts a byte stream into lines with bounded memory: it holds at most
/// [`MAX_LINE`] bytes, and a longer line comes out in pieces of at most that
/// size, whatever the volume of output.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// `partial` is printable ASCII and tabs only.
    partial_printable: bool,
    mask: SecretMask,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A splitter that never cuts an overlong line inside one of `mask`'s
    /// secrets, so masking each piece still hides it whole.
    pub fn masking(mask: SecretMask) -> Self {
        Self {
            mask,
            ..Self::default()
        }
    }

    /// Takes the next chunk of the stream and hands `emit` each line it
    /// completes, borrowed rather than copied: a line inside the chunk is
    /// never copied at all. A piece cut from an overlong line ends on a
    /// UTF-8 character boundary where it can, so no character is split.
    ///
    /// The whole chunk is looked at once for printable ASCII: then none of
    /// its lines needs a look of its own (see [`Line::as_printable`]).
    pub fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(Line<'_>)) {
        let printable = printable_ascii(chunk, b'\n');
        if self.partial.is_empty() {
            self.partial_printable = true;
        }
        while !chunk.is_empty() {
            if self.partial.len() >= MAX_LINE {
                let whole = Line {
                    bytes: &self.partial,
                    printable: self.partial_printable,
                };
                // Full: the line ends here, at its newline if one follows.
                if chunk[0] == b'\n' {
                    emit(whole);
                    self.partial.clear();
                    self.partial_printable = true;
                    chunk = &chunk[1..];
                } else {
                    let cut = utf8_cut(&self.partial);
                    let cut = self.mask.safe_cut(&self.partial, cut);
                    emit(Line {
                        bytes: &self.partial[..cut],
                        ..whole
                    });
                    self.partial.drain(..cut);
                }
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            match memchr::memchr(b'\n', &chunk[..room.min(chunk.len())]) {
                Some(i) if self.partial.is_empty() => {
                    emit(Line {
                        bytes: &chunk[..i],
                        printable,
                    });
                    chunk = &chunk[i + 1..];
                }
                Some(i) => {
                    self.partial.extend_from_slice(&chunk[..i]);
                    emit(Line {
                        bytes: &self.partial,
                        printable: self.partial_printable && printable,
                    });
                    self.partial.clear();
                    self.partial_printable = true;
                    chunk = &chunk[i + 1..];
                }
                None => {
                    let n = room.min(chunk.len());
                    self.partial.extend_from_slice(&chunk[..n]);
                    self.partial_printable &= printable;
                    chunk = &chunk[n..];
                }
            }
        }
    }

    /// Whether `chunk` would come out of [`LineSplitter::push`] as it is,
    /// line for line: nothing is held from before, it ends with a newline,
    /// and its lines are printable ASCII, none longer than [`MAX_LINE`]. A
    /// caller that passes lines on unchanged can then pass the chunk on
    /// whole, without cutting it up.
    pub fn passes_whole(&self, chunk: &[u8]) -> bool {
        let mut start = 0;
        self.partial.is_empty()
            && chunk.last() == Some(&b'\n')
            && printable_ascii(chunk, b'\n')
            && (chunk.len() <= MAX_LINE
                || memchr::memchr_iter(b'\n', chunk).all(|end| {
                    let whole = end - start <= MAX_LINE;
                    start = end + 1;
                    whole
                }))
    }

    /// Ends the stream: gives the last line if it had no `\n`.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// Where to cut a full buffer so that an incomplete UTF-8 character at its
/// end moves on to the next piece; the whole buffer if there is none.
fn utf8_cut(buf: &[u8]) -> usize {
    // A character is at most 4 bytes: look back at most 3 for its first byte.
    for back in 1..=3.min(buf.len()) {
        let i = buf.len() - back;
        let b = buf[i];
        if b & 0xc0 == 0x80 {
            continue; // continuation byte
        }
        let len = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if len > back { i } else { buf.len() };
    }
    buf.len()
}

#[cfg(test)]
pub(crate) mod tests {

    #[test]
    fn secrets_are_masked_longest_first_and_empty_ones_ignored() {
        let mask = SecretMask::new(["abc".to_owned(), "abcdef".to_owned(), String::new()]);
        assert_eq!(mask.apply("x abcdef y abc z"), "x *** y *** z");
        assert_eq!(mask.apply("nothing here"), "nothing here");
        assert!(SecretMask::new([String::new()]).is_empty());
        let twice = SecretMask::new(["ab", "cd", "ab"].map(String::from));
        assert_eq!(twice.secrets, ["ab", "cd"]);
    }

    #[test]
    fn a_secret_reaches_neither_the_file_nor_the_echo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let echoed = Arc::new(Mutex::new(Vec::new()));
        let mut log = LogWriter::create(&path, Some(Box::new(Shared(echoed.clone()))))
            .unwrap()
            .with_secrets(SecretMask::new(["s3cr3t-value".to_owned()]));
        log.line("test", b"token=s3cr3t-value ok").unwrap();
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(file.ends_with("[test] token=*** ok\n"), "{file}");
        let echoed = String::from_utf8(echoed.lock().unwrap().clone()).unwrap();
        assert!(echoed.ends_with("[test] token=*** ok\n"), "{echoed}");
    }
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamp_is_utc_with_millis() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(at), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn sanitize_removes_colours_and_titles() {
        assert_eq!(sanitize(b"\x1b[31mred\x1b[0m"), "red");
        assert_eq!(sanitize(b"\x1b[1;38;5;196mbold\x1b[m"), "bold");
        assert_eq!(sanitize(b"\x1b]0;my title\x07after"), "after");
        assert_eq!(
            sanitize(b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"),
            "link"
        );
        assert_eq!(sanitize(b"\x1b(Bplain\x1b=x"), "plainx");
        assert_eq!(sanitize(b"\x9b32mgreen\x9b0m"), "green");
        assert_eq!(sanitize(b"a\x1b"), "a");
    }

    /// What the log writer writes for one raw line.
    fn written(raw: &[u8]) -> String {
        clean_keeping_sgr(Line::new(raw)).into_owned()
    }

    #[test]
    fn the_writer_keeps_plain_sgr_and_removes_every_other_escape() {
        assert_eq!(written(b"\x1b[31mred\x1b[0m"), "\x1b[31mred\x1b[0m");
        assert_eq!(
            written(b"\x1b[1;38;5;196mbold\x1b[m"),
            "\x1b[1;38;5;196mbold\x1b[m"
        );
        assert_eq!(written(b"\x1b]0;my title\x07after"), "after");
        assert_eq!(written(b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"), "link");
        assert_eq!(written(b"\x1b(Bplain\x1b=x"), "plainx");
        // Not SGR, or not in its plain form: removed.
        assert_eq!(
            written(b"a\x1b[2Kb\x1b[10;5Hc\x1b[?25ld\x1b[1:3me"),
            "abcde"
        );
        assert_eq!(written(b"\x9b32mgreen\x9b0m"), "green");
        assert_eq!(written(b"a\x1b[31"), "a", "unterminated");
        assert_eq!(written(b"a\x1b"), "a");
        let long = format!("a\x1b[{}mb", "1;".repeat(100));
        assert_eq!(written(long.as_bytes()), "ab", "too long to be a real one");
        assert_eq!(written(b"a\x00b\x07c\x7fd\te"), "abcd\te");
        // A progress bar ending in a reset keeps its last text.
        assert_eq!(
            written(b"50%\r\x1b[32m100%\x1b[0m\r\x1b[0m"),
            "\x1b[32m100%\x1b[0m"
        );
    }

    #[test]
    fn a_secret_spelled_across_colour_codes_is_masked_and_its_line_written_plain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let mut log = LogWriter::create(&path, None)
            .unwrap()
            .with_secrets(SecretMask::new(["s3cr3t".to_owned()]));
        log.line("test", b"x s3\x1b[0mcr3t y").unwrap();
        log.line("test", b"\x1b[32mno secret\x1b[0m").unwrap();
        let file = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = file.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(lines, ["[test] x *** y", "[test] \x1b[32mno secret\x1b[0m"]);
    }

    #[test]
    fn sanitize_removes_controls_but_keeps_tab() {
        assert_eq!(sanitize(b"a\tb"), "a\tb");
        assert_eq!(sanitize(b"a\x00b\x07c\x08d\x7fe\x0bf"), "abcdef");
        assert_eq!(sanitize("a\u{85}b".as_bytes()), "ab");
    }

    #[test]
    fn text_without_controls_is_borrowed_and_c1_controls_are_removed() {
        for plain in ["ascii only", "tab\there", "těst › ✓ 日本", ""] {
            let line = Line::new(plain.as_bytes());
            assert!(
                matches!(clean(line), std::borrow::Cow::Borrowed(t) if t == plain),
                "{plain:?}"
            );
        }
        assert_eq!(sanitize("a\u{80}b\u{9f}c\u{a0}d".as_bytes()), "abc\u{a0}d");
        assert_eq!(sanitize("\u{9b}31mred".as_bytes()), "red");
    }

    #[test]
    fn sanitize_replaces_invalid_utf8_but_keeps_valid() {
        assert_eq!(sanitize(b"a\xffb"), "a\u{FFFD}b");
        // 0x9b inside a valid character is not a CSI.
        assert_eq!(sanitize("těst ›".as_bytes()), "těst ›");
    }

    #[test]
    fn sanitize_keeps_text_after_the_last_carriage_return() {
        assert_eq!(sanitize(b" 10%\r 50%\r100% done"), "100% done");
        assert_eq!(sanitize(b"text\r"), "text");
        assert_eq!(sanitize(b"50%\r100%\r\x1b[K"), "100%");
        assert_eq!(sanitize(b"50%\r  \r"), "50%");
        assert_eq!(sanitize(b"   "), "   ");
        assert_eq!(sanitize(b""), "");
    }

    #[test]
    fn splitter_joins_lines_across_chunks() {
        let mut s = LineSplitter::new();
        assert!(push(&mut s, b"hel").is_empty());
        assert_eq!(push(&mut s, b"lo\nwor"), [b"hello".to_vec()]);
        assert_eq!(push(&mut s, b"ld\n\nlast"), [b"world".to_vec(), Vec::new()]);
        assert_eq!(s.finish(), Some(b"last".to_vec()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_cuts_long_lines_into_max_line_pieces() {
        let mut s = LineSplitter::new();
        let mut pieces = Vec::new();
        let long = vec![b'x'; 200 * 1024];
        for chunk in long.chunks(5000) {
            for p in push(&mut s, chunk) {
                assert!(s.partial.len() <= MAX_LINE);
                pieces.push(p);
            }
        }
        pieces.extend(push(&mut s, b"\nnext\n"));
        let lens: Vec<_> = pieces.iter().map(Vec::len).collect();
        assert_eq!(
            lens,
            [MAX_LINE, MAX_LINE, MAX_LINE, 200 * 1024 - 3 * MAX_LINE, 4]
        );
        assert_eq!(pieces[4], b"next");
    }

    #[test]
    fn a_masking_splitter_moves_its_cut_before_a_secret() {
        let mask = SecretMask::new(["hunter2secret".to_string(), "abc".to_string()]);
        let mut s = LineSplitter::masking(mask.clone());
        let mut line = vec![b'x'; MAX_LINE - 5];
        line.extend_from_slice(b"hunter2secret!\n");
        let pieces: Vec<String> = line
            .chunks(7)
            .flat_map(|c| push(&mut s, c))
            .map(|p| mask.apply(&String::from_utf8(p).unwrap()).into_owned())
            .collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len(), MAX_LINE - 5);
        assert_eq!(pieces[1], "***!");
        assert_eq!(mask.safe_cut(b"xxhunter", 8), 2);
        assert_eq!(mask.safe_cut(b"xxab", 4), 2);
        assert_eq!(
            mask.safe_cut(b"hunter2secret", 13),
            13,
            "masked where it is"
        );
        assert_eq!(mask.safe_cut(b"hunter2secret", 5), 5, "no earlier cut");
        assert_eq!(SecretMask::default().safe_cut(b"xx", 2), 2);
    }

    #[test]
    fn a_safe_cut_keeps_overlapping_secrets_whole() {
        let mask = SecretMask::new(["abcdef".to_string(), "efgh".to_string()]);
        // "ef" may begin "efgh", and moving before it would split "abcdef".
        assert_eq!(mask.safe_cut(b"zzabcdef", 8), 2);
        let mask = SecretMask::new(["abc".to_string(), "cxyz".to_string()]);
        assert_eq!(mask.safe_cut(b"zzabcx", 6), 2);
        // A cut inside a whole secret, with bytes after the cut in the buffer.
        assert_eq!(mask.safe_cut(b"zzabcz", 3), 2);
    }

    #[test]
    fn a_line_is_known_printable_only_when_all_its_chunks_were() {
        let mut s = LineSplitter::new();
        let mut seen = Vec::new();
        let mut push = |s: &mut LineSplitter, chunk: &[u8]| {
            s.push(chunk, |l| seen.push((l.bytes.to_vec(), l.printable)));
        };
        push(&mut s, b"plain\ttab\nstart ");
        push(&mut s, b"\x1b[31mred\n");
        push(&mut s, b"x\nmore ");
        push(&mut s, b"end\n\xff\n");
        assert_eq!(
            seen,
            [
                (b"plain\ttab".to_vec(), true),
                (b"start \x1b[31mred".to_vec(), false),
                (b"x".to_vec(), true),
                (b"more end".to_vec(), false),
                (b"\xff".to_vec(), false),
            ]
        );
        // Unknown is not unclean: each line is then looked at by itself.
        assert_eq!(Line::new(b"more end").as_printable(), Some("more end"));
        assert_eq!(Line::new(b"\x1b[31mred").as_printable(), None);
    }

    #[test]
    fn a_chunk_passes_whole_only_when_splitting_would_not_change_it() {
        let mut s = LineSplitter::new();
        assert!(s.passes_whole(b"one\ttab\ntwo\n"));
        assert!(!s.passes_whole(b"no newline at the end"));
        assert!(!s.passes_whole(b"\x1b[31mred\n"));
        assert!(!s.passes_whole("caf\u{e9}\n".as_bytes()));
        let mut long = vec![b'x'; MAX_LINE];
        long.push(b'\n');
        assert!(s.passes_whole(&long));
        long.insert(0, b'x');
        assert!(!s.passes_whole(&long), "a line longer than MAX_LINE is cut");
        push(&mut s, b"held");
        assert!(!s.passes_whole(b"rest\n"), "a line begun before");
    }

    #[test]
    fn splitter_keeps_a_line_of_exactly_max_line_whole() {
        let mut s = LineSplitter::new();
        let mut pieces = push(&mut s, &vec![b'x'; MAX_LINE]);
        pieces.extend(push(&mut s, b"\ny\n"));
        let lens: Vec<_> = pieces.iter().map(Vec::len).collect();
        assert_eq!(lens, [MAX_LINE, 1]);
    }

    #[test]
    fn splitter_does_not_cut_a_character_in_two() {
        let mut s = LineSplitter::new();
        let mut line = vec![b'x'; MAX_LINE - 1];
        line.extend_from_slice("é".as_bytes());
        line.push(b'\n');
        let pieces = push(&mut s, &line);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len(), MAX_LINE - 1);
        assert_eq!(pieces[1], "é".as_bytes());
    }

    /// The lines `s` completes with `chunk`, copied.
    fn push(s: &mut LineSplitter, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        s.push(chunk, |l| lines.push(l.bytes.to_vec()));
        lines
    }

    /// Checks `2023-11-14T22:13:20.123Z [step] text` by hand.
    pub(crate) fn parse_line(line: &str) -> Option<(&str, &str, &str)> {
        let (ts, rest) = line.split_once(' ')?;
        let shape_ok = ts.len() == 24
            && ts.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                19 => b == b'.',
                23 => b == b'Z',
                _ => b.is_ascii_digit(),
            });
        let (step, text) = rest.strip_prefix('[')?.split_once("] ")?;
        shape_ok.then_some((ts, step, text))
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_note_of_qcis_own_keeps_no_escape_not_even_a_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let mut log = LogWriter::create(&path, None).unwrap();
        log.note("qci", "tar: bad name \x1b[31mred\x1b]0;t\x07 here")
            .unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let (_, tag, line) = parse_line(text.trim_end()).unwrap();
        assert_eq!((tag, line), ("qci", "tar: bad name red here"));
    }

    #[test]
    fn writes_formatted_lines_to_file_and_echo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let echoed = Arc::new(Mutex::new(Vec::new()));
        let mut log = LogWriter::create(&path, Some(Box::new(Shared(echoed.clone())))).unwrap();
        log.line("build", b"\x1b[32mok\x1b[0m").unwrap();
        // Written through: readable before the writer is dropped.
        let text = std::fs::read_to_string(&path).unwrap();
        log.line("test", b"a\xffb").unwrap();
        drop(log);

        assert_eq!(text.lines().count(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            String::from_utf8(echoed.lock().unwrap().clone()).unwrap()
        );
        let lines: Vec<_> = text.lines().map(|l| parse_line(l).unwrap()).collect();
        // The step's colours are kept (see the module's docs).
        assert_eq!((lines[0].1, lines[0].2), ("build", "\x1b[32mok\x1b[0m"));
        assert_eq!((lines[1].1, lines[1].2), ("test", "a\u{FFFD}b"));
        assert!(text.ends_with('\n'));
        assert!(parse_line("2023-11-14 22:13:20.123Z [a] b").is_none());

        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_to_follow_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("job.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let Err(err) = LogWriter::create(&link, None) else {
            panic!("opened a log through a symlink");
        };
        // O_NOFOLLOW's own refusal, not some other failure.
        assert_eq!(err.raw_os_error(), Some(nix::libc::ELOOP), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_echo_does_not_stop_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let mut log = LogWriter::create(&path, Some(Box::new(Broken))).unwrap();
        log.line("a", b"one").unwrap();
        log.line("a", b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
