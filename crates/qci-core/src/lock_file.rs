//! An `flock` held for a process's whole life, in a file that names its
//! holder: one dom0 runner at a time, one `qci serve` per state dir. The
//! kernel drops the lock when the holder dies, however it dies, so a crash
//! never leaves a stale lock; the name is only for the next one's message.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The most of a holder's name that is read back: it is only said.
const MAX_HOLDER: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    /// Someone holds it; what the file names (unchecked text: the caller
    /// validates it before it says it).
    #[error("held by {0:?}")]
    Held(String),
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held until dropped.
#[derive(Debug)]
pub struct HeldLock {
    _file: Flock<File>,
}

impl HeldLock {
    /// Takes the lock at `path` without waiting, and writes `holder` in it.
    pub fn acquire(path: &Path, holder: &str) -> Result<Self, LockFileError> {
        let io = |source| LockFileError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(LockFileError::Held(read_holder(&mut file)));
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()))
            .map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// Who holds the lock at `path` now, if anyone does.
pub fn held_by(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => Some(read_holder(&mut file)),
        Err(_) => None,
    }
}

fn read_holder(file: &mut File) -> String {
    let mut holder = String::new();
    let _ = Read::by_ref(file)
        .take(MAX_HOLDER)
        .read_to_string(&mut holder);
    holder.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holder_named_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        assert_eq!(held_by(&path), None);
        let first = HeldLock::acquire(&path, "first").unwrap();
        assert_eq!(held_by(&path).as_deref(), Some("first"));
        match HeldLock::acquire(&path, "second") {
            Err(LockFileError::Held(holder)) => assert_eq!(holder, "first"),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert_eq!(held_by(&path), None);
        let _second = HeldLock::acquire(&path, "second").unwrap();
        assert_eq!(held_by(&path).as_deref(), Some("second"));
    }
}
