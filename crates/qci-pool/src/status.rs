//! The host side of "every job ends with a final status", and the
//! callbacks a caller gets while a job runs.

use crate::guest::Dom0;
use qci_core::{JobId, State, StatusEvent};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a job stands, as the runner reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a machine, behind `ahead` other jobs.
    Queued {
        ahead: usize,
    },
    Leased {
        machine: String,
    },
    Reverting {
        snapshot: String,
    },
    Booting,
    /// Still waiting for dom0 and the dev VM to answer.
    WaitingForDom0 {
        waited: Duration,
    },
    /// Writing the job file into the dev VM.
    PlacingJob,
    /// `qci-vm begin` runs; log chunks follow.
    Running,
    CopyingLog,
    PoweringOff,
    /// The machine never answered, or its hypervisor failed; the job goes
    /// to another one.
    Retrying {
        machine: String,
        why: String,
    },
    Finished {
        state: State,
    },
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queued { ahead: 0 } => write!(f, "waiting for a free machine"),
            Self::Queued { ahead } => write!(f, "waiting for a free machine ({ahead} ahead)"),
            Self::Leased { machine } => write!(f, "leased {machine}"),
            Self::Reverting { snapshot } => write!(f, "reverting to snapshot {snapshot}"),
            Self::Booting => write!(f, "booting"),
            Self::WaitingForDom0 { waited } => {
                write!(f, "waiting for dom0 ({}s)", waited.as_secs())
            }
            Self::PlacingJob => write!(f, "placing the job file in the dev VM"),
            Self::Running => write!(f, "running"),
            Self::CopyingLog => write!(f, "copying the log out of dom0"),
            Self::PoweringOff => write!(f, "powering off"),
            Self::Retrying { machine, why } => {
                write!(f, "{machine} failed ({why}); retrying on another machine")
            }
            Self::Finished { state } => write!(f, "finished: {state}"),
        }
    }
}

/// What the caller hears while a job runs. Called from the runner's thread.
pub trait JobEvents: Sync {
    fn phase(&self, _job: &JobId, _phase: &Phase) {}
    /// New bytes of dom0's `JOB.log`, in order, cut at line ends.
    fn log(&self, _job: &JobId, _chunk: &[u8]) {}
}

/// Ignores everything.
pub struct Silent;
impl JobEvents for Silent {}

/// Knows no final status and records none: for the steps before a job
/// runs, which never need one.
pub(crate) struct NoStatus;

impl FinalStatus for NoStatus {
    fn final_state(&self, _: &JobId, _: Option<&Dom0<'_>>) -> Option<(State, String)> {
        None
    }

    fn record(
        &self,
        _: &JobId,
        _: State,
        _: &str,
        _: Option<&Dom0<'_>>,
    ) -> Result<(), RecordError> {
        Ok(())
    }
}

/// Why a final status could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// [`SinkStatus`]'s copy on the host.
    #[error("{}: {source}", .path.display())]
    HostFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another implementation's own store (the server's jobs table): its
    /// error, whatever its type.
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
}

/// The caller's record of final statuses.
pub trait FinalStatus: Sync {
    /// The final state (and its description) recorded for `job`, if any.
    /// `dom0` reaches the machine while it is up; `None` when it is not.
    fn final_state(&self, job: &JobId, dom0: Option<&Dom0<'_>>) -> Option<(State, String)>;
    /// Records a final state the host decided (`error`, `canceled`).
    fn record(
        &self,
        job: &JobId,
        state: State,
        description: &str,
        dom0: Option<&Dom0<'_>>,
    ) -> Result<(), RecordError>;
}

/// The command line's [`FinalStatus`]: the job's `file` sink in the dev VM,
/// read back through dom0 and kept on the host beside the log
/// (`LOGS/JOB.status.jsonl`); a status the host decides is posted through
/// the dev VM's `qci.Status` when the machine answers, and written there.
pub struct SinkStatus {
    pub logs_dir: PathBuf,
}

impl SinkStatus {
    fn host_file(&self, job: &JobId) -> PathBuf {
        self.logs_dir.join(format!("{job}.status.jsonl"))
    }

    fn final_in(text: &str, job: &JobId) -> Option<(State, String)> {
        text.lines()
            .filter_map(|l| StatusEvent::parse_for(l.as_bytes(), job).ok())
            .rfind(|e| e.state.is_final())
            .map(|e| (e.state, e.description))
    }
}

impl FinalStatus for SinkStatus {
    fn final_state(&self, job: &JobId, dom0: Option<&Dom0<'_>>) -> Option<(State, String)> {
        if let Some(dom0) = dom0 {
            let cmd = format!("cat .qci/status/{job}.jsonl");
            if let Ok(bytes) = dom0.dev_vm(&cmd, None, &format!("{job}.status")) {
                let _ = std::fs::create_dir_all(&self.logs_dir);
                let _ = std::fs::write(self.host_file(job), &bytes);
                if let Some(found) = Self::final_in(&String::from_utf8_lossy(&bytes), job) {
                    return Some(found);
                }
            }
        }
        let text = std::fs::read_to_string(self.host_file(job)).unwrap_or_default();
        Self::final_in(&text, job)
    }

    fn record(
        &self,
        job: &JobId,
        state: State,
        description: &str,
        dom0: Option<&Dom0<'_>>,
    ) -> Result<(), RecordError> {
        let event = StatusEvent::new(job, state, description);
        if let Some(dom0) = dom0 {
            let arg = format!("qci.Status+{job}");
            if let Err(e) =
                dom0.call_service(&arg, event.to_json().as_bytes(), &format!("{job}.post"))
            {
                tracing::warn!("cannot post the {state} status through the dev VM: {e}");
            }
        }
        let at = |path: &Path| {
            let path = path.to_owned();
            move |source| RecordError::HostFile { path, source }
        };
        std::fs::create_dir_all(&self.logs_dir).map_err(at(&self.logs_dir))?;
        let path = self.host_file(job);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(at(&path))?;
        writeln!(f, "{}", event.to_json()).map_err(at(&path))
    }
}
