//! One `qci serve` per state dir. Two hosts on one database would each
//! reconcile the other's running jobs as "host restarted", post `error` for
//! them and then refuse their real results, so the second one must stop
//! before it touches anything: it takes this lock first, or exits naming
//! the process that holds it.

use qci_core::lock_file::{HeldLock, LockFileError};
use std::path::{Path, PathBuf};

/// The lock file's name in the state dir; it holds the holder's pid.
pub const LOCK_FILE: &str = "serve.lock";

#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    #[error(
        "another qci serve (pid {pid}) is using {dir}: stop it first, or give this one a state_dir of its own"
    )]
    Held { dir: PathBuf, pid: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for the whole life of the server; the kernel releases it when the
/// process ends, however it ends, so a crash leaves no stale lock.
#[derive(Debug)]
pub struct StateLock {
    _held: HeldLock,
}

impl StateLock {
    /// Creates the state dir if needed and takes its lock without waiting.
    pub fn acquire(state_dir: &Path) -> Result<Self, StateLockError> {
        let path = state_dir.join(LOCK_FILE);
        std::fs::create_dir_all(state_dir).map_err(|source| StateLockError::Io {
            path: path.clone(),
            source,
        })?;
        match HeldLock::acquire(&path, &std::process::id().to_string()) {
            Ok(held) => Ok(Self { _held: held }),
            Err(LockFileError::Held(holder)) => {
                // The holder writes its pid right after locking: an empty
                // file means it is just starting.
                let pid: String = holder.chars().filter(char::is_ascii_digit).collect();
                Err(StateLockError::Held {
                    dir: state_dir.to_owned(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid
                    },
                })
            }
            Err(LockFileError::Io { path, source }) => Err(StateLockError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path()).unwrap();
        match StateLock::acquire(dir.path()) {
            Err(StateLockError::Held { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        StateLock::acquire(dir.path()).unwrap();
    }
}
