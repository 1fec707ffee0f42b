//! One run of `qci.Run`: report `running` (in the background: the job never
//! waits for it), pull the code, run the steps in order until one fails, and
//! report the final status. Every outcome, including CI's own failures, ends
//! in exactly one final status.
//!
//! What a run leaves behind is stopped before the next one starts: its
//! processes (the runner is a child subreaper, so even those that left
//! their session come back to it) and its workspace, however deep.

use crate::config::Config;
use crate::fetch::{FetchError, fetch_code};
use crate::report::{Progress, ReportError, Reporter};
use crate::signals::CancelReason;
use nix::sys::stat::Mode;
use qci_core::artifacts::ArtifactSpec;
use qci_core::log::LogWriter;
use qci_core::pipeline::Pipeline;
use qci_core::step::{StepContext, StepOutcome, run_step};
use qci_core::tree::remove_tree;
use qci_core::{ExitCode, JobId, State};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A run's end: the final status and the process exit code that go with it.
pub struct Verdict {
    pub state: State,
    pub description: String,
    pub exit: ExitCode,
}

impl Verdict {
    fn new(state: State, description: impl Into<String>, exit: ExitCode) -> Self {
        Self {
            state,
            description: description.into(),
            exit,
        }
    }
}

/// The log's tag for qci's own lines, as opposed to a step's output.
const QCI: &str = "qci";

pub struct Run<'a> {
    config: &'a Config,
    job: &'a JobId,
    log: LogWriter,
    reporter: Reporter,
    /// Set when the run must stop (qci-dom0 got SIGTERM, SIGINT or SIGHUP).
    cancel: &'a AtomicBool,
    /// A `qci.Status` call timed out: the dev VM does not answer, so no more
    /// progress is reported, and the final status gets one try (the dev VM's
    /// `begin` posts `error` when none arrives).
    status_stalled: bool,
    /// Removing older jobs' trees (see [`Run::fresh_workspace`]).
    old_jobs: Option<JoinHandle<Vec<String>>>,
    /// The workspace and what `.qci.toml` asks to collect from it, once the
    /// code has arrived and its pipeline loaded.
    artifacts: Option<(PathBuf, ArtifactSpec)>,
}

/// The umask the steps start with. qci-dom0 itself keeps the 0077 that
/// qrexec-daemon gives every dom0 service, so its own files stay private:
/// the log is 0600 and the workspace directory 0700. Steps get 0022, the
/// umask of a developer who runs `make dev` in a dom0 terminal: what they
/// create (build output, files handed to root-run tools such as `qubesctl`
/// or copied into VMs) is readable as it would be when run by hand, so CI
/// behaves as a person's run does. (The code as unpacked keeps the modes it
/// had in the dev VM either way.)
const STEP_UMASK: Mode = Mode::from_bits_truncate(0o022);

/// How long the end-of-job sweep keeps at the processes a run left.
const SWEEP_TIME: Duration = Duration::from_secs(5);

/// Every step process carries `QCI_RUNNER=<work dir>` in its environment, so
/// processes left by a killed runner (even ones that left their process
/// group) can be found and stopped by the next run of the same dom0.
const RUNNER_MARK: &str = "QCI_RUNNER";

const MIB: f64 = 1024.0 * 1024.0;

const FINAL_REPORT_ATTEMPTS: u32 = 3;
const FINAL_REPORT_PAUSE: Duration = Duration::from_secs(2);

impl<'a> Run<'a> {
    pub fn new(
        config: &'a Config,
        job: &'a JobId,
        log: LogWriter,
        reporter: Reporter,
        cancel: &'a AtomicBool,
    ) -> Self {
        Self {
            config,
            job,
            log,
            reporter,
            cancel,
            status_stalled: false,
            old_jobs: None,
            artifacts: None,
        }
    }

