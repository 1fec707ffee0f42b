//! The job log: one line per output line, `2026-11-22T10:15:00.123Z [step] text`,
//! stamped on arrival, cleaned of terminal escapes and invalid UTF-8, and
//! written through as it comes so a killed run still leaves its log.
//!
//! STUB: to be implemented (see the interface below).

use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

/// Writes log lines to the log file and, optionally, echoes them (dom0's stdout).
pub struct LogWriter {
    _file: std::fs::File,
    _echo: Option<Box<dyn Write + Send>>,
}

impl LogWriter {
    /// Creates (truncating) the log file at `path`.
    pub fn create(_path: &Path, _echo: Option<Box<dyn Write + Send>>) -> io::Result<Self> {
        todo!()
    }

    /// Writes one line for `step`; `raw` is one output line without its newline.
    pub fn line(&mut self, _step: &str, _raw: &[u8]) -> io::Result<()> {
        todo!()
    }
}

/// `2026-11-22T10:15:00.123Z`.
pub fn timestamp(_at: SystemTime) -> String {
    todo!()
}

/// Removes ANSI escape sequences and other control characters (tab is kept)
/// and replaces invalid UTF-8.
pub fn sanitize(_raw: &[u8]) -> String {
    todo!()
}
