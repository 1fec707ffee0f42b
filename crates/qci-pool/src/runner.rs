//! One job on one leased machine, DESIGN's steps 2, 3 and 6: revert, boot,
//! wait for dom0, place the job file, start `qci-vm begin`, follow the log,
//! copy it out, make sure a final status exists, power off, free.

use crate::artifacts::{self, ArchiveSource, JobArtifacts};
use crate::backend::Backend;
use crate::config::{MachineConfig, PoolConfig};
use crate::control::{self as ctl, Claim, ControlError, MachineControl, Marker, Snapshot};
use crate::error::PoolError;
use crate::guest::{Dom0, GuestError, GuestPid, sh_quote};
use crate::lease::{Lease, LeaseStore, now};
use crate::status::{FinalStatus, JobEvents, Phase};
use qci_core::job_file::{JobFile, job_file_rel};
use qci_core::{ExitCode, JobId, State};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to run and where.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub job: JobId,
    pub target: Target,
    /// Placed at `~/.qci/jobs/JOB.json` in the dev VM; its sink is the
    /// caller's choice.
    pub job_file: JobFile,
    /// The whole job once it runs; the pool's `job_timeout` if `None`.
    pub timeout: Option<Duration>,
    /// Set to give up: while queued the job is not started (`Canceled`);
    /// while running the machine is powered off and the job ends `canceled`.
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This machine and no other.
    Machine(String),
    /// The first free machine of this Qubes version.
    Qubes(String),
}

#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub machine: String,
    pub state: State,
    pub description: String,
    /// The log's copy on the host.
    pub log: PathBuf,
    pub exit: ExitCode,
    /// What the job left in `STATE/artifacts/JOB/`: its archive, unpacked,
    /// and the screenshot of a failed machine. `None` when it left neither.
    /// Kept as long as the job's published log (see [`crate::artifacts`]).
    pub artifacts: Option<JobArtifacts>,
}

/// Why a booted machine's dom0 was given up on.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    #[error("canceled")]
    Canceled,
    #[error("dom0 of {machine} did not answer within {}s ({last})", .after.as_secs())]
    Timeout {
        machine: String,
        after: Duration,
        #[source]
        last: DevVmCheck,
    },
}

/// How the last check that dom0 reaches the dev VM went.
#[derive(Debug, thiserror::Error)]
pub enum DevVmCheck {
    #[error("the dev VM check exited with {0}")]
    Exited(i32),
    #[error(transparent)]
    Failed(#[from] GuestError),
}

/// How one attempt to make a machine ready ended, when it did not.
pub(crate) enum Attempt {
    /// dom0 never answered: the machine is off and free again.
    NoAnswer(NoAnswer),
    /// Another host holds the machine: back to the queue.
    Foreign,
    /// The job did not start (nothing ran); the lease is freed.
    NotStarted(PoolError),
}

/// How booting a leased machine ended.
pub(crate) enum Boot {
    Ready,
    /// Another host holds the machine.
    Foreign,
    NoAnswer(NoAnswer),
    /// The hypervisor failed: nothing ran.
    Failed(PoolError),
}

/// How following the job ended.
enum End {
    Exited(i32),
    TimedOut,
    Canceled,
    Lost(String),
}

/// Newest nightly snapshot (`qci-YYYY-MM-DD`), else the configured one.
pub fn clean_snapshot(snapshots: &[Snapshot], configured: &str) -> Option<String> {
    snapshots
        .iter()
        .filter(|s| crate::nightly::is_nightly(&s.name))
        .max_by(|a, b| a.name.cmp(&b.name))
        .or_else(|| snapshots.iter().find(|s| s.name == configured))
        .map(|s| s.name.clone())
}

pub(crate) struct Runner<'a> {
    pub config: &'a PoolConfig,
    pub store: &'a LeaseStore,
    pub machine: &'a MachineConfig,
    pub lease: &'a Lease,
    pub events: &'a dyn JobEvents,
    pub status: &'a dyn FinalStatus,
    pub lease_for: Duration,
    /// With no snapshot to revert to, boot the disk as it is (a nightly's
    /// first run on a new machine) instead of failing.
    pub bootstrap: bool,
}

fn hypervisor(machine: &str) -> impl FnOnce(ControlError) -> PoolError + '_ {
    move |source| PoolError::Hypervisor {
        machine: machine.to_owned(),
        source,
    }
}