    /// Runs the job to its end and reports the final status.
    pub fn execute(mut self) -> ExitCode {
        let started = Instant::now();
        self.note(&format!(
            "job {} called from {}",
            self.job, self.config.dev_vm
        ));
        // Orphans of the steps (a daemon, `setsid ...`) are handed to this
        // process instead of init, so the sweep at the end finds them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            self.note(&format!("cannot become a child subreaper: {e}"));
        }
        self.stop_previous_run();
        let progress = Progress::start(&self.reporter);
        progress.report("Fetching the code");
        let verdict = self.stages(started, &progress);
        self.old_jobs_removed();
        let (failures, stalled) = progress.finish();
        self.progress_failed(failures, stalled);
        self.stop_this_run();
        self.collect_artifacts();
        self.note(&format!(
            "job {}: {} ({}) after {:.1}s",
            self.job,
            verdict.state,
            verdict.description,
            started.elapsed().as_secs_f64()
        ));
        self.report_final(verdict.state, &verdict.description);
        verdict.exit
    }

    fn stages(&mut self, started: Instant, progress: &Progress) -> Verdict {
        let workspace = match self.fresh_workspace() {
            Ok((w, old)) => {
                self.old_jobs = Some(old);
                w
            }
            Err(e) => {
                return Verdict::new(
                    State::Error,
                    format!("Cannot prepare the workspace: {e}"),
                    ExitCode::CiError,
                );
            }
        };
        let log = &mut self.log;
        let fetched = fetch_code(self.config, self.job, &workspace, self.cancel, |bytes| {
            note(
                log,
                &format!("fetching the code: {:.1} MiB so far", bytes as f64 / MIB),
            );
        });
        match fetched {
            Ok(s) => self.note(&format!(
                "fetched the code: {} {}, {} {}",
                s.entries,
                if s.entries == 1 { "entry" } else { "entries" },
                s.bytes,
                if s.bytes == 1 { "byte" } else { "bytes" },
            )),
            Err(e) => {
                let _ = remove_tree(&workspace);
                if matches!(e, FetchError::Canceled) {
                    return Verdict::new(
                        State::Canceled,
                        "Canceled during the code transfer",
                        ExitCode::CiError,
                    );
                }
                return Verdict::new(
                    State::Error,
                    format!("Code transfer failed: {e}"),
                    ExitCode::CiError,
                );
            }
        }
        let pipeline = match Pipeline::load(&workspace) {
            Ok(p) => p,
            Err(e) => {
                // Bad input, not a failed step: `error` and exit 2. The log
                // keeps the error's every line (a TOML error shows the line
                // at fault with a caret under it); the status, one line.
                for line in e.to_string().lines() {
                    self.note(line);
                }
                return Verdict::new(State::Error, e.summary(), ExitCode::BadInput);
            }
        };
        self.artifacts = Some((workspace.clone(), pipeline.artifacts.clone()));
        let deadline = started + self.config.job_timeout;
        let total = pipeline.steps.len();
        for (i, step) in pipeline.steps.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut step = step.clone();
            let job_bound = remaining < step.timeout;
            step.timeout = step.timeout.min(remaining);
            if self.cancel.load(Ordering::SeqCst) {
                return Verdict::new(
                    State::Canceled,
                    format!("Canceled before {}", step.label()),
                    ExitCode::CiError,
                );
            }
            if step.timeout.is_zero() {
                return Verdict::new(
                    State::Error,
                    format!("Job timed out before {}", step.label()),
                    ExitCode::CiError,
                );
            }
            let (failures, stalled) = progress.failures();
            self.progress_failed(failures, stalled);
            progress.report(&format!("Running {} ({}/{total})", step.label(), i + 1));
            self.note(&format!("step {}: {}", step.name, step.command));
            let step_started = Instant::now();
            let ctx = StepContext {
                workdir: &workspace,
                env: vec![
                    ("QCI_JOB".into(), self.job.to_string()),
                    (RUNNER_MARK.into(), self.runner_id()),
                ],
                grace: self.config.kill_grace,
                cancel: Some(self.cancel),
                umask: STEP_UMASK,
            };
            let outcome = match run_step(&step, &ctx, &mut self.log) {
                Ok(o) => o,
                Err(e) => {
                    let took = step_started.elapsed().as_secs_f64();
                    self.note(&format!("step {} failed in {took:.1}s ({e})", step.name));
                    return Verdict::new(State::Error, e.to_string(), ExitCode::CiError);
                }
            };
            let took = step_started.elapsed().as_secs_f64();
            match outcome {
                StepOutcome::Succeeded => {
                    self.note(&format!("step {} passed in {took:.1}s", step.name))
                }
                StepOutcome::Failed { code, signal } => {
                    let how = match (code, signal) {
                        (Some(c), _) => format!("exit {c}"),
                        (None, Some(s)) => format!("signal {s}"),
                        (None, None) => "unknown status".into(),
                    };
                    self.note(&format!("step {} failed in {took:.1}s ({how})", step.name));
                    return Verdict::new(
                        State::Failure,
                        format!("{} failed ({how})", step.label()),
                        ExitCode::StepFailed,
                    );
                }
                StepOutcome::Canceled => {
                    let why = CancelReason::current()
                        .map(|r| format!(" ({})", r.describe()))
                        .unwrap_or_default();
                    self.note(&format!("step {} canceled in {took:.1}s", step.name));
                    return Verdict::new(
                        State::Canceled,
                        format!("{} canceled after {took:.0}s{why}", step.label()),
                        ExitCode::CiError,
                    );
                }
                StepOutcome::TimedOut => {
                    self.note(&format!("step {} timed out in {took:.1}s", step.name));
                    let (limit, which) = if job_bound {
                        (self.config.job_timeout, "the job timeout")
                    } else {
                        (step.timeout, "its timeout")
                    };
                    return Verdict::new(
                        State::Error,
                        format!(
                            "{} timed out after {}s ({which})",
                            step.label(),
                            limit.as_secs()
                        ),
                        ExitCode::CiError,
                    );
                }
            }
        }
        Verdict::new(
            State::Success,
            format!("All {total} steps passed"),
            ExitCode::Success,
        )
    }

    /// `WORK/jobs/JOB`, empty and private (0700). Runs are one at a time,
    /// so older jobs' trees are removed rather than left to fill dom0's
    /// disk, however deep their steps made them; but no job waits for that:
    /// they are moved aside at once (a rename) and removed on a thread of
    /// their own while this job fetches its code and runs. A run that dies
    /// before they are gone leaves them to the next one.
    #[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
    fn fresh_workspace(&self) -> std::io::Result<(PathBuf, JoinHandle<Vec<String>>)> {
        let work = &self.config.work_dir;
        let jobs = work.join("jobs");
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let aside = work.join(format!("{OLD_JOBS}{}.{stamp}", std::process::id()));
        match std::fs::rename(&jobs, &aside) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let ws = jobs.join(self.job.as_str());
        for dir in [&jobs, &ws] {
            std::fs::DirBuilder::new().mode(0o700).create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let work = work.clone();
        let old = std::thread::Builder::new()
            .name("qci-old-jobs".into())
            .spawn(move || {
                // Below the job: the code transfer and the steps come first.
                // SAFETY: setpriority takes plain integers and touches no
                // memory; on Linux, `who` 0 is the calling thread.
                unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 19) };
                remove_old_jobs(&work)
            })?;
        Ok((ws, old))
    }

    /// Waits for the removal of older jobs' trees, and logs what failed.
    fn old_jobs_removed(&mut self) {
        let failures = match self.old_jobs.take().map(JoinHandle::join) {
            Some(Ok(failures)) => failures,
            Some(Err(_)) => vec!["the thread removing them panicked".into()],
            None => Vec::new(),
        };
        for failure in failures {
            self.note(&format!("could not remove an older job's tree: {failure}"));
        }
    }

    /// Collects the artifacts `.qci.toml` declares, whatever the steps'
    /// end, once their leftover processes are stopped (nothing writes to
    /// the workspace any more). No `[artifacts]`: nothing at all happens. A
    /// failure is a log line: it never changes the job's result.
    fn collect_artifacts(&mut self) {
        let Some((workspace, spec)) = self.artifacts.take() else {
            return;
        };
        if spec.is_empty() {
            return;
        }
        let (dir, limits) = (&self.config.artifact_dir, self.config.artifact_limits);
        let log = &mut self.log;
        let mut line = |text: &str| note(log, text);
        match crate::artifacts::collect(&workspace, &spec, dir, self.job, limits, &mut line) {
            Ok(c) => self.note(&format!(
                "artifacts: {} {}, {} in {}",
                c.files,
                if c.files == 1 { "file" } else { "files" },
                crate::artifacts::human_bytes(c.bytes),
                c.archive.display()
            )),
            Err(e) => self.note(&format!("artifacts: not collected: {e}")),
        }
    }

    fn runner_id(&self) -> String {
        self.config.work_dir.display().to_string()
    }

    /// Stops what a killed runner's steps left running: its orphans went
    /// to init, but they carry the runner's mark.
    fn stop_previous_run(&mut self) {
        let killed = qci_core::process::kill_marked(RUNNER_MARK, &self.runner_id());
        self.note_stopped(&killed, "a previous run");
    }

    /// Stops everything this run's steps started that still runs: every
    /// process below the runner (orphans included, as it is their
    /// subreaper), and any with its mark. What escapes both: a process
    /// that dropped the mark *and* is not below the runner, i.e. one started
    /// for it by another process (`sudo`, which may also put it out of the
    /// runner's reach, `systemd-run`, qubesd starting a qube, another
    /// daemon), or one that outlived a runner that was itself killed.
    fn stop_this_run(&mut self) {
        let mut killed = qci_core::process::stop_descendants(SWEEP_TIME);
        for pid in qci_core::process::kill_marked(RUNNER_MARK, &self.runner_id()) {
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        self.note_stopped(&killed, "this run");
    }

    fn note_stopped(&mut self, killed: &[i32], whose: &str) {
        if !killed.is_empty() {
            self.note(&format!(
                "stopped {} leftover process(es) of {whose}: {killed:?}",
                killed.len()
            ));
        }
    }

    fn note(&mut self, text: &str) {
        note(&mut self.log, text);
    }

    /// Logs why progress statuses were not sent. Once the dev VM has
    /// stopped answering (a call timed out), [`Progress`] sends no more, and
    /// the final status gets one try.
    fn progress_failed(&mut self, failures: Vec<String>, stalled: bool) {
        for failure in failures {
            self.note(&failure);
        }
        if stalled && !self.status_stalled {
            self.status_stalled = true;
            self.note("no more progress reports for this job");
        }
    }

    /// The final status matters most: a commit must not stay pending
    /// because one `qci.Status` call failed (its service was killed, the dev
    /// VM was busy), so it gets a few tries. Not after a timeout, though: a
    /// dev VM that does not answer must not hold dom0 (and the next job)
    /// for several timeouts; `begin` posts `error` when no final status
    /// reached the sink.
    fn report_final(&mut self, state: State, description: &str) {
        let attempts = if self.status_stalled {
            1
        } else {
            FINAL_REPORT_ATTEMPTS
        };
        for attempt in 1..=attempts {
            match self.reporter.send(state, description) {
                Ok(()) => return,
                Err(e) => {
                    self.note(&format!(
                        "could not report {state} (attempt {attempt} of {attempts}): {e}"
                    ));
                    if matches!(e, ReportError::Timeout(_) | ReportError::Refused(_)) {
                        return;
                    }
                }
            }
            if attempt < attempts {
                std::thread::sleep(FINAL_REPORT_PAUSE);
            }
        }
    }
}

/// Where older jobs' trees wait to be removed: `WORK/old-jobs.PID.NANOS`.
const OLD_JOBS: &str = "old-jobs.";

/// Removes every tree in `work` that [`Run::fresh_workspace`] moved aside,
/// this run's and those a dead run left; says what it could not remove.
fn remove_old_jobs(work: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(work) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(OLD_JOBS.as_bytes())
        })
        .filter_map(|e| {
            remove_tree(&e.path())
                .err()
                .map(|err| format!("{}: {err}", e.path().display()))
        })
        .collect()
}

/// A line of qci's own in the log. A log that cannot be written must not
/// stop the run (its final status still matters more), so the failure goes
/// to dom0's qrexec log instead.
fn note(log: &mut LogWriter, text: &str) {
    if let Err(e) = log.note(QCI, text) {
        tracing::error!("cannot write the log: {e}");
    }
}
