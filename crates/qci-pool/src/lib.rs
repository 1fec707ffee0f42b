//! The host's Qubes machines: a pool described in the host config, leased
//! atomically, reverted, booted and driven through dom0 to run CI jobs.
//!
//! - [`config`]: the `[pool]` table of HOST.toml.
//! - [`control`] and [`guest`]: the two traits every backend implements,
//!   machine control (power, snapshots, the lease marker) and the guest
//!   channel (commands and files in dom0).
//! - [`backend`]: `local` (emulated machines), `libvirt`, `vmware`.
//! - [`lease`]: SQLite leases and the FIFO of waiting jobs.
//! - [`runner`]: one job on one machine; [`nightly`]: fresh snapshots.
//! - [`artifacts`]: a job's archive taken in from dom0, and the screenshot
//!   of a failed machine.
//!
//! Every call here blocks; a server calls it from blocking threads. A
//! [`Pool`] is cheap to clone and opens its own SQLite connection per call.

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod backend;
mod command;
pub mod config;
pub mod control;
mod error;
pub mod guest;
pub mod lease;
pub mod nightly;
pub mod runner;
pub mod status;

pub use command::CommandError;
pub use config::{HostFile, PoolConfig, load_host_file};
pub use error::PoolError;
pub use guest::Dom0;
pub use nightly::{NightlyError, NightlyOutcome};
pub use runner::{JobOutcome, JobRequest, NoAnswer, Target};
pub use status::{FinalStatus, JobEvents, Phase, RecordError, Silent, SinkStatus};

use backend::Backend;
use control::{ControlError, Marker, PowerState};
use lease::{LeaseRow, LeaseStore, Want, owner_alive};
use qci_core::{JobId, State};
use runner::{Attempt, Runner};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Added to a lease's expiry beyond the boot, job and shutdown bounds.
const LEASE_MARGIN: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone)]
pub struct Pool {
    config: Arc<PoolConfig>,
    store: LeaseStore,
}

/// How [`Pool::lease_booted`] ended when it did not fail.
pub enum Ready {
    Booted(Box<Booted>),
    /// No machine's dom0 answered: the machine is off and free again, and
    /// the job's final status should say `why`.
    GaveUp {
        machine: String,
        why: String,
    },
}

/// A machine leased for a job, reverted and booted, its dom0 reaching the
/// dev VM. The lease stays held until [`Pool::end_lease`] (or a runner's
/// end) frees it, or its owner dies and a reconcile does.
pub struct Booted {
    pub machine: config::MachineConfig,
    pub lease: lease::Lease,
    pub backend: Backend,
    /// How long the lease and its marker hold before they count as void.
    pub lease_for: Duration,
}

/// A lease whose holder died, cleaned up by [`Pool::reconcile`].
#[derive(Debug)]
pub struct Reconciled {
    pub job: JobId,
    pub machine: String,
    pub why: String,
    /// `Err`: the machine could not be cleaned; its lease stays.
    pub result: Result<(), ControlError>,
}

/// One line of `qci pool`.
#[derive(Debug)]
pub struct MachineReport {
    pub name: String,
    pub qubes: String,
    pub backend: String,
    /// The power state, or why it could not be read.
    pub power: Result<PowerState, ControlError>,
    pub lease: Option<LeaseRow>,
    pub marker: Option<Marker>,
    /// The snapshot the next job starts from.
    pub snapshot: Option<String>,
    /// The last job run on it: id, state, description.
    pub last_run: Option<(String, String, String)>,
}

/// Who holds a machine, from its lease and its marker: what `qci pool` and
/// the server's `/pool` page say of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Occupancy {
    Free,
    /// Leased by a live process.
    Busy {
        job: String,
        pid: i64,
        for_secs: u64,
    },
    /// Its lease's holder is gone: the next `qci run`, `qci nightly` or
    /// `qci serve` start on that host cleans it up.
    Stale {
        job: String,
        pid: i64,
        host: String,
    },
    /// Marked on the hypervisor for another host's job.
    Foreign {
        job: String,
        host: String,
    },
}

