//! How often a job may post progress statuses through the relay.

use qci_core::JobId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Progress statuses a job may post in a burst, and per second after it.
/// dom0 reports progress once per step, and at most once a second; past
/// this a machine is misbehaving, and each status would cost a write and a
/// GitHub request. A progress status refused here only delays the next.
const BURST: f64 = 5.0;
const PER_SECOND: f64 = 0.5;

/// A token bucket per job for progress statuses. Final statuses are never
/// limited: a job's end must always get through.
#[derive(Debug, Default)]
pub struct RateLimit {
    buckets: Mutex<HashMap<JobId, (f64, Instant)>>,
}

impl RateLimit {
    /// Takes one status from `job`'s bucket; false if it is empty.
    pub fn allow(&self, job: &JobId) -> bool {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() > 10_000 {
            // Full buckets of idle jobs say nothing: forget them.
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = buckets.entry(job.clone()).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SECOND).min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}
