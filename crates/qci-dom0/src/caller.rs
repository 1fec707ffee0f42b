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
pub type Asked = Option<Result<RunRequest, BadRequest>>;

/// A request line dom0 refuses; the job is then refused as bad input.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// Not the JSON of a [`RunRequest`]; said in serde_json's words.
    #[error(transparent)]
    Malformed(#[from] serde_json::Error),
    /// No newline within [`RunRequest::MAX_BYTES`]: dom0 stops reading
    /// rather than buffer a caller's endless line.
    #[error("the request on stdin is longer than {} bytes", RunRequest::MAX_BYTES)]
    TooLong,
}

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
            .spawn(move || {
                watch(std::io::stdin(), std::io::stdout(), &tx, || {
                    signals::cancel(CancelReason::CallerGone);
                });
            });
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

/// Watches `stdin` (the request, then its end) and `stdout` (its reader
/// going away) until the caller is gone, then calls `gone`; says what was
/// asked on `asked`.
fn watch(
    mut stdin: impl AsFd + Read,
    stdout: impl AsFd,
    asked: &mpsc::Sender<Asked>,
    gone: impl FnOnce(),
) {
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
                gone();
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
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if n == 0 {
            reading = false;
            if requested {
                gone();
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
            let parsed = RunRequest::parse(&line[..end]).map_err(BadRequest::from);
            let _ = asked.send(Some(parsed));
        } else if line.len() > RunRequest::MAX_BYTES {
            requested = true;
            let _ = asked.send(Some(Err(BadRequest::TooLong)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Watches a pair of pipes on a thread; returns the caller's ends, the
    /// requests and the flag that `gone` sets.
    fn watched() -> (
        std::io::PipeWriter,
        std::io::PipeReader,
        mpsc::Receiver<Asked>,
        Arc<AtomicBool>,
        std::thread::JoinHandle<()>,
    ) {
        let (stdin, to_dom0) = std::io::pipe().unwrap();
        let (from_dom0, stdout) = std::io::pipe().unwrap();
        let (tx, rx) = mpsc::channel();
        let gone = Arc::new(AtomicBool::new(false));
        let flag = gone.clone();
        let thread = std::thread::spawn(move || {
            watch(stdin, stdout, &tx, || flag.store(true, Ordering::SeqCst));
        });
        (to_dom0, from_dom0, rx, gone, thread)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_request_then_the_end_of_stdin_is_a_caller_gone() {
        let (mut to_dom0, _from_dom0, asked, gone, thread) = watched();
        to_dom0.write_all(b"{\"timeout_secs\": 7}\n").unwrap();
        let request = asked.recv_timeout(WAIT).unwrap().unwrap().unwrap();
        assert_eq!(request.timeout_secs, 7);
        assert!(!gone.load(Ordering::SeqCst));
        drop(to_dom0);
        thread.join().unwrap();
        assert!(gone.load(Ordering::SeqCst));
    }

    #[test]
    fn stdin_that_ends_without_a_request_means_nothing_but_a_gone_reader_does() {
        let (to_dom0, from_dom0, asked, gone, thread) = watched();
        drop(to_dom0);
        assert!(asked.recv_timeout(WAIT).unwrap().is_none());
        assert!(!gone.load(Ordering::SeqCst));
        drop(from_dom0);
        thread.join().unwrap();
        assert!(gone.load(Ordering::SeqCst));
    }

    #[test]
    fn a_malformed_or_endless_request_is_refused() {
        let (mut to_dom0, _from_dom0, asked, _gone, _thread) = watched();
        to_dom0
            .write_all(b"{\"timeout_secs\": 1, \"more\": 1}\n")
            .unwrap();
        let why = asked.recv_timeout(WAIT).unwrap().unwrap().unwrap_err();
        assert!(
            matches!(&why, BadRequest::Malformed(_))
                && why.to_string().contains("unknown field `more`"),
            "{why}"
        );

        let (mut to_dom0, _from_dom0, asked, _gone, _thread) = watched();
        to_dom0
            .write_all(&[b' '; 2 * RunRequest::MAX_BYTES])
            .unwrap();
        let why = asked.recv_timeout(WAIT).unwrap().unwrap().unwrap_err();
        assert!(matches!(why, BadRequest::TooLong), "{why}");
    }
}
