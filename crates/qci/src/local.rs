//! `qci run --local DIR`: one CI job on an emulated Qubes machine, started
//! and watched from outside it as the host does with a real one.

use crate::out::outln;
use qci_core::job_file::{
    CommitSha, JobFile, JobFileError, RUN_CLOSING, Reason, Repository, Sink, job_file_rel,
    status_file_rel,
};
use qci_core::process::{ExitFd, wait_or_kill_at, write_within};
use qci_core::{ExitCode, JobId, State, StatusEvent};
use qci_emulator::{DOM0, Machine};
use qci_pool::artifacts::{self, ArchiveSource, JobArtifacts};
use qci_pool::backend::install;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The dev VM of a local machine, as on SecureDrop Workstation.
pub const DEV_VM: &str = "sd-dev";

pub struct LocalRun {
    pub dir: PathBuf,
    pub commit: Option<String>,
    pub state_dir: PathBuf,
    /// Run on this machine as it is, installing nothing (qci was installed
    /// some other way, by Salt say), instead of `state_dir/machine`.
    pub machine_dir: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "{0} is not a project: it has neither a .qci.toml nor a Makefile (qci runs the steps of .qci.toml, or make clone, make dev, make test)"
    )]
    NotAProject(PathBuf),
    #[error(
        "--commit needs a git repository, and {0} is not in one (without --commit, qci runs the directory as it is)"
    )]
    NotARepository(PathBuf),
    #[error(
        "--commit runs a whole commit from the repository's top, and {dir} is a subdirectory of the repository at {top}: pass --local {top} (or leave out --commit to run {dir} as it is)"
    )]
    NotTheTop { dir: PathBuf, top: PathBuf },
    #[error("cannot resolve {rev:?} in {dir}: {why}")]
    BadCommit {
        rev: String,
        dir: PathBuf,
        why: String,
    },
    #[error("{dir} is not an emulated machine (qci bare-machine makes one): {source}")]
    NotAMachine {
        dir: PathBuf,
        source: qci_emulator::MachineError,
    },
    #[error("{machine}: qci is not installed ({missing} is missing)")]
    NotInstalled { machine: PathBuf, missing: PathBuf },
    #[error(transparent)]
    Install(#[from] install::InstallError),
    #[error(transparent)]
    Machine(#[from] qci_emulator::MachineError),
    #[error(transparent)]
    JobFile(#[from] JobFileError),
    #[error(
        "{user}, who runs this machine's qubes (the dev VM copies DIR), cannot read {path}: {source}"
    )]
    Unreadable {
        user: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl LocalError {
    /// Bad input from the user, or our own failure.
    pub fn exit_code(&self) -> ExitCode {
        use qci_emulator::MachineError::{Unreachable, WrongUser};
        match self {
            Self::NotADirectory(_)
            | Self::NotAProject(_)
            | Self::NotARepository(_)
            | Self::NotTheTop { .. }
            | Self::BadCommit { .. }
            | Self::NotAMachine { .. }
            | Self::NotInstalled { .. }
            | Self::Unreadable { .. }
            | Self::Machine(Unreachable { .. } | WrongUser { .. }) => ExitCode::BadInput,
            _ => ExitCode::CiError,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// How a local run ended, and what it left for a test summary.
#[derive(Debug)]
pub struct LocalOutcome {
    pub exit: ExitCode,
    /// In `STATE/artifacts/JOB/`, its `reports` among them; `None` when the
    /// job declared no artifacts or its archive was refused.
    #[expect(
        dead_code,
        reason = "the test summary of a local run reads its reports (qci-junit's work)"
    )]
    pub artifacts: Option<JobArtifacts>,
}

impl LocalRun {
    pub fn execute(&self) -> Result<LocalOutcome, LocalError> {
        let dir = std::fs::canonicalize(&self.dir)
            .map_err(|_| LocalError::NotADirectory(self.dir.clone()))?;
        if !dir.is_dir() {
            return Err(LocalError::NotADirectory(dir));
        }
        let commit = self
            .commit
            .as_deref()
            .map(|rev| resolve_commit(&dir, rev))
            .transpose()?;
        // Refused before anything is installed or exported.
        let is_project = match &commit {
            None => PROJECT_FILES.iter().any(|f| dir.join(f).exists()),
            Some(sha) => PROJECT_FILES.iter().any(|f| in_commit(&dir, sha, f)),
        };
        if !is_project {
            return Err(LocalError::NotAProject(dir));
        }
        let started_as_root = nix::unistd::geteuid().is_root();
        let machine = match &self.machine_dir {
            Some(dir) => installed_machine(dir)?,
            None => install::install(
                &self.state_dir.join("machine"),
                DEV_VM,
                &install::default_bin_dir(),
            )?,
        };
        // The job's artifacts are taken in as the machine's user, too.
        machine.user_dir(&self.state_dir.join("artifacts"), 0o700)?;
        // From here on this process acts in the machine, as its user.
        machine.enter()?;
        // The dev VM copies the tree as that user: better to say now that it
        // cannot than to fail inside the job.
        let user = machine.user();
        if started_as_root {
            eprintln!(
                "qci: started as root: this machine's qubes run as {}, who must be able to read {}",
                user.name,
                dir.display()
            );
        }
        user.reaches(&dir)?;
        std::fs::read_dir(&dir).map_err(|source| LocalError::Unreadable {
            user: user.name,
            path: dir.clone(),
            source,
        })?;
        let deadline = Instant::now() + self.timeout;
        // After the deadline, at most one status post remains (begin's or
        // ours), which dom0's settings bound.
        let closing = status_timeout(&machine)?;
        let job = JobId::generate("local");
        let job_file = JobFile {
            repository: Repository {
                url: dir.to_string_lossy().into_owned(),
                slug: None,
            },
            source: if commit.is_some() {
                None
            } else {
                Some(dir.clone())
            },
            commit,
            git_ref: None,
            reason: Reason::Manual,
            author: std::env::var("USER").unwrap_or_default(),
            message: String::new(),
            sink: Sink::File {
                path: status_file_rel(&job),
            },
            context: "qci/local".into(),
            timeout_secs: self.timeout.as_secs(),
        };
        let home = machine.home(DEV_VM)?;
        job_file.save(&home.join(job_file_rel(&job)))?;
        eprintln!("qci: job {job} on {} ({DEV_VM})", machine.root().display());

        // As the host does: start `begin` in the dev VM through dom0. In a
        // process group of its own, so that a stop reaches the whole chain
        // (qvm-run, begin, qrexec-client-vm, dom0's runner) from here, and
        // only it: a Ctrl-C is passed on to it, after which this process
        // waits for dom0 to cancel the job rather than dying with it.
        interrupt::catch();
        let mut child = in_dom0(&machine, Command::new("qvm-run"))?
            .args(["--pass-io", "--no-gui", DEV_VM])
            .arg(format!("qci-vm begin {job}"))
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io("cannot start qvm-run in the emulated dom0"))?;
        let chain = nix::unistd::Pid::from_raw(child.id() as i32);
        // dom0 ends the job at its timeout, and begin waits a while longer
        // for it; this bounds begin.
        let bound = deadline + RUN_CLOSING + closing;
        let exited = ExitFd::of(&child);
        let mut interrupted = false;
        let status = loop {
            if let Some(s) = child.try_wait().map_err(io("lost the job"))? {
                break Some(s);
            }
            if interrupt::requested() {
                interrupted = true;
                break None;
            }
            let now = Instant::now();
            if now >= bound {
                break None;
            }
            // Woken by begin's exit or by a signal; the slice only bounds a
            // signal that came just before the wait began.
            let slice = (bound - now).min(SIGNAL_SLICE);
            match &exited {
                Some(fd) => {
                    fd.wait(slice).map_err(io("lost the job"))?;
                }
                None => std::thread::sleep(slice.min(Duration::from_millis(50))),
            }
        };
        if status.is_none() {
            // The caller going away cancels the job in dom0 (and so does
            // the signal, which dom0's runner also gets).
            let signal = if interrupted {
                eprintln!("qci: interrupted: canceling job {job}, waiting for dom0 to end it");
                nix::sys::signal::Signal::SIGINT
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            let _ = nix::sys::signal::killpg(chain, signal);
            let _ = wait_or_kill_at(&mut child, Instant::now() + closing);
        }
        let code = status.and_then(|s| s.code());
        let status_file = home.join(status_file_rel(&job));
        // Until dom0's runner has ended: it reports on its own, and the next
        // job must not find it still busy. A runner whose caller is gone
        // cancels its job, which takes at most its kill grace, its sweep
        // and one status post.
        let lock = machine
            .domain_root(DOM0)?
            .join(install::DOM0_WORK_DIR)
            .join("run.lock");
        let until = Instant::now() + closing + kill_grace(&machine)? + STOP_SLACK;
        while runner_busy(&lock, &job) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let last = final_event(&status_file, &job);
        let final_event = match last {
            Some(e) => e,
            None => {
                // Nobody posted a final status: the watcher does, so the
                // commit never stays pending.
                let (state, why) = match code {
                    None if interrupted => {
                        (State::Canceled, "Canceled: qci run was interrupted".into())
                    }
                    None if status.is_none() => (
                        State::Error,
                        format!("Job timed out after {}s", self.timeout.as_secs()),
                    ),
                    Some(c) => (
                        State::Error,
                        format!("Job ended without a final status (exit {c})"),
                    ),
                    None => (
                        State::Error,
                        "Job ended without a final status (killed)".into(),
                    ),
                };
                let event = StatusEvent::new(&job, state, why);
                post_status(&machine, &event, closing)?;
                event
            }
        };
        // The runner's own exit codes say it all; otherwise (begin was
        // killed, qrexec failed) the final status does.
        let outcome = match code {
            Some(c @ 0..=3) => ExitCode::from_status(Some(c)),
            _ => match final_event.state {
                State::Success => ExitCode::Success,
                State::Failure => ExitCode::StepFailed,
                _ => ExitCode::CiError,
            },
        };
        let log = machine
            .domain_root(DOM0)?
            .join(install::DOM0_LOG_DIR)
            .join(qci_core::log::file_name(&job));
        outln!(
            "qci: job {job}: {} ({})",
            final_event.state,
            crate::out::remote(&final_event.description)
        );
        outln!("qci: log: {}", log.display());
        let archive = machine
            .domain_root(DOM0)?
            .join(install::DOM0_ARTIFACT_DIR)
            .join(qci_core::artifacts::archive_name(&job));
        let artifacts = match artifacts::take_in(
            &ArchiveSource::File(archive),
            &self.state_dir,
            &job,
            &artifacts::limits(qci_pool::config::DEFAULT_MAX_ARTIFACT_BYTES),
        ) {
            Ok(taken) => taken,
            Err(e) => {
                eprintln!("qci: artifacts: {e}");
                None
            }
        };
        if let Some(a) = &artifacts {
            crate::results::print(a);
        }
        Ok(LocalOutcome {
            exit: outcome,
            artifacts,
        })
    }
}

/// The machine in `dir`, which must have qci in dom0 and in the dev VM
/// already: a missing piece is named now, not found out mid-job.
fn installed_machine(dir: &Path) -> Result<Machine, LocalError> {
    let machine = Machine::open(dir).map_err(|source| LocalError::NotAMachine {
        dir: dir.to_owned(),
        source,
    })?;
    let needed = [
        (DOM0, "etc/qubes-rpc/qci.Run"),
        (DOM0, "usr/bin/qci-dom0"),
        (DEV_VM, "etc/qubes-rpc/qci.Status"),
        (DEV_VM, "etc/qubes-rpc/qci.Export"),
        (DEV_VM, "usr/bin/qci-vm"),
    ];
    for (domain, file) in needed {
        let path = machine.domain_root(domain)?.join(file);
        if !path.is_file() {
            return Err(LocalError::NotInstalled {
                machine: machine.root().to_owned(),
                missing: path,
            });
        }
    }
    Ok(machine)
}

fn final_event(status_file: &Path, job: &JobId) -> Option<StatusEvent> {
    read_events(status_file, job)
        .into_iter()
        .rev()
        .find(|e| e.state.is_final())
}

/// Whether a runner holds dom0's run lock for `job` (the kernel drops the
/// lock when the runner dies, however it dies; the holder names its job in
/// the file). Another job's runner is not ours to wait for.
fn runner_busy(lock: &Path, job: &JobId) -> bool {
    qci_core::lock_file::held_by(lock).as_deref() == Some(job.as_str())
}

/// The events a job's `file` sink recorded, in order; lines that do not
/// parse are skipped (the file is the dev VM's, not ours).
pub fn read_events(path: &Path, job: &JobId) -> Vec<StatusEvent> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| StatusEvent::parse_for(l.as_bytes(), job).ok())
        .collect()
}

/// `cmd` as dom0 starts it: with dom0's environment only, whose PATH finds
/// the machine's emulated qrexec tools.
fn in_dom0(machine: &Machine, mut cmd: Command) -> Result<Command, LocalError> {
    cmd.env_clear().envs(machine.domain_env(DOM0)?);
    Ok(cmd)
}

/// Posts `event` as dom0's runner would have, through the dev VM's
/// `qci.Status`, within `timeout` (event written and service ended).
fn post_status(
    machine: &Machine,
    event: &StatusEvent,
    timeout: Duration,
) -> Result<(), LocalError> {
    const WHAT: &str = "cannot post the final status";
    let deadline = Instant::now() + timeout;
    let call = qci_qrexec::call::from_dom0(DEV_VM, "qci.Status", event.job.as_str());
    let mut child = in_dom0(machine, call)?
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io(WHAT))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A service that exits early closes the pipe; its status says why.
        let _ = write_within(&mut stdin, event.to_json().as_bytes(), deadline);
    }
    let why = match wait_or_kill_at(&mut child, deadline).map_err(io(WHAT))? {
        Some(s) if s.success() => return Ok(()),
        Some(s) => qci_qrexec::call::describe_exit(s.code())
            .map_or_else(|| format!("qci.Status ended with {s}"), str::to_owned),
        None => format!("qci.Status did not answer within {}s", timeout.as_secs()),
    };
    Err(io(WHAT)(std::io::Error::other(why)))
}

