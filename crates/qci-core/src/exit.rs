//! The exit codes every qci binary uses (DESIGN.md). qrexec reserves 125 to
//! 127 for itself, so a caller could not tell our code from a refused or
//! missing service; no variant maps there.

/// Why a qci process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    /// A step of the project failed: the project's fault.
    StepFailed = 1,
    /// The caller asked for something invalid: the caller's fault.
    BadInput = 2,
    /// CI itself broke (infrastructure, timeout, cancel): nobody's code is to blame.
    CiError = 3,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Reads a child's exit status back into our vocabulary. Anything that is
    /// not one of ours (a signal, qrexec's 125 to 127) is a CI error.
    pub fn from_status(code: Option<i32>) -> Self {
        match code {
            Some(0) => Self::Success,
            Some(1) => Self::StepFailed,
            Some(2) => Self::BadInput,
            _ => Self::CiError,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}
