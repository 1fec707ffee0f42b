//! Writes a job's workspace as a tar stream. STUB: to be implemented.

use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Streams `workspace` as a tar archive to `out`, entries relative to it.
pub fn export(_workspace: &Path, _out: impl Write) -> Result<(), ExportError> {
    todo!()
}
