//! The Actions jobs qci holds a place or a machine for, in memory: what a
//! later `workflow_job` delivery (picked up, completed) is matched against.
//! It imports no handler, so [`crate::app::App`] can hold it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A machine and a runner qci starts: for one queued Actions job, or
/// idle (`min_idle`), for whichever job of its label comes.
#[derive(Debug)]
pub struct Slot {
    /// The GitHub job it stands for: the job it was queued for, or, once
    /// its runner took another job, that one ([`ActionsRuns::picked_up`]).
    /// `None`: an idle runner's, waiting for any job of its label.
    pub for_job: Option<u64>,
    /// The `[server.actions]` label its runner has.
    pub label: String,
    /// Set when the job ends before a runner took it: waiting in the
    /// pool's FIFO, it leaves; booted, its runner is not started.
    pub cancel: Arc<AtomicBool>,
    /// Its runner's name, once registered with GitHub.
    pub runner: Option<String>,
    /// A job reached its runner (`in_progress` named it).
    pub picked: bool,
    /// The runner's job ended (`completed` named it).
    pub completed: bool,
}

#[derive(Debug, Default)]
pub struct ActionsRuns {
    slots: Mutex<Vec<(u64, Slot)>>,
    next: Mutex<u64>,
    /// When an idle slot of each label last failed: the keeper waits a
    /// while before it starts the next (a pool that cannot boot would
    /// otherwise be asked again and again).
    idle_failed: Mutex<HashMap<String, Instant>>,
}

/// What a slot's watcher reads each time it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// It stands for no job: an idle runner's slot.
    pub idle: bool,
    pub canceled: bool,
    pub picked: bool,
    pub completed: bool,
}

