//! Calling other qrexec services the way Qubes expects: by running the
//! standard tools by name (`qrexec-client-vm` in a VM, `qvm-run` in dom0), so
//! the same code runs inside Qubes and on the emulated machine.

use std::process::Command;

/// qrexec's own exit codes (reference §6). A service must never use them.
pub mod exit {
    /// qrexec itself failed: not executable, broken link, exec failure.
    pub const PROBLEM: i32 = 125;
    /// Refused by policy.
    pub const REFUSED: i32 = 126;
    /// No such service in the target.
    pub const NOT_FOUND: i32 = 127;
}

/// A VM's call of `SERVICE+ARG` in `target` (policy-checked by dom0).
pub fn from_vm(target: &str, service: &str, argument: &str) -> Command {
    let mut cmd = Command::new("qrexec-client-vm");
    cmd.arg("--")
        .arg(target)
        .arg(format!("{service}+{argument}"));
    cmd
}

/// dom0's call of `SERVICE+ARG` in `vm` (not policy-checked): binary-safe
/// stdin and stdout, no GUI session wait.
pub fn from_dom0(vm: &str, service: &str, argument: &str) -> Command {
    let mut cmd = Command::new("qvm-run");
    cmd.args(["--pass-io", "--no-gui", "--service", "--"])
        .arg(vm)
        .arg(format!("{service}+{argument}"));
    cmd
}

/// Explains an exit status of a qrexec call in a user's words, or `None`
/// when the status is the service's own.
pub fn describe_exit(code: Option<i32>) -> Option<&'static str> {
    match code? {
        exit::PROBLEM => Some("qrexec failed to start the service (exit 125)"),
        exit::REFUSED => Some("the call was refused by qrexec policy (exit 126)"),
        exit::NOT_FOUND => Some("the service is not installed in the target (exit 127)"),
        _ => None,
    }
}
