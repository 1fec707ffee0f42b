//! Pulling the code out of the dev VM: `qci.Export` streams a tar archive
//! straight into the hardened unpacker. No temporary archive exists, and the
//! transfer ends at its deadline or on a cancel, whatever the sender does.

use crate::config::Config;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use qci_core::JobId;
use qci_core::process::wait_or_kill;
use qci_core::unpack::{self, Summary, UnpackError};
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot call qci.Export: {0}")]
    Spawn(std::io::Error),
    #[error("the code transfer took longer than {0:?}")]
    Timeout(Duration),
    #[error("canceled during the code transfer")]
    Canceled,
    #[error("{0}")]
    Unpack(#[from] UnpackError),
    #[error("qci.Export failed: {0}")]
    Export(String),
}

const EXIT_GRACE: Duration = Duration::from_secs(10);

/// How often a waiting read looks at the clock and the cancel flag.
const TICK: Duration = Duration::from_millis(100);

/// How often a transfer in progress is reported.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Streams the dev VM's `qci.Export` of `job` into `dest`, stopping when the
/// transfer outlasts the configured timeout or when `cancel` is set, so a
/// sender that stalls or a cancel during a large transfer never holds dom0.
/// `progress` hears the bytes received so far every [`PROGRESS_EVERY`], so
/// a long transfer shows in the log.
pub fn fetch_code(
    config: &Config,
    job: &JobId,
    dest: &Path,
    cancel: &AtomicBool,
    progress: impl FnMut(u64),
) -> Result<Summary, FetchError> {
    let timeout = config.export_timeout;
    let mut child = qci_qrexec::call::from_dom0(&config.dev_vm, "qci.Export", job.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FetchError::Spawn)?;
    let mut stream = Watched::new(
        child.stdout.take().expect("stdout is piped"),
        Instant::now() + timeout,
        cancel,
        PROGRESS_EVERY,
        progress,
    );
    let result = unpack::unpack(&mut stream, dest, &config.limits);
    if result.is_err() && !stream.ended {
        // Stop the sender; it may be blocked writing into a pipe nobody reads.
        let _ = child.kill();
    }
    // The stream has ended; a sender that lingers past that gets a short grace.
    let status = wait_or_kill(&mut child, EXIT_GRACE).map_err(FetchError::Spawn)?;
    match stream.stopped {
        Some(Stopped::TimedOut) => return Err(FetchError::Timeout(timeout)),
        Some(Stopped::Canceled) => return Err(FetchError::Canceled),
        None => {}
    }
    let failed = status.filter(|s| !s.success());
    let mut said = |s| FetchError::Export(crate::call::failure(s, child.stderr.take()));
    match (result, failed) {
        // A stream cut short by a failed export: the export says why.
        (Err(UnpackError::Io(_)), Some(s)) if stream.ended => Err(said(s)),
        (Err(e), _) => Err(e.into()),
        (Ok(_), Some(s)) => Err(said(s)),
        (Ok(_), None) if status.is_none() => Err(FetchError::Export(
            "did not exit after the stream ended".into(),
        )),
        (Ok(summary), None) => Ok(summary),
    }
}

/// Why a transfer was stopped from this side.
#[derive(Debug, Clone, Copy)]
enum Stopped {
    TimedOut,
    Canceled,
}

/// The export stream, read only when data is there, so a deadline or a
/// cancel ends the transfer even while the sender holds the pipe open and
/// silent. Killing the sender is not enough for that: whatever it started
/// may still hold the pipe's write end.
struct Watched<'a, R, F> {
    pipe: R,
    deadline: Instant,
    cancel: &'a AtomicBool,
    stopped: Option<Stopped>,
    /// The sender closed the stream (a read returned 0).
    ended: bool,
    received: u64,
    progress: F,
    every: Duration,
    next_report: Instant,
}

impl<'a, R: Read + AsFd, F: FnMut(u64)> Watched<'a, R, F> {
    fn new(
        pipe: R,
        deadline: Instant,
        cancel: &'a AtomicBool,
        every: Duration,
        progress: F,
    ) -> Self {
        Self {
            pipe,
            deadline,
            cancel,
            stopped: None,
            ended: false,
            received: 0,
            progress,
            every,
            next_report: Instant::now() + every,
        }
    }
}

impl<R: Read + AsFd, F: FnMut(u64)> Read for Watched<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let now = Instant::now();
            if self.cancel.load(Ordering::SeqCst) {
                self.stopped = Some(Stopped::Canceled);
            } else if now >= self.deadline {
                self.stopped = Some(Stopped::TimedOut);
            }
            if let Some(why) = self.stopped {
                return Err(std::io::Error::other(format!("transfer stopped: {why:?}")));
            }
            if now >= self.next_report {
                (self.progress)(self.received);
                self.next_report = now + self.every;
            }
            let mut fds = [PollFd::new(self.pipe.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {
                    let n = self.pipe.read(buf)?;
                    self.received += n as u64;
                    self.ended |= n == 0 && !buf.is_empty();
                    return Ok(n);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn watched<'a>(
        pipe: std::io::PipeReader,
        within: Duration,
        cancel: &'a AtomicBool,
        reports: &'a mut Vec<u64>,
    ) -> Watched<'a, std::io::PipeReader, impl FnMut(u64) + 'a> {
        let every = Duration::from_millis(50);
        Watched::new(pipe, Instant::now() + within, cancel, every, move |n| {
            reports.push(n)
        })
    }

    #[test]
    fn a_silent_sender_that_holds_the_pipe_times_out() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let cancel = AtomicBool::new(false);
        let mut reports = Vec::new();
        let start = Instant::now();
        let mut stream = watched(reader, Duration::from_millis(300), &cancel, &mut reports);
        assert!(stream.read(&mut [0; 16]).is_err());
        assert!(matches!(stream.stopped, Some(Stopped::TimedOut)));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        drop(stream);
        assert!(
            !reports.is_empty() && reports.iter().all(|&n| n == 0),
            "{reports:?}"
        );
    }

    #[test]
    fn a_cancel_stops_the_transfer_and_progress_counts_what_arrived() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let cancel = AtomicBool::new(false);
        let mut reports = Vec::new();
        let mut stream = watched(reader, Duration::from_secs(60), &cancel, &mut reports);
        let mut buf = [0; 16];
        writer.write_all(b"0123456789").unwrap();
        assert_eq!(stream.read(&mut buf).unwrap(), 10);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                cancel.store(true, Ordering::SeqCst);
            });
            assert!(stream.read(&mut buf).is_err());
        });
        assert!(matches!(stream.stopped, Some(Stopped::Canceled)));
        drop(stream);
        assert_eq!(reports.last(), Some(&10), "{reports:?}");
    }
}
