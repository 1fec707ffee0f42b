//! The parts of qci that every side shares: the validated names and messages
//! that cross the qrexec boundary, the pipeline a project asks for, and the
//! machinery dom0 uses to run it (step executor, log writer, tar unpacker).
//!
//! Nothing in here talks to the network: `qci-dom0` links this crate.

pub mod artifacts;
#[cfg(feature = "diagnostics")]
pub mod diagnostics;
pub mod exit;
pub mod job_file;
pub mod job_id;
pub mod lock_file;
pub mod log;
pub mod pipeline;
pub mod process;
pub mod retry;
pub mod secret;
pub mod status;
pub mod step;
pub mod toml_file;
pub mod tree;
pub mod unpack;

pub use exit::ExitCode;
pub use job_id::JobId;
pub use status::{State, StatusEvent};
