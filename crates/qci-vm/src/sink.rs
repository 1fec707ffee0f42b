//! Forwards status events to the job's sink. STUB: to be implemented.

use crate::paths::Paths;
use qci_core::StatusEvent;
use qci_core::job_file::JobFile;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Todo(String),
}

/// Delivers `event` to `job.sink`.
pub fn forward(_event: &StatusEvent, _job: &JobFile, _paths: &Paths) -> Result<(), SinkError> {
    todo!()
}