/// dom0's bound on one `qci.Status` call, from the machine's dom0 settings.
fn status_timeout(machine: &Machine) -> Result<Duration, LocalError> {
    dom0_duration(
        machine,
        "status_timeout",
        qci_core::status::DEFAULT_STATUS_TIMEOUT,
    )
}

/// How long dom0 gives a stopped step between SIGTERM and SIGKILL.
fn kill_grace(machine: &Machine) -> Result<Duration, LocalError> {
    dom0_duration(machine, "kill_grace", DEFAULT_KILL_GRACE)
}

/// The longest a signal waits to be seen while `begin` runs.
const SIGNAL_SLICE: Duration = Duration::from_millis(200);

/// dom0's default `kill_grace`.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// Beyond its kill grace and a status post, what dom0's runner may take to
/// end a job: its sweep of leftover processes (5 s at most) and a margin.
const STOP_SLACK: Duration = Duration::from_secs(10);

/// A duration in the machine's dom0 settings, or `default` without one.
fn dom0_duration(machine: &Machine, key: &str, default: Duration) -> Result<Duration, LocalError> {
    let path = machine.domain_root(DOM0)?.join(install::DOM0_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(io(path.display().to_string()))?;
    let bad = |why: String| io(path.display().to_string())(std::io::Error::other(why));
    let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    match table.get(key) {
        None => Ok(default),
        Some(toml::Value::String(s)) => {
            qci_core::pipeline::parse_duration(s).map_err(|e| bad(format!("{key}: {e}")))
        }
        Some(other) => Err(bad(format!("{key}: {other} is not a duration"))),
    }
}

/// What makes a directory a project: its steps, or the default steps' Makefile.
const PROJECT_FILES: [&str; 2] = [".qci.toml", "Makefile"];

/// Whether `file` is at the top of commit `sha` of the repository in `dir`.
fn in_commit(dir: &Path, sha: &CommitSha, file: &str) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["cat-file", "-e", "--end-of-options"])
        .arg(format!("{}:{file}", sha.as_str()))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `rev` in the repository whose top is `dir`. A directory outside any
