//! The hardened unpacker for the `qci.Export` tar stream. The dev VM has the
//! network and may be hostile; this is dom0's main line of defence.
//!
//! The stream is consumed as it arrives (it is a pipe from `qvm-run`): each
//! file is copied from its entry straight to disk, and memory stays bounded
//! whatever the archive holds. The tar crate only parses headers here; every
//! write goes through directory file descriptors opened with `O_NOFOLLOW`, so
//! the kernel itself refuses to follow a symlink on the way, and the checks
//! below only have to decide what is allowed, not how to avoid being fooled.
//!
//! Directories keep at least `u+rwx`, whatever the archive says, so that the
//! caller can always delete the tree and unpacking can always continue.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use tar::{Archive, Entry, EntryType, PaxExtensions};

/// Bounds on what one export may create. A hostile dev VM could otherwise
/// fill dom0's disk or inode table; the defaults are far above what a source
/// checkout needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Sum of the sizes of all entries, as declared and as written.
    pub max_total_bytes: u64,
    /// Number of archive members, directories and symlinks included.
    pub max_entries: u64,
    /// Length in bytes of an entry's path and of a symlink's target.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 4 << 30,
            max_entries: 200_000,
            max_path_len: 4096,
        }
    }
}

/// What was unpacked, for the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Archive members seen (including `./` and pax global headers).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Why unpacking stopped. In every case `dest` may hold a partial tree that
/// the caller must delete.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive asked for something the rules forbid: the dev VM sent it,
    /// so it is reported, never worked around.
    #[error("tar entry {entry:?} refused: {rule}")]
    Refused { entry: String, rule: String },
    /// The stream itself is broken (truncated, bad header, bad checksum).
    #[error("tar stream is not valid: {0}")]
    Io(#[from] std::io::Error),
    /// dom0's own disk failed (full, read-only...): a CI error, not the dev
    /// VM's fault, so it is kept apart from `Io`.
    #[error("cannot write {path:?} in the destination: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// How much may follow the end-of-archive marker. GNU tar pads to 10 KiB;
/// reading the padding lets the writer exit cleanly instead of on SIGPIPE.
const TRAILER_MAX: u64 = 1 << 20;
/// Room in a pax header for records other than `path` and `linkpath`.
const PAX_EXTRA: u64 = 64 << 10;
/// Memory for directory mtimes kept until the end; past it, later directory
/// mtimes are set at once (possibly disturbed by later entries, never unsafe).
const DIR_TIMES_BUDGET: usize = 16 << 20;
/// Directories kept open between entries: far below the usual limit of 1024
/// open files; deeper ones are opened for each entry.
const OPEN_DIRS: usize = 64;

/// Unpacks `stream` into `dest` (an existing, empty directory).
///
/// On success the stream has been read to its end, so the process writing it
/// can be waited for. On error, stop reading and delete `dest`.
pub fn unpack<R: Read>(stream: R, dest: &Path, limits: &Limits) -> Result<Summary, UnpackError> {
    let root = openat(
        AT_FDCWD,
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| write_error(&dest.display().to_string(), e))?;
    let mut unpacker = Unpacker {
        root,
        limits,
        summary: Summary::default(),
        declared: 0,
        dir_times: Vec::new(),
        dir_times_bytes: 0,
        open: Vec::new(),
        buf: vec![0; COPY_BUFFER],
    };
    // Headers are 512 bytes and file data is copied 8 KiB at a time: read
    // the pipe a pipe's worth at a time instead.
    let mut archive = Archive::new(EofAware {
        inner: io::BufReader::with_capacity(64 << 10, stream),
        eof: false,
    });

    // Raw mode: the tar crate's own folding of GNU long names and pax headers
    // reads them whole into memory, however large the header claims to be.
    // Folding here caps them by the limits before reading.
    let mut pending = Pending::default();
    for entry in archive.entries()?.raw(true) {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let label = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        let long_cap = (limits.max_path_len as u64).saturating_add(1);
        if kind.is_gnu_longname() {
            if pending.path.is_some() {
                return Err(invalid("two GNU long names for one entry"));
            }
            let rule = format!("path longer than {} bytes", limits.max_path_len);
            pending.path = Some(read_extension(&mut entry, long_cap, label, rule)?);
        } else if kind.is_gnu_longlink() {
            if pending.link.is_some() {
                return Err(invalid("two GNU long link names for one entry"));
            }
            let rule = format!("symlink target longer than {} bytes", limits.max_path_len);
            pending.link = Some(read_extension(&mut entry, long_cap, label, rule)?);
        } else if kind.is_pax_local_extensions() {
            if pending.pax {
                return Err(invalid("two pax headers for one entry"));
            }
            let cap = (limits.max_path_len as u64)
                .saturating_mul(2)
                .saturating_add(PAX_EXTRA);
            let rule = format!("pax header larger than {cap} bytes");
            let data = read_extension(&mut entry, cap, label, rule)?;
            pending.fold_pax(&data)?;
        } else if kind.is_pax_global_extensions() {
            // Global defaults (charset, comment): nothing we would honour.
            unpacker.count(&label)?;
        } else {
            unpacker.entry(&mut entry, std::mem::take(&mut pending))?;
        }
    }
    if pending != Pending::default() {
        return Err(invalid("extension header at the end of the archive"));
    }

    let mut rest = archive.into_inner();
    if rest.eof {
        return Err(invalid("stream ended without the end-of-archive marker"));
    }
    let trailer = io::copy(&mut (&mut rest).take(TRAILER_MAX + 1), &mut io::sink())?;
    if trailer > TRAILER_MAX {
        return Err(refused(
            "(end of archive)",
            "more than 1 MiB of data after the end of the archive",
        ));
    }
    unpacker.finish()
}

struct Unpacker<'l> {
    root: OwnedFd,
    limits: &'l Limits,
    summary: Summary,
    declared: u64,
    dir_times: Vec<(PathBuf, TimeSpec)>,
    dir_times_bytes: usize,
    /// The directories on the last entry's parent path, open, from dest
    /// down (at most [`OPEN_DIRS`]).
    open: Vec<(std::ffi::OsString, OwnedFd)>,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn count(&mut self, label: &str) -> Result<(), UnpackError> {
        self.summary.entries += 1;
        if self.summary.entries > self.limits.max_entries {
            return Err(refused(
                label,
                &format!("more than {} entries", self.limits.max_entries),
            ));
        }
        Ok(())
    }

    fn add_bytes(total: &mut u64, n: u64, max: u64, label: &str) -> Result<(), UnpackError> {
        *total = total.saturating_add(n);
        if *total > max {
            return Err(refused(label, &format!("more than {max} bytes in total")));
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut Entry<R>,
        pending: Pending,
    ) -> Result<(), UnpackError> {
        let raw_path = match pending.path {
            Some(path) => path,
            None => entry.header().path_bytes().into_owned(),
        };
        let label = String::from_utf8_lossy(&raw_path).into_owned();
        self.count(&label)?;

        let kind = entry.header().entry_type();
        let rule = match kind {
            EntryType::Regular | EntryType::Directory | EntryType::Symlink => None,
            EntryType::Link => Some("hard links are not allowed".to_owned()),
            EntryType::Char => Some("character devices are not allowed".to_owned()),
            EntryType::Block => Some("block devices are not allowed".to_owned()),
            EntryType::Fifo => Some("fifos are not allowed".to_owned()),
            other => Some(format!(
                "entry type {:?} is not allowed",
                char::from(other.as_byte())
            )),
        };
        if let Some(rule) = rule {
            return Err(refused(&label, &rule));
        }
        if pending.sparse {
            return Err(refused(&label, "sparse files are not supported"));
        }
        if pending.size.is_some_and(|size| size != entry.size()) {
            return Err(refused(&label, "pax size records are not supported"));
        }
        let parts = split_path(&raw_path, self.limits.max_path_len)
            .map_err(|rule| refused(&label, &rule))?;

        let size = entry.size();
        Self::add_bytes(
            &mut self.declared,
            size,
            self.limits.max_total_bytes,
            &label,
        )?;
        let mode = entry.header().mode()? & 0o777;
        let mtime = entry.header().mtime()?;
        let mtime = i64::try_from(mtime).map_err(|_| refused(&label, "mtime out of range"))?;
        let mtime = TimeSpec::new(mtime, 0);

        let Some((name, parents)) = parts.split_last() else {
            // `./`, as in `tar -C dir -c .`: dest itself belongs to the caller.
            return match kind {
                EntryType::Directory => Ok(()),
                _ => Err(refused(&label, "empty path")),
            };
        };
        // Symlink targets are checked before anything touches the disk.
        let target = match pending.link {
            Some(link) => link,
            None => entry
                .header()
                .link_name_bytes()
                .map(Cow::into_owned)
                .unwrap_or_default(),
        };
        if kind == EntryType::Symlink {
            check_link_target(&target, parents.len(), self.limits.max_path_len)
                .map_err(|rule| refused(&label, &rule.to_string()))?;
        }
        let deep = self.open_dir(parents, &label)?;
        let parent = reached(&deep, &self.open, &self.root);
        // Each entry is created without a look first, since its name is
        // almost always new: creating never follows or replaces anything
        // (`mkdirat`, `O_EXCL`, `symlinkat` all fail on an existing name),
        // and only then is what is there looked at.
        let exists = |e: Errno| e == Errno::EEXIST;
        match kind {
            EntryType::Directory => {
                match mkdirat(parent, *name, Mode::S_IRWXU) {
                    Err(e) if exists(e) => may_replace(parent, name, kind, &label)?,
                    created => created.map_err(|e| write_error(&label, e))?,
                }
                let dir = open_dir_nofollow(parent, name).map_err(|e| write_error(&label, e))?;
                fchmod(&dir, Mode::from_bits_truncate(mode | 0o700))
                    .map_err(|e| write_error(&label, e))?;
                let path: PathBuf = parts.iter().collect();
                if self.dir_times_bytes < DIR_TIMES_BUDGET {
                    self.dir_times_bytes +=
                        path.as_os_str().len() + size_of::<(PathBuf, TimeSpec)>();
                    self.dir_times.push((path, mtime));
                } else {
                    futimens(&dir, &mtime, &mtime).map_err(|e| write_error(&label, e))?;
                }
            }
            EntryType::Regular => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let create = || openat(parent, *name, flags, Mode::S_IRUSR | Mode::S_IWUSR);
                let fd = match create() {
                    Err(e) if exists(e) => {
                        may_replace(parent, name, kind, &label)?;
                        unlinkat(parent, *name, UnlinkatFlags::NoRemoveDir)
                            .map_err(|e| write_error(&label, e))?;
                        create()
                    }
                    created => created,
                };
                let mut file = File::from(fd.map_err(|e| write_error(&label, e))?);
                let written =
                    copy_exactly(entry, &mut file, size, &mut self.buf).map_err(|e| match e {
                        CopyError::Stream(e) => UnpackError::Io(e),
                        CopyError::Disk(source) => UnpackError::Write {
                            path: label.clone(),
                            source,
                        },
                    })?;
                if written != size {
                    return Err(invalid("stream ended inside a file"));
                }
                Self::add_bytes(
                    &mut self.summary.bytes,
                    written,
                    self.limits.max_total_bytes,
                    &label,
                )?;
                fchmod(&file, Mode::from_bits_truncate(mode))
                    .map_err(|e| write_error(&label, e))?;
                futimens(&file, &mtime, &mtime).map_err(|e| write_error(&label, e))?;
            }
            _ => {
                let create = || symlinkat(OsStr::from_bytes(&target), parent, *name);
                match create() {
                    // A symlink replaces nothing: this refuses.
                    Err(e) if exists(e) => may_replace(parent, name, kind, &label)?,
                    created => created.map_err(|e| write_error(&label, e))?,
                }
                utimensat(
                    parent,
                    *name,
                    &mtime,
                    &mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| write_error(&label, e))?;
            }
        }
        Ok(())
    }

    /// Walks `parts` from dest, creating missing directories, and refuses to
    /// pass through anything but a real directory. The directory reached is
    /// then the last of `self.open`, or the returned one when it is deeper:
    /// see [`reached`].
    ///
    /// The directories walked stay open for the next entry, which is
    /// usually in the same directory, so only the part of its path that
    /// differs is walked. They cannot be swapped for something else in the
    /// meantime: no entry may replace a directory and nothing here removes
    /// one.
    fn open_dir(&mut self, parts: &[&OsStr], label: &str) -> Result<Option<OwnedFd>, UnpackError> {
        let same = self
            .open
            .iter()
            .zip(parts)
            .take_while(|((name, _), part)| name.as_os_str() == **part)
            .count();
        self.open.truncate(same);
        let mut deep: Option<OwnedFd> = None;
        for part in &parts[same..] {
            let dir = reached(&deep, &self.open, &self.root);
            match kind_at(dir, part).map_err(|e| write_error(label, e))? {
                None => mkdirat(dir, *part, Mode::from_bits_truncate(0o755))
                    .map_err(|e| write_error(label, e))?,
                Some(SFlag::S_IFDIR) => {}
                Some(SFlag::S_IFLNK) => return Err(refused(label, "path goes through a symlink")),
                Some(_) => return Err(refused(label, "path goes through a non-directory")),
            }
            let next = open_dir_nofollow(dir, part).map_err(|e| write_error(label, e))?;
            if deep.is_none() && self.open.len() < OPEN_DIRS {
                self.open.push((part.to_os_string(), next));
            } else {
                deep = Some(next);
            }
        }
        Ok(deep)
    }

    /// Sets directory mtimes last, since creating their entries changed them.
    fn finish(mut self) -> Result<Summary, UnpackError> {
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            let label = path.display().to_string();
            let parts: Vec<&OsStr> = path.iter().collect();
            let deep = self.open_dir(&parts, &label)?;
            let dir = reached(&deep, &self.open, &self.root);
            futimens(dir, &mtime, &mtime).map_err(|e| write_error(&label, e))?;
        }
        Ok(self.summary)
    }
}

