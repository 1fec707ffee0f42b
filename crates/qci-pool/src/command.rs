//! Running a host program (virsh) with a bound, its output collected.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why a bounded program gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("lost {program}: {source}")]
    Lost {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not answer within {}s", .after.as_secs())]
    Timeout { program: String, after: Duration },
}

pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end, or kills it after `timeout` (`Err` then, and when
/// it cannot start). Output is read on threads so a full pipe never blocks.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Finished, CommandError> {
    let shown = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: shown.clone(),
            source,
        })?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = qci_core::process::wait_or_kill(&mut child, timeout).map_err(|source| {
        CommandError::Lost {
            program: shown.clone(),
            source,
        }
    })?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        None => Err(CommandError::Timeout {
            program: shown,
            after: timeout,
        }),
        Some(s) => Ok(Finished {
            success: s.success(),
            stdout,
            stderr,
        }),
    }
}
