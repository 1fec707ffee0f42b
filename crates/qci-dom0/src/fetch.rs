//! Pulling the code out of the dev VM: `qci.Export` streams a tar archive
//! straight into the hardened unpacker. No temporary archive exists, and the
//! transfer ends at its deadline or on a cancel, whatever the sender does.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use qci_core::JobId;
use qci_core::process::wait_or_kill;
use qci_core::unpack::{self, Limits, Summary, UnpackError};
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

/// Streams the dev VM's `qci.Export` of `job` into `dest`, stopping when the
/// transfer outlasts `timeout` or when `cancel` is set, so a sender that
/// stalls or a cancel during a large transfer never holds dom0.
pub fn fetch_code(
    dev_vm: &str,
    job: &JobId,
    dest: &Path,
    limits: &Limits,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Summary, FetchError> {
    let mut child = qci_qrexec::call::from_dom0(dev_vm, "qci.Export", job.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FetchError::Spawn)?;
    let mut stream = Watched {
        pipe: child.stdout.take().expect("stdout is piped"),
        deadline: Instant::now() + timeout,
        cancel,
        stopped: None,
    };
    let result = unpack::unpack(&mut stream, dest, limits);
    if result.is_err() {
        // Stop the sender; it may be blocked writing into a pipe nobody reads.
        let _ = child.kill();
    }
    // The stream has ended; a sender that lingers past that gets a short grace.
    let status = wait_or_kill(&mut child, EXIT_GRACE).map_err(FetchError::Spawn)?;
    let mut stderr = String::new();
    if let Some(err) = child.stderr.take() {
        // Only what is there: whoever else holds the pipe may never close it.
        let _ = nix::fcntl::fcntl(
            &err,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let _ = err.take(500).read_to_string(&mut stderr);
    }
    match stream.stopped {
        Some(Stopped::TimedOut) => return Err(FetchError::Timeout(timeout)),
        Some(Stopped::Canceled) => return Err(FetchError::Canceled),
        None => {}
    }
    let summary = result?;
    let Some(status) = status else {
        return Err(FetchError::Export(
            "did not exit after the stream ended".into(),
        ));
    };
    if !status.success() {
        let code = status.code();
        let why = qci_qrexec::call::describe_exit(code)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("exit {code:?}: {}", stderr.trim()));
        return Err(FetchError::Export(why));
    }
    Ok(summary)
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
struct Watched<'a, R> {
    pipe: R,
    deadline: Instant,
    cancel: &'a AtomicBool,
    stopped: Option<Stopped>,
}

impl<R: Read + AsFd> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                self.stopped = Some(Stopped::Canceled);
            } else if Instant::now() >= self.deadline {
                self.stopped = Some(Stopped::TimedOut);
            }
            if let Some(why) = self.stopped {
                return Err(std::io::Error::other(format!("transfer stopped: {why:?}")));
            }
            let mut fds = [PollFd::new(self.pipe.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => return self.pipe.read(buf),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
