//! One job at a time per dom0: a [`HeldLock`] in the work directory,
//! naming the job that holds it. The kernel drops it when the holder dies,
//! however it dies, so a killed runner never leaves a stale lock behind.

use qci_core::JobId;
use qci_core::lock_file::{HeldLock, LockFileError};
use std::path::Path;

/// Held for the whole run; released on drop or death.
pub struct RunLock {
    _held: HeldLock,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another job ({0}) is running in this dom0; try again when it has finished")]
    Busy(String),
    #[error("cannot open the run lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl RunLock {
    pub fn acquire(path: &Path, job: &JobId) -> Result<Self, LockError> {
        match HeldLock::acquire(path, job.as_str()) {
            Ok(held) => Ok(Self { _held: held }),
            Err(LockFileError::Held(holder)) => Err(LockError::Busy(
                JobId::parse(&holder)
                    .map(|j| j.to_string())
                    .unwrap_or_else(|_| "unknown".into()),
            )),
            Err(LockFileError::Io { path, source }) => Err(LockError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_job_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.lock");
        let first = RunLock::acquire(&path, &JobId::parse("J1").unwrap()).unwrap();
        match RunLock::acquire(&path, &JobId::parse("J2").unwrap()) {
            Err(LockError::Busy(holder)) => assert_eq!(holder, "J1"),
            other => panic!("expected Busy, got {:?}", other.err()),
        }
        drop(first);
        RunLock::acquire(&path, &JobId::parse("J2").unwrap()).unwrap();
    }
}
