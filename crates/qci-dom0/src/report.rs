//! Reporting status events back through the dev VM's `qci.Status` service.

use qci_core::process::{wait_or_kill_at, write_within};
use qci_core::{JobId, State, StatusEvent};
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot call qci.Status: {0}")]
    Spawn(std::io::Error),
    #[error("qci.Status did not answer within {0:?}")]
    Timeout(Duration),
    #[error("qci.Status failed: {0}")]
    Failed(String),
    /// The dev VM refused the event as bad input (exit 2): the job has
    /// ended there already, say. Sending it again gets the same answer.
    #[error("qci.Status refused it: {0}")]
    Refused(String),
}

/// Sends events for one job to one dev VM.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub dev_vm: String,
    pub job: JobId,
    /// Bound on a whole call: the event written and the service ended. The
    /// dev VM may never read, never answer: dom0 goes on regardless.
    pub timeout: Duration,
}

impl Reporter {
    pub fn send(&self, state: State, description: &str) -> Result<(), ReportError> {
        let deadline = Instant::now() + self.timeout;
        let event = StatusEvent::new(&self.job, state, description);
        let mut child = qci_qrexec::call::from_dom0(&self.dev_vm, "qci.Status", self.job.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(ReportError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A service that exits early closes the pipe, and one that never
            // reads leaves no time to wait: either way its end says why.
            let _ = write_within(&mut stdin, event.to_json().as_bytes(), deadline);
        }
        let status = wait_or_kill_at(&mut child, deadline)
            .map_err(ReportError::Spawn)?
            .ok_or(ReportError::Timeout(self.timeout))?;
        if status.success() {
            return Ok(());
        }
        let why = crate::call::failure(status, child.stderr.take());
        if status.code() == Some(qci_core::ExitCode::BadInput.code()) {
            return Err(ReportError::Refused(why));
        }
        Err(ReportError::Failed(why))
    }
}

/// `running` statuses, sent on a thread of their own so that the job does
/// not wait for them while it runs: each is a qrexec call into the dev VM,
/// and from there maybe an HTTP request to GitHub. They go out in order, one
/// at a time, at most one per [`PROGRESS_INTERVAL`]; one that is still
/// waiting when a newer one comes is replaced by it, since only the latest
/// says where the job is. So steps of a second or more each show, and a
/// burst of short ones costs one call, not one each.
///
/// [`Progress::finish`] waits for the one being sent (bounded by the
/// reporter's timeout) and then sends the one waiting, if any, at once, so
/// that the last step shows and the final status, sent after, is the last.
/// After a call that timed out (the dev VM does not answer), no more are
/// sent.
pub struct Progress {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The least time between two `running` statuses.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    /// The description of the next `running` status to send.
    next: Option<String>,
    /// When the last status was taken to be sent.
    taken: Option<Instant>,
    /// No more statuses will come: send the waiting one at once, then end.
    closed: bool,
    /// Why sends failed, for the log.
    failures: Vec<String>,
    /// A send timed out: the dev VM does not answer.
    stalled: bool,
}

/// Why a `running` status was not sent.
struct Failed {
    why: String,
    /// The call timed out.
    stalled: bool,
}

impl Progress {
    pub fn start(reporter: &Reporter) -> Self {
        let reporter = reporter.clone();
        Self::with(PROGRESS_INTERVAL, move |description| {
            reporter
                .send(State::Running, description)
                .map_err(|e| Failed {
                    why: format!("could not report running: {e}"),
                    stalled: matches!(e, ReportError::Timeout(_)),
                })
        })
    }

    /// Progress sent by `send`, which says why it failed, at most once per
    /// `interval`.
    fn with(
        interval: Duration,
        send: impl Fn(&str) -> Result<(), Failed> + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let worker = std::thread::Builder::new()
            .name("qci-progress".into())
            .spawn({
                let shared = shared.clone();
                move || send_progress(&shared, interval, send)
            });
        let worker = match worker {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot start the status thread, running statuses are not sent: {e}"
                );
                None
            }
        };
        Self { shared, worker }
    }

    /// Queues a `running` status, replacing one that has not gone out yet.
    pub fn report(&self, description: &str) {
        let mut queue = self.shared.lock();
        queue.next = Some(description.to_owned());
        self.shared.wake.notify_one();
    }

    /// Why sends failed since the last call, and whether one timed out.
    pub fn failures(&self) -> (Vec<String>, bool) {
        let mut queue = self.shared.lock();
        (std::mem::take(&mut queue.failures), queue.stalled)
    }

    /// Waits for the status being sent and the one waiting, and gives the
    /// failures not yet taken and whether a send timed out.
    pub fn finish(mut self) -> (Vec<String>, bool) {
        {
            let mut queue = self.shared.lock();
            queue.closed = true;
            self.shared.wake.notify_one();
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        self.failures()
    }
}

