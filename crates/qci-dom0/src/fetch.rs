//! Pulling the code out of the dev VM: `qci.Export` streams a tar archive
//! straight into the hardened unpacker. No temporary archive exists, and a
//! watchdog bounds the whole transfer.

use qci_core::JobId;
use qci_core::process::wait_or_kill;
use qci_core::unpack::{self, Limits, Summary, UnpackError};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot call qci.Export: {0}")]
    Spawn(std::io::Error),
    #[error("the code transfer took longer than {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Unpack(#[from] UnpackError),
    #[error("qci.Export failed: {0}")]
    Export(String),
}

const EXIT_GRACE: Duration = Duration::from_secs(10);

pub fn fetch_code(
    dev_vm: &str,
    job: &JobId,
    dest: &Path,
    limits: &Limits,
    timeout: Duration,
) -> Result<Summary, FetchError> {
    let mut child = qci_qrexec::call::from_dom0(dev_vm, "qci.Export", job.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FetchError::Spawn)?;
    let pid = child.id();
    let timed_out = Arc::new(AtomicBool::new(false));
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if finished.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                timed_out.store(true, Ordering::SeqCst);
                // The child is not reaped before the watchdog is joined, so the pid is still ours.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        })
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let result = unpack::unpack(stdout, dest, limits);
    if result.is_err() {
        // Stop the sender; it may be blocked writing into a pipe nobody reads.
        let _ = child.kill();
    }
    drop(done);
    let _ = watchdog.join();
    // The stream has ended; a sender that lingers past that gets a short grace.
    let status = wait_or_kill(&mut child, EXIT_GRACE).map_err(FetchError::Spawn)?;
    let mut stderr = String::new();
    if let Some(err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.take(500).read_to_string(&mut stderr);
    }
    if timed_out.load(Ordering::SeqCst) {
        return Err(FetchError::Timeout(timeout));
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
