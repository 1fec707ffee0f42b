//! What can go wrong in the pool, and which exit code each means.

use crate::control::ControlError;
use qci_core::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no machine named {0:?} in the pool (see `qci pool`)")]
    UnknownMachine(String),
    #[error("no machine runs Qubes {0:?} in the pool (see `qci pool`)")]
    UnknownVersion(String),
    /// A job id made from configured names that breaks the rules.
    #[error(transparent)]
    BadJobId(#[from] qci_core::job_id::JobIdError),
    #[error("gave up waiting for a free machine: the queue timeout passed")]
    QueueTimeout,
    #[error("canceled before the job started")]
    Canceled,
    #[error("machine {machine}: {source}")]
    Hypervisor {
        machine: String,
        source: ControlError,
    },
    #[error("lease store: cannot create {}: {source}", path.display())]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("lease store: {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error("lease store: {source}")]
    Store { source: rusqlite::Error },
    /// The socket a waiter is woken through.
    #[error("lease store: wake-up socket: {0}")]
    WakeUp(#[source] std::io::Error),
}

impl PoolError {
    /// The caller asked for something that cannot be: exit 2, and nothing
    /// was touched.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::UnknownMachine(_) | Self::UnknownVersion(_) | Self::BadJobId(_)
        )
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.is_bad_input() {
            ExitCode::BadInput
        } else {
            ExitCode::CiError
        }
    }
}
