//! Writes a job's workspace as a tar stream: the only way the code under
//! test reaches dom0, which unpacks it with its hardened unpacker.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot add {path} to the tar stream: {source}")]
    Append {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot finish the tar stream: {0}")]
    Finish(std::io::Error),
}

/// Streams `workspace` as a tar archive to `out`, entries relative to it.
///
/// Entries come in sorted order so the same tree gives the same stream.
/// Symlinks stay symlinks (following one could send files from outside the
/// workspace), and only files, directories and symlinks are sent: dom0's
/// unpacker refuses anything else, so it is skipped here with a warning.
/// Files are copied straight into `out`, never buffered whole.
pub fn export(workspace: &Path, out: impl Write) -> Result<(), ExportError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    // Sparse entries are a GNU extension the unpacker need not understand.
    builder.sparse(false);

    // Depth-first, children pushed in reverse so they pop in sorted order.
    let mut pending = children(workspace, Path::new(""))?;
    pending.reverse();
    while let Some((rel, kind)) = pending.pop() {
        let path = workspace.join(&rel);
        let appended = if kind.is_dir() {
            builder.append_dir(&rel, &path)
        } else if kind.is_file() {
            append_file(&mut builder, &path, &rel)
        } else if kind.is_symlink() {
            builder.append_path_with_name(&path, &rel)
        } else {
            tracing::warn!(path = %path.display(), "not a file, directory or symlink: left out of the export");
            continue;
        };
        appended.map_err(|source| ExportError::Append {
            path: path.clone(),
            source,
        })?;
        if kind.is_dir() {
            let mut inner = children(&path, &rel)?;
            inner.reverse();
            pending.extend(inner);
        }
    }
    builder.finish().map_err(ExportError::Finish)
}

/// Bytes read from a file at a time; the tar crate copies in 8 KiB pieces,
/// which would cost a read syscall each.
const READ_BUFFER: usize = 256 * 1024;

/// One open and one `fstat` per file, where `append_path_with_name` would
/// stat the path twice more. `O_NOFOLLOW`: a file swapped for a symlink
/// since the directory was read is refused rather than followed.
fn append_file(
    builder: &mut tar::Builder<impl Write>,
    path: &Path,
    rel: &Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    let reader = std::io::BufReader::with_capacity(READ_BUFFER.min(meta.len() as usize + 1), file);
    builder.append_data(&mut header, rel, reader)
}

/// The entries of `dir`, as paths under `rel` with their type (from the
/// directory listing, no stat), sorted by name.
fn children(dir: &Path, rel: &Path) -> Result<Vec<(PathBuf, fs::FileType)>, ExportError> {
    let err = |source| ExportError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(err)?
        .map(|entry| entry.and_then(|e| Ok((e.file_name(), e.file_type()?))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries
        .into_iter()
        .map(|(name, kind)| (rel.join(name), kind))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::{Command, Stdio};

    /// A small project: nested dirs, a script, a symlink, an empty dir, a fifo.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("Makefile"), "dev:\n\ttrue\n").unwrap();
        fs::write(root.join("src/deep/data.txt"), "data").unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("Makefile"), fs::Permissions::from_mode(0o644)).unwrap();
        symlink("/etc/passwd", root.join("src/outside")).unwrap();
        symlink("deep/data.txt", root.join("src/link")).unwrap();
        let fifo = Command::new("mkfifo")
            .arg(root.join("fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());
        dir
    }

    #[test]
    fn exports_files_dirs_and_symlinks_in_sorted_order() {
        let dir = tree();
        let mut out = Vec::new();
        export(dir.path(), &mut out).unwrap();

        let mut archive = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().unwrap() & 0o7777;
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push((path, kind, mode, link, body));
        }
        let names: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "Makefile",
                "empty",
                "run.sh",
                "src",
                "src/deep",
                "src/deep/data.txt",
                "src/link",
                "src/outside",
            ]
        );
        let get = |name: &str| seen.iter().find(|s| s.0 == name).unwrap();
        assert_eq!(get("run.sh").1, tar::EntryType::Regular);
        assert_eq!(get("run.sh").2, 0o755);
        assert_eq!(get("Makefile").2, 0o644);
        assert_eq!(get("Makefile").4, "dev:\n\ttrue\n");
        assert_eq!(get("src/deep/data.txt").4, "data");
        assert_eq!(get("empty").1, tar::EntryType::Directory);
        assert_eq!(get("src/link").1, tar::EntryType::Symlink);
        assert_eq!(get("src/link").3.as_deref(), Some("deep/data.txt"));
        assert_eq!(get("src/outside").1, tar::EntryType::Symlink);
        assert_eq!(get("src/outside").3.as_deref(), Some("/etc/passwd"));
        assert_eq!(
            get("src/outside").4,
            "",
            "a symlink must not carry its target's content"
        );
    }

    #[test]
    fn keeps_modification_times() {
        let dir = tree();
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        fs::File::options()
            .write(true)
            .open(dir.path().join("Makefile"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let mut out = Vec::new();
        export(dir.path(), &mut out).unwrap();

        let mut archive = tar::Archive::new(out.as_slice());
        let makefile = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap() == Path::new("Makefile"))
            .unwrap();
        assert_eq!(makefile.header().mtime().unwrap(), 1_700_000_000);
    }

    #[test]
    fn system_tar_reads_the_stream() {
        let dir = tree();
        let mut tar = Command::new("tar")
            .arg("-tf")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        export(dir.path(), tar.stdin.take().unwrap()).unwrap();
        let output = tar.wait_with_output().unwrap();

        assert!(output.status.success());
        let listing = String::from_utf8(output.stdout).unwrap();
        let names: Vec<_> = listing.lines().map(|l| l.trim_end_matches('/')).collect();
        assert_eq!(names.len(), 8, "{listing}");
        assert!(names.contains(&"src/deep/data.txt") && names.contains(&"src/link"));
    }

    #[test]
    fn a_missing_workspace_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = export(&missing, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
