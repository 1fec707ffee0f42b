//! Reporting status events back through the dev VM's `qci.Status` service.

use qci_core::process::wait_or_kill;
use qci_core::{JobId, State, StatusEvent};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

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
    pub timeout: Duration,
}

impl Reporter {
    pub fn send(&self, state: State, description: &str) -> Result<(), ReportError> {
        let event = StatusEvent::new(&self.job, state, description);
        let mut child = qci_qrexec::call::from_dom0(&self.dev_vm, "qci.Status", self.job.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(ReportError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A service that exits early closes the pipe; its status says why.
            let _ = stdin.write_all(event.to_json().as_bytes());
        }
        let status = wait_or_kill(&mut child, self.timeout)
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
