//! Reporting status events back through the dev VM's `qci.Status` service.

use qci_core::process::{wait_or_kill_at, write_within};
use qci_core::{JobId, State, StatusEvent};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot call qci.Status: {0}")]
    Spawn(std::io::Error),
    #[error("qci.Status did not answer within {0:?}")]
    Timeout(Duration),
    #[error("qci.Status failed: {0}")]
    Failed(String),
}

/// Sends events for one job to one dev VM.
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
        Err(ReportError::Failed(crate::call::failure(
            status,
            child.stderr.take(),
        )))
    }
}
