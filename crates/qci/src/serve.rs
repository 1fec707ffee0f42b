//! `qci serve --config HOST.toml`: the host's web side (qci-server), with
//! its jobs run on emulated machines.
//!
//! INTERIM (until qci-pool lands from issue 9): [`LocalMachines`] runs each
//! job on one emulated machine per Qubes version under
//! `STATE/machines/qVERSION`, the way `qci run --local` does. It is the
//! smallest stand-in for the pool's `local` backend behind the server's
//! `Executor` trait, and goes when dispatch moves onto `qci_pool::Pool`.

use crate::install;
use crate::local::{DEV_VM, in_dom0, runner_busy};
use qci_core::ExitCode;
use qci_core::job_file::job_file_rel;
use qci_qrexec::emulator::DOM0;
use qci_server::{Executor, HostConfig, Progress, RunRequest};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub fn serve(config: &Path) -> ExitCode {
    let config = match HostConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qci: {e}");
            return ExitCode::BadInput;
        }
    };
    let executor = Arc::new(LocalMachines {
        dir: config.state_dir().join("machines"),
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qci: cannot start the async runtime: {e}");
            return ExitCode::CiError;
        }
    };
    match runtime.block_on(qci_server::serve(config, executor, None)) {
        Ok(()) => ExitCode::Success,
        Err(e) => {
            eprintln!("qci: {e}");
            match e {
                qci_server::ServeError::Config(_) => ExitCode::BadInput,
                _ => ExitCode::CiError,
            }
        }
    }
}

/// INTERIM: one emulated machine per Qubes version (see the module docs).
struct LocalMachines {
    dir: PathBuf,
}

/// How often the growing dom0 log is read.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

impl Executor for LocalMachines {
    fn capacity(&self, _qubes: &str) -> usize {
        1
    }

    fn run(&self, req: RunRequest<'_>, progress: &mut dyn Progress) -> Result<(), String> {
        let root = self.dir.join(format!("q{}", req.qubes));
        let machine = install::install(&root, DEV_VM, &install::default_bin_dir())
            .map_err(|e| e.to_string())?;
        let home = machine.home(DEV_VM).map_err(|e| e.to_string())?;
        let job_path = home.join(job_file_rel(req.job));
        // A job id is used once per machine: a job queued again after a host
        // restart gets a fresh job file.
        let _ = std::fs::remove_file(&job_path);
        req.job_file.save(&job_path).map_err(|e| e.to_string())?;
        let dom0 = machine.domain_root(DOM0).map_err(|e| e.to_string())?;
        let log = dom0
            .join(install::DOM0_LOG_DIR)
            .join(qci_core::log::file_name(req.job));
        let lock = dom0.join(install::DOM0_WORK_DIR).join("run.lock");
        let mut child = in_dom0(&machine, Command::new("qvm-run"))
            .map_err(|e| e.to_string())?
            .args(["--pass-io", "--no-gui", DEV_VM])
            .arg(format!("qci-vm begin {}", req.job))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start qvm-run in the emulated dom0: {e}"))?;
        progress.started();
        let deadline = Instant::now() + req.timeout;
        let mut follower = Follower::new(log);
        let mut stopped = None;
        loop {
            follower.pass(progress);
            let exited = child.try_wait().map_err(|e| e.to_string())?.is_some();
            if exited && !runner_busy(&lock) {
                break;
            }
            if req.cancel.load(Ordering::SeqCst) {
                stopped = Some("canceled");
            } else if Instant::now() > deadline {
                stopped = Some("timed out");
            }
            if stopped.is_some() {
                // Powering the emulated machine off: every process in it.
                let _ = child.kill();
                qci_core::process::kill_marked(
                    qci_qrexec::emulator::ENV_MACHINE,
                    &machine.root().to_string_lossy(),
                );
                let _ = child.wait();
                break;
            }
            std::thread::sleep(FOLLOW_EVERY);
        }
        follower.pass(progress);
        match stopped {
            Some(why) => Err(format!("job {why}")),
            None => Ok(()),
        }
    }
}

/// Reads a growing file from where it left off, handing on whole lines.
struct Follower {
    path: PathBuf,
    offset: u64,
}

impl Follower {
    fn new(path: PathBuf) -> Self {
        Self { path, offset: 0 }
    }

    fn pass(&mut self, progress: &mut dyn Progress) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut buf).is_err() {
            return;
        }
        let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if end > 0 {
            progress.log(&buf[..end]);
            self.offset += end as u64;
        }
    }
}
