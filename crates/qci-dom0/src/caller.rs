//! The caller of `qci.Run`, watched for the whole job: what it asks for
//! (a [`RunRequest`] on stdin) and whether it is still there. When the
//! caller goes away (its qrexec stream closes: stdin ends after a request,
//! or nobody reads stdout any more), the job is canceled, as on SIGTERM:
//! its steps are stopped, the log kept, and it ends `canceled` at once,
//! rather than running on for nobody and holding dom0 from the next job.

use crate::signals::{self, CancelReason};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use qci_core::job_file::RunRequest;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::Duration;

/// What came first on stdin: a request, a malformed one, or nothing at all.
pub type Asked = Option<Result<RunRequest, String>>;

pub struct Caller {
    asked: mpsc::Receiver<Asked>,
}

impl Caller {
    /// Starts watching stdin and stdout on a thread of its own, which sets
    /// the cancel flag when the caller has gone.
    pub fn watch() -> Self {
        let (tx, asked) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("qci-caller".into())
            .spawn(move || watch(tx));
        if let Err(e) = spawned {
            tracing::warn!("cannot watch the caller: {e}");
        }
        Self { asked }
    }

    /// The caller's request, waiting at most `wait` for it: `None` when it
    /// sent none (stdin ended empty, or nothing came in time).
    pub fn request(&self, wait: Duration) -> Asked {
        self.asked.recv_timeout(wait).ok().flatten()
    }
}

fn watch(asked: mpsc::Sender<Asked>) {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut line = Vec::new();
    // Until the request is in: then stdin's end means the caller is gone.
    let mut requested = false;
    let mut reading = true;
    let mut writing = true;
    let mut buf = [0u8; 4096];
    let closed = PollFlags::POLLERR | PollFlags::POLLHUP;
    while reading || writing {
        let mut fds = Vec::with_capacity(2);
        if writing {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::empty()));
        }
        if reading {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("cannot watch the caller: {e}");
                return;
            }
        }
        let revents: Vec<_> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        let mut revents = revents.into_iter();
        if writing {
            let out = revents.next().unwrap_or(PollFlags::empty());
            if out.contains(PollFlags::POLLNVAL) {
                // No stdout at all: only stdin can say anything now.
                writing = false;
            } else if out.intersects(closed) {
                signals::cancel(CancelReason::CallerGone);
                return;
            }
        }
        let Some(input) = revents.next().filter(|_| reading) else {
            continue;
        };
        if input.contains(PollFlags::POLLNVAL) {
            reading = false;
            let _ = asked.send(None);
            continue;
        }
        if !input.intersects(PollFlags::POLLIN | closed) {
            continue;
        }
        let n = match stdin.lock().read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if n == 0 {
            reading = false;
            if requested {
                signals::cancel(CancelReason::CallerGone);
                return;
            }
            // Ended before any request: a caller that sends none
            // (stdin from /dev/null), whose stdin's end means nothing.
            let _ = asked.send(None);
            continue;
        }
        if requested {
            // Anything after the request is not ours to read: dropped.
            continue;
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            requested = true;
            let parsed = RunRequest::parse(&line[..end]).map_err(|e| e.to_string());
            let _ = asked.send(Some(parsed));
        } else if line.len() > RunRequest::MAX_BYTES {
            requested = true;
            let too_long = format!(
                "the request on stdin is longer than {} bytes",
                RunRequest::MAX_BYTES
            );
            let _ = asked.send(Some(Err(too_long)));
        }
    }
}
