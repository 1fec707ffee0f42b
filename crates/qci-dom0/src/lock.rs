//! One job at a time per dom0. The lock is an `flock` on a file in the work
//! directory: the kernel drops it when the holder dies, however it dies, so a
//! killed runner never leaves a stale lock behind.

use nix::fcntl::{Flock, FlockArg};
use qci_core::JobId;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

/// Held for the whole run; released on drop or death.
pub struct RunLock {
    _file: Flock<File>,
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
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = Read::by_ref(&mut file).take(64).read_to_string(&mut holder);
                let holder = JobId::parse(holder.trim())
                    .map(|j| j.to_string())
                    .unwrap_or_else(|_| "unknown".into());
                return Err(LockError::Busy(holder));
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        // Name the holder for the next caller's refusal message.
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(job.as_str().as_bytes()).map_err(io)?;
        Ok(Self { _file: file })
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
