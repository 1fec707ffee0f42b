//! Collects a job's artifacts after its last step: what `.qci.toml`'s
//! `[artifacts]` matches in the workspace goes into one archive,
//! `ARTIFACT_DIR/JOB.tar`, as `qci_core::artifacts` lays it out.
//!
//! The workspace is the steps' to shape, and they ran as dom0's user: a
//! symlink to `/etc/qci/dom0.toml` or `~/.ssh`, a FIFO that blocks its
//! reader, a 10 GB sparse file or a million small ones must cost dom0
//! nothing and leak nothing. So the walk is relative to directory file
//! descriptors, opened with `O_NOFOLLOW` one component at a time, and never
//! follows a symlink; a file is opened `O_NOFOLLOW|O_NONBLOCK` and checked
//! through its descriptor; sizes are judged before anything is read; and
//! every limit that cuts something says so in the log.

use crate::config::ArtifactLimits;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use qci_core::JobId;
use qci_core::artifacts::{ArtifactSpec, FILES_DIR, REPORTS_LIST, archive_name};
use std::io::{BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How many directories below the workspace the walk goes.
pub const MAX_DEPTH: usize = 64;
/// Names read from one directory: the rest are not looked at.
const MAX_DIR_ENTRIES: usize = 1_000_000;
/// Lines about single skipped entries; more are counted in one line.
const MAX_SKIP_LINES: usize = 100;
const PART: &str = ".part";

/// What went into the archive.
#[derive(Debug, PartialEq, Eq)]
pub struct Collected {
    /// Regular files (directories not counted).
    pub files: u64,
    /// Their contents' bytes.
    pub bytes: u64,
    pub archive: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading a file of the workspace or writing the archive failed
    /// midway (a full disk, an I/O error): no archive is left.
    #[error("while collecting from {}: {source}", workspace.display())]
    Walk {
        workspace: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Collects what `spec` matches in `workspace` into `dir/JOB.tar`, written
/// as `JOB.tar.part` and renamed when whole; then removes archives beyond
/// `limits.keep` and stale `.part` files. `note` gets the log's lines about
/// what was skipped or cut.
pub fn collect(
    workspace: &Path,
    spec: &ArtifactSpec,
    dir: &Path,
    job: &JobId,
    limits: ArtifactLimits,
    note: &mut dyn FnMut(&str),
) -> Result<Collected, ArtifactError> {
    let archive = dir.join(archive_name(job));
    let part = dir.join(format!("{}{PART}", archive_name(job)));
    // One job at a time (the run lock): any `.part` left is a dead run's.
    remove_stale_parts(dir, note);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArtifactError::Io { path, source }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(&part)
        .map_err(io(&part))?;
    let written = write_archive(workspace, spec, limits, file, note);
    let (files, bytes) = match written {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&part, &archive) {
        let _ = std::fs::remove_file(&part);
        return Err(io(&archive)(e));
    }
    remove_old_archives(dir, &archive, limits.keep, note);
    Ok(Collected {
        files,
        bytes,
        archive,
    })
}

fn write_archive(
    workspace: &Path,
    spec: &ArtifactSpec,
    limits: ArtifactLimits,
    file: std::fs::File,
    note: &mut dyn FnMut(&str),
) -> Result<(u64, u64), ArtifactError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArtifactError::Io { path, source }
    };
    let top = nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        workspace,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(workspace)(e.into()))?;
    let mut walk = Walk {
        spec,
        limits,
        tar: tar::Builder::new(BufWriter::new(file)),
        entries: 0,
        files: 0,
        bytes: 0,
        reports: Vec::new(),
        dirs: Vec::new(),
        full: false,
        deadline: std::time::Instant::now() + limits.timeout,
        skip_lines: 0,
        note,
    };
    let top_level = Under {
        collect: false,
        report: false,
    };
    let walk_err = |source| ArtifactError::Walk {
        workspace: workspace.to_owned(),
        source,
    };
    walk.walk_dir(&top, &mut Vec::new(), top_level)
        .map_err(walk_err)?;
    if walk.skip_lines > MAX_SKIP_LINES {
        let more = walk.skip_lines - MAX_SKIP_LINES;
        (walk.note)(&format!(
            "artifacts: {more} more entries were not collected (not listed one by one)"
        ));
    }
    let list: String = walk.reports.iter().map(|r| format!("{r}\n")).collect();
    let mut header = header(tar::EntryType::Regular, 0o644, 0, list.len() as u64);
    let (files, bytes) = (walk.files, walk.bytes);
    let mut tar = walk.tar;
    let done = tar
        .append_data(&mut header, REPORTS_LIST, list.as_bytes())
        .and_then(|()| tar.into_inner())
        .and_then(|w| w.into_inner().map_err(std::io::IntoInnerError::into_error))
        .and_then(|f| f.sync_data());
    done.map_err(walk_err)?;
    Ok((files, bytes))
}

