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
//! log. `qci serve` deletes a published log `keep_logs` after its job
//! ended (90 days by default) and removes the job's artifacts with it
//! ([`remove`]); `qci run --machine` and `qci run --local` delete neither.

use crate::guest::{GuestChannel, GuestError};
use qci_core::JobId;
use qci_core::artifacts::{FILES_DIR, REPORTS_LIST, archive_name};
use qci_core::unpack::{self, Limits, UnpackError};
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
    /// The test reports (JUnit XML) the job declared, as paths under
    /// `dir/files/` (full paths, ready to open).
    pub reports: Vec<PathBuf>,
    /// `dir/screenshot.png`, taken when the job failed.
    pub screenshot: Option<PathBuf>,
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

/// Removes a job's artifacts (with its log, when the host prunes it).
pub fn remove(state_dir: &Path, job: &JobId) -> std::io::Result<()> {
    match std::fs::remove_dir_all(job_dir(state_dir, job)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Copies dom0's archive out of `source` (at most `max_bytes`), unpacks it
/// into `STATE/artifacts/JOB/` and reads its reports list. `Ok(None)`: the
/// job declared no artifacts (there is no archive). On an error nothing of
/// the archive is left; a screenshot already in the directory stays.
pub fn take_in(
    source: &ArchiveSource<'_>,
    state_dir: &Path,
    job: &JobId,
    max_bytes: u64,
) -> Result<Option<JobArtifacts>, ArtifactError> {
    let base = state_dir.join("artifacts");
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    let tar = base.join(archive_name(job));
    let part = base.join(format!("{}.part", archive_name(job)));
    let copied = copy_out(source, &part, max_bytes);
    let result = match copied {
        Ok(0) => Ok(None),
        Ok(_) => std::fs::rename(&part, &tar)
            .map_err(io(&tar))
            .and_then(|()| unpack_into(&tar, &job_dir(state_dir, job), max_bytes))
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
        ArchiveSource::File(path) => match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => Some((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(path)(e)),
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
    let mut buf = vec![0; CHUNK];
    loop {
        // One byte past the bound is asked for, to know the bound was passed.
        let want = (max_bytes.saturating_add(1) - copied).min(CHUNK as u64) as usize;
        let chunk: &[u8] = match (&local, source) {
            (Some((file, path)), _) => {
                let n = file.read_at(&mut buf[..want], copied).map_err(io(path))?;
                &buf[..n]
            }
            (None, ArchiveSource::Guest { channel, path }) => {
                buf = channel
                    .read_at(path, copied, want)
                    .map_err(ArtifactError::Copy)?;
                buf.truncate(want);
                &buf
            }
            (None, ArchiveSource::File(_)) => &[],
        };
        if chunk.is_empty() {
            break;
        }
        if copied + chunk.len() as u64 > max_bytes {
            return Err(ArtifactError::TooBig { max: max_bytes });
        }
        out.write_all(chunk).map_err(io(part))?;
        copied += chunk.len() as u64;
    }
    out.flush().map_err(io(part))?;
    Ok(copied)
}

/// Unpacks `tar` into `dir` (through `dir/unpacking/`, moved into place
/// only once all of it passed).
fn unpack_into(tar: &Path, dir: &Path, max_bytes: u64) -> Result<JobArtifacts, ArtifactError> {
    let staging = dir.join("unpacking");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let checked = unpack_checked(tar, &staging, max_bytes);
    let placed = checked.and_then(|(files, reports)| {
        for name in [FILES_DIR, REPORTS_LIST] {
            let from = staging.join(name);
            if from.symlink_metadata().is_ok() {
                std::fs::rename(&from, dir.join(name)).map_err(io(&from))?;
            }
        }
        Ok(JobArtifacts {
            dir: dir.to_owned(),
            files,
            reports: reports
                .into_iter()
                .map(|r| dir.join(FILES_DIR).join(r))
                .collect(),
            screenshot: None,
        })
    });
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!("cannot remove {}: {e}", staging.display());
    }
    placed
}

/// The files and the reports (relative to `files/`) of an archive
/// unpacked into `staging` and held to the contract.
fn unpack_checked(
    tar: &Path,
    staging: &Path,
    max_bytes: u64,
) -> Result<(Vec<ArtifactFile>, Vec<PathBuf>), ArtifactError> {
    let limits = Limits {
        max_total_bytes: max_bytes,
        max_entries: MAX_ENTRIES,
        ..Limits::default()
    };
    let file = File::open(tar).map_err(io(tar))?;
    unpack::unpack(file, staging, &limits).map_err(ArtifactError::Unpack)?;
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

/// The `reports` list of an unpacked, checked archive: one path under
/// `files/` a line, relative, with no `..`, naming a regular file. The
/// walk already refused every symlink, so the path reaches what it names.
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
        let rel = PathBuf::from(line);
        match staging.join(FILES_DIR).join(&rel).symlink_metadata() {
            Ok(m) if m.is_file() => reports.push(rel),
            Ok(_) => return Err(bad("not a regular file under files/")),
            Err(_) => return Err(bad("no such file under files/")),
        }
    }
    Ok(reports)
}

/// Keeps `png` as the job's screenshot, `STATE/artifacts/JOB/screenshot.png`.
pub fn save_screenshot(state_dir: &Path, job: &JobId, png: &[u8]) -> Result<PathBuf, ArtifactError> {
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
