//! A job's artifacts on the host: dom0's archive (`qci_core::artifacts`)
//! copied out and unpacked into `STATE/artifacts/JOB/`, and the screenshot
//! of a machine whose job failed.
//!
//! Everything here comes from the machine and is hostile: the job's steps
//! ran as dom0's user, with sudo, and could have written the archive
//! themselves. So the archive is copied a chunk at a time up to a bound
//! (never whole in memory), unpacked by the hardened unpacker with limits,
//! and then held to the contract: only `files/` and `reports` at its top,
//! no symlink anywhere, every report a regular file under `files/`.
//! Anything else refuses the whole archive and leaves nothing of it.
//!
//! **How long artifacts are kept:** as long as the host keeps the job's
//! published log. `qci serve` deletes that log `keep_logs` after its job
//! ended (90 days by default, its hourly prune in `qci-server`'s
//! `serve.rs`), and `STATE/artifacts/JOB/` with it. qci deletes neither the
//! pool's own copies of the logs (`STATE/logs/`) nor what `qci run
//! --machine` and `qci run --local` left.

use crate::guest::{GuestChannel, GuestError};
use qci_core::JobId;
use qci_core::artifacts::{FILES_DIR, REPORTS_LIST, archive_name};
use qci_core::unpack::{self, Limits, UnpackError};
use qci_junit::TestCase;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The screenshot's name in the job's artifact directory.
pub const SCREENSHOT: &str = "screenshot.png";
/// A screenshot larger than this is not kept (a 4K screen as PNG is far
/// below it).
pub const MAX_SCREENSHOT_BYTES: u64 = 32 << 20;
/// What every PNG file starts with.
pub const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// Files and directories one archive may hold.
pub const MAX_ENTRIES: u64 = 100_000;
/// The reports list names a few files; more than this is not a list.
pub const MAX_REPORTS_LIST: u64 = 64 << 10;
/// One read of the guest channel, as when following the log.
const CHUNK: usize = 1 << 20;

/// What a job left on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobArtifacts {
    /// `STATE/artifacts/JOB/`.
    pub dir: PathBuf,
    /// Every regular file under `dir/files/`, in path order.
    pub files: Vec<ArtifactFile>,
    /// The test reports (JUnit XML) the job declared, among the files
    /// (full paths, ready to open).
    pub reports: Vec<PathBuf>,
    /// `dir/screenshot.png`, taken when the job failed.
    pub screenshot: Option<PathBuf>,
    /// Every test case of the reports that could be read, in their order.
    pub tests: Vec<TestCase>,
    /// One line for each report that could not be read (for the log); a
    /// report refused never changes the job's result.
    pub report_problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    /// Relative to [`JobArtifacts::dir`]: `files/...`.
    pub path: PathBuf,
    pub bytes: u64,
}