struct Walk<'a, W: Write> {
    spec: &'a ArtifactSpec,
    limits: ArtifactLimits,
    tar: tar::Builder<W>,
    /// Entries written, directories included (`max_files` counts them).
    entries: u64,
    files: u64,
    bytes: u64,
    reports: Vec<String>,
    /// The directories the walk is in, and whether each is in the archive
    /// yet: a file's parents are written before it, when it is collected.
    dirs: Vec<(String, bool)>,
    /// The file limit or the time limit was reached: the walk stops.
    full: bool,
    /// When the walk must stop, whatever is left ([`ArtifactLimits::timeout`]).
    deadline: std::time::Instant,
    skip_lines: usize,
    note: &'a mut dyn FnMut(&str),
}

/// What a directory inherits from the patterns that matched it or a
/// directory above it.
#[derive(Debug, Clone, Copy)]
struct Under {
    /// Everything below is collected.
    collect: bool,
    /// Every file below is a report (a `reports` pattern matched).
    report: bool,
}

/// What an entry of the workspace is, from `fstatat` without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Other(&'static str),
}

fn kind(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFLNK => Kind::Other("a symbolic link"),
        SFlag::S_IFIFO => Kind::Other("a FIFO"),
        SFlag::S_IFSOCK => Kind::Other("a socket"),
        SFlag::S_IFCHR => Kind::Other("a character device"),
        SFlag::S_IFBLK => Kind::Other("a block device"),
        _ => Kind::Other("not a regular file"),
    }
}

