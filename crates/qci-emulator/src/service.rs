//! Finding and starting a service in a domain of the emulated machine, with
//! the environment, working directory, stderr handling and exit codes that
//! Qubes gives (reference §3, §5, §6).

use crate::policy::{Denied, Policy, PolicyError, Request, Resolution, rpc_char};
use crate::{DOM0, Machine, MachineError};
use nix::sys::stat::Mode;
use qci_qrexec::call::exit;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Who makes a call. Calls that start in dom0 are not policy-checked (the
/// source they name is taken as given); calls from a VM are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    Dom0 { source: &'a str },
    Vm(&'a str),
}

/// The end of a call, as the calling tool reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// The service's exit status (128+N for signal N), or qrexec's 125 to 127.
    pub code: i32,
    /// Why qrexec itself ended the call, for the tool to print (as Qubes
    /// prints `Request refused`).
    pub message: Option<String>,
}

impl CallOutcome {
    fn qrexec(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }
}

/// Service names as the daemon passes them on: bytes outside the RPC
/// charset become `_` (reference §4, `sanitize_name`). The daemon works on
/// bytes, so a multi-byte character becomes several `_`.
fn sanitize(name: &str) -> String {
    name.bytes()
        .map(char::from)
        .map(|c| if rpc_char(c) { c } else { '_' })
        .collect()
}

/// qrexec-daemon sets umask 0077 after making its socket, and dom0's
/// services inherit it (reference §5).
const DOM0_UMASK: Mode = Mode::from_bits_truncate(0o077);
/// A VM service starts from a login shell, whose umask is Debian's 0022.
const VM_UMASK: Mode = Mode::from_bits_truncate(0o022);

/// `NAME_MAX`: a longer `SERVICE+ARG` file name is skipped for `SERVICE`.
const NAME_MAX: usize = 255;

enum Found {
    Executable(PathBuf),
    Problem(String),
    Missing,
}

/// The search of `exec.c:find_qrexec_service`: `SERVICE+ARG` in every
/// directory, then `SERVICE`; the first name that exists decides.
fn find_service(domain_root: &Path, service: &str, full: &str) -> Found {
    let dirs =
        ["run/qubes-rpc", "usr/local/etc/qubes-rpc", "etc/qubes-rpc"].map(|d| domain_root.join(d));
    let names = [full, service]
        .into_iter()
        .filter(|n| n.len() <= NAME_MAX && !n.is_empty());
    for name in names {
        for dir in &dirs {
            let path = dir.join(name);
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            return match std::fs::metadata(&path) {
                Err(_) => Found::Problem(format!("{}: broken symlink", path.display())),
                Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
                    Found::Problem(format!("{}: not executable", path.display()))
                }
                Ok(_) => Found::Executable(path),
            };
        }
    }
    Found::Missing
}

