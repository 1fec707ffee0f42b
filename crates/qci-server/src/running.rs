//! The runs in flight on this host: their cancel flags, and how many per
//! Qubes version. Dispatch starts and ends runs; the API and the resolver
//! cancel them.

use qci_core::JobId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Running {
    cancel: Mutex<HashMap<JobId, Arc<AtomicBool>>>,
    per_version: Mutex<HashMap<String, usize>>,
}

impl Running {
    /// Asks a run to stop; false if it is not running here.
    pub fn cancel(&self, job: &JobId) -> bool {
        let flags = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
        flags.get(job).is_some_and(|f| {
            f.store(true, Ordering::SeqCst);
            true
        })
    }

    /// How many runs of Qubes `qubes` are in flight.
    pub fn busy(&self, qubes: &str) -> usize {
        let counts = self.per_version.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(qubes).copied().unwrap_or(0)
    }

    /// A run begins: counted, and given the flag that cancels it.
    pub fn start(&self, job: &JobId, qubes: &str) -> Arc<AtomicBool> {
        self.add(qubes, 1);
        let flag = Arc::new(AtomicBool::new(false));
        self.cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.clone(), flag.clone());
        flag
    }

    /// A run is over.
    pub fn end(&self, job: &JobId, qubes: &str) {
        self.cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job);
        self.add(qubes, -1);
    }

    fn add(&self, qubes: &str, delta: isize) {
        let mut counts = self.per_version.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(qubes.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
    }
}