impl<W: Write> Walk<'_, W> {
    /// Walks the directory open as `fd`, at `path` below the workspace.
    /// `under` says whether it matched a pattern, so that everything below
    /// it is collected (and listed as reports).
    fn walk_dir(
        &mut self,
        fd: &OwnedFd,
        path: &mut Vec<String>,
        under: Under,
    ) -> std::io::Result<()> {
        let mut names: Vec<Vec<u8>> = nix::dir::Dir::from_fd(fd.try_clone()?)?
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .take(MAX_DIR_ENTRIES + 1)
            .collect();
        if names.len() > MAX_DIR_ENTRIES {
            names.truncate(MAX_DIR_ENTRIES);
            let at = if path.is_empty() {
                ".".to_owned()
            } else {
                path.join("/")
            };
            self.skip(&format!(
                "artifact {at}: more than {MAX_DIR_ENTRIES} entries; the rest was not looked at"
            ));
        }
        names.sort();
        let whole = under.collect;
        for raw in names {
            if self.full {
                return Ok(());
            }
            let name = match std::str::from_utf8(&raw) {
                Ok(n) if !n.chars().any(char::is_control) => n.to_owned(),
                _ => {
                    if whole {
                        let shown = String::from_utf8_lossy(&raw).escape_debug().to_string();
                        let at = join(path, &shown);
                        self.skip(&format!(
                            "artifact {at}: its name is not UTF-8 or has control characters, not collected"
                        ));
                    }
                    continue;
                }
            };
            path.push(name);
            let result = self.entry(fd, path, under);
            path.pop();
            result?;
        }
        Ok(())
    }

    fn entry(&mut self, fd: &OwnedFd, path: &mut Vec<String>, under: Under) -> std::io::Result<()> {
        let Some(name) = path.last().cloned() else {
            return Ok(());
        };
        let rel = path.join("/");
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        let (mut as_file, mut as_dir, mut below) = (under.collect, under.collect, false);
        for pattern in self.spec.patterns() {
            let f = pattern.matches(&parts, false);
            let d = pattern.matches(&parts, true);
            as_file |= f.here;
            as_dir |= d.here;
            below |= d.below;
        }
        let (mut report, mut report_dir) = (under.report, under.report);
        for pattern in &self.spec.reports {
            report |= pattern.matches(&parts, false).here;
            report_dir |= pattern.matches(&parts, true).here;
        }
        let st = match nix::sys::stat::fstatat(fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                if as_file || as_dir || below {
                    self.skip(&format!("artifact {rel}: {e}, not collected"));
                }
                return Ok(());
            }
        };
        match kind(&st) {
            Kind::Dir if as_dir || below => {
                if path.len() > MAX_DEPTH {
                    self.skip(&format!(
                        "artifact {rel}: deeper than {MAX_DEPTH} directories, not collected"
                    ));
                    return Ok(());
                }
                let flags = OFlag::O_RDONLY
                    | OFlag::O_DIRECTORY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_CLOEXEC;
                let child = match nix::fcntl::openat(fd, name.as_str(), flags, Mode::empty()) {
                    Ok(c) => c,
                    Err(e) => {
                        // Swapped for a symlink since the fstatat: ELOOP or ENOTDIR.
                        self.skip(&format!("artifact {rel}: {e}, not collected"));
                        return Ok(());
                    }
                };
                self.dirs.push((rel, false));
                if as_dir {
                    self.write_parents()?;
                }
                let walked = if self.full {
                    Ok(())
                } else {
                    let under = Under {
                        collect: as_dir,
                        report: report_dir,
                    };
                    self.walk_dir(&child, path, under)
                };
                self.dirs.pop();
                walked
            }
            Kind::File if as_file => self.file(fd, &name, &rel, &st, report),
            Kind::Other(what) if as_file || as_dir || below => {
                self.skip(&format!("artifact {rel}: {what}, not collected"));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Collects one regular file, judged by its size before it is read.
    fn file(
        &mut self,
        fd: &OwnedFd,
        name: &str,
        rel: &str,
        st: &FileStat,
        report: bool,
    ) -> std::io::Result<()> {
        if !self.room_for_one() {
            return Ok(());
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if !self.fits(rel, size) {
            return Ok(());
        }
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let file = match nix::fcntl::openat(fd, name, flags, Mode::empty()) {
            Ok(f) => std::fs::File::from(f),
            Err(e) => {
                self.skip(&format!("artifact {rel}: {e}, not collected"));
                return Ok(());
            }
        };
        // What was opened, not what was looked at: it may have been swapped.
        let st = nix::sys::stat::fstat(&file)?;
        if kind(&st) != Kind::File {
            self.skip(&format!(
                "artifact {rel}: no longer a regular file, not collected"
            ));
            return Ok(());
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if !self.fits(rel, size) {
            return Ok(());
        }
        self.write_parents()?;
        let mode = if st.st_mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let mut header = header(tar::EntryType::Regular, mode, st.st_mtime, size);
        // At most the size it had when opened (a growing file is cut), and
        // never less (a shrinking one is padded): the header said `size`.
        let contents = file.take(size).chain(std::io::repeat(0)).take(size);
        self.tar
            .append_data(&mut header, format!("{FILES_DIR}/{rel}"), contents)?;
        self.entries += 1;
        self.files += 1;
        self.bytes += size;
        if report {
            self.reports.push(format!("{FILES_DIR}/{rel}"));
        }
        Ok(())
    }

    /// Writes the directories the walk is in that are not in the archive
    /// yet, outermost first.
    fn write_parents(&mut self) -> std::io::Result<()> {
        for i in 0..self.dirs.len() {
            if self.dirs[i].1 {
                continue;
            }
            if !self.room_for_one() {
                return Ok(());
            }
            let mut header = header(tar::EntryType::Directory, 0o755, 0, 0);
            let path = format!("{FILES_DIR}/{}/", self.dirs[i].0);
            self.tar.append_data(&mut header, path, std::io::empty())?;
            self.dirs[i].1 = true;
            self.entries += 1;
        }
        Ok(())
    }

    /// Whether one more entry fits under `max_files`; at the limit the
    /// walk stops, with one line.
    fn room_for_one(&mut self) -> bool {
        if self.full {
            return false;
        }
        if std::time::Instant::now() >= self.deadline {
            self.full = true;
            (self.note)(&format!(
                "artifacts: collecting took longer than {}s (artifact_timeout); the rest was not collected",
                self.limits.timeout.as_secs()
            ));
            return false;
        }
        if self.entries < self.limits.max_files {
            return true;
        }
        self.full = true;
        (self.note)(&format!(
            "artifacts: the limit of {} files was reached; the rest was not collected",
            self.limits.max_files
        ));
        false
    }

    /// Whether `size` bytes fit in what is left of `max_bytes`.
    fn fits(&mut self, rel: &str, size: u64) -> bool {
        let left = self.limits.max_bytes.saturating_sub(self.bytes);
        if size <= left {
            return true;
        }
        self.skip(&format!(
            "artifact {rel}: {}, more than the {} left of max_artifact_bytes, not collected",
            human_bytes(size),
            human_bytes(left)
        ));
        false
    }

    fn skip(&mut self, line: &str) {
        self.skip_lines += 1;
        if self.skip_lines <= MAX_SKIP_LINES {
            (self.note)(line);
        }
    }
}

/// `name` in the directory at `path`, as the log shows it.
fn join(path: &[String], name: &str) -> String {
    let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
    parts.push(name);
    parts.join("/")
}

/// A tar header with no owner and only the permission bits given.
fn header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(u64::try_from(mtime).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header
}

/// Removes `.part` files a dead run left.
fn remove_stale_parts(dir: &Path, note: &mut dyn FnMut(&str)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().as_bytes().ends_with(PART.as_bytes())
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            note(&format!(
                "artifacts: could not remove {}: {e}",
                entry.path().display()
            ));
        }
    }
}

/// Keeps `own` and the newest `keep - 1` other archives (by modification
/// time), and removes the rest.
fn remove_old_archives(dir: &Path, own: &Path, keep: usize, note: &mut dyn FnMut(&str)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut archives: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().ends_with(b".tar") && e.path() != own)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (meta.modified().unwrap_or(std::time::UNIX_EPOCH), e.path()))
        })
        .collect();
    archives.sort_by(|a, b| b.cmp(a));
    for (_, path) in archives.iter().skip(keep.saturating_sub(1)) {
        if let Err(e) = std::fs::remove_file(path) {
            note(&format!(
                "artifacts: could not remove {}: {e}",
                path.display()
            ));
        }
    }
}

