//! The machine pool as the server uses it, behind a trait: [`qci_pool::Pool`]
//! in production. The seam exists so the server's own tests can script what
//! a machine does without booting one.

use qci_core::{JobId, State};
use qci_pool::backend::Backend;
use qci_pool::guest::{GuestPid, sh_quote};
use qci_pool::{
    Dom0, FinalStatus, JobEvents, JobOutcome, JobRequest, MachineReport, Pool, PoolError, Ready,
    Silent, Target,
};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// A booted machine lent to another engine's job (a GitHub Actions
/// runner): it runs commands in the machine's dev VM through the guest
/// channel. The lender powers it off and frees it once the engine's work
/// returns, whatever that work did.
pub trait EngineMachine {
    /// The pool's name of the machine.
    fn name(&self) -> &str;
    /// Starts `command` (`sh -c`, from `$HOME`) in the dev VM, with
    /// `secret` in its environment as `$QCI_JITCONFIG`: the secret goes in
    /// a file only the dev VM's user reads, removed once read, never on a
    /// command line. Its output goes to `.qci/engine/NAME.out` in the dev VM.
    fn start(&self, name: &str, command: &str, secret: &str) -> Result<i64, String>;
    /// The started command's exit code, once it has ended.
    fn exited(&self, pid: i64) -> Result<Option<i32>, String>;
}

/// How an engine's work on a lent machine ended: what the machine's run
/// records (`qci pool`'s last run).
pub struct EngineEnd {
    pub state: State,
    pub description: String,
}

/// Why a job never started on a machine (nothing ran; no status was posted
/// by the machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// It never can: it asks for what the pool does not have.
    Refused(String),
    /// It may later: the pool or a hypervisor failed, or no machine freed.
    Failed(String),
    /// Its cancel flag was set: the host has ended it already.
    Canceled,
}

impl From<PoolError> for NotStarted {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Canceled => Self::Canceled,
            e if e.is_bad_input() => Self::Refused(e.to_string()),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// The machine pool: what it has, and running a job on it.
pub trait Executor: Send + Sync + 'static {
    /// The Qubes versions the pool has machines for.
    fn versions(&self) -> Vec<String>;
    /// How many jobs of Qubes `qubes` may be handed over at once: the
    /// machines of that version. More would only wait inside the pool.
    fn capacity(&self, qubes: &str) -> usize;
    /// Frees the leases of jobs whose host process died, recording their
    /// final status through `status`. Returns a line per job.
    fn reconcile(&self, status: &dyn FinalStatus) -> Vec<String>;
    /// Runs one job to its end; `Err` only when it never started.
    fn run_job(
        &self,
        request: &JobRequest,
        events: &dyn JobEvents,
        status: &dyn FinalStatus,
    ) -> Result<JobOutcome, NotStarted>;
    /// Every machine as `qci pool` shows it, for the `/pool` page. Asks
    /// each hypervisor, so it blocks: call it from a blocking thread.
    fn report(&self) -> Result<Vec<MachineReport>, PoolError> {
        Ok(Vec::new())
    }
    /// How many machines of Qubes `qubes` are leased, by any process of
    /// any host sharing the lease store (a `qci run` or a nightly too):
    /// the lease store only, no hypervisor.
    fn leased(&self, _qubes: &str) -> Result<usize, PoolError> {
        Ok(0)
    }
    /// Waits in the pool's FIFO for a machine of Qubes `qubes` (the same
    /// queue and leases as every job, whichever engine asked), reverts and
    /// boots it, hands it to `work`, then powers it off and frees it.
    /// `Err` when no machine was lent (canceled while waiting, no such
    /// version, the pool failed); `work` then never ran.
    fn lend(
        &self,
        _job: &JobId,
        _qubes: &str,
        _cancel: &AtomicBool,
        _timeout: Duration,
        _work: &mut dyn FnMut(&dyn EngineMachine) -> EngineEnd,
    ) -> Result<EngineEnd, NotStarted> {
        Err(NotStarted::Refused("this executor lends no machine".into()))
    }
}

/// A machine of the pool, booted and leased, as [`EngineMachine`].
struct Lent<'a> {
    pool: &'a Pool,
    machine: &'a qci_pool::config::MachineConfig,
    backend: &'a Backend,
}

impl Lent<'_> {
    fn dom0(&self) -> Dom0<'_> {
        self.backend
            .dom0(self.machine, self.pool.config().call_timeout)
    }
}