impl Runner<'_> {
    fn job(&self) -> &JobId {
        &self.lease.job
    }

    /// Frees the lease whatever else failed: the machine goes back to the pool.
    fn free(&self, backend: Option<&Backend>) {
        if let Some(b) = backend {
            if let Err(e) = b.control.power_off() {
                tracing::warn!(machine = %self.machine.name, "cannot power off: {e}");
            }
            if let Err(e) = clear_marker(b.control.as_ref(), &self.config.host_id, self.job()) {
                tracing::warn!(machine = %self.machine.name, "cannot clear the lease marker: {e}");
            }
        }
        // A lease that is not freed holds its machine until a restart: tried
        // again, with backoff, until the disk takes it.
        let mut delay = std::time::Duration::from_millis(100);
        while let Err(e) = self.store.release(
            &self.machine.name,
            self.job(),
            self.lease.log_id,
            &self.config.machines,
        ) {
            tracing::error!(machine = %self.machine.name, "cannot free the lease: {e}; trying again in {delay:?}");
            std::thread::sleep(delay);
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }

    /// Puts our marker on the machine, unless another live host has its own
    /// ([`ctl::claim_marker`]: a compare-and-swap on vSphere).
    fn claim_marker(&self, control: &dyn MachineControl) -> Result<bool, ControlError> {
        let t = now() as u64;
        let mine = Marker {
            host: self.config.host_id.clone(),
            job: self.job().to_string(),
            expires: t + self.lease_for.as_secs(),
        };
        match ctl::claim_marker(control, &mine, t)? {
            Claim::Ours(back) => {
                let _ = self.store.note_marker(self.lease.log_id, &back.encode());
                Ok(true)
            }
            Claim::Foreign(theirs) => {
                if let Some(b) = theirs {
                    let _ = self
                        .store
                        .note_foreign(&self.machine.name, &b.host, b.expires as f64);
                }
                Ok(false)
            }
        }
    }

    /// Opens the backend, then marker, revert, boot and dom0's answer. On
    /// any failure the lease is freed (or, for another host's machine, only
    /// our row goes) and nothing ran.
    pub fn bring_up(&self, job: &JobId, cancel: &AtomicBool) -> Result<Backend, Attempt> {
        let backend = match Backend::open(self.machine, self.config.call_timeout) {
            Ok(b) => b,
            Err(e) => {
                self.free(None);
                return Err(Attempt::NotStarted(hypervisor(&self.machine.name)(e)));
            }
        };
        match self.boot(&backend, job, cancel) {
            Boot::Ready => Ok(backend),
            Boot::Foreign => {
                // Not ours to touch: only our own row goes.
                let _ = self.store.release(
                    &self.machine.name,
                    self.job(),
                    self.lease.log_id,
                    &self.config.machines,
                );
                Err(Attempt::Foreign)
            }
            Boot::NoAnswer(why) => {
                self.free(Some(&backend));
                Err(Attempt::NoAnswer(why))
            }
            Boot::Failed(e) => {
                self.free(Some(&backend));
                Err(Attempt::NotStarted(e))
            }
        }
    }

    /// Runs the job on a machine [`Runner::bring_up`] made ready, then
    /// powers it off and frees it.
    pub fn finish(
        &self,
        backend: &Backend,
        request: &JobRequest,
        job_timeout: Duration,
    ) -> JobOutcome {
        let dom0 = self.dom0(backend, self.config.call_timeout);
        let outcome = self.execute(backend, &dom0, request, job_timeout);
        self.events.phase(&request.job, &Phase::PoweringOff);
        self.free(Some(backend));
        let _ = self.store.run_ended(
            self.job(),
            outcome.state.as_str(),
            &outcome.description,
            Some(&outcome.log),
        );
        self.events.phase(
            &request.job,
            &Phase::Finished {
                state: outcome.state,
            },
        );
        outcome
    }

    pub fn dom0<'b>(&'b self, backend: &'b Backend, timeout: Duration) -> Dom0<'b> {
        backend.dom0(self.machine, timeout)
    }

    /// Marker, revert, boot, and wait for dom0 (a cancel while waiting
    /// means the job never started).
    pub fn boot(&self, backend: &Backend, job: &JobId, cancel: &AtomicBool) -> Boot {
        match self.prepare(backend) {
            Ok(true) => {}
            Ok(false) => return Boot::Foreign,
            Err(e) => return Boot::Failed(e),
        }
        let dom0 = self.dom0(backend, self.config.call_timeout);
        match self.wait_for_dom0(&dom0, job, cancel) {
            Ok(()) => Boot::Ready,
            Err(_) if cancel.load(Ordering::Relaxed) => Boot::Failed(PoolError::Canceled),
            Err(why) => Boot::NoAnswer(why),
        }
    }

    /// Marker, revert, boot. `Ok(false)`: another host holds the machine.
    fn prepare(&self, backend: &Backend) -> Result<bool, PoolError> {
        let name = &self.machine.name;
        let control = backend.control.as_ref();
        if !self.claim_marker(control).map_err(hypervisor(name))? {
            return Ok(false);
        }
        let snapshots = control.snapshots().map_err(hypervisor(name))?;
        let job = self.job();
        control.power_off().map_err(hypervisor(name))?;
        match clean_snapshot(&snapshots, &self.machine.snapshot) {
            Some(snapshot) => {
                self.events.phase(
                    job,
                    &Phase::Reverting {
                        snapshot: snapshot.clone(),
                    },
                );
                control.revert(&snapshot).map_err(hypervisor(name))?;
            }
            // A nightly takes a machine's first snapshot from its disk as it is.
            None if self.bootstrap => {}
            None => {
                return Err(hypervisor(name)(ControlError::NoSuchSnapshot(
                    self.machine.snapshot.clone(),
                )));
            }
        }
        // A snapshot may carry an old marker (libvirt keeps metadata in it).
        if !self.claim_marker(control).map_err(hypervisor(name))? {
            return Ok(false);
        }
        self.events.phase(job, &Phase::Booting);
        control.start().map_err(hypervisor(name))?;
        Ok(true)
    }

    /// Until dom0 runs a command in the dev VM, or `boot_timeout` passes.
    fn wait_for_dom0(
        &self,
        dom0: &Dom0<'_>,
        job: &JobId,
        cancel: &AtomicBool,
    ) -> Result<(), NoAnswer> {
        let started = Instant::now();
        let deadline = started + self.config.boot_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match dom0.check_dev_vm(
                self.config
                    .call_timeout
                    .min(left.max(Duration::from_millis(100))),
            ) {
                Ok(0) => return Ok(()),
                Ok(code) => DevVmCheck::Exited(code),
                Err(e) => DevVmCheck::Failed(e),
            };
            if cancel.load(Ordering::Relaxed) {
                return Err(NoAnswer::Canceled);
            }
            if Instant::now() >= deadline {
                return Err(NoAnswer::Timeout {
                    machine: self.machine.name.clone(),
                    after: self.config.boot_timeout,
                    last,
                });
            }
            self.events.phase(
                job,
                &Phase::WaitingForDom0 {
                    waited: started.elapsed(),
                },
            );
            std::thread::sleep(
                Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// From placing the job file to its final status. The job has started:
    /// whatever happens, a final status is recorded.
    fn execute(
        &self,
        backend: &Backend,
        dom0: &Dom0<'_>,
        request: &JobRequest,
        job_timeout: Duration,
    ) -> JobOutcome {
        let job = &request.job;
        let logs = self.config.state_dir.join("logs");
        let host_log = logs.join(qci_core::log::file_name(job));
        let _ = self.store.run_started(self.job(), &self.machine.name);
        let end = match self.start_begin(dom0, &request.job_file, job) {
            Ok(pid) => self.follow(backend, dom0, pid, request, job_timeout, &host_log),
            Err(e) => End::Lost(format!(
                "cannot start the job in {}: {e}",
                self.machine.dev_vm
            )),
        };
        self.events.phase(job, &Phase::CopyingLog);
        let dom0_log = format!("{}/{}", backend.log_dir, qci_core::log::file_name(job));
        match backend.guest.copy_out(&dom0_log) {
            // dom0's copy is the record; what was followed stays otherwise.
            Ok(bytes) => {
                let _ = std::fs::write(&host_log, bytes);
            }
            Err(e) => tracing::warn!("cannot copy {dom0_log} out: {e}"),
        }
        let begin_err = format!("{}/qci-host-{job}.begin", backend.tmp_dir);
        if let Ok(bytes) = backend.guest.copy_out(&begin_err) {
            let _ = std::fs::write(logs.join(format!("{job}.begin.log")), bytes);
        }
        let archive = ArchiveSource::Guest {
            channel: backend.guest.as_ref(),
            path: format!(
                "{}/{}",
                backend.artifact_dir,
                qci_core::artifacts::archive_name(job)
            ),
        };
        let mut taken = self.take_in(&archive, job, &host_log);
        // Taken once the state is known, before the machine is powered off.
        let mut screenshot = None;
        let answering = !matches!(end, End::Lost(_) | End::TimedOut | End::Canceled);
        let reach = answering.then_some(dom0);
        let (state, description) = match self.status.final_state(job, reach) {
            Some(found) => found,
            None => {
                let (state, why) = match &end {
                    End::Exited(code) => (
                        State::Error,
                        format!(
                            "Job ended without a final status (qci-vm begin exited with {code})"
                        ),
                    ),
                    End::TimedOut => (
                        State::Error,
                        format!("Job timed out after {}s", job_timeout.as_secs()),
                    ),
                    End::Canceled => (State::Canceled, "Job canceled".to_owned()),
                    End::Lost(why) => (State::Error, why.clone()),
                };
                let why = qci_core::status::clean_description(&why);
                if !answering {
                    screenshot = Some(self.screenshot(backend, job, state, &host_log));
                    // Stop the job before saying it ended.
                    let _ = backend.control.power_off();
                }
                if let Err(e) = self.status.record(job, state, &why, reach) {
                    tracing::error!("cannot record the final status of {job}: {e}");
                }
                (state, why)
            }
        };
        let screenshot =
            screenshot.unwrap_or_else(|| self.screenshot(backend, job, state, &host_log));
        if let Some(path) = screenshot {
            taken
                .get_or_insert_with(|| JobArtifacts {
                    dir: artifacts::job_dir(&self.config.state_dir, job),
                    files: Vec::new(),
                    reports: Vec::new(),
                    screenshot: None,
                    tests: Vec::new(),
                    report_problems: Vec::new(),
                })
                .screenshot = Some(path);
        }
        let exit = match end {
            End::Exited(c @ 0..=3) => ExitCode::from_status(Some(c)),
            _ => match state {
                State::Success => ExitCode::Success,
                State::Failure => ExitCode::StepFailed,
                _ => ExitCode::CiError,
            },
        };
        JobOutcome {
            machine: self.machine.name.clone(),
            state,
            description,
            log: host_log,
            exit,
            artifacts: taken,
        }
    }

    /// Takes in the job's archive, with a `host` line in the log saying how
    /// it went (none when the job declared no artifacts).
    fn take_in(
        &self,
        archive: &ArchiveSource<'_>,
        job: &JobId,
        host_log: &std::path::Path,
    ) -> Option<JobArtifacts> {
        let state_dir = &self.config.state_dir;
        let limits = artifacts::limits(self.config.max_artifact_bytes);
        match artifacts::take_in(archive, state_dir, job, &limits) {
            Ok(None) => None,
            Ok(Some(taken)) => {
                let bytes: u64 = taken.files.iter().map(|f| f.bytes).sum();
                artifacts::host_line(
                    host_log,
                    &format!(
                        "artifacts: {} files ({bytes} bytes), {} reports",
                        taken.files.len(),
                        taken.reports.len()
                    ),
                );
                for problem in &taken.report_problems {
                    artifacts::host_line(host_log, problem);
                }
                Some(taken)
            }
            Err(e) => {
                artifacts::host_line(host_log, &format!("artifacts: {e}"));
                None
            }
        }
    }

    /// The screenshot of a machine whose job ended in failure, error or
    /// timeout, kept as `STATE/artifacts/JOB/screenshot.png`. One that
    /// cannot be taken is a `host` line in the log, never another result.
    fn screenshot(
        &self,
        backend: &Backend,
        job: &JobId,
        state: State,
        host_log: &std::path::Path,
    ) -> Option<PathBuf> {
        if !matches!(state, State::Failure | State::Error) {
            return None;
        }
        let why = match backend.control.screenshot() {
            Ok(None) => return None,
            Ok(Some(png)) => match artifacts::save_screenshot(&self.config.state_dir, job, &png) {
                Ok(path) => return Some(path),
                Err(e) => e.to_string(),
            },
            Err(e) => format!("cannot take one: {e}"),
        };
        artifacts::host_line(host_log, &format!("screenshot: {why}"));
        None
    }

    /// Writes the job file into the dev VM and starts `qci-vm begin`.
    fn start_begin(
        &self,
        dom0: &Dom0<'_>,
        job_file: &JobFile,
        job: &JobId,
    ) -> Result<GuestPid, GuestError> {
        self.events.phase(job, &Phase::PlacingJob);
        let mut json =
            serde_json::to_vec_pretty(job_file).map_err(|e| GuestError::Failed(e.to_string()))?;
        json.push(b'\n');
        let rel = job_file_rel(job);
        let dir = rel
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // noclobber: a job id is used once.
        let place = format!(
            "set -C; mkdir -p {} && cat > {}",
            sh_quote(&dir),
            sh_quote(&rel.to_string_lossy())
        );
        dom0.dev_vm(&place, Some(&json), &format!("{job}.job"))?;
        self.events.phase(job, &Phase::Running);
        let script = format!(
            "exec qvm-run --pass-io --no-gui {} {} < /dev/null > /dev/null 2> {}",
            sh_quote(dom0.dev_vm),
            sh_quote(&format!("qci-vm begin {job}")),
            sh_quote(&format!("{}/qci-host-{job}.begin", dom0.tmp_dir)),
        );
        dom0.guest.start(&["sh".into(), "-c".into(), script])
    }

    /// Follows dom0's log until `begin` ends, the job times out, it is
    /// canceled, or the machine stops answering.
    fn follow(
        &self,
        backend: &Backend,
        dom0: &Dom0<'_>,
        pid: GuestPid,
        request: &JobRequest,
        job_timeout: Duration,
        host_log: &std::path::Path,
    ) -> End {
        const POLL: Duration = Duration::from_millis(200);
        const CHUNK: usize = 1 << 20;
        let job = &request.job;
        let path = format!("{}/{}", dom0.log_dir, qci_core::log::file_name(job));
        let _ = std::fs::create_dir_all(host_log.parent().unwrap_or(std::path::Path::new(".")));
        let mut copy = std::fs::File::create(host_log).ok();
        let deadline = Instant::now() + job_timeout + Duration::from_secs(60);
        let mut offset = 0u64;
        let mut partial: Vec<u8> = Vec::new();
        let mut failing_since: Option<Instant> = None;
        let lost_after = self.config.call_timeout * 2;
        let mut emit = |bytes: &[u8], last: bool| {
            partial.extend_from_slice(bytes);
            let cut = if last {
                partial.len()
            } else {
                partial
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
            };
            if cut > 0 {
                let lines: Vec<u8> = partial.drain(..cut).collect();
                if let Some(f) = copy.as_mut() {
                    let _ = f.write_all(&lines);
                }
                self.events.log(job, &lines);
            }
        };
        let mut exited = None;
        // A machine that fails every call for a while has died or hung.
        let lost = |since: &mut Option<Instant>, e: GuestError| {
            let first = *since.get_or_insert_with(Instant::now);
            (first.elapsed() > lost_after)
                .then(|| format!("machine {} stopped answering: {e}", self.machine.name))
        };
        loop {
            let chunk = match backend.guest.read_at(&path, offset, CHUNK) {
                Ok(chunk) => {
                    failing_since = None;
                    chunk
                }
                Err(e) => match lost(&mut failing_since, e) {
                    Some(why) => {
                        emit(&[], true);
                        return End::Lost(why);
                    }
                    None => Vec::new(),
                },
            };
            if !chunk.is_empty() {
                offset += chunk.len() as u64;
                emit(&chunk, false);
                continue;
            }
            if let Some(code) = exited {
                emit(&[], true);
                return End::Exited(code);
            }
            match backend.guest.exit_code(pid) {
                // Once it has ended, one more read: lines written just before.
                Ok(code) => exited = code,
                Err(e) => {
                    if let Some(why) = lost(&mut failing_since, e) {
                        emit(&[], true);
                        return End::Lost(why);
                    }
                }
            }
            if exited.is_some() {
                continue;
            }
            if request.cancel.load(Ordering::Relaxed) {
                emit(&[], true);
                return End::Canceled;
            }
            if Instant::now() >= deadline {
                emit(&[], true);
                return End::TimedOut;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Clears the marker if it is still this host's for `job`.
pub(crate) fn clear_marker(
    control: &dyn MachineControl,
    host: &str,
    job: &JobId,
) -> Result<(), ControlError> {
    ctl::release_marker(control, host, job.as_str())
}
