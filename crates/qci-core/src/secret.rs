//! The one reader for files holding a secret or a credential (a webhook
//! secret, an operator or GitHub token, a hypervisor's `USER:PASSWORD`).
//!
//! As ssh does with a private key, a file that its group or others may
//! read is refused, with the `chmod` that fixes it: a secret others can
//! read is no longer a secret, and saying so at start beats finding out
//! after it leaked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "secret file {path} is readable by others (mode {mode:04o}); it must be readable by its owner only: chmod 600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
}

/// The secret in `path`, trimmed of surrounding white space. Refused when
/// the file cannot be read, is empty, or has any group or other permission
/// bit (following a symlink: the mode that counts is the file's).
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    let read = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn an_owner_only_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400] {
            let path = file(dir.path(), "  s3cret\n", mode);
            assert_eq!(read_secret(&path).unwrap(), "s3cret");
        }
    }

    #[test]
    fn a_file_group_or_others_may_read_is_refused_with_the_chmod_that_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o610] {
            let path = file(dir.path(), "s3cret", mode);
            let err = read_secret(&path).unwrap_err();
            assert!(matches!(err, SecretError::Exposed { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        }
    }

    #[test]
    fn an_empty_or_missing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), " \n", 0o600);
        assert!(matches!(read_secret(&path), Err(SecretError::Empty { .. })));
        let missing = dir.path().join("none");
        assert!(matches!(
            read_secret(&missing),
            Err(SecretError::Read { .. })
        ));
    }
}