impl ActionsRuns {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Slot)>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new slot for GitHub job `job` (`None`: an idle one) with a runner
    /// of `label`, unless one stands for that job already (a redelivery
    /// under a new GUID): its key and cancel flag.
    pub fn open(&self, job: Option<u64>, label: &str) -> Option<(u64, Arc<AtomicBool>)> {
        let mut slots = self.slots();
        if job.is_some() && slots.iter().any(|(_, s)| s.for_job == job) {
            return None;
        }
        let key = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let cancel = Arc::new(AtomicBool::new(false));
        slots.push((
            key,
            Slot {
                for_job: job,
                label: label.to_owned(),
                cancel: cancel.clone(),
                runner: None,
                picked: false,
                completed: false,
            },
        ));
        Some((key, cancel))
    }

    /// Ends slot `key`. An idle one (no job reached its runner, and none
    /// stands for it) that `failed` holds back the next idle slot of its
    /// label.
    pub fn close(&self, key: u64, failed: bool) {
        let mut slots = self.slots();
        if let Some((_, s)) = slots.iter().find(|(k, _)| *k == key)
            && failed
            && s.for_job.is_none()
            && !s.picked
        {
            self.idle_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(s.label.clone(), Instant::now());
        }
        slots.retain(|(k, _)| *k != key);
    }

    /// How many slots of `label` wait for any job (idle, not canceled),
    /// and when the last idle one of the label failed.
    pub fn idle(&self, label: &str) -> (usize, Option<Instant>) {
        let waiting = self
            .slots()
            .iter()
            .filter(|(_, s)| {
                s.label == label
                    && s.for_job.is_none()
                    && !s.picked
                    && !s.cancel.load(Ordering::SeqCst)
            })
            .count();
        let failed = self
            .idle_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .copied();
        (waiting, failed)
    }

    pub fn set_runner(&self, key: u64, name: &str) {
        if let Some((_, s)) = self.slots().iter_mut().find(|(k, _)| *k == key) {
            s.runner = Some(name.to_owned());
        }
    }

    pub fn seen(&self, key: u64) -> Seen {
        self.slots().iter().find(|(k, _)| *k == key).map_or(
            Seen {
                idle: false,
                canceled: true,
                picked: false,
                completed: false,
            },
            |(_, s)| Seen {
                idle: s.for_job.is_none(),
                canceled: s.cancel.load(Ordering::SeqCst),
                picked: s.picked,
                completed: s.completed,
            },
        )
    }

    /// `in_progress`: runner `runner` took job `job`. GitHub gives a
    /// queued job to any idle runner whose labels fit, so the runner
    /// started for job A may take job B: its slot then stands for B, and
    /// B's slot, if it still waits, for A, which still needs a runner (or,
    /// when the runner was idle, B's slot becomes the next idle one).
    /// `false` when the runner is none of qci's.
    pub fn picked_up(&self, job: u64, runner: &str) -> bool {
        let mut slots = self.slots();
        let Some(i) = slots
            .iter()
            .position(|(_, s)| s.runner.as_deref() == Some(runner))
        else {
            return false;
        };
        let was = slots[i].1.for_job;
        if was != Some(job)
            && let Some((_, other)) = slots
                .iter_mut()
                .find(|(_, s)| s.for_job == Some(job) && !s.picked)
        {
            other.for_job = was;
        }
        let slot = &mut slots[i].1;
        slot.for_job = Some(job);
        slot.picked = true;
        true
    }

    /// `completed`: job `job` ended, on runner `runner` if it reached one.
    /// Its runner's slot ends its machine; a slot that still stands for it
    /// without a runner job is canceled (it leaves the queue). What it did.
    pub fn completed(&self, job: u64, runner: Option<&str>) -> Completed {
        let mut slots = self.slots();
        if let Some(r) = runner
            && let Some((_, s)) = slots
                .iter_mut()
                .find(|(_, s)| s.runner.as_deref() == Some(r))
        {
            s.completed = true;
            return Completed::Ended;
        }
        match slots
            .iter_mut()
            .find(|(_, s)| s.for_job == Some(job) && !s.picked)
        {
            Some((_, s)) => {
                s.cancel.store(true, Ordering::SeqCst);
                Completed::Dropped
            }
            None => Completed::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Its runner's machine is powered off and freed.
    Ended,
    /// It never reached a runner of qci's: its place is given up.
    Dropped,
    /// qci held nothing for it.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runner_that_takes_another_job_swaps_the_slots() {
        let runs = ActionsRuns::default();
        let (a, _) = runs.open(Some(1), "q").unwrap();
        let (b, b_cancel) = runs.open(Some(2), "q").unwrap();
        assert!(
            runs.open(Some(1), "q").is_none(),
            "a redelivery opens no second slot"
        );
        runs.set_runner(a, "r-a");
        assert!(runs.picked_up(2, "r-a"));
        assert!(!runs.picked_up(2, "someone-else"));
        // Job 1 still needs a runner: slot b stands for it now.
        assert_eq!(runs.completed(1, None), Completed::Dropped);
        assert!(b_cancel.load(Ordering::SeqCst));
        assert_eq!(runs.completed(2, Some("r-a")), Completed::Ended);
        assert!(runs.seen(a).completed);
        runs.close(a, false);
        runs.close(b, false);
        assert_eq!(runs.completed(3, None), Completed::Unknown);
    }

    #[test]
    fn a_job_an_idle_runner_takes_makes_its_own_slot_the_next_idle_one() {
        let runs = ActionsRuns::default();
        let (idle, _) = runs.open(None, "q").unwrap();
        assert!(
            runs.open(None, "q").is_some(),
            "idle slots are not deduplicated"
        );
        assert_eq!(runs.idle("q").0, 2);
        runs.set_runner(idle, "r-idle");
        let (own, own_cancel) = runs.open(Some(7), "q").unwrap();
        assert!(!runs.seen(own).idle);
        assert!(runs.picked_up(7, "r-idle"));
        // The idle runner holds job 7; job 7's own slot is idle now.
        assert!(runs.seen(own).idle);
        assert!(!runs.seen(idle).idle);
        assert_eq!(runs.idle("q").0, 2);
        assert_eq!(runs.idle("other").0, 0);
        // Job 7 ending ends the idle runner's machine, not the new idle slot.
        assert_eq!(runs.completed(7, Some("r-idle")), Completed::Ended);
        assert!(!own_cancel.load(Ordering::SeqCst));
        runs.close(idle, true);
        assert!(
            runs.idle("q").1.is_none(),
            "a slot that took a job is no idle failure"
        );
        let (other, _) = runs.open(None, "q").unwrap();
        runs.close(other, false);
        assert!(runs.idle("q").1.is_none(), "an idle slot whose wait ended");
        runs.close(own, true);
        assert!(runs.idle("q").1.is_some(), "an idle slot failed");
    }
}
