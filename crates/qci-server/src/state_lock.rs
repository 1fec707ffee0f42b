//! One `qci serve` per state dir. Two hosts on one database would each
//! reconcile the other's running jobs as "host restarted", post `error` for
//! them and then refuse their real results, so the second one must stop
//! before it touches anything: it takes this lock first, or exits naming
//! the process that holds it.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
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
    _file: Flock<File>,
}

impl StateLock {
    /// Creates the state dir if needed and takes its lock without waiting.
    pub fn acquire(state_dir: &Path) -> Result<Self, StateLockError> {
        let path = state_dir.join(LOCK_FILE);
        let err = |source| StateLockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                // The holder writes its pid right after locking: an empty
                // file means it is just starting.
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_owned(),
                    p => p.chars().filter(char::is_ascii_digit).take(10).collect(),
                };
                return Err(StateLockError::Held {
                    dir: state_dir.to_owned(),
                    pid,
                });
            }
            Err((_, e)) => return Err(err(e.into())),
        };
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(err)?;
        Ok(Self { _file: file })
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
