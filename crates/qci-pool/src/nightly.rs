//! `qci nightly`: per machine, boot the clean snapshot, update dom0 and the
//! templates, apply qci's Salt states, shut down cleanly and snapshot as
//! `qci-YYYY-MM-DD`, keeping the newest N. A failed command or an unclean
//! stop means no snapshot: the old one stays, and jobs keep using it.
//!
//! The machine is leased like a job (it waits in the same FIFO), so a
//! nightly never updates a machine under a running job.

use crate::backend::Backend;
use crate::config::{DEV_VM, MachineConfig};
use crate::control::ControlError;
use crate::guest::{GuestError, sh_quote};
use crate::lease::Want;
#[cfg(test)]
use crate::runner::clean_snapshot;
use crate::runner::{Boot, NoAnswer, clear_marker};
use crate::status::{JobEvents, Phase};
use crate::{Pool, PoolError};
use qci_core::JobId;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

/// `qci-YYYY-MM-DD`.
pub fn is_nightly(name: &str) -> bool {
    name.strip_prefix("qci-").is_some_and(|d| {
        d.len() == 10
            && d.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
    })
}

pub fn snapshot_name(at: SystemTime) -> String {
    format!("qci-{}", &qci_core::log::timestamp(at)[..10])
}

/// Why a machine got no new snapshot (the old one stays in use).
#[derive(Debug, thiserror::Error)]
pub enum NightlyError {
    /// Leasing the machine, or booting it, failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Hypervisor(#[from] ControlError),
    #[error("another host holds the machine")]
    Foreign,
    #[error(transparent)]
    NoAnswer(#[from] NoAnswer),
    #[error("{}: {source}", .path.display())]
    Log {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}`: {source}")]
    Command { command: String, source: GuestError },
    #[error("`{command}` exited with {code}; no snapshot taken")]
    Exited { command: String, code: i32 },
    #[error("the machine did not shut down within {}s; no snapshot taken", .grace.as_secs())]
    Unclean { grace: std::time::Duration },
}

#[derive(Debug)]
pub struct NightlyOutcome {
    pub machine: String,
    /// The snapshot taken, or why none was.
    pub result: Result<String, NightlyError>,
    /// The commands' output on the host.
    pub log: std::path::PathBuf,
}

impl Pool {
    /// Runs the nightly on `only` (every machine when empty), one machine
    /// after the other. Progress goes to `events` (as a job named
    /// `nightly-DATE-MACHINE`), command output to its log on the host.
    pub fn nightly(
        &self,
        only: &[String],
        events: &dyn JobEvents,
    ) -> Result<Vec<NightlyOutcome>, PoolError> {
        for name in only {
            self.check_target(&crate::Target::Machine(name.clone()))?;
        }
        let today = snapshot_name(SystemTime::now());
        let mut out = Vec::new();
        for m in self
            .config
            .machines
            .iter()
            .filter(|m| only.is_empty() || only.contains(&m.name))
        {
            let job = JobId::parse(&format!("nightly-{}-{}", &today[4..], m.name))?;
            let log = self
                .config
                .state_dir
                .join("logs")
                .join(format!("{job}.log"));
            let result = self.nightly_one(m, &job, &today, &log, events);
            events.phase(
                &job,
                &Phase::Finished {
                    state: if result.is_ok() {
                        qci_core::State::Success
                    } else {
                        qci_core::State::Failure
                    },
                },
            );
            out.push(NightlyOutcome {
                machine: m.name.clone(),
                result,
                log,
            });
        }
        Ok(out)
    }

    fn nightly_one(
        &self,
        m: &MachineConfig,
        job: &JobId,
        snapshot: &str,
        log: &std::path::Path,
        events: &dyn JobEvents,
    ) -> Result<String, NightlyError> {
        let cfg = &self.config;
        let lease_for = cfg.boot_timeout
            + cfg.nightly.command_timeout
                * (cfg.nightly.update_commands.len() + cfg.nightly.salt_commands.len()) as u32
            + cfg.shutdown_grace
            + crate::LEASE_MARGIN;
        let never = AtomicBool::new(false);
        let lease = self.store.acquire(
            job,
            &Want::Machine(m.name.clone()),
            &[],
            &cfg.machines,
            lease_for,
            &never,
            Instant::now() + cfg.queue_timeout,
            &mut |ahead| events.phase(job, &Phase::Queued { ahead }),
        )?;
        let backend = Backend::open(m, cfg.call_timeout).map_err(NightlyError::from);
        let result = backend.and_then(|b| {
            let r = self.update_and_snapshot(m, &b, job, snapshot, log, events, lease_for, &lease);
            let _ = b.control.power_off();
            let _ = clear_marker(b.control.as_ref(), &cfg.host_id, job);
            r
        });
        let _ = self
            .store
            .release(&m.name, job, lease.log_id, &cfg.machines);
        result
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one caller passes each of these; a struct would exist only for it"
    )]
    fn update_and_snapshot(
        &self,
        m: &MachineConfig,
        b: &Backend,
        job: &JobId,
        snapshot: &str,
        log: &std::path::Path,
        events: &dyn JobEvents,
        lease_for: std::time::Duration,
        lease: &crate::lease::Lease,
    ) -> Result<String, NightlyError> {
        let cfg = &self.config;
        let control = b.control.as_ref();
        let runner = crate::runner::Runner {
            config: cfg,
            store: &self.store,
            machine: m,
            lease,
            events,
            status: &crate::status::SinkStatus {
                logs_dir: cfg.state_dir.join("logs"),
            },
            lease_for,
            bootstrap: true,
        };
        let _ = std::fs::create_dir_all(log.parent().unwrap_or(std::path::Path::new(".")));
        let mut host_log = std::fs::File::create(log).map_err(|source| NightlyError::Log {
            path: log.to_owned(),
            source,
        })?;
        match runner.boot(b, job, &AtomicBool::new(false)) {
            Boot::Ready => {}
            Boot::Foreign => return Err(NightlyError::Foreign),
            Boot::NoAnswer(why) => return Err(why.into()),
            Boot::Failed(e) => return Err(e.into()),
        }
        let dom0 = runner.dom0(b, cfg.nightly.command_timeout);
        let out_file = format!("{}/qci-host-{job}.out", b.tmp_dir);
        for argv in cfg
            .nightly
            .update_commands
            .iter()
            .chain(&cfg.nightly.salt_commands)
        {
            let words: Vec<String> = argv
                .iter()
                .map(|w| sh_quote(&w.replace(DEV_VM, &m.dev_vm)))
                .collect();
            let shown = words.join(" ");
            events.phase(job, &Phase::Running);
            let _ = writeln!(host_log, "$ {shown}");
            let script = format!("{shown} > {} 2>&1", sh_quote(&out_file));
            let code = dom0.sh(&script);
            if let Ok(bytes) = b.guest.copy_out(&out_file) {
                let _ = host_log.write_all(&bytes);
            }
            match code {
                Ok(0) => {}
                Ok(code) => {
                    return Err(NightlyError::Exited {
                        command: shown,
                        code,
                    });
                }
                Err(source) => {
                    return Err(NightlyError::Command {
                        command: shown,
                        source,
                    });
                }
            }
        }
        let _ = dom0.sh(&format!("rm -f {}", sh_quote(&out_file)));
        events.phase(job, &Phase::PoweringOff);
        let clean = control.shutdown(cfg.shutdown_grace)?;
        if !clean {
            return Err(NightlyError::Unclean {
                grace: cfg.shutdown_grace,
            });
        }
        // The marker is ours: keep it out of the snapshot.
        clear_marker(control, &cfg.host_id, job)?;
        control.create_snapshot(snapshot)?;
        let mut nightlies: Vec<_> = control
            .snapshots()?
            .into_iter()
            .filter(|s| is_nightly(&s.name))
            .collect();
        nightlies.sort_by(|a, b| b.name.cmp(&a.name));
        for old in nightlies.iter().skip(cfg.nightly.keep.max(1)) {
            control.delete_snapshot(&old.name)?;
        }
        Ok(snapshot.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_names_are_dated() {
        assert!(is_nightly("qci-2026-11-30"));
        assert!(!is_nightly("qci-2026-11-3"));
        assert!(!is_nightly("clean"));
        let name = snapshot_name(SystemTime::UNIX_EPOCH);
        assert_eq!(name, "qci-1970-01-01");
        assert!(is_nightly(&name));
    }

    #[test]
    fn jobs_use_the_newest_nightly_snapshot_else_the_configured_one() {
        let s = |name: &str| crate::control::Snapshot {
            name: name.into(),
            created: 0,
        };
        let all = [
            s("clean"),
            s("qci-2026-11-29"),
            s("qci-2026-11-30"),
            s("other"),
        ];
        assert_eq!(
            clean_snapshot(&all, "clean").as_deref(),
            Some("qci-2026-11-30")
        );
        assert_eq!(clean_snapshot(&all[..1], "clean").as_deref(), Some("clean"));
        assert_eq!(clean_snapshot(&all[3..], "clean"), None);
    }
}
