//! The one error of the `qci` command: what went wrong, and the exit code
//! it means (README's table, [`qci_core::ExitCode`]). `main` prints it.

use crate::jobs::JobsError;
use crate::local::LocalError;
use crate::out::OutputError;
use crate::pool::HostError;
use crate::serve::ServeError;
use qci_core::ExitCode;
use qci_emulator::MachineError;
use qci_pool::backend::install::InstallError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `qci run --local`.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// `qci bare-machine`.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// `qci run --machine|--qubes`, `qci pool`, `qci nightly`.
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    /// `qci qrexec`: the machine could not be opened or entered, or the
    /// call not made.
    #[error(transparent)]
    Qrexec(#[from] MachineError),
    /// Stdout failed; `earlier` is how the command itself failed, if it did.
    #[error("{source}")]
    Output {
        source: OutputError,
        earlier: Option<Box<CliError>>,
    },
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Local(e) => e.exit_code(),
            Self::Install(InstallError::Machine(MachineError::BadName(_))) => ExitCode::BadInput,
            Self::Install(_) => ExitCode::CiError,
            Self::Host(e) => e.exit_code(),
            Self::Serve(e) => e.exit_code(),
            Self::Jobs(e) => e.exit_code(),
            Self::Qrexec(_) => ExitCode::BadInput,
            // An incomplete output outranks the command's own outcome.
            Self::Output { .. } => ExitCode::CiError,
        }
    }
}