/// Where dom0's archive is read from.
pub enum ArchiveSource<'a> {
    /// A file in dom0, through the guest channel.
    Guest {
        channel: &'a dyn GuestChannel,
        path: String,
    },
    /// A file on this host: an emulated dom0's, under its root.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("the archive is larger than {max} bytes (max_artifact_bytes): not taken in")]
    TooBig { max: u64 },
    #[error("cannot copy the archive out of dom0: {0}")]
    Copy(#[source] GuestError),
    #[error("{} is not a regular file: not taken in", .path.display())]
    NotAFile { path: PathBuf },
    #[error("archive refused: {0}")]
    Unpack(#[source] UnpackError),
    #[error("archive refused: {path} is a symlink (the archive holds only files and directories)")]
    Symlink { path: String },
    #[error("archive refused: {name:?} at its top (it holds only files/ and reports)")]
    Unexpected { name: String },
    #[error("reports list refused: it is larger than {MAX_REPORTS_LIST} bytes")]
    ReportsTooLarge,
    #[error("reports list refused: it is not UTF-8")]
    ReportsNotText,
    #[error("reports list refused: {line:?}: {why}")]
    BadReport { line: String, why: &'static str },
    #[error("screenshot refused: it is larger than {MAX_SCREENSHOT_BYTES} bytes")]
    ScreenshotTooBig,
    #[error("screenshot refused: not a PNG image")]
    NotPng,
    /// The host's own disk.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `STATE/artifacts/JOB/`.
pub fn job_dir(state_dir: &Path, job: &JobId) -> PathBuf {
    state_dir.join("artifacts").join(job.as_str())
}

/// The unpacker's limits for an archive of at most `max_bytes`.
pub fn limits(max_bytes: u64) -> Limits {
    Limits {
        max_total_bytes: max_bytes,
        max_entries: MAX_ENTRIES,
        ..Limits::default()
    }
}

/// Copies dom0's archive out of `source` (at most
/// `limits.max_total_bytes`), unpacks it into `STATE/artifacts/JOB/` and
/// reads its reports list. `Ok(None)`: the job declared no artifacts
/// (there is no archive). On an error nothing of the archive is left; a
/// screenshot already in the directory stays.
pub fn take_in(
    source: &ArchiveSource<'_>,
    state_dir: &Path,
    job: &JobId,
    limits: &Limits,
) -> Result<Option<JobArtifacts>, ArtifactError> {
    let max_bytes = limits.max_total_bytes;
    let base = state_dir.join("artifacts");
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    let tar = base.join(archive_name(job));
    let part = base.join(format!("{}.part", archive_name(job)));
    let copied = copy_out(source, &part, max_bytes);
    let result = match copied {
        Ok(0) => Ok(None),
        Ok(_) => std::fs::rename(&part, &tar)
            .map_err(io(&tar))
            .and_then(|()| unpack_into(&tar, &job_dir(state_dir, job), limits))
            .map(Some),
        Err(e) => Err(e),
    };
    for leftover in [&part, &tar] {
        if let Err(e) = std::fs::remove_file(leftover)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", leftover.display());
        }
    }
    result
}

/// Copies the archive to `part`, a chunk at a time; the number of bytes
/// (0: there is none). Stops at `max_bytes`: what lies beyond is not read.
fn copy_out(source: &ArchiveSource<'_>, part: &Path, max_bytes: u64) -> Result<u64, ArtifactError> {
    let local = match source {
        ArchiveSource::File(path) => match open_local(path)? {
            Some(file) => Some((file, path)),
            None => return Ok(0),
        },
        ArchiveSource::Guest { .. } => None,
    };
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(io(part))?;
    let mut copied = 0u64;
    loop {
        // One byte past the bound is asked for, to know the bound was passed.
        let want = (max_bytes.saturating_add(1) - copied).min(CHUNK as u64) as usize;
        let mut chunk = match (&local, source) {
            (Some((file, path)), _) => {
                let mut buf = vec![0; want];
                let n = file.read_at(&mut buf, copied).map_err(io(path))?;
                buf.truncate(n);
                buf
            }
            (None, ArchiveSource::Guest { channel, path }) => channel
                .read_at(path, copied, want)
                .map_err(ArtifactError::Copy)?,
            (None, ArchiveSource::File(_)) => Vec::new(),
        };
        chunk.truncate(want);
        if chunk.is_empty() {
            break;
        }
        if copied + chunk.len() as u64 > max_bytes {
            return Err(ArtifactError::TooBig { max: max_bytes });
        }
        out.write_all(&chunk).map_err(io(part))?;
        copied += chunk.len() as u64;
    }
    out.flush().map_err(io(part))?;
    Ok(copied)
}

/// The archive on this host, if there is one: never through a symlink,
/// and only a regular file (a FIFO or a device there would never end).
fn open_local(path: &Path) -> Result<Option<File>, ArtifactError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    if !file.metadata().map_err(io(path))?.is_file() {
        return Err(ArtifactError::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok(Some(file))
}

/// The most test cases one job's reports may hold together (each report
/// is also bounded by [`qci_junit::Limits`]).
pub const MAX_TEST_CASES: usize = 100_000;

/// Reads the job's JUnit reports with the hardened reader: the cases of
/// those it could read, and a line for each one it refused, saying why.
fn parse_reports(dir: &Path, reports: &[PathBuf]) -> (Vec<TestCase>, Vec<String>) {
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    let limits = qci_junit::Limits::default();
    for report in reports {
        let name = report.strip_prefix(dir).unwrap_or(report).display();
        match qci_junit::parse_file(report, &limits) {
            Ok(read) if cases.len() + read.cases.len() > MAX_TEST_CASES => {
                problems.push(format!(
                    "report {name} not read: the job's reports hold more than {MAX_TEST_CASES} tests"
                ));
            }
            Ok(read) => cases.extend(read.cases),
            Err(e) => problems.push(format!("report {name} not read: {e}")),
        }
    }
    (cases, problems)
}

/// Unpacks `tar` into `dir` (through `dir/unpacking/`, moved into place
/// only once all of it passed).
fn unpack_into(tar: &Path, dir: &Path, limits: &Limits) -> Result<JobArtifacts, ArtifactError> {
    let staging = dir.join("unpacking");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let checked = unpack_checked(tar, &staging, limits);
    let placed = checked.and_then(|(files, reports)| {
        for name in [FILES_DIR, REPORTS_LIST] {
            let from = staging.join(name);
            if from.symlink_metadata().is_ok() {
                std::fs::rename(&from, dir.join(name)).map_err(io(&from))?;
            }
        }
        let reports: Vec<PathBuf> = reports.into_iter().map(|r| dir.join(r)).collect();
        let (tests, report_problems) = parse_reports(dir, &reports);
        Ok(JobArtifacts {
            dir: dir.to_owned(),
            files,
            reports,
            screenshot: None,
            tests,
            report_problems,
        })
    });
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!("cannot remove {}: {e}", staging.display());
    }
    if placed.is_err() {
        // Gone unless it holds the screenshot.
        let _ = std::fs::remove_dir(dir);
    }
    placed
}

/// The files and the reports (`files/...`) of an archive
/// unpacked into `staging` and held to the contract.
fn unpack_checked(
    tar: &Path,
    staging: &Path,
    limits: &Limits,
) -> Result<(Vec<ArtifactFile>, Vec<PathBuf>), ArtifactError> {
    let file = File::open(tar).map_err(io(tar))?;
    unpack::unpack(file, staging, limits).map_err(ArtifactError::Unpack)?;
    let top = std::fs::read_dir(staging).map_err(io(staging))?;
    for entry in top {
        let entry = entry.map_err(io(staging))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(io(&entry.path()))?;
        let fits = (name == FILES_DIR && kind.is_dir()) || (name == REPORTS_LIST && kind.is_file());
        if kind.is_symlink() {
            return Err(ArtifactError::Symlink { path: name });
        }
        if !fits {
            return Err(ArtifactError::Unexpected { name });
        }
    }
    let mut files = Vec::new();
    let root = staging.join(FILES_DIR);
    if root.is_dir() {
        walk(&root, Path::new(FILES_DIR), &mut files)?;
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let reports = read_reports(staging)?;
    Ok((files, reports))
}

/// Every regular file below `dir` (`rel` from the job's directory);
/// refuses any symlink. The unpacker let through nothing but directories,
/// regular files and symlinks, and bounded their number.
fn walk(dir: &Path, rel: &Path, files: &mut Vec<ArtifactFile>) -> Result<(), ArtifactError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let meta = entry.path().symlink_metadata().map_err(io(&entry.path()))?;
        let path = rel.join(entry.file_name());
        if meta.file_type().is_symlink() {
            return Err(ArtifactError::Symlink {
                path: path.display().to_string(),
            });
        }
        if meta.is_dir() {
            walk(&entry.path(), &path, files)?;
        } else {
            files.push(ArtifactFile {
                path,
                bytes: meta.len(),
            });
        }
    }
    Ok(())
}

/// The `reports` list of an unpacked, checked archive: one path a line, as
/// the archive names it (`files/...`), with no `..`, naming a regular file.
/// The walk already refused every symlink, so the path reaches what it
/// names.
fn read_reports(staging: &Path) -> Result<Vec<PathBuf>, ArtifactError> {
    let path = staging.join(REPORTS_LIST);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_REPORTS_LIST + 1)
        .read_to_end(&mut bytes)
        .map_err(io(&path))?;
    if bytes.len() as u64 > MAX_REPORTS_LIST {
        return Err(ArtifactError::ReportsTooLarge);
    }
    let text = String::from_utf8(bytes).map_err(|_| ArtifactError::ReportsNotText)?;
    let mut reports = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let bad = |why| ArtifactError::BadReport {
            line: line.to_owned(),
            why,
        };
        if line.chars().any(char::is_control) {
            return Err(bad("a control character"));
        }
        if line.starts_with('/') {
            return Err(bad("an absolute path"));
        }
        if line.split('/').any(|c| c == "..") {
            return Err(bad("a path with .."));
        }
        if !line.starts_with(&format!("{FILES_DIR}/")) {
            return Err(bad("not under files/"));
        }
        let rel = PathBuf::from(line);
        match staging.join(&rel).symlink_metadata() {
            Ok(m) if m.is_file() => reports.push(rel),
            Ok(_) => return Err(bad("not a regular file")),
            Err(_) => return Err(bad("no such file in the archive")),
        }
    }
    Ok(reports)
}

