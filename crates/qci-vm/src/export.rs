//! Writes a job's code as a tar stream: the only way the code under test
//! reaches dom0, which unpacks it with its hardened unpacker.
//!
//! Two sources: a whole directory (a clone checked out at the commit), or
//! the files a list names under a root (a working tree as git lists it),
//! read where they are: no copy is made first. Either way every file is
//! reached through directory descriptors opened with `O_NOFOLLOW`, so a
//! path that became a symlink since it was listed cannot lead outside the
//! tree, and a file is checked before and after it is read, as `tar -c`
//! does: one that changed while it was being sent stops the export with an
//! error rather than sending something no version of the tree had. A file
//! removed since it was listed is left out, as a commit without it would.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use qci_core::pipeline::FILE_NAME;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Names the user: in an emulated machine started by root the qubes
    /// run as `nobody` (or SUDO_UID's user), not as whoever owns the files.
    #[error("{user}, who runs this qube's qci.Export, cannot read {path}: {source}")]
    Read {
        user: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} changed while it was being sent: run the job again")]
    Changed(PathBuf),
    #[error("cannot add {path} to the tar stream: {source}")]
    Append {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot finish the tar stream: {0}")]
    Finish(std::io::Error),
}

/// Streams all of `workspace` as a tar archive to `out`, entries relative to
/// it, in sorted order so the same tree gives the same stream.
pub fn export(workspace: &Path, out: impl Write) -> Result<(), ExportError> {
    let mut sender = Sender::new(out);
    let root = open_dir(AT_FDCWD, workspace.as_os_str()).map_err(|e| read_error(workspace, e))?;
    sender.tree(root, PathBuf::new())?;
    sender.finish()
}

/// Streams the files that `list` names under `root`: relative paths, each
/// ended by a NUL, as `git ls-files -z` prints them. Their directories come
/// too, each before its first file; a listed directory (a nested
/// repository) is sent whole. Names that are not plain relative paths are
/// refused.
///
/// With `pipeline`, that file is sent as the tree's `.qci.toml` and the
/// tree's own is left out: how `qci-vm run -- COMMAND` has dom0 run the
/// command through the one path dom0 has for steps (its `.qci.toml`
/// parser), without touching the user's checkout or copying it.
pub fn export_listed(
    root: &Path,
    list: &[u8],
    pipeline: Option<&Path>,
    out: impl Write,
) -> Result<(), ExportError> {
    let mut paths: Vec<&[u8]> = list.split(|&b| b == 0).filter(|p| !p.is_empty()).collect();
    // Byte order keeps each directory's entries together, after it.
    paths.sort_unstable();
    paths.dedup();
    let mut sender = Sender::new(out);
    let root_fd = open_dir(AT_FDCWD, root.as_os_str()).map_err(|e| read_error(root, e))?;
    if let Some(file) = pipeline {
        // However the list spells it (`./.qci.toml`), the tree's own goes.
        paths.retain(|p| {
            let parts = Path::new(OsStr::from_bytes(p)).iter().filter(|p| *p != ".");
            parts.ne([OsStr::new(FILE_NAME)])
        });
        let (dir, name) = match (file.parent(), file.file_name()) {
            (Some(dir), Some(name)) => (dir, name),
            _ => {
                return Err(read_error(file, std::io::Error::other("not a file's path")));
            }
        };
        let dir_fd = open_dir(AT_FDCWD, dir.as_os_str()).map_err(|e| read_error(dir, e))?;
        let stat = fstatat(&dir_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| read_error(file, e))?;
        if kind(&stat) != SFlag::S_IFREG {
            return Err(read_error(
                file,
                std::io::Error::other("not a regular file"),
            ));
        }
        sender.file(&dir_fd, name, Path::new(FILE_NAME), &stat)?;
    }
    // The directories on the last path, open, from `root` down.
    let mut open: Vec<(&OsStr, OwnedFd)> = Vec::new();
    'paths: for raw in paths {
        let rel = Path::new(OsStr::from_bytes(raw));
        let parts: Vec<&OsStr> = rel.iter().filter(|p| *p != ".").collect();
        if rel.is_absolute() || parts.iter().any(|p| *p == "..") || parts.is_empty() {
            return Err(read_error(
                rel,
                std::io::Error::other("not a relative path in the tree"),
            ));
        }
        let (name, dirs) = parts.split_last().expect("not empty");
        let same = open
            .iter()
            .zip(dirs)
            .take_while(|((a, _), b)| a == *b)
            .count();
        open.truncate(same);
        for dir in &dirs[same..] {
            let parent = open.last().map_or(&root_fd, |(_, fd)| fd);
            let fd = match open_dir(parent, dir) {
                Ok(fd) => fd,
                // Removed, or replaced by a file or a symlink, since it was
                // listed: nothing of it is sent.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue 'paths,
                Err(e) => return Err(read_error(rel, e)),
            };
            let dir_rel: PathBuf = open.iter().map(|(n, _)| *n).chain([*dir]).collect();
            sender.directory(&fd, &dir_rel)?;
            open.push((dir, fd));
        }
        let parent = open.last().map_or(&root_fd, |(_, fd)| fd);
        sender.entry(parent, name, parts.iter().collect())?;
    }
    sender.finish()
}