/// The directory [`Unpacker::open_dir`] reached: the one it returned
/// (`deep`), else the last one it left open, else dest itself.
fn reached<'a>(
    deep: &'a Option<OwnedFd>,
    open: &'a [(std::ffi::OsString, OwnedFd)],
    root: &'a OwnedFd,
) -> &'a OwnedFd {
    deep.as_ref()
        .unwrap_or_else(|| open.last().map_or(root, |(_, fd)| fd))
}

/// Extension headers waiting for the entry they describe.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    sparse: bool,
    pax: bool,
}

impl Pending {
    /// Takes from a pax header what changes how the entry is read or placed.
    /// A pax `path` wins over a GNU long name, as in GNU tar.
    fn fold_pax(&mut self, data: &[u8]) -> Result<(), UnpackError> {
        self.pax = true;
        for record in PaxExtensions::new(data) {
            let record = record.map_err(|_| invalid("malformed pax record"))?;
            match record.key_bytes() {
                b"path" => self.path = Some(record.value_bytes().to_vec()),
                b"linkpath" => self.link = Some(record.value_bytes().to_vec()),
                b"size" => {
                    let size = record.value().ok().and_then(|v| v.parse().ok());
                    self.size = Some(size.ok_or_else(|| invalid("malformed pax size"))?);
                }
                key if key.starts_with(b"GNU.sparse.") => self.sparse = true,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Reads an extension header's data, refusing before reading when it claims
/// more than `cap` bytes.
fn read_extension<R: Read>(
    entry: &mut Entry<R>,
    cap: u64,
    label: String,
    rule: String,
) -> Result<Vec<u8>, UnpackError> {
    let size = entry.size();
    if size > cap {
        return Err(UnpackError::Refused { entry: label, rule });
    }
    let mut data = Vec::new();
    entry.by_ref().take(size).read_to_end(&mut data)?;
    if data.len() as u64 != size {
        return Err(invalid("stream ended inside an extension header"));
    }
    if data.last() == Some(&0) {
        data.pop();
    }
    Ok(data)
}

/// Splits an entry path into the names to create under dest.
fn split_path(raw: &[u8], max_len: usize) -> Result<Vec<&OsStr>, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    if raw.contains(&0) {
        return Err("path contains NUL".into());
    }
    if raw.len() > max_len {
        return Err(format!("path longer than {max_len} bytes"));
    }
    if raw.starts_with(b"/") {
        return Err("absolute path".into());
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("path contains ..".into()),
            _ => parts.push(OsStr::from_bytes(part)),
        }
    }
    Ok(parts)
}

/// Checks a symlink target for a link whose parent is `depth` directories
/// below dest: relative, and its `..` only as a leading run of at most
/// `depth`.
///
/// This keeps every link inside dest, chains included, because of two other
/// rules: nothing is ever written through a symlink, and no directory is ever
/// replaced (by a symlink or anything else). Together they mean a link's
/// parent is a real directory at exactly the depth its path says, and stays
/// so. The kernel resolves `..` physically, from the directory that holds
/// the link, however that link was reached; so `depth` leading `..` at most
/// climb to dest, and the names after them only descend. A name that is
/// itself a link is resolved by the same argument, so no chain gets out.
///
/// A lexical check alone is not enough: `d -> .` is harmless, but then
/// `d/l -> ..` looks one level deep while it would really be created in dest
/// itself, and point to its parent. Here `d/l` is refused because `d` is a
/// symlink.
fn check_link_target(target: &[u8], depth: usize, max_len: usize) -> Result<(), BadLink> {
    if target.is_empty() {
        return Err(BadLink::Empty);
    }
    if target.contains(&0) {
        return Err(BadLink::Nul);
    }
    if target.len() > max_len {
        return Err(BadLink::TooLong(max_len));
    }
    if target.starts_with(b"/") {
        return Err(BadLink::Absolute);
    }
    let mut ups = 0;
    let mut named = false;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if named => return Err(BadLink::UpAfterName),
            b".." => ups += 1,
            _ => named = true,
        }
    }
    if ups > depth {
        return Err(BadLink::Leaves);
    }
    Ok(())
}