impl Machine {
    /// Makes a qrexec call from `caller` to `target` of `SERVICE[+ARG]`, with
    /// this process's stdin and stdout as the service's. Blocks until the
    /// service exits.
    ///
    /// `stdin_prefix` is sent before this process's stdin, as
    /// `qrexec-client -p` does (`qvm-run` uses it to feed `qubes.VMShell`).
    ///
    /// The calling process must have [`Machine::enter`]ed the machine: the
    /// service runs as it does.
    #[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
    pub fn call(
        &self,
        caller: Caller<'_>,
        target: &str,
        service_arg: &str,
        stdin_prefix: Option<&[u8]>,
    ) -> Result<CallOutcome, MachineError> {
        if nix::unistd::Uid::effective().is_root() {
            return Err(MachineError::AsRoot);
        }
        // The daemon always passes `SERVICE+ARG` with a `+`.
        let full = sanitize(service_arg);
        let full = if full.contains('+') {
            full
        } else {
            format!("{full}+")
        };
        let (service, argument) = full.split_once('+').unwrap_or((&full, ""));
        if service.is_empty() {
            return Ok(CallOutcome::qrexec(exit::REFUSED, "Request refused"));
        }
        let (source, resolved, requested) = match caller {
            Caller::Dom0 { source } => {
                // `@adminvm` names dom0 (`qrexec-client -d dom0 '... keyword adminvm'`).
                let resolved = if target == "@adminvm" { DOM0 } else { target };
                if !self.exists(resolved) {
                    return Err(MachineError::NoSuchQube(target.to_owned()));
                }
                (source, resolved.to_owned(), target)
            }
            Caller::Vm(source) => {
                let request = Request {
                    service,
                    argument,
                    source,
                    target,
                };
                // A policy that does not load refuses every call, as
                // qrexec-policy-exec exits non-zero then (reference §9).
                let decision = match self.load_policy() {
                    Ok(policy) => policy.evaluate(&request, &self.system()),
                    Err(e) => Err(Denied {
                        reason: format!("error loading policy: {e}"),
                    }),
                };
                match decision {
                    Ok(Resolution::Allow { target: t, .. }) => (source, t, target),
                    Err(denied) => {
                        tracing::info!(%source, %target, %full, reason = %denied.reason, "refused");
                        self.log_policy_decision(source, target, &full, &denied.reason);
                        return Ok(CallOutcome::qrexec(exit::REFUSED, "Request refused"));
                    }
                }
            }
        };
        let root = self.domain_root(&resolved)?;
        let path = match find_service(&root, service, &full) {
            Found::Executable(p) => p,
            Found::Problem(why) => return Ok(CallOutcome::qrexec(exit::PROBLEM, why)),
            Found::Missing => {
                return Ok(CallOutcome::qrexec(
                    exit::NOT_FOUND,
                    format!("{resolved}: service {full} not found"),
                ));
            }
        };

        let mut cmd = Command::new(&path);
        cmd.env_clear().envs(self.domain_env(&resolved)?);
        cmd.env("QREXEC_REMOTE_DOMAIN", source)
            .env("QREXEC_SERVICE_FULL_NAME", &full)
            .env("QREXEC_SERVICE_ARGUMENT", argument);
        if !argument.is_empty() {
            cmd.arg(argument);
        }
        cmd.stdout(Stdio::inherit())
            .stdin(if stdin_prefix.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        let umask = if resolved == DOM0 {
            DOM0_UMASK
        } else {
            VM_UMASK
        };
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::stat::umask(umask);
                Ok(())
            });
        }
        let stderr_log = if resolved == DOM0 {
            // Executed directly by the daemon: cwd is its socket directory
            // (`/run/qubes`) and stderr goes to the daemon's log, never to
            // the caller.
            match requested.strip_prefix('@') {
                Some(keyword) => cmd
                    .env("QREXEC_REQUESTED_TARGET_TYPE", "keyword")
                    .env("QREXEC_REQUESTED_TARGET_KEYWORD", keyword),
                None => cmd
                    .env("QREXEC_REQUESTED_TARGET_TYPE", "name")
                    .env("QREXEC_REQUESTED_TARGET", requested),
            };
            cmd.current_dir(root.join("run/qubes"));
            let log = root.join(format!("var/log/qubes/qrexec.{source}.log"));
            cmd.stderr(append(&log)?);
            None
        } else {
            cmd.env("QREXEC_REQUESTED_TARGET_TYPE", "")
                .env("QREXEC_AGENT_PID", std::process::id().to_string())
                .current_dir(self.home(&resolved)?);
            cmd.stderr(Stdio::piped());
            Some(root.join("var/log/qrexec.log"))
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Ok(CallOutcome::qrexec(
                    exit::PROBLEM,
                    format!("{}: {e}", path.display()),
                ));
            }
        };
        if let (Some(prefix), Some(mut input)) = (stdin_prefix, child.stdin.take()) {
            let prefix = prefix.to_vec();
            // Detached: it may block on a terminal's stdin after the service is gone.
            std::thread::spawn(move || {
                if input.write_all(&prefix).is_ok() {
                    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
                }
            });
        }
        // A VM service's stderr reaches the caller and the VM's log.
        let tee = match (child.stderr.take(), stderr_log) {
            (Some(err), Some(log)) => {
                let tag = format!("{full}-{source}");
                let file = append(&log)?;
                Some(std::thread::spawn(move || tee_stderr(err, file, &tag)))
            }
            _ => None,
        };
        let status = child.wait().map_err(|source| MachineError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(t) = tee {
            let _ = t.join();
        }
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(exit::PROBLEM);
        Ok(CallOutcome {
            code,
            message: None,
        })
    }

    fn load_policy(&self) -> Result<Policy, PolicyError> {
        let dom0 = self.root().join(DOM0);
        let run = dom0.join("run/qubes/policy.d");
        let etc = dom0.join("etc/qubes/policy.d");
        Policy::load_dirs(&[&run, &etc])
    }

    /// dom0 keeps a record of refusals, as `qrexec-policy-daemon` logs them.
    fn log_policy_decision(&self, source: &str, target: &str, full: &str, reason: &str) {
        let Ok(dom0) = self.domain_root(DOM0) else {
            return;
        };
        if let Ok(mut f) = append(&dom0.join("var/log/qubes/policy.log")) {
            let _ = writeln!(f, "denied: {source} -> {target} {full}: {reason}");
        }
    }
}

fn append(path: &Path) -> Result<std::fs::File, MachineError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| MachineError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| MachineError::Io {
            path: path.to_owned(),
            source,
        })
}

fn tee_stderr(mut from: impl Read, mut log: std::fs::File, tag: &str) {
    let mut buf = [0u8; 8192];
    let mut stderr = std::io::stderr();
    let mut at_line_start = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let _ = stderr.write_all(&buf[..n]);
        for line in buf[..n].split_inclusive(|&b| b == b'\n') {
            if at_line_start {
                let _ = write!(log, "{tag}: ");
            }
            let _ = log.write_all(line);
            at_line_start = line.ends_with(b"\n");
        }
    }
}