/// Bytes read from a file at a time.
const READ_BUFFER: usize = 256 * 1024;

/// The tar stream being written, and a buffer kept from file to file.
struct Sender<W: Write> {
    builder: tar::Builder<W>,
    buf: Vec<u8>,
}

impl<W: Write> Sender<W> {
    fn new(out: W) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        // Sparse entries are a GNU extension the unpacker need not understand.
        builder.sparse(false);
        Self {
            builder,
            buf: vec![0; READ_BUFFER],
        }
    }

    fn finish(mut self) -> Result<(), ExportError> {
        self.builder.finish().map_err(ExportError::Finish)
    }

    /// `name` in `parent`, whatever it is: a file, a symlink, or a directory
    /// and everything in it. Only those are sent: dom0's unpacker refuses
    /// anything else, so it is left out here with a warning.
    fn entry(&mut self, parent: &impl AsFd, name: &OsStr, rel: PathBuf) -> Result<(), ExportError> {
        let stat = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(read_error(&rel, e)),
        };
        match kind(&stat) {
            SFlag::S_IFREG => self.file(parent, name, &rel, &stat),
            SFlag::S_IFLNK => {
                let target = readlinkat(parent, name).map_err(|e| read_error(&rel, e))?;
                let mut header = header(&stat, tar::EntryType::Symlink, 0);
                self.builder
                    .append_link(&mut header, &rel, Path::new(&target))
                    .map_err(|source| append_error(&rel, source))
            }
            SFlag::S_IFDIR => match open_dir(parent, name) {
                Ok(fd) => {
                    self.directory(&fd, &rel)?;
                    self.tree(fd, rel)
                }
                Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(read_error(&rel, e)),
            },
            _ => {
                tracing::warn!(path = %rel.display(), "not a file, directory or symlink: left out of the export");
                Ok(())
            }
        }
    }

    /// Everything in directory `dir` (at `rel`), depth first, in sorted order.
    fn tree(&mut self, dir: OwnedFd, rel: PathBuf) -> Result<(), ExportError> {
        let mut dir = Dir::from_fd(dir).map_err(|e| read_error(&rel, e))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| read_error(&rel, e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable();
        for name in names {
            let child = rel.join(&name);
            self.entry(&dir, &name, child)?;
        }
        Ok(())
    }

    fn directory(&mut self, dir: &OwnedFd, rel: &Path) -> Result<(), ExportError> {
        let stat = fstat(dir).map_err(|e| read_error(rel, e))?;
        let mut header = header(&stat, tar::EntryType::Directory, 0);
        self.builder
            .append_data(&mut header, rel, std::io::empty())
            .map_err(|source| append_error(rel, source))
    }

    /// A regular file, read through a descriptor opened without following
    /// a symlink: exactly the size it had when opened, and unchanged
    /// afterwards, or the export stops.
    fn file(
        &mut self,
        parent: &impl AsFd,
        name: &OsStr,
        rel: &Path,
        seen: &FileStat,
    ) -> Result<(), ExportError> {
        // Non-blocking: if it became a fifo since, opening must not wait.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ELOOP) => return Err(ExportError::Changed(rel.to_owned())),
            Err(e) => return Err(read_error(rel, e)),
        };
        let before = fstat(&fd).map_err(|e| read_error(rel, e))?;
        if kind(&before) != SFlag::S_IFREG
            || (before.st_dev, before.st_ino) != (seen.st_dev, seen.st_ino)
        {
            return Err(ExportError::Changed(rel.to_owned()));
        }
        let size = u64::try_from(before.st_size).unwrap_or(0);
        // The header first (it handles long names), then the data and its
        // padding written here, so that exactly `size` bytes are sent.
        let mut header = header(&before, tar::EntryType::Regular, size);
        let append = |e| append_error(rel, e);
        self.builder
            .append_data(&mut header, rel, std::io::empty())
            .map_err(append)?;
        let mut file = std::fs::File::from(fd);
        let out = self.builder.get_mut();
        let mut left = size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => return Err(ExportError::Changed(rel.to_owned())),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(rel, e)),
            };
            out.write_all(&self.buf[..n]).map_err(append)?;
            left -= n as u64;
        }
        let after = fstat(&file).map_err(|e| read_error(rel, e))?;
        let same = |s: &FileStat| {
            (
                s.st_size,
                s.st_mtime,
                s.st_mtime_nsec,
                s.st_ctime,
                s.st_ctime_nsec,
            )
        };
        if same(&after) != same(&before) {
            return Err(ExportError::Changed(rel.to_owned()));
        }
        let padding = (512 - size % 512) % 512;
        out.write_all(&[0; 512][..padding as usize]).map_err(append)
    }
}