impl MachineReport {
    /// Who holds the machine at `now` ([`lease::now`]).
    pub fn occupancy(&self, now: f64) -> Occupancy {
        match (&self.lease, &self.marker) {
            (Some(l), _) if !owner_alive(&l.owner) => Occupancy::Stale {
                job: l.job.to_string(),
                pid: l.pid,
                host: l.host.clone(),
            },
            (Some(l), _) => Occupancy::Busy {
                job: l.job.to_string(),
                pid: l.pid,
                for_secs: (now - l.acquired_at).max(0.0) as u64,
            },
            (None, Some(mk)) if mk.is_live(now as u64) => Occupancy::Foreign {
                job: mk.job.clone(),
                host: mk.host.clone(),
            },
            _ => Occupancy::Free,
        }
    }

    /// The nightly snapshot jobs start from, if the machine has had one.
    pub fn last_nightly(&self) -> Option<&str> {
        self.snapshot.as_deref().filter(|s| nightly::is_nightly(s))
    }
}

impl Pool {
    /// Opens the state directory's SQLite file. Touches no machine.
    pub fn open(config: PoolConfig) -> Result<Self, PoolError> {
        let store = LeaseStore::open(&config.state_dir, &config.host_id)?;
        Ok(Self {
            config: Arc::new(config),
            store,
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub fn store(&self) -> &LeaseStore {
        &self.store
    }

    /// Refuses a target that names nothing in the pool.
    pub fn check_target(&self, target: &Target) -> Result<(), PoolError> {
        match target {
            Target::Machine(m) if self.config.machine(m).is_none() => {
                Err(PoolError::UnknownMachine(m.clone()))
            }
            Target::Qubes(q) if !self.config.machines.iter().any(|m| &m.qubes == q) => {
                Err(PoolError::UnknownVersion(q.clone()))
            }
            _ => Ok(()),
        }
    }

    fn lease_for(&self, job_timeout: Duration) -> Duration {
        self.config.boot_timeout + job_timeout + self.config.shutdown_grace + LEASE_MARGIN
    }

    /// Runs one job (see pool-api.md): `Err` only when it never started.
    pub fn run_job(
        &self,
        request: &JobRequest,
        events: &dyn JobEvents,
        status: &dyn FinalStatus,
    ) -> Result<JobOutcome, PoolError> {
        let job_timeout = request.timeout.unwrap_or(self.config.job_timeout);
        let ready = self.lease_booted(
            &request.job,
            &request.target,
            &request.cancel,
            job_timeout,
            events,
        )?;
        let booted = match ready {
            Ready::Booted(b) => b,
            Ready::GaveUp { machine, why } => {
                return Ok(self.give_up(request, &machine, status, events, why));
            }
        };
        let runner = Runner {
            config: &self.config,
            store: &self.store,
            machine: &booted.machine,
            lease: &booted.lease,
            events,
            status,
            lease_for: booted.lease_for,
            bootstrap: false,
        };
        Ok(runner.finish(&booted.backend, request, job_timeout))
    }

    /// Waits in the FIFO for a machine `target` accepts, leases it, reverts
    /// it, boots it and waits for dom0 to reach the dev VM: what every job
    /// does before it runs, whoever runs it (`qci run`, `qci serve`, the
    /// GitLab executor). A machine whose hypervisor fails, or whose dom0
    /// never answers, sends the job to another machine of the version once;
    /// `Err` means nothing ran and no lease is held.
    pub fn lease_booted(
        &self,
        job: &JobId,
        target: &Target,
        cancel: &std::sync::atomic::AtomicBool,
        job_timeout: Duration,
        events: &dyn JobEvents,
    ) -> Result<Ready, PoolError> {
        self.check_target(target)?;
        let want = match target {
            Target::Machine(m) => Want::Machine(m.clone()),
            Target::Qubes(q) => Want::Qubes(q.clone()),
        };
        let lease_for = self.lease_for(job_timeout);
        let queue_deadline = Instant::now() + self.config.queue_timeout;
        let mut exclude: Vec<String> = Vec::new();
        // A machine that never answered already sent the job elsewhere once.
        let mut moved_after_no_answer = false;
        loop {
            let lease = self.store.acquire(
                job,
                &want,
                &exclude,
                &self.config.machines,
                lease_for,
                cancel,
                queue_deadline,
                &mut |ahead| events.phase(job, &Phase::Queued { ahead }),
            )?;
            let machine = self
                .config
                .machine(&lease.machine)
                .ok_or_else(|| PoolError::UnknownMachine(lease.machine.clone()))?;
            events.phase(
                job,
                &Phase::Leased {
                    machine: machine.name.clone(),
                },
            );
            let runner = Runner {
                config: &self.config,
                store: &self.store,
                machine,
                lease: &lease,
                events,
                status: &status::NoStatus,
                lease_for,
                bootstrap: false,
            };
            // Another machine of the version not tried yet.
            let others =
                match target {
                    Target::Qubes(q) => self.config.machines.iter().any(|m| {
                        &m.qubes == q && m.name != machine.name && !exclude.contains(&m.name)
                    }),
                    Target::Machine(_) => false,
                };
            match runner.bring_up(job, cancel) {
                Ok(backend) => {
                    return Ok(Ready::Booted(Box::new(Booted {
                        machine: machine.clone(),
                        lease,
                        backend,
                        lease_for,
                    })));
                }
                // A hypervisor failing one machine may not fail the others
                // (they may be on other hosts): each is tried once before
                // the job is given back, unstarted.
                Err(Attempt::NotStarted(e @ PoolError::Hypervisor { .. })) if others => {
                    events.phase(
                        job,
                        &Phase::Retrying {
                            machine: machine.name.clone(),
                            why: e.to_string(),
                        },
                    );
                    exclude.push(machine.name.clone());
                    continue;
                }
                Err(Attempt::NotStarted(e)) => return Err(e),
                Err(Attempt::Foreign) => continue,
                Err(Attempt::NoAnswer(why)) => {
                    let why = why.to_string();
                    if !moved_after_no_answer && others {
                        events.phase(
                            job,
                            &Phase::Retrying {
                                machine: machine.name.clone(),
                                why,
                            },
                        );
                        exclude.push(machine.name.clone());
                        moved_after_no_answer = true;
                        continue;
                    }
                    let why = if moved_after_no_answer {
                        format!("retried on {}: {why}", machine.name)
                    } else {
                        why
                    };
                    return Ok(Ready::GaveUp {
                        machine: machine.name.clone(),
                        why,
                    });
                }
            }
        }
    }

    /// The lease this host holds for `job`, if any: how a process that did
    /// not take a lease (a later GitLab stage) finds it.
    pub fn lease_of(&self, job: &JobId) -> Result<Option<LeaseRow>, PoolError> {
        Ok(self
            .store
            .leases()?
            .into_iter()
            .find(|l| &l.job == job && l.host == self.config.host_id))
    }

    /// Powers the machine of `row` off, clears its marker, records the
    /// run's end and frees the lease. When the hypervisor fails, the lease
    /// is handed to no live process, so the next reconcile (any `qci` start
    /// on this host) powers it off, reverts it and frees it instead: the
    /// machine is never left held by a job that has ended. `end` is the
    /// run's final state and description, when the caller knows them.
    pub fn end_lease(&self, row: &LeaseRow, end: Option<(State, &str)>) -> Result<(), PoolError> {
        let cleaned = self.config.machine(&row.machine).map(|m| {
            let b = Backend::open(m, self.config.call_timeout)?;
            b.control.power_off()?;
            runner::clear_marker(b.control.as_ref(), &self.config.host_id, &row.job)
        });
        if let Some(Err(source)) = cleaned {
            let _ = self
                .store
                .hand_over(&row.machine, &row.job, lease::NOBODY, 0);
            return Err(PoolError::Hypervisor {
                machine: row.machine.clone(),
                source,
            });
        }
        if let Some((state, why)) = end {
            let _ = self.store.run_ended(&row.job, state.as_str(), why, None);
        }
        self.store
            .release(&row.machine, &row.job, row.log_id, &self.config.machines)
    }

    /// The job could not run on any machine: its final status says why.
    fn give_up(
        &self,
        request: &JobRequest,
        machine: &str,
        status: &dyn FinalStatus,
        events: &dyn JobEvents,
        why: String,
    ) -> JobOutcome {
        let why = qci_core::status::clean_description(&why);
        if let Err(e) = status.record(&request.job, State::Error, &why, None) {
            tracing::error!("cannot record the final status of {}: {e}", request.job);
        }
        let log = self
            .config
            .state_dir
            .join("logs")
            .join(qci_core::log::file_name(&request.job));
        let _ = self.store.run_ended(&request.job, "error", &why, None);
        events.phase(
            &request.job,
            &Phase::Finished {
                state: State::Error,
            },
        );
        JobOutcome {
            machine: machine.to_owned(),
            state: State::Error,
            description: why,
            log,
            exit: qci_core::ExitCode::CiError,
            artifacts: None,
        }
    }

    /// Cleans up after this host's dead processes (see pool-api.md).
    pub fn reconcile(&self, status: &dyn FinalStatus) -> Result<Vec<Reconciled>, PoolError> {
        let mut done = Vec::new();
        for row in self.store.leases()? {
            if row.host != self.config.host_id || owner_alive(&row.owner) {
                continue;
            }
            if !self.store.take_over(&row)? {
                continue;
            }
            let why = format!(
                "The qci host process (pid {}) died while the job held machine {}; the machine was powered off and reverted",
                row.pid, row.machine
            );
            let result = self.clean(&row);
            if result.is_ok() {
                if status.final_state(&row.job, None).is_none()
                    && let Err(e) = status.record(&row.job, State::Error, &why, None)
                {
                    tracing::error!("cannot record the final status of {}: {e}", row.job);
                }
                let _ = self.store.run_ended(&row.job, "error", &why, None);
                self.store
                    .release(&row.machine, &row.job, row.log_id, &self.config.machines)?;
            }
            done.push(Reconciled {
                job: row.job,
                machine: row.machine,
                why,
                result,
            });
        }
        Ok(done)
    }

    /// Powers a machine off, reverts it and clears its marker.
    fn clean(&self, row: &LeaseRow) -> Result<(), ControlError> {
        let Some(m) = self.config.machine(&row.machine) else {
            return Ok(());
        };
        let b = Backend::open(m, self.config.call_timeout)?;
        b.control.power_off()?;
        let snapshots = b.control.snapshots()?;
        if let Some(s) = runner::clean_snapshot(&snapshots, &m.snapshot) {
            b.control.revert(&s)?;
            b.control.power_off()?;
        }
        runner::clear_marker(b.control.as_ref(), &self.config.host_id, &row.job)
    }

    /// Every machine, as `qci pool` shows it. Asks each hypervisor.
    pub fn report(&self) -> Result<Vec<MachineReport>, PoolError> {
        let leases = self.store.leases()?;
        let mut out = Vec::new();
        for m in &self.config.machines {
            let opened = Backend::open(m, self.config.call_timeout);
            let (power, marker, snapshot) = match opened {
                Ok(b) => (
                    b.control.power_state(),
                    b.control.marker().ok().flatten(),
                    b.control
                        .snapshots()
                        .ok()
                        .and_then(|s| runner::clean_snapshot(&s, &m.snapshot)),
                ),
                Err(e) => (Err(e), None, None),
            };
            out.push(MachineReport {
                name: m.name.clone(),
                qubes: m.qubes.clone(),
                backend: m.backend.to_string(),
                power,
                lease: leases.iter().find(|l| l.machine == m.name).cloned(),
                marker,
                snapshot,
                last_run: self.store.last_run(&m.name)?,
            });
        }
        Ok(out)
    }
}