impl Shared {
    /// The queue; a panic elsewhere leaves it usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn send_progress(shared: &Shared, interval: Duration, send: impl Fn(&str) -> Result<(), Failed>) {
    let mut queue = shared.lock();
    loop {
        if queue.stalled {
            queue.next = None;
        }
        if queue.next.is_none() {
            if queue.closed {
                return;
            }
            queue = shared
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let due = queue.taken.map(|at| at + interval);
        if let Some(wait) = due.and_then(|due| due.checked_duration_since(Instant::now()))
            && !queue.closed
        {
            queue = shared
                .wake
                .wait_timeout(queue, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        let Some(description) = queue.next.take() else {
            continue;
        };
        queue.taken = Some(Instant::now());
        drop(queue);
        let sent = send(&description);
        queue = shared.lock();
        if let Err(failed) = sent {
            queue.failures.push(failed.why);
            queue.stalled |= failed.stalled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Progress whose sends are recorded and each held until released.
    fn held() -> (Progress, mpsc::Receiver<String>, mpsc::SyncSender<()>) {
        let (sent_tx, sent_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::sync_channel::<()>(0);
        let release_rx = Mutex::new(release_rx);
        let progress = Progress::with(Duration::ZERO, move |d| {
            sent_tx.send(d.to_owned()).unwrap();
            let _ = release_rx.lock().unwrap().recv();
            match d {
                "bad" => Err(Failed {
                    why: "could not report running: refused".into(),
                    stalled: false,
                }),
                "slow" => Err(Failed {
                    why: "could not report running: timed out".into(),
                    stalled: true,
                }),
                _ => Ok(()),
            }
        });
        (progress, sent_rx, release_tx)
    }

    #[test]
    fn statuses_go_out_in_order_and_a_newer_one_replaces_a_waiting_one() {
        let (progress, sent, release) = held();
        let start = Instant::now();
        progress.report("one");
        assert_eq!(sent.recv().unwrap(), "one");
        // "one" is being sent and held: these wait, and only the last stays.
        progress.report("two");
        progress.report("bad");
        assert!(start.elapsed() < Duration::from_secs(5), "report blocked");
        release.send(()).unwrap();
        assert_eq!(sent.recv().unwrap(), "bad");
        release.send(()).unwrap();
        progress.report("four");
        assert_eq!(sent.recv().unwrap(), "four");
        release.send(()).unwrap();
        assert_eq!(
            progress.finish(),
            (vec!["could not report running: refused".to_owned()], false),
            "the failure is kept for the log"
        );
        assert!(sent.try_recv().is_err(), "nothing else was sent");
    }

    #[test]
    fn finish_waits_for_the_status_being_sent_then_sends_the_waiting_one() {
        let (progress, sent, release) = held();
        progress.report("one");
        assert_eq!(sent.recv().unwrap(), "one");
        progress.report("two");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            release.send(()).unwrap();
            // "two", sent at the end, is held too until released.
            release.send(()).unwrap();
        });
        let start = Instant::now();
        assert_eq!(progress.finish(), (Vec::new(), false));
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "finish returned while a status was being sent"
        );
        releaser.join().unwrap();
        assert_eq!(
            sent.try_iter().collect::<Vec<_>>(),
            ["two"],
            "the last step shows"
        );
    }

    #[test]
    fn the_first_status_is_sent_even_when_the_job_ends_at_once() {
        let (sent_tx, sent_rx) = mpsc::channel();
        let progress = Progress::with(Duration::ZERO, move |d| {
            sent_tx.send(d.to_owned()).unwrap();
            Ok(())
        });
        progress.report("one");
        assert_eq!(progress.finish(), (Vec::new(), false));
        assert_eq!(sent_rx.try_iter().collect::<Vec<_>>(), ["one"]);
    }

    #[test]
    fn statuses_within_the_interval_are_merged_into_the_latest() {
        let (sent_tx, sent_rx) = mpsc::channel();
        let progress = Progress::with(Duration::from_millis(300), move |d| {
            sent_tx.send((d.to_owned(), Instant::now())).unwrap();
            Ok(())
        });
        progress.report("one");
        let (first, at) = sent_rx.recv().unwrap();
        assert_eq!(first, "one");
        progress.report("two");
        progress.report("three");
        let (next, later) = sent_rx.recv().unwrap();
        assert_eq!(next, "three");
        assert!(later - at >= Duration::from_millis(300), "sent too soon");
        // A status waiting out the interval when the job ends is sent at
        // once: the end does not wait for the interval.
        progress.report("four");
        let start = Instant::now();
        assert_eq!(progress.finish(), (Vec::new(), false));
        assert!(start.elapsed() < Duration::from_millis(250));
        assert_eq!(
            sent_rx.try_iter().map(|s| s.0).collect::<Vec<_>>(),
            ["four"]
        );
    }

    #[test]
    fn after_a_status_that_timed_out_no_more_are_sent() {
        let (progress, sent, release) = held();
        progress.report("slow");
        assert_eq!(sent.recv().unwrap(), "slow");
        release.send(()).unwrap();
        wait_until(|| progress.failures().1);
        progress.report("later");
        assert_eq!(progress.finish(), (Vec::new(), true));
        assert!(
            sent.try_recv().is_err(),
            "a status was sent after the stall"
        );
    }

    fn wait_until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never happened");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
