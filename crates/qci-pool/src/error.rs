//! What can go wrong in the pool, and which exit code each means.

use crate::control::ControlError;
use qci_core::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no machine named {0:?} in the pool (see `qci pool`)")]
    UnknownMachine(String),
    #[error("no machine runs Qubes {0:?} in the pool (see `qci pool`)")]
    UnknownVersion(String),
    #[error("{0}")]
    BadInput(String),
    #[error("gave up waiting for a free machine: the queue timeout passed")]
    QueueTimeout,
    #[error("canceled before the job started")]
    Canceled,
    #[error("machine {machine}: {source}")]
    Hypervisor {
        machine: String,
        source: ControlError,
    },
    #[error("lease store: {0}")]
    Store(String),
}

impl PoolError {
    /// The caller asked for something that cannot be: exit 2, and nothing
    /// was touched.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::UnknownMachine(_) | Self::UnknownVersion(_) | Self::BadInput(_)
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
