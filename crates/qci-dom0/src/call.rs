//! What dom0 says when one of its calls into the dev VM fails.

use std::io::Read;
use std::process::{ChildStderr, ExitStatus};

/// Why a finished call failed: qrexec's own codes in words, else the exit
/// code and the start of what the service said on stderr. Only what is
/// already in the pipe is read: after the call has exited, whatever it
/// started may still hold the pipe open, and dom0 must not wait on that.
pub fn failure(status: ExitStatus, stderr: Option<ChildStderr>) -> String {
    let code = status.code();
    if let Some(why) = qci_qrexec::call::describe_exit(code) {
        return why.to_owned();
    }
    let mut said = Vec::new();
    if let Some(err) = stderr {
        let _ = nix::fcntl::fcntl(
            &err,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let _ = err.take(500).read_to_end(&mut said);
    }
    let said = String::from_utf8_lossy(&said);
    match (code, said.trim()) {
        (None, _) => "killed by a signal".into(),
        (Some(c), "") => format!("exit {c}"),
        (Some(c), why) => format!("exit {c}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn call(script: &str) -> String {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = child.wait().unwrap();
        failure(status, child.stderr.take())
    }

    #[test]
    fn names_qrexec_codes_and_quotes_the_service() {
        assert!(call("exit 126").contains("refused by qrexec policy"));
        assert_eq!(call("exit 2"), "exit 2");
        assert_eq!(
            call("echo ' no such job ' >&2; exit 2"),
            "exit 2: no such job"
        );
    }

    #[test]
    fn does_not_wait_for_a_pipe_held_by_a_leftover() {
        let start = std::time::Instant::now();
        let why = call("echo gone >&2; sleep 3 & exit 4");
        assert_eq!(why, "exit 4: gone");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }
}
