//! The hardened unpacker for the `qci.Export` tar stream. The dev VM has the
//! network and may be hostile; this is dom0's main line of defence.
//!
//! STUB: to be implemented (see the interface below).

use std::io::Read;
use std::path::Path;

/// Bounds on what one export may create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_total_bytes: u64,
    pub max_entries: u64,
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 4 << 30,
            max_entries: 200_000,
            max_path_len: 4096,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("tar entry {entry:?} refused: {rule}")]
    Refused { entry: String, rule: String },
    #[error("tar stream is not valid: {0}")]
    Io(#[from] std::io::Error),
}

/// Unpacks `stream` into `dest` (an existing, empty directory).
pub fn unpack<R: Read>(_stream: R, _dest: &Path, _limits: &Limits) -> Result<Summary, UnpackError> {
    todo!()
}
