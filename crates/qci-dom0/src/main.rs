//! `qci-dom0`: the `qci.Run` qrexec service in dom0.
//!
//! Called from the dev VM as `qci.Run+JOB`. It validates the call, takes the
//! one-job-per-dom0 lock, pulls the code out of the dev VM through
//! `qci.Export`, runs the steps, writes `LOG_DIR/JOB.log`, streams the same
//! lines on stdout (qrexec sends a dom0 service's stderr to dom0's own log, not
//! to the caller), and reports statuses through `qci.Status`.
//!
//! This binary has no network code: it only ever talks to the dev VM
//! through qrexec, and treats everything that comes back as hostile data.
//!
//! # What dom0 runs
//!
//! So that an auditor knows what to read: dom0 runs this crate, the parts of
//! `qci-core` listed below and `qci-qrexec`, and no other code of qci. The
//! emulated Qubes machine and its policy engine live in `qci-emulator`,
//! which dom0 does not link. `cargo tree -p qci-dom0 -e normal` lists:
//!
//! - `qci-core`: job ids, status events, the request line, `.qci.toml`, the
//!   step executor, the log writer, the hardened tar unpacker, the run lock,
//!   bounded waits and writes of child processes, stderr diagnostics.
//! - `qci-qrexec`: the service call (its argument, `QREXEC_REMOTE_DOMAIN`),
//!   and running `qvm-run` for `qci.Export` and `qci.Status`.
//! - `nix`: signals, the child subreaper, `poll` on the caller's stdin and
//!   stdout, the live log's pipe size, the directories' access check, user
//!   names, the artifact walk (`openat`, `fstatat`, directory listing).
//! - `tar`: writing the artifact archive (its reading side unpacks the
//!   workspace in `qci-core`).
//! - `serde`: reading `/etc/qci/dom0.toml`.
//! - `serde_json`: the error of a malformed request line.
//! - `thiserror`: the error types.
//! - `tracing`: diagnostics on stderr, which qrexec puts in dom0's own log.
//! - through `qci-core` only: `toml` (dom0.toml and `.qci.toml`), `humantime`
//!   (their durations, the log's timestamps), `memchr` (splitting output
//!   into log lines), `tar`'s `filetime` (times of unpacked files),
//!   `tracing-subscriber` with `regex-automata` (the stderr format and its
//!   `QCI_LOG` filter).
//! - the rest are those crates' own parts (`libc`, `serde_core`, the toml
//!   parser, `tracing-core`, ...), and code generators that run at build
//!   time only (`serde_derive`, `thiserror-impl`, `tracing-attributes`, `syn`).
//!
//! qci's own code in dom0 is 5,828 lines: 2,158 here, 3,554 in `qci-core`
//! and 116 in `qci-qrexec`, counting every line (docs and blank lines
//! included) of each `src/*.rs` file up to its `#[cfg(test)]` test module:
//! `for f in FILES; do sed '/^#\[cfg(test)\]/,$d' $f; done | wc -l`. The
//! `qci-core` count leaves out `retry` and `secret` (176 lines), which are
//! linked but only the host uses; most of `job_file` (363 lines, the host's
//! job file) is counted though dom0 uses only its `RunRequest` (35 lines).

mod artifacts;
mod call;
mod caller;
mod config;
mod fetch;
mod lock;
mod report;
mod runner;
mod signals;

use config::Config;
use qci_core::log::{LogWriter, SecretMask, timestamp};
use qci_core::{ExitCode, JobId};
use qci_qrexec::service::ServiceCall;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const HELP: &str = "\
qci-dom0: the qci.Run qrexec service (dom0)

Installed as /etc/qubes-rpc/qci.Run and called from the dev VM:
    qrexec-client-vm dom0 qci.Run+JOB

The job id comes from the service argument; the caller from
QREXEC_REMOTE_DOMAIN. The caller may send one JSON line on stdin,
{\"timeout_secs\": N}, to bound the job by its own timeout (dom0's
job_timeout stays the upper bound), and then hold stdin open: when it closes
(or nobody reads stdout any more), the caller has gone and the job is
canceled, as on SIGTERM. Settings are read from /etc/qci/dom0.toml, or the file
named by QCI_DOM0_CONFIG. It runs as dom0's login user (as qrexec-daemon
does), and writes only to its log, work and artifact directories (/var/log/qci,
/var/lib/qci and /var/lib/qci/artifacts by default), which must exist, owned
by that user: it refuses to run without them. Exit codes: 0 success, 1 a step failed, 2 bad input,
3 CI error (transfer, timeout, cancel, busy). A bad .qci.toml is bad
input: the job ends `error`, exit 2.";

/// How long the caller has to send its request (`qci-vm begin` sends it at
/// once); a caller that sends none (a person at a terminal) then runs with
/// dom0's settings as they are.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    qci_core::diagnostics::init("info");
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if wants_help(&args, std::env::var_os("QREXEC_SERVICE_ARGUMENT").is_some()) {
        println!("{HELP}");
        return ExitCode::Success.into();
    }
    serve(&args).into()
}

/// Help is for a person at dom0's shell. Under qrexec `$1` is the caller's
/// job id, so `qci.Run+--help` must be refused like any other bad id rather
/// than answered with exit 0.
fn wants_help(args: &[std::ffi::OsString], called_by_qrexec: bool) -> bool {
    !called_by_qrexec && args.first().is_some_and(|a| a == "--help" || a == "-h")
}