/// repository, or below a repository's top, is refused: a commit is run
/// whole, from the top (README, "Running a job on your working tree").
fn resolve_commit(dir: &Path, rev: &str) -> Result<CommitSha, LocalError> {
    let bad = |why: String| LocalError::BadCommit {
        rev: rev.into(),
        dir: dir.into(),
        why,
    };
    let top = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| bad(format!("cannot run git: {e}")))?;
    if !top.status.success() {
        return Err(LocalError::NotARepository(dir.into()));
    }
    let top = PathBuf::from(String::from_utf8_lossy(&top.stdout).trim_end_matches('\n'));
    if std::fs::canonicalize(&top).ok().as_deref() != Some(dir) {
        return Err(LocalError::NotTheTop {
            dir: dir.into(),
            top,
        });
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{rev}^{{commit}}"))
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| bad(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(bad("no such commit".into()));
    }
    CommitSha::parse(String::from_utf8_lossy(&out.stdout).trim()).map_err(|e| bad(e.to_string()))
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP while a job runs: noted, so that the
/// run passes the stop on to the job and still prints how it ended.
mod interrupt {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn note(_: nix::libc::c_int) {
        // Only an atomic store: async-signal-safe.
        REQUESTED.store(true, Ordering::SeqCst);
    }

    #[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
    pub fn catch() {
        let action = SigAction::new(
            SigHandler::Handler(note),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe.
            if let Err(e) = unsafe { sigaction(signal, &action) } {
                eprintln!("qci: cannot handle {signal}: {e}");
            }
        }
    }

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }
}
