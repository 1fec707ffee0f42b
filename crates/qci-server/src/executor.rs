//! The machine pool as the server uses it, behind a trait: [`qci_pool::Pool`]
//! in production. The seam exists so the server's own tests can script what
//! a machine does without booting one.

use qci_pool::{FinalStatus, JobEvents, JobOutcome, JobRequest, MachineReport, Pool, PoolError};

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
