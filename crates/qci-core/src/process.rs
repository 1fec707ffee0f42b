//! Waiting for child processes with a bound, which std does not offer.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits for `child` until `deadline`; `Ok(None)` means it is still running.
/// Polls, so the caller keeps its thread and needs no signal handling.
pub fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits up to `timeout`, then kills `child` and reaps it. `Ok(None)` means
/// it had to be killed.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    match wait_until(child, Instant::now() + timeout)? {
        Some(status) => Ok(Some(status)),
        None => {
            let _ = child.kill();
            child.wait()?;
            Ok(None)
        }
    }
}
