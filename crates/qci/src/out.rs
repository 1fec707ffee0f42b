//! Product output on stdout, written in one place so that two things hold
//! for every subcommand:
//!
//! - a reader that went away (`qci jobs list | head -n1`) is not an error:
//!   the rest of the output is dropped, the command goes on to its end (a
//!   job still frees its machine) and exits with its own code, quietly;
//! - text that came from elsewhere (the server, the store, a hypervisor)
//!   is shown without its control characters when stdout is a terminal, so
//!   a hostile ref cannot retitle or clear the operator's terminal.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Set once a write found the reader gone.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// The first other write error, reported once at the end.
static FAILED: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// Writes `bytes` to stdout and flushes, handling a broken pipe.
pub fn write(bytes: &[u8]) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
        } else {
            let mut failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
            failed.get_or_insert(e);
        }
    }
}

/// One line of output.
pub fn line(args: std::fmt::Arguments<'_>) {
    write(format!("{args}\n").as_bytes());
}

/// `println!` through [`line`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}
pub(crate) use outln;

fn stdout_is_terminal() -> bool {
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stdout().is_terminal())
}

/// Text from elsewhere as stdout may show it: cleaned on a terminal
/// ([`qci_core::status::clean_line`]), as it is otherwise (a script reading
/// the output gets the data).
pub fn remote(text: &str) -> Cow<'_, str> {
    shown(text, stdout_is_terminal())
}

/// The same for stderr.
pub fn remote_err(text: &str) -> Cow<'_, str> {
    shown(text, std::io::stderr().is_terminal())
}

fn shown(text: &str, on_terminal: bool) -> Cow<'_, str> {
    if on_terminal {
        qci_core::status::clean_line(text).into()
    } else {
        text.into()
    }
}

/// Stdout failed otherwise than by its reader closing: the output is
/// incomplete, whatever the command did.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the output: {0}")]
pub struct OutputError(#[source] std::io::Error);

/// Once a command is done: whether all of its output went through
/// [`write`].
pub fn finish() -> Result<(), OutputError> {
    match FAILED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(e) => Err(OutputError(e)),
        None => Ok(()),
    }
}