/// `512 B`, `3.4 KiB`, `1.0 MiB`: sizes as the log shows them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{PermissionsExt, symlink};

    struct Scratch {
        _dir: tempfile::TempDir,
        workspace: PathBuf,
        out: PathBuf,
        /// Outside both: what symlinks point at.
        outside: PathBuf,
    }

    fn scratch() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let [workspace, out, outside] = ["ws", "artifacts", "outside"].map(|d| dir.path().join(d));
        for d in [&workspace, &out, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(outside.join("dom0.toml"), "secrets = [\"s3cr3t\"]\n").unwrap();
        Scratch {
            _dir: dir,
            workspace,
            out,
            outside,
        }
    }

    fn spec(paths: &[&str], reports: &[&str]) -> ArtifactSpec {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        ArtifactSpec::new(&own(paths), &own(reports)).unwrap()
    }

    /// Collects `job-1` and checks that the workspace and what lies outside
    /// it are as they were: only the artifact dir may change.
    fn run(s: &Scratch, spec: &ArtifactSpec, limits: ArtifactLimits) -> (Collected, Vec<String>) {
        let job = JobId::parse("job-1").unwrap();
        let mut lines = Vec::new();
        let before = (snapshot(&s.workspace), snapshot(&s.outside));
        let collected = collect(&s.workspace, spec, &s.out, &job, limits, &mut |l| {
            lines.push(l.to_owned())
        })
        .unwrap();
        let after = (snapshot(&s.workspace), snapshot(&s.outside));
        assert!(
            before == after,
            "the walk changed something outside the artifact dir"
        );
        (collected, lines)
    }

    /// Every entry of the archive: path → (kind, mode, contents).
    fn entries(archive: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
        let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let kind = if e.header().entry_type().is_dir() {
                    'd'
                } else {
                    'f'
                };
                let mode = e.header().mode().unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, (kind, mode, data))
            })
            .collect()
    }

    /// Every path below `dir` with its metadata's length and mtime.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
        let mut all = BTreeMap::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let meta = std::fs::symlink_metadata(e.path()).unwrap();
                if meta.is_dir() {
                    todo.push(e.path());
                }
                all.insert(e.path(), (meta.len(), meta.modified().unwrap()));
            }
        }
        all
    }

    #[test]
    fn collects_the_matching_files_with_their_parents_and_lists_the_reports() {
        let s = scratch();
        let ws = &s.workspace;
        std::fs::create_dir_all(ws.join("test-results/unit")).unwrap();
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::write(ws.join("test-results/unit/a.xml"), "<testsuite/>").unwrap();
        std::fs::write(ws.join("test-results/summary.txt"), "2 passed").unwrap();
        std::fs::write(ws.join("build.log"), "built").unwrap();
        std::fs::write(ws.join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(ws.join("run.sh"), std::fs::Permissions::from_mode(0o4777))
            .unwrap();
        std::fs::write(ws.join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(ws.join("src/x.xml"), "<x/>").unwrap();
        std::fs::create_dir_all(ws.join("junit/empty")).unwrap();
        std::fs::write(ws.join("junit/TEST-a"), "<testsuite/>").unwrap();
        let spec = spec(&["*.log", "run.sh"], &["**/*.xml", "junit/"]);
        let (c, lines) = run(&s, &spec, ArtifactLimits::default());
        assert_eq!(lines, Vec::<String>::new());
        assert_eq!((c.files, c.bytes), (5, 12 + 5 + 9 + 4 + 12));
        assert_eq!(c.archive, s.out.join("job-1.tar"));
        let got = entries(&c.archive);
        let expected: BTreeMap<String, (char, u32, Vec<u8>)> = [
            ("files/build.log", ('f', 0o644, &b"built"[..])),
            ("files/junit/", ('d', 0o755, b"")),
            ("files/junit/TEST-a", ('f', 0o644, b"<testsuite/>")),
            ("files/junit/empty/", ('d', 0o755, b"")),
            ("files/run.sh", ('f', 0o755, b"#!/bin/sh")),
            ("files/src/", ('d', 0o755, b"")),
            ("files/src/x.xml", ('f', 0o644, b"<x/>")),
            ("files/test-results/", ('d', 0o755, b"")),
            ("files/test-results/unit/", ('d', 0o755, b"")),
            (
                "files/test-results/unit/a.xml",
                ('f', 0o644, b"<testsuite/>"),
            ),
            (
                "reports",
                (
                    'f',
                    0o644,
                    b"files/junit/TEST-a\nfiles/src/x.xml\nfiles/test-results/unit/a.xml\n",
                ),
            ),
        ]
        .into_iter()
        .map(|(p, (k, m, d))| (p.to_owned(), (k, m, d.to_vec())))
        .collect();
        assert_eq!(got, expected);
        let mode = std::fs::metadata(&c.archive).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(&s.out).unwrap().count(),
            1,
            "no .part left"
        );
    }

    #[test]
    fn symlinks_fifos_and_loops_are_skipped_never_followed_and_nothing_outside_changes() {
        let s = scratch();
        let ws = &s.workspace;
        std::fs::create_dir_all(ws.join("out/deep")).unwrap();
        std::fs::write(ws.join("out/ok.txt"), "ok").unwrap();
        symlink(s.outside.join("dom0.toml"), ws.join("out/dom0.toml")).unwrap();
        symlink(&s.outside, ws.join("out/ssh")).unwrap();
        symlink("loop", ws.join("out/loop")).unwrap();
        symlink(&s.outside, ws.join("etc-link")).unwrap();
        nix::unistd::mkfifo(&ws.join("out/pipe"), Mode::from_bits_truncate(0o600)).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(ws.join("out/sock")).unwrap();
        let spec = spec(&["out/"], &["**/*.toml"]);
        let started = std::time::Instant::now();
        let (c, lines) = run(&s, &spec, ArtifactLimits::default());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "blocked"
        );
        drop(sock);
        assert_eq!(
            lines,
            [
                "artifact etc-link: a symbolic link, not collected",
                "artifact out/dom0.toml: a symbolic link, not collected",
                "artifact out/loop: a symbolic link, not collected",
                "artifact out/pipe: a FIFO, not collected",
                "artifact out/sock: a socket, not collected",
                "artifact out/ssh: a symbolic link, not collected",
            ]
        );
        assert_eq!((c.files, c.bytes), (1, 2));
        let got: Vec<String> = entries(&c.archive).into_keys().collect();
        assert_eq!(
            got,
            [
                "files/out/",
                "files/out/deep/",
                "files/out/ok.txt",
                "reports"
            ]
        );
    }

    #[test]
    fn the_file_limit_stops_the_walk_with_one_line_and_fast() {
        let s = scratch();
        let many = s.workspace.join("many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..100_000 {
            std::fs::write(many.join(format!("{i:06}.txt")), "x").unwrap();
        }
        let started = std::time::Instant::now();
        let (c, lines) = run(&s, &spec(&["many/"], &[]), ArtifactLimits::default());
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        assert_eq!(
            lines,
            ["artifacts: the limit of 10000 files was reached; the rest was not collected"]
        );
        // The directory is an entry too: 9,999 files with it.
        assert_eq!((c.files, c.bytes), (9_999, 9_999));
        let got = entries(&c.archive);
        assert_eq!(got.len(), 10_001, "the files, their directory, the reports");
        assert!(got.contains_key("files/many/009998.txt"));
        assert!(!got.contains_key("files/many/009999.txt"));
    }

    #[test]
    fn the_time_limit_stops_the_walk_with_one_line() {
        let s = scratch();
        std::fs::write(s.workspace.join("a.log"), "a").unwrap();
        let limits = ArtifactLimits {
            timeout: std::time::Duration::ZERO,
            ..ArtifactLimits::default()
        };
        let (c, lines) = run(&s, &spec(&["*.log"], &[]), limits);
        assert_eq!(
            lines,
            [
                "artifacts: collecting took longer than 0s (artifact_timeout); the rest was not collected"
            ]
        );
        assert_eq!(c.files, 0);
    }

    #[test]
    fn a_file_over_the_byte_budget_is_skipped_unread_and_smaller_ones_still_fit() {
        let s = scratch();
        let ws = &s.workspace;
        let sparse = std::fs::File::create(ws.join("huge.log")).unwrap();
        sparse.set_len(10 << 30).unwrap();
        std::fs::write(ws.join("small.log"), "small").unwrap();
        let started = std::time::Instant::now();
        let (c, lines) = run(&s, &spec(&["*.log"], &[]), ArtifactLimits::default());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "it was read"
        );
        assert_eq!(
            lines,
            [
                "artifact huge.log: 10.0 GiB, more than the 512.0 MiB left of \
                 max_artifact_bytes, not collected"
            ]
        );
        assert_eq!((c.files, c.bytes), (1, 5));
        let got: Vec<String> = entries(&c.archive).into_keys().collect();
        assert_eq!(got, ["files/small.log", "reports"]);
    }

    #[test]
    fn a_directory_symlink_in_a_double_star_walk_is_not_entered() {
        let s = scratch();
        let ws = &s.workspace;
        std::fs::create_dir_all(ws.join("a/b")).unwrap();
        std::fs::write(ws.join("a/b/r.xml"), "<r/>").unwrap();
        std::fs::write(s.outside.join("secret.xml"), "<secret/>").unwrap();
        symlink(&s.outside, ws.join("a/up")).unwrap();
        symlink("..", ws.join("a/b/parent")).unwrap();
        let (c, lines) = run(&s, &spec(&[], &["**/*.xml"]), ArtifactLimits::default());
        assert_eq!(
            lines,
            [
                "artifact a/b/parent: a symbolic link, not collected",
                "artifact a/up: a symbolic link, not collected",
            ]
        );
        assert_eq!(c.files, 1);
        let got = entries(&c.archive);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["files/a/", "files/a/b/", "files/a/b/r.xml", "reports"]
        );
        assert_eq!(got["reports"].2, b"files/a/b/r.xml\n");
    }

    #[test]
    fn older_archives_and_stale_parts_are_removed() {
        let s = scratch();
        std::fs::write(s.workspace.join("a.log"), "a").unwrap();
        for i in 0..4 {
            let old = s.out.join(format!("old-{i}.tar"));
            std::fs::write(&old, "").unwrap();
            let at = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i);
            std::fs::File::options()
                .write(true)
                .open(&old)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        std::fs::write(s.out.join("dead.tar.part"), "").unwrap();
        let limits = ArtifactLimits {
            keep: 3,
            ..ArtifactLimits::default()
        };
        let (_, lines) = run(&s, &spec(&["*.log"], &[]), limits);
        assert_eq!(lines, Vec::<String>::new());
        let mut left: Vec<String> = std::fs::read_dir(&s.out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["job-1.tar", "old-2.tar", "old-3.tar"]);
    }

    #[test]
    fn a_planted_part_symlink_is_removed_not_written_through() {
        let s = scratch();
        std::fs::write(s.workspace.join("a.log"), "a").unwrap();
        symlink(s.outside.join("dom0.toml"), s.out.join("job-1.tar.part")).unwrap();
        let (c, lines) = run(&s, &spec(&["*.log"], &[]), ArtifactLimits::default());
        assert_eq!((c.files, lines), (1, Vec::<String>::new()));
        assert_eq!(
            std::fs::read_to_string(s.outside.join("dom0.toml")).unwrap(),
            "secrets = [\"s3cr3t\"]\n"
        );
    }

    #[test]
    fn a_missing_artifact_dir_is_an_error_naming_the_part_file() {
        let s = scratch();
        std::fs::remove_dir(&s.out).unwrap();
        let job = JobId::parse("job-1").unwrap();
        let err = collect(
            &s.workspace,
            &spec(&["*.log"], &[]),
            &s.out,
            &job,
            ArtifactLimits::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: No such file or directory (os error 2)",
                s.out.join("job-1.tar.part").display()
            )
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(3482), "3.4 KiB");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
    }
}