impl EngineMachine for Lent<'_> {
    fn name(&self) -> &str {
        &self.machine.name
    }

    fn start(&self, name: &str, command: &str, secret: &str) -> Result<i64, String> {
        let dir = ".qci/engine";
        let secret_file = format!("{dir}/{name}.secret");
        // Readable by the dev VM's user only; gone once the command read it.
        self.dom0()
            .dev_vm(
                &format!(
                    "umask 077 && mkdir -p {d} && cat > {f}",
                    d = sh_quote(dir),
                    f = sh_quote(&secret_file)
                ),
                Some(secret.as_bytes()),
                &format!("{name}.secret"),
            )
            .map_err(|e| e.to_string())?;
        let script = format!(
            "cd && QCI_JITCONFIG=$(cat {f}) && rm -f {f} && export QCI_JITCONFIG && {command}",
            f = sh_quote(&secret_file)
        );
        let inner = format!(
            "cd && exec sh -c {} > {} 2>&1",
            sh_quote(&script),
            sh_quote(&format!("{dir}/{name}.out"))
        );
        let start = format!(
            "exec qvm-run --pass-io --no-gui {} {} < /dev/null > /dev/null 2>&1",
            sh_quote(&self.machine.dev_vm),
            sh_quote(&inner),
        );
        self.backend
            .guest
            .start(&["sh".into(), "-c".into(), start])
            .map(|p| p.0)
            .map_err(|e| e.to_string())
    }

    fn exited(&self, pid: i64) -> Result<Option<i32>, String> {
        self.backend
            .guest
            .exit_code(GuestPid(pid))
            .map_err(|e| e.to_string())
    }
}

impl Executor for Pool {
    fn versions(&self) -> Vec<String> {
        let mut versions: Vec<String> = self
            .config()
            .machines
            .iter()
            .map(|m| m.qubes.clone())
            .collect();
        versions.sort();
        versions.dedup();
        versions
    }

    fn capacity(&self, qubes: &str) -> usize {
        self.config()
            .machines
            .iter()
            .filter(|m| m.qubes == qubes)
            .count()
    }

    fn reconcile(&self, status: &dyn FinalStatus) -> Vec<String> {
        match Pool::reconcile(self, status) {
            Ok(done) => done
                .into_iter()
                .map(|r| format!("{} on {}: {}", r.job, r.machine, r.why))
                .collect(),
            Err(e) => vec![format!("cannot reconcile the pool: {e}")],
        }
    }

    fn run_job(
        &self,
        request: &JobRequest,
        events: &dyn JobEvents,
        status: &dyn FinalStatus,
    ) -> Result<JobOutcome, NotStarted> {
        Ok(Pool::run_job(self, request, events, status)?)
    }

    fn report(&self) -> Result<Vec<MachineReport>, PoolError> {
        Pool::report(self)
    }

    fn lend(
        &self,
        job: &JobId,
        qubes: &str,
        cancel: &AtomicBool,
        timeout: Duration,
        work: &mut dyn FnMut(&dyn EngineMachine) -> EngineEnd,
    ) -> Result<EngineEnd, NotStarted> {
        let target = Target::Qubes(qubes.to_owned());
        let booted = match self.lease_booted(job, &target, cancel, timeout, &Silent)? {
            Ready::Booted(b) => b,
            Ready::GaveUp { machine, why } => {
                return Err(NotStarted::Failed(format!("{machine}: {why}")));
            }
        };
        let _ = self.store().run_started(job, &booted.machine.name);
        let end = work(&Lent {
            pool: self,
            machine: &booted.machine,
            backend: &booted.backend,
        });
        let row = self.lease_of(job).map_err(NotStarted::from)?;
        if let Some(row) = row {
            // A hypervisor that fails here leaves the lease to the next
            // reconcile, which powers the machine off and reverts it.
            if let Err(e) = self.end_lease(&row, Some((end.state, &end.description))) {
                tracing::error!("job {job}: cannot free {}: {e}", row.machine);
            }
        }
        Ok(end)
    }

    fn leased(&self, qubes: &str) -> Result<usize, PoolError> {
        let config = self.config();
        Ok(self
            .store()
            .leases()?
            .iter()
            .filter(|l| config.machine(&l.machine).is_some_and(|m| m.qubes == qubes))
            .count())
    }
}