/// A GNU header for an entry of `kind` with `stat`'s mode and mtime.
fn header(stat: &FileStat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(size);
    header
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// Opens directory `name` in `parent`, never through a symlink.
fn open_dir(parent: impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(parent, name, flags, Mode::empty())
}

/// A read error, naming the user who could not read.
pub fn read_error(path: &Path, e: impl Into<std::io::Error>) -> ExportError {
    let uid = nix::unistd::geteuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    ExportError::Read {
        user,
        path: path.to_owned(),
        source: e.into(),
    }
}

fn append_error(path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Append {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
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

        let seen = entries(&out);
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

    /// (path, type, mode, link, body) of each entry of a stream.
    fn entries(stream: &[u8]) -> Vec<(String, tar::EntryType, u32, Option<String>, String)> {
        let mut archive = tar::Archive::new(stream);
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
        seen
    }

    fn listed(root: &Path, names: &[&str]) -> Result<Vec<u8>, ExportError> {
        let list: Vec<u8> = names.iter().flat_map(|n| n.bytes().chain([0])).collect();
        let mut out = Vec::new();
        export_listed(root, &list, None, &mut out).map(|()| out)
    }

    #[test]
    fn a_generated_pipeline_is_sent_as_the_trees_qci_toml_in_place_of_its_own() {
        let dir = tree();
        let root = dir.path();
        fs::write(root.join(FILE_NAME), "[[steps]]\nname = \"own\"\n").unwrap();
        let other = tempfile::tempdir().unwrap();
        let generated = other.path().join("j.pipeline.toml");
        fs::write(&generated, "generated").unwrap();
        let list = b"Makefile\0./.qci.toml\0.qci.toml\0";
        let mut out = Vec::new();
        export_listed(root, list, Some(&generated), &mut out).unwrap();
        let seen = entries(&out);
        let names: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, [FILE_NAME, "Makefile"], "the tree's own left out");
        assert_eq!(seen[0].4, "generated");
        assert_eq!(
            fs::read_to_string(root.join(FILE_NAME)).unwrap(),
            "[[steps]]\nname = \"own\"\n",
            "the checkout is not touched"
        );

        let link = other.path().join("link.toml");
        std::os::unix::fs::symlink(&generated, &link).unwrap();
        let err = export_listed(root, list, Some(&link), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_list_sends_its_files_with_their_directories_and_nothing_else() {
        let dir = tree();
        let root = dir.path();
        fs::write(root.join("ignored.log"), "not listed").unwrap();
        fs::create_dir_all(root.join("nested/.git")).unwrap();
        fs::write(root.join("nested/.git/HEAD"), "ref").unwrap();
        fs::write(root.join("nested/code.rs"), "fn main() {}").unwrap();
        let out = listed(
            root,
            &[
                "src/link",
                "run.sh",
                "Makefile",
                "src/deep/data.txt",
                "gone.txt",
                "nested/",
                "run.sh",
            ],
        )
        .unwrap();
        let seen = entries(&out);
        let names: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "Makefile",
                "nested",
                "nested/.git",
                "nested/.git/HEAD",
                "nested/code.rs",
                "run.sh",
                "src",
                "src/deep",
                "src/deep/data.txt",
                "src/link",
            ],
            "listed, sorted, once each; a listed file that is gone is left out"
        );
        let get = |name: &str| seen.iter().find(|s| s.0 == name).unwrap();
        assert_eq!(get("run.sh").2, 0o755);
        assert_eq!(get("Makefile").4, "dev:\n\ttrue\n");
        assert_eq!(get("src").1, tar::EntryType::Directory);
        assert_eq!(get("src/link").3.as_deref(), Some("deep/data.txt"));
    }

    #[test]
    fn a_listed_path_through_a_symlink_sends_nothing_from_outside() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "private key").unwrap();
        let dir = tempfile::tempdir().unwrap();
        // `d/secret` was a file in the tree when it was listed; `d` is now a
        // symlink to a directory outside.
        symlink(outside.path(), dir.path().join("d")).unwrap();
        let seen = entries(&listed(dir.path(), &["d/secret"]).unwrap());
        assert!(seen.is_empty(), "{seen:?}");
        // Listed itself, the symlink is sent as a symlink.
        let seen = entries(&listed(dir.path(), &["d"]).unwrap());
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, tar::EntryType::Symlink);
    }

    #[test]
    fn a_name_that_is_not_a_relative_path_in_the_tree_is_refused() {
        let dir = tree();
        for bad in ["/etc/passwd", "../x", "src/../../x"] {
            let err = listed(dir.path(), &[bad]).unwrap_err();
            assert!(
                err.to_string().contains("not a relative path"),
                "{bad}: {err}"
            );
        }
    }

    /// Appends to `file` on every write: the file changes while it is sent.
    struct Growing(PathBuf, Vec<u8>);

    impl Write for Growing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut f = fs::OpenOptions::new().append(true).open(&self.0).unwrap();
            f.write_all(b"more").unwrap();
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_file_that_changes_while_it_is_sent_stops_the_export() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), "first version").unwrap();
        let out = Growing(dir.path().join("a.txt"), Vec::new());
        let err = export_listed(dir.path(), b"a.txt\0", None, out).unwrap_err();
        assert!(matches!(err, ExportError::Changed(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "a.txt changed while it was being sent: run the job again"
        );
    }

    #[test]
    fn long_names_and_large_files_reach_system_tar_whole() {
        let dir = tempfile::tempdir().unwrap();
        let deep = "a-rather-long-directory-name/".repeat(6);
        fs::create_dir_all(dir.path().join(&deep)).unwrap();
        let big: Vec<u8> = (0..READ_BUFFER * 2 + 777)
            .map(|i| (i % 251) as u8)
            .collect();
        let name = format!("{deep}big.bin");
        fs::write(dir.path().join(&name), &big).unwrap();
        let out = listed(dir.path(), &[&name]).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(dest.path())
            .arg("-xf")
            .arg("-")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        tar.stdin.take().unwrap().write_all(&out).unwrap();
        assert!(tar.wait().unwrap().success());
        assert_eq!(fs::read(dest.path().join(&name)).unwrap(), big);
    }
}
