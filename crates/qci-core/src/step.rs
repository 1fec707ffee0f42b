//! Runs one pipeline step: `sh -c COMMAND` in its own process group, stdout
//! and stderr merged into the log line by line as they arrive, with a timeout
//! that kills the whole group (SIGTERM, grace period, SIGKILL).
//!
//! STUB: to be implemented (see the interface below).

use crate::log::LogWriter;
use crate::pipeline::Step;
use std::path::Path;
use std::time::Duration;

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Succeeded,
    /// Exited non-zero (`code`) or was killed by a signal not of our sending.
    Failed { code: Option<i32>, signal: Option<i32> },
    /// Ran past its timeout and was killed with its process group.
    TimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot start step {step}: {source}")]
    Spawn { step: String, source: std::io::Error },
    #[error("cannot write the log: {0}")]
    Log(#[from] std::io::Error),
}

/// Settings for every step of a run.
#[derive(Debug, Clone)]
pub struct StepContext<'a> {
    pub workdir: &'a Path,
    /// Added after the step's own environment is built (`CI=true`, `QCI_JOB`, ...).
    pub env: Vec<(String, String)>,
    /// Between SIGTERM and SIGKILL on timeout.
    pub grace: Duration,
}

pub fn run_step(_step: &Step, _ctx: &StepContext<'_>, _log: &mut LogWriter) -> Result<StepOutcome, StepError> {
    todo!()
}
