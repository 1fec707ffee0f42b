//! Reporting status events back through the dev VM's `qci.Status` service.

use qci_core::process::{wait_until, write_within};
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
        let written = match child.stdin.take() {
            // A service that exits early closes the pipe; its status says why.
            Some(mut stdin) => write_within(&mut stdin, event.to_json().as_bytes(), deadline),
            None => Ok(()),
        };
        let status = match written {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
            _ => wait_until(&mut child, deadline).map_err(ReportError::Spawn)?,
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ReportError::Timeout(self.timeout));
        };
        if status.success() {
            return Ok(());
        }
        Err(ReportError::Failed(crate::call::failure(
            status,
            child.stderr.take(),
        )))
    }
}
