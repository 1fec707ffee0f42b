//! The guest channel: how the host reaches dom0 of a machine. No hypervisor
//! streams a guest process's output, so the channel only starts commands,
//! reports their exit codes, and moves files; the live log is followed by
//! reading dom0's growing log file.

use std::time::{Duration, Instant};

/// A process started in dom0, as the channel knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPid(pub i64);

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The channel did not answer (agent down, machine off, booting).
    #[error("dom0 does not answer: {0}")]
    NoAnswer(String),
    /// The channel's command-line client (virsh) gave no answer.
    #[error("dom0 does not answer: {0}")]
    Client(#[source] crate::command::CommandError),
    /// dom0 answered with an error.
    #[error("dom0: {0}")]
    Failed(String),
    #[error("{what} took longer than {}s", .after.as_secs())]
    Timeout { what: String, after: Duration },
}

pub trait GuestChannel: Send + Sync {
    /// Starts `argv` in dom0 (no shell unless argv says so), output discarded.
    fn start(&self, argv: &[String]) -> Result<GuestPid, GuestError>;
    /// The exit code once the process has ended; `None` while it runs.
    fn exit_code(&self, pid: GuestPid) -> Result<Option<i32>, GuestError>;
    /// Writes `data` to `path` in dom0, replacing it.
    fn copy_in(&self, data: &[u8], path: &str) -> Result<(), GuestError>;
    /// The whole of `path` in dom0.
    fn copy_out(&self, path: &str) -> Result<Vec<u8>, GuestError>;
    /// Up to `max` bytes of `path` from `offset` (fewer at its end; none if
    /// the file does not exist yet): how a growing file is followed.
    fn read_at(&self, path: &str, offset: u64, max: usize) -> Result<Vec<u8>, GuestError>;

    /// Runs `argv` to its end, up to `timeout`.
    fn run(&self, argv: &[String], timeout: Duration) -> Result<i32, GuestError> {
        let pid = self.start(argv)?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(code) = self.exit_code(pid)? {
                return Ok(code);
            }
            if Instant::now() >= deadline {
                return Err(GuestError::Timeout {
                    what: argv.first().cloned().unwrap_or_default(),
                    after: timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

/// Quotes `s` as one word for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// dom0 of one machine, with the few things the host does through it.
pub struct Dom0<'a> {
    pub guest: &'a dyn GuestChannel,
    pub dev_vm: &'a str,
    /// Where the host may put files in dom0 for a moment.
    pub tmp_dir: &'a str,
    pub log_dir: &'a str,
    pub timeout: Duration,
}

impl Dom0<'_> {
    /// Runs a shell command in dom0.
    pub fn sh(&self, script: &str) -> Result<i32, GuestError> {
        self.guest
            .run(&["sh".into(), "-c".into(), script.into()], self.timeout)
    }

    /// The exit of `true` in the dev VM, run from dom0: the one test that a
    /// machine is up for a job, both while it boots and when a failed
    /// script may instead mean a lost dev VM, so both ask the same thing.
    pub fn check_dev_vm(&self, timeout: Duration) -> Result<i32, GuestError> {
        let argv = ["qvm-run", "--pass-io", "--no-gui", self.dev_vm, "true"].map(String::from);
        self.guest.run(&argv, timeout)
    }

    /// `qvm-run --pass-io` of `command` in the dev VM; stdin from `input`
    /// (placed in dom0 first), stdout returned. Fails on a non-zero exit.
    pub fn dev_vm(
        &self,
        command: &str,
        input: Option<&[u8]>,
        tag: &str,
    ) -> Result<Vec<u8>, GuestError> {
        let base = format!("{}/qci-host-{tag}", self.tmp_dir);
        let (inp, out) = (format!("{base}.in"), format!("{base}.out"));
        let redirect_in = match input {
            Some(data) => {
                self.guest.copy_in(data, &inp)?;
                format!("< {}", sh_quote(&inp))
            }
            None => "< /dev/null".into(),
        };
        let script = format!(
            "qvm-run --pass-io --no-gui {} {} {redirect_in} > {}; rc=$?; rm -f {}; exit $rc",
            sh_quote(self.dev_vm),
            sh_quote(command),
            sh_quote(&out),
            sh_quote(&inp),
        );
        let code = self.sh(&script)?;
        let output = self.guest.copy_out(&out);
        let _ = self.sh(&format!("rm -f {}", sh_quote(&out)));
        if code != 0 {
            return Err(GuestError::Failed(format!(
                "`{command}` in {} exited with {code}",
                self.dev_vm
            )));
        }
        output
    }

    /// Calls `SERVICE+ARG` in the dev VM from dom0 with `input` on stdin.
    pub fn call_service(
        &self,
        service_arg: &str,
        input: &[u8],
        tag: &str,
    ) -> Result<(), GuestError> {
        let inp = format!("{}/qci-host-{tag}.in", self.tmp_dir);
        self.guest.copy_in(input, &inp)?;
        let script = format!(
            "qvm-run --pass-io --no-gui --service -- {} {} < {} > /dev/null; rc=$?; rm -f {}; exit $rc",
            sh_quote(self.dev_vm),
            sh_quote(service_arg),
            sh_quote(&inp),
            sh_quote(&inp),
        );
        match self.sh(&script)? {
            0 => Ok(()),
            code => Err(GuestError::Failed(format!(
                "{service_arg} in {} exited with {code}",
                self.dev_vm
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quote_survives_quotes() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("it's a $HOME `x`")))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"it's a $HOME `x`");
    }
}