/// The rule a symlink's target breaks ([`check_link_target`]); it becomes
/// the rule of an [`UnpackError::Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum BadLink {
    #[error("symlink target is empty")]
    Empty,
    #[error("symlink target contains NUL")]
    Nul,
    #[error("symlink target longer than {0} bytes")]
    TooLong(usize),
    #[error("symlink target is absolute")]
    Absolute,
    #[error("symlink target has .. after a name")]
    UpAfterName,
    #[error("symlink target leaves the destination")]
    Leaves,
}

/// What `name` is in `dir`, without following a symlink.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<Option<SFlag>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(SFlag::from_bits_truncate(
            stat.st_mode & SFlag::S_IFMT.bits(),
        ))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether an entry of `kind` may take the place of what is at `name`: a
/// directory may be given again (its mode and time are then updated), and a
/// regular file may replace another; nothing else replaces anything.
fn may_replace(
    dir: &OwnedFd,
    name: &OsStr,
    kind: EntryType,
    label: &str,
) -> Result<(), UnpackError> {
    let rule = match kind_at(dir, name).map_err(|e| write_error(label, e))? {
        None => return Ok(()),
        Some(SFlag::S_IFDIR) if kind == EntryType::Directory => return Ok(()),
        Some(SFlag::S_IFREG) if kind == EntryType::Regular => return Ok(()),
        Some(SFlag::S_IFDIR) => "would replace an existing directory",
        Some(SFlag::S_IFLNK) => "would replace an existing symlink",
        Some(_) => "would replace an existing file",
    };
    Err(refused(label, rule))
}

