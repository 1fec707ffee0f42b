//! Removing a directory tree whatever its depth.
//!
//! A workspace holds what the dev VM sent and whatever the steps made of it:
//! a step can nest directories far deeper than any path can name. std's
//! `remove_dir_all` keeps one descriptor open per level, so a tree deeper
//! than the open-file limit ("Too many open files") would stay behind and
//! block every later job. Here at most [`OPEN_DIRS`] levels stay open;
//! deeper ones are left through `..`, checked against the device and inode
//! seen on the way down, so nothing outside the tree is ever touched.
//!
//! Directories a step made unreadable (`chmod 000`) are opened up first: the
//! tree belongs to whoever removes it.

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmod, fchmodat, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Levels of the tree kept open below its top; deeper parents are closed
/// and found again through `..` on the way back up.
const OPEN_DIRS: usize = 32;

/// One directory on the way down.
struct Level {
    /// Its name in its parent (empty for the top).
    name: OsString,
    /// Device and inode, to recognise it when coming back through `..`.
    id: (u64, u64),
    fd: Option<OwnedFd>,
    /// Subdirectories still to remove; `None` until it has been read.
    subdirs: Option<Vec<OsString>>,
}

impl Level {
    fn new(name: OsString, fd: OwnedFd) -> io::Result<Self> {
        let stat = fstat(&fd)?;
        // Without write and search permission its entries cannot go.
        if stat.st_mode & 0o700 != 0o700 {
            fchmod(&fd, Mode::from_bits_truncate(stat.st_mode | 0o700))?;
        }
        Ok(Self {
            name,
            id: id(&stat),
            fd: Some(fd),
            subdirs: None,
        })
    }
}

fn id(stat: &FileStat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

/// Removes `path` and everything under it; a path that does not exist is
/// already removed, and a file or symlink is simply unlinked (a symlink is
/// never followed).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => return std::fs::remove_file(path),
        Ok(_) => {}
    }
    let top = open_dir(AT_FDCWD, path.as_os_str())?;
    let mut stack = vec![Level::new(OsString::new(), top)?];
    while let Some(level) = stack.last_mut() {
        let fd = level.fd.as_ref().expect("the deepest level is open");
        let subdirs = match &mut level.subdirs {
            Some(s) => s,
            unread => unread.insert(remove_entries(fd)?),
        };
        if let Some(name) = subdirs.pop() {
            let child = open_subdir(fd, &name)?;
            if stack.len() > OPEN_DIRS {
                stack.last_mut().expect("not empty").fd = None;
            }
            stack.push(Level::new(name, child)?);
            continue;
        }
        // Emptied: remove it from its parent.
        let done = stack.pop().expect("not empty");
        let Some(parent) = stack.last_mut() else {
            drop(done);
            return std::fs::remove_dir(path);
        };
        if parent.fd.is_none() {
            let from = done.fd.as_ref().expect("the deepest level is open");
            let up = open_dir(from, OsStr::new(".."))?;
            if id(&fstat(&up)?) != parent.id {
                return Err(io::Error::other(format!(
                    "{}: a directory was moved while it was being removed",
                    path.display()
                )));
            }
            parent.fd = Some(up);
        }
        let parent_fd = parent.fd.as_ref().expect("just opened");
        unlinkat(parent_fd, done.name.as_os_str(), UnlinkatFlags::RemoveDir)?;
    }
    Ok(())
}

/// Unlinks every entry of `dir` that is not a directory, and returns the
/// names of the directories. All names are read before anything is
/// removed, as removing while reading may skip entries.
fn remove_entries(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut listing = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_owned();
        let is_dir = match entry.file_type() {
            Some(t) => t == Type::Directory,
            // The file system did not say: ask.
            None => {
                let stat = fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
            }
        };
        entries.push((name, is_dir));
    }
    let mut subdirs = Vec::new();
    for (name, is_dir) in entries {
        if is_dir {
            subdirs.push(name);
            continue;
        }
        match unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => subdirs.push(name),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(subdirs)
}

fn open_dir(dir: impl std::os::fd::AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(dir, name, flags, Mode::empty())?)
}

/// Opens the subdirectory `name` of `dir`, first giving its owner back the
/// permission to read it if a step took it away.
fn open_subdir(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    match open_dir(dir, name) {
        Err(e) if e.raw_os_error() == Some(Errno::EACCES as i32) => {
            // `O_NOFOLLOW` above refused a symlink with ELOOP, so this is a
            // directory, and chmod on it follows nothing.
            fchmodat(dir, name, Mode::S_IRWXU, FchmodatFlags::FollowSymlink)?;
            open_dir(dir, name)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use nix::sys::stat::mkdirat;

    /// `depth` nested directories `d` under `top`, made one level at a
    /// time: their path is far longer than any path can be.
    fn nest(top: &Path, depth: usize) {
        let mut dir = open_dir(AT_FDCWD, top.as_os_str()).unwrap();
        for i in 0..depth {
            mkdirat(&dir, "d", Mode::S_IRWXU).unwrap();
            if i % 1000 == 0 {
                std::fs::write(format!("/proc/self/fd/{}/f", fd_num(&dir)), "x").unwrap();
            }
            dir = open_dir(&dir, OsStr::new("d")).unwrap();
        }
    }

    fn fd_num(fd: &OwnedFd) -> i32 {
        use std::os::fd::AsRawFd;
        fd.as_raw_fd()
    }

    #[test]
    fn a_tree_ten_thousand_deep_goes_with_1024_open_files() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, 1024.min(hard), hard).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let top = scratch.path().join("ws");
        std::fs::create_dir(&top).unwrap();
        nest(&top, 10_000);

        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(scratch.path().exists(), "only the tree goes");
    }

    #[test]
    fn files_links_and_locked_directories_go_and_links_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = tempfile::tempdir().unwrap();
        let outside = scratch.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let top = scratch.path().join("ws");
        std::fs::create_dir_all(top.join("a/b/c")).unwrap();
        std::fs::write(top.join("a/b/c/f"), "x").unwrap();
        std::fs::write(top.join("a/g"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("a/link")).unwrap();
        // Locked by a step: no permission at all, twice over.
        std::fs::set_permissions(top.join("a/b/c"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        std::fs::set_permissions(top.join("a/b"), std::fs::Permissions::from_mode(0o000)).unwrap();

        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists(), "a link was followed");
        // Gone already, or a plain file: both fine.
        remove_tree(&top).unwrap();
        std::fs::write(&top, "x").unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
    }
}