fn serve(args: &[std::ffi::OsString]) -> ExitCode {
    let call = match ServiceCall::from_env(args) {
        Ok(c) => c,
        Err(e) => return refuse(ExitCode::BadInput, &e.to_string()),
    };
    let job = match JobId::parse(&call.argument) {
        Ok(j) => j,
        Err(e) => return refuse(ExitCode::BadInput, &e.to_string()),
    };
    let path = std::env::var_os("QCI_DOM0_CONFIG").unwrap_or_else(|| config::DEFAULT_PATH.into());
    let config = match Config::load(path.as_ref()) {
        Ok(c) => c,
        Err(e) => return refuse(ExitCode::CiError, &format!("bad configuration: {e}")),
    };
    // Policy already allows only the dev VM; check again in case it changes.
    match call.remote_domain.as_deref() {
        Some(vm) if vm == config.dev_vm => {}
        other => {
            let who = other.unwrap_or("an unknown caller");
            return refuse(
                ExitCode::BadInput,
                &format!(
                    "qci.Run may only be called from {}, not from {who}",
                    config.dev_vm
                ),
            );
        }
    }
    for dir in [&config.log_dir, &config.work_dir, &config.artifact_dir] {
        if let Err(e) = writable_dir(dir) {
            return refuse(ExitCode::CiError, &e.to_string());
        }
    }
    let _lock = match lock::RunLock::acquire(&config.work_dir.join("run.lock"), &job) {
        Ok(l) => l,
        Err(e) => return refuse(ExitCode::CiError, &e.to_string()),
    };
    // Watched from now on: a caller that goes away cancels the job.
    signals::cancel_on_termination();
    let caller = caller::Caller::watch();
    let mut config = config;
    match caller.request(REQUEST_WAIT) {
        None => {}
        Some(Ok(request)) => config.job_timeout = request.timeout_within(config.job_timeout),
        Some(Err(why)) => {
            return refuse(ExitCode::BadInput, &format!("bad request on stdin: {why}"));
        }
    }
    let log_path = config.log_dir.join(qci_core::log::file_name(&job));
    // The live log's pipe, when it is one, as large as the kernel allows a
    // user: a step that floods its output then costs a wake-up of the
    // reader per megabyte, not per 64 KiB.
    let _ = nix::fcntl::fcntl(
        std::io::stdout(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(qci_core::step::PIPE_BYTES),
    );
    let log = match LogWriter::create(&log_path, Some(Box::new(std::io::stdout()))) {
        Ok(l) => l.with_secrets(SecretMask::new(config.secrets.iter().cloned())),
        Err(e) => {
            return refuse(
                ExitCode::CiError,
                &format!("cannot create {}: {e}", log_path.display()),
            );
        }
    };
    let reporter = report::Reporter {
        dev_vm: config.dev_vm.clone(),
        job: job.clone(),
        timeout: config.status_timeout,
    };
    runner::Run::new(&config, &job, log, reporter, &signals::CANCEL).execute()
}

/// A directory this service writes to. Under qrexec it runs as dom0's
/// user, who cannot create `/var/log/qci` or `/var/lib/qci`: installation
/// makes them, so a missing or foreign one is a broken install, said as such
/// (with the command that mends it) rather than papered over.
fn writable_dir(dir: &Path) -> Result<(), DirError> {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    let dir = dir.to_path_buf();
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DirError::Missing { dir, user }),
        Err(source) => Err(DirError::Unusable { dir, source }),
        Ok(m) if !m.is_dir() => Err(DirError::NotADirectory { dir }),
        Ok(_) => {
            use nix::unistd::AccessFlags;
            nix::unistd::access(&dir, AccessFlags::W_OK | AccessFlags::X_OK)
                .map_err(|source| DirError::NotWritable { dir, user, source })
        }
    }
}

/// Why [`writable_dir`] refuses a directory. `user` is who runs the
/// service: the broken-install messages end with the command that mends
/// the directory for that user.
#[derive(Debug, thiserror::Error)]
enum DirError {
    #[error(
        "{} does not exist: it is made at install time for dom0's user ({})",
        dir.display(),
        mend(dir, user)
    )]
    Missing { dir: PathBuf, user: String },
    #[error("cannot use {}: {source}", dir.display())]
    Unusable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error(
        "{} is not writable by {user}, who runs qci.Run: {source} (it must be owned by dom0's user: {})",
        dir.display(),
        mend(dir, user)
    )]
    NotWritable {
        dir: PathBuf,
        user: String,
        #[source]
        source: nix::errno::Errno,
    },
}

/// The command that makes `dir` as installation does, for `user`.
fn mend(dir: &Path, user: &str) -> String {
    format!("sudo install -d -o {user} -m 0700 {}", dir.display())
}

/// Refuses the call before any job starts. The caller sees only stdout, so
/// the reason goes there (as a log line, which `begin` in the dev VM turns
/// into the job's `error` status) as well as to dom0's qrexec log.
fn refuse(code: ExitCode, why: &str) -> ExitCode {
    let why = qci_core::log::sanitize(why.as_bytes());
    tracing::error!("refused: {why}");
    println!("{} [qci] refused: {why}", timestamp(SystemTime::now()));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_only_by_hand() {
        let args = ["--help".into()];
        assert!(wants_help(&args, false));
        assert!(!wants_help(&args, true));
    }
}
