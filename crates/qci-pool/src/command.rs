//! Running a host program (virsh) with a bound, its output collected.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end, or kills it after `timeout` (`Err` then, and when
/// it cannot start). Output is read on threads so a full pipe never blocks.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Finished, String> {
    let shown = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
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
    let status = qci_core::process::wait_or_kill(&mut child, timeout)
        .map_err(|e| format!("lost {shown}: {e}"))?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        None => Err(format!(
            "{shown} did not answer within {}s",
            timeout.as_secs()
        )),
        Some(s) => Ok(Finished {
            success: s.success(),
            stdout,
            stderr,
        }),
    }
}