/// Keeps `png` as the job's screenshot, `STATE/artifacts/JOB/screenshot.png`.
pub fn save_screenshot(
    state_dir: &Path,
    job: &JobId,
    png: &[u8],
) -> Result<PathBuf, ArtifactError> {
    if png.len() as u64 > MAX_SCREENSHOT_BYTES {
        return Err(ArtifactError::ScreenshotTooBig);
    }
    if !png.starts_with(PNG_SIGNATURE) {
        return Err(ArtifactError::NotPng);
    }
    let dir = job_dir(state_dir, job);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(SCREENSHOT);
    std::fs::write(&path, png).map_err(io(&path))?;
    Ok(path)
}

/// Appends one line to the host's copy of a job's log, in the log's own
/// format, tagged `host`: after dom0's lines, which were copied first.
pub fn host_line(log: &Path, text: &str) {
    let line = format!(
        "{} [host] {}\n",
        qci_core::log::timestamp(std::time::SystemTime::now()),
        qci_core::log::sanitize(text.as_bytes())
    );
    let appended = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = appended {
        tracing::warn!("cannot write to {}: {e}", log.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::GuestPid;
    use std::sync::Mutex;
    use tar::{EntryType, Header};

    /// An archive built entry by entry with raw names (the tar crate's own
    /// `set_path` refuses `..` and absolute names).
    struct Tar(tar::Builder<Vec<u8>>);

    impl Default for Tar {
        fn default() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }
    }

    impl Tar {
        fn entry(mut self, kind: EntryType, name: &str, link: &str, data: &[u8]) -> Self {
            let mut header = Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }
        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(EntryType::Regular, name, "", data)
        }
        fn dir(self, name: &str) -> Self {
            self.entry(EntryType::Directory, name, "", b"")
        }
        /// With the end-of-archive marker.
        fn done(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    /// dom0's side of the guest channel: one file, and how much was read.
    struct Dom0Archive {
        archive: Vec<u8>,
        read: Mutex<u64>,
    }

    impl GuestChannel for Dom0Archive {
        fn start(&self, _: &[String]) -> Result<GuestPid, GuestError> {
            Err(GuestError::Failed("not here".into()))
        }
        fn exit_code(&self, _: GuestPid) -> Result<Option<i32>, GuestError> {
            Err(GuestError::Failed("not here".into()))
        }
        fn copy_in(&self, _: &[u8], _: &str) -> Result<(), GuestError> {
            Err(GuestError::Failed("not here".into()))
        }
        fn copy_out(&self, _: &str) -> Result<Vec<u8>, GuestError> {
            panic!("the archive is never copied whole");
        }
        fn read_at(&self, path: &str, offset: u64, max: usize) -> Result<Vec<u8>, GuestError> {
            assert_eq!(path, "/var/lib/qci/artifacts/J1.tar");
            let start = (offset as usize).min(self.archive.len());
            let end = (start + max).min(self.archive.len());
            *self.read.lock().unwrap() += (end - start) as u64;
            Ok(self.archive[start..end].to_vec())
        }
    }

    fn job() -> JobId {
        JobId::parse("J1").unwrap()
    }

    /// Takes `archive` in through the guest channel; also how many bytes
    /// were read from dom0.
    fn take(
        state: &Path,
        archive: Vec<u8>,
        limits: &Limits,
    ) -> (Result<Option<JobArtifacts>, ArtifactError>, u64) {
        let dom0 = Dom0Archive {
            archive,
            read: Mutex::new(0),
        };
        let source = ArchiveSource::Guest {
            channel: &dom0,
            path: "/var/lib/qci/artifacts/J1.tar".into(),
        };
        let taken = take_in(&source, state, &job(), limits);
        let read = *dom0.read.lock().unwrap();
        (taken, read)
    }

    /// Every path under `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.symlink_metadata().unwrap().is_dir() {
                    walk(&p, base, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    fn refusal(archive: Vec<u8>) -> (String, Vec<String>) {
        let state = tempfile::tempdir().unwrap();
        let (taken, _) = take(state.path(), archive, &limits(1 << 20));
        let err = taken.unwrap_err().to_string();
        (err, tree(state.path()))
    }

    #[test]
    fn reports_are_read_and_a_hostile_one_is_one_line_that_names_it() {
        let state = tempfile::tempdir().unwrap();
        let good = br#"<testsuite><testcase classname="t" name="ok"/><testcase classname="t" name="bad"><failure message="no"/></testcase></testsuite>"#;
        let bomb = b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">]><testsuite>&lol;</testsuite>";
        let archive = Tar::default()
            .dir("files/")
            .file("files/good.xml", good)
            .file("files/bomb.xml", bomb)
            .file(
                "files/bad-utf8.xml",
                b"<testsuite><testcase name=\"\xff\"/></testsuite>",
            )
            .file(
                REPORTS_LIST,
                b"files/good.xml\nfiles/bomb.xml\nfiles/bad-utf8.xml\n",
            )
            .done();
        let (taken, _) = take(state.path(), archive, &limits(1 << 20));
        let taken = taken.unwrap().unwrap();
        let names: Vec<_> = taken
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.outcome))
            .collect();
        assert_eq!(
            names,
            [
                ("ok", qci_junit::Outcome::Passed),
                ("bad", qci_junit::Outcome::Failed)
            ]
        );
        assert_eq!(
            taken.report_problems,
            [
                "report files/bomb.xml not read: the report has a DOCTYPE: refused (no DTDs or entities)",
                "report files/bad-utf8.xml not read: invalid UTF-8 at byte 27",
            ]
        );
    }

    #[test]
    fn an_archive_is_unpacked_with_its_files_and_reports() {
        let state = tempfile::tempdir().unwrap();
        let archive = Tar::default()
            .dir("files/")
            .file("files/build.log", b"built\n")
            .dir("files/test-results/")
            .file("files/test-results/junit.xml", b"<testsuites/>")
            .file(REPORTS_LIST, b"files/test-results/junit.xml\n")
            .done();
        let (taken, _) = take(state.path(), archive, &limits(1 << 20));
        let dir = state.path().join("artifacts/J1");
        assert_eq!(
            taken.unwrap().unwrap(),
            JobArtifacts {
                dir: dir.clone(),
                files: vec![
                    ArtifactFile {
                        path: "files/build.log".into(),
                        bytes: 6
                    },
                    ArtifactFile {
                        path: "files/test-results/junit.xml".into(),
                        bytes: 13
                    },
                ],
                reports: vec![dir.join("files/test-results/junit.xml")],
                screenshot: None,
                tests: Vec::new(),
                report_problems: Vec::new(),
            }
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("files/build.log")).unwrap(),
            "built\n"
        );
        // The archive itself is gone.
        assert_eq!(
            tree(state.path()),
            [
                "artifacts",
                "artifacts/J1",
                "artifacts/J1/files",
                "artifacts/J1/files/build.log",
                "artifacts/J1/files/test-results",
                "artifacts/J1/files/test-results/junit.xml",
                "artifacts/J1/reports",
            ]
        );
    }

    #[test]
    fn no_archive_means_no_artifacts() {
        let state = tempfile::tempdir().unwrap();
        let (taken, _) = take(state.path(), Vec::new(), &limits(1 << 20));
        assert_eq!(taken.unwrap(), None);
        assert_eq!(tree(state.path()), ["artifacts"]);
        let missing = ArchiveSource::File(state.path().join("no.tar"));
        assert_eq!(
            take_in(&missing, state.path(), &job(), &limits(1 << 20)).unwrap(),
            None
        );
    }

    #[test]
    fn hostile_archives_are_refused_whole_and_leave_nothing() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                Tar::default()
                    .file("files/ok", b"x")
                    .file("files/../../escape", b"x")
                    .done(),
                "archive refused: tar entry \"files/../../escape\" refused: path contains ..",
            ),
            (
                Tar::default().file("/tmp/qci-owned", b"x").done(),
                "archive refused: tar entry \"/tmp/qci-owned\" refused: absolute path",
            ),
            (
                Tar::default()
                    .file("files/a", b"x")
                    .entry(EntryType::Symlink, "files/link", "a", b"")
                    .done(),
                "archive refused: files/link is a symlink (the archive holds only files and directories)",
            ),
            (
                Tar::default()
                    .entry(EntryType::Symlink, "files", "..", b"")
                    .done(),
                "archive refused: tar entry \"files\" refused: symlink target leaves the destination",
            ),
            (
                Tar::default()
                    .file("files/a", b"x")
                    .entry(EntryType::Link, "files/b", "files/a", b"")
                    .done(),
                "archive refused: tar entry \"files/b\" refused: hard links are not allowed",
            ),
            (
                Tar::default()
                    .entry(EntryType::Char, "files/null", "", b"")
                    .done(),
                "archive refused: tar entry \"files/null\" refused: character devices are not allowed",
            ),
            (
                Tar::default()
                    .entry(EntryType::Fifo, "files/pipe", "", b"")
                    .done(),
                "archive refused: tar entry \"files/pipe\" refused: fifos are not allowed",
            ),
            (
                Tar::default().file("screenshot.png", b"x").done(),
                "archive refused: \"screenshot.png\" at its top (it holds only files/ and reports)",
            ),
            (
                Tar::default().file("files/a", b"x").done()[..700].to_vec(),
                "archive refused: tar stream is not valid: unexpected EOF during skip",
            ),
        ];
        for (archive, refused) in cases {
            let (err, left) = refusal(archive);
            assert_eq!(err, refused);
            assert_eq!(left, ["artifacts"], "{refused}");
        }
    }

    #[test]
    fn too_many_files_or_bytes_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let mut archive = Tar::default();
        for i in 0..5 {
            archive = archive.file(&format!("files/{i}"), b"x");
        }
        let few = Limits {
            max_entries: 4,
            ..limits(1 << 20)
        };
        let (taken, _) = take(state.path(), archive.done(), &few);
        assert_eq!(
            taken.unwrap_err().to_string(),
            "archive refused: tar entry \"files/4\" refused: more than 4 entries"
        );
        assert_eq!(tree(state.path()), ["artifacts"]);
    }

    #[test]
    fn an_archive_over_the_bound_stops_being_copied_at_the_bound() {
        let state = tempfile::tempdir().unwrap();
        let big = Tar::default().file("files/big", &vec![7; 3 << 20]).done();
        let max = (1 << 20) + 10;
        let (taken, read) = take(state.path(), big, &limits(max));
        assert!(matches!(taken, Err(ArtifactError::TooBig { max: m }) if m == max));
        // One byte past the bound is read, to see that there is more.
        assert_eq!(read, max + 1);
        assert_eq!(tree(state.path()), ["artifacts"]);
        // From a file likewise.
        let file = state.path().join("J1.tar");
        std::fs::write(&file, vec![0; 2 << 20]).unwrap();
        let taken = take_in(
            &ArchiveSource::File(file),
            state.path(),
            &job(),
            &limits(max),
        );
        assert_eq!(
            taken.unwrap_err().to_string(),
            format!("the archive is larger than {max} bytes (max_artifact_bytes): not taken in")
        );
    }

    #[test]
    fn a_local_archive_is_never_read_through_a_symlink_or_from_a_fifo() {
        let state = tempfile::tempdir().unwrap();
        let fifo = state.path().join("fifo.tar");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let taken = take_in(
            &ArchiveSource::File(fifo.clone()),
            state.path(),
            &job(),
            &limits(1 << 20),
        );
        assert_eq!(
            taken.unwrap_err().to_string(),
            format!("{} is not a regular file: not taken in", fifo.display())
        );
        let link = state.path().join("link.tar");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let taken = take_in(
            &ArchiveSource::File(link.clone()),
            state.path(),
            &job(),
            &limits(1 << 20),
        );
        assert!(
            matches!(&taken, Err(ArtifactError::Io { path, source })
                if *path == link && source.raw_os_error() == Some(nix::libc::ELOOP)),
            "{taken:?}"
        );
    }

    #[test]
    fn the_reports_list_is_read_strictly() {
        let cases = [
            (
                "files/../../etc/passwd\n",
                "\"files/../../etc/passwd\": a path with ..",
            ),
            ("/etc/passwd\n", "\"/etc/passwd\": an absolute path"),
            ("a.xml\n", "\"a.xml\": not under files/"),
            ("files/sub\n", "\"files/sub\": not a regular file"),
            (
                "files/gone.xml\n",
                "\"files/gone.xml\": no such file in the archive",
            ),
            (
                "files/a.xml\u{1b}[2J\n",
                "\"files/a.xml\\u{1b}[2J\": a control character",
            ),
        ];
        for (list, why) in cases {
            let archive = Tar::default()
                .file("files/a.xml", b"<testsuites/>")
                .dir("files/sub/")
                .file(REPORTS_LIST, list.as_bytes())
                .done();
            let (err, left) = refusal(archive);
            assert_eq!(err, format!("reports list refused: {why}"));
            assert_eq!(left, ["artifacts"]);
        }
        let huge = Tar::default()
            .file(REPORTS_LIST, &vec![b'a'; MAX_REPORTS_LIST as usize + 1])
            .done();
        assert_eq!(
            refusal(huge).0,
            "reports list refused: it is larger than 65536 bytes"
        );
    }

    #[test]
    fn a_screenshot_must_be_a_bounded_png_and_host_lines_follow_the_log() {
        let state = tempfile::tempdir().unwrap();
        assert_eq!(
            save_screenshot(state.path(), &job(), b"P6 1 1 255\n...")
                .unwrap_err()
                .to_string(),
            "screenshot refused: not a PNG image"
        );
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend_from_slice(b"rest");
        let path = save_screenshot(state.path(), &job(), &png).unwrap();
        assert_eq!(path, state.path().join("artifacts/J1/screenshot.png"));
        assert_eq!(std::fs::read(&path).unwrap(), png);
        // A refused archive leaves the screenshot where it is.
        let (err, left) = {
            let (taken, _) = take(
                state.path(),
                Tar::default().file("../x", b"x").done(),
                &limits(1 << 20),
            );
            (taken.unwrap_err().to_string(), tree(state.path()))
        };
        assert!(err.starts_with("archive refused"), "{err}");
        assert_eq!(
            left,
            ["artifacts", "artifacts/J1", "artifacts/J1/screenshot.png"]
        );

        let log = state.path().join("J1.log");
        std::fs::write(&log, "2026-12-03T10:00:00.000Z [step] done\n").unwrap();
        host_line(&log, "artifacts: \u{1b}[31mred\u{1b}[0m refused");
        let text = std::fs::read_to_string(&log).unwrap();
        let last = text.lines().nth(1).unwrap();
        assert!(last.ends_with(" [host] artifacts: red refused"), "{last}");
        assert_eq!(
            last.len(),
            "2026-12-03T10:00:00.000Z".len() + " [host] artifacts: red refused".len()
        );
    }
}