/// Where copying a file's data failed.
enum CopyError {
    Stream(io::Error),
    Disk(io::Error),
}

/// Copies `size` bytes (fewer if the stream ends) from `from` to `to`
/// through `buf`, a buffer kept from file to file.
fn copy_exactly(
    from: &mut impl Read,
    to: &mut File,
    size: u64,
    buf: &mut [u8],
) -> Result<u64, CopyError> {
    let mut written = 0;
    while written < size {
        let want = buf
            .len()
            .min(usize::try_from(size - written).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Stream(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Disk)?;
        written += n as u64;
    }
    Ok(written)
}

/// Opens a directory that must not be a symlink: the kernel enforces what
/// `kind_at` checked.
fn open_dir_nofollow(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir.as_fd(), name, flags, Mode::empty())
}

fn refused(entry: &str, rule: &str) -> UnpackError {
    UnpackError::Refused {
        entry: entry.to_owned(),
        rule: rule.to_owned(),
    }
}

fn invalid(what: &str) -> UnpackError {
    UnpackError::Io(io::Error::new(io::ErrorKind::InvalidData, what))
}

fn write_error(path: &str, errno: Errno) -> UnpackError {
    UnpackError::Write {
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// Remembers whether the source ran dry, to tell an archive that ends
/// without its end marker (truncated) from a complete one.
struct EofAware<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for EofAware<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// The buffer a file's data is copied through.
const COPY_BUFFER: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every read, as a broken stream does.
    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("stream broke"))
        }
    }

    /// The kernel's own layer, alone: the checks before it refuse a symlink
    /// on the path first, so only this shows that a directory swapped for
    /// a symlink after those checks is still never followed.
    #[test]
    fn a_directory_is_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let root = openat(
            AT_FDCWD,
            dir.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        assert!(open_dir_nofollow(&root, OsStr::new("real")).is_ok());
        // With O_DIRECTORY, Linux says ENOTDIR for a symlink it won't follow.
        assert_eq!(
            open_dir_nofollow(&root, OsStr::new("link")).err(),
            Some(Errno::ENOTDIR)
        );
    }

    #[test]
    fn a_full_disk_is_told_apart_from_a_broken_stream() {
        let mut buf = vec![0; 16];
        let mut full = File::options().write(true).open("/dev/full").unwrap();
        let data = [7u8; 100];
        let disk = copy_exactly(&mut &data[..], &mut full, 100, &mut buf);
        assert!(matches!(disk, Err(CopyError::Disk(_))));

        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        assert!(matches!(
            copy_exactly(&mut Broken, &mut file, 100, &mut buf),
            Err(CopyError::Stream(_))
        ));
        // Exactly `size` bytes, in pieces of the buffer; fewer at the end.
        assert_eq!(
            copy_exactly(&mut &data[..], &mut file, 40, &mut buf).ok(),
            Some(40)
        );
        assert_eq!(
            copy_exactly(&mut &data[..10], &mut file, 40, &mut buf).ok(),
            Some(10)
        );
        assert_eq!(std::fs::metadata(dir.path().join("f")).unwrap().len(), 50);
    }
}
