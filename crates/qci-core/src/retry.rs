//! Retries with capped exponential backoff and full jitter, within a budget
//! of attempts and of elapsed time, so a flaky network or a GitHub hiccup
//! does not lose a commit status, and a real outage does not hang the job.
//! Pure logic with no network code: the callers bring their HTTP client,
//! and `qci-github` says which of GitHub's answers are worth a retry.

use std::collections::hash_map::RandomState;
use std::fmt::Display;
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime};

/// How hard to try. Tests shrink the delays to milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceiling of the first backoff; it doubles with each retry.
    pub base: Duration,
    /// The highest the ceiling ever gets.
    pub cap: Duration,
    /// No attempt starts later than this after the first one. A slow last
    /// attempt can still run past it by up to its own request timeout.
    pub budget: Duration,
    /// Attempts in all, the first included (0 counts as 1).
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry):
    /// uniform in `[0, min(cap, base * 2^(retry-1))]`. Full jitter spreads
    /// the clients that failed together instead of bringing them back in step.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = 2u32
            .checked_pow(retry.saturating_sub(1))
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |d| d.min(self.cap));
        ceiling.mul_f64(random_fraction())
    }
}

/// What one failed attempt means for the next.
#[derive(Debug)]
pub enum Failure<E> {
    /// May well succeed later (network error, 5xx, rate limit). `wait` is
    /// what the server asked for, if it did; otherwise the backoff applies.
    Transient { error: E, wait: Option<Duration> },
    /// Will fail the same way again (e.g. 401, 422): stop now.
    Permanent(E),
}

/// Why [`retry`] stopped without a success.
#[derive(Debug)]
pub enum Stop<E> {
    Permanent(E),
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        last: E,
        /// Set when the server asked for a wait longer than the budget left.
        note: Option<String>,
    },
}

/// The error alone, or how long it was tried and the last error.
impl<E: Display> Display for Stop<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Permanent(e) => e.fmt(f),
            Self::GaveUp { attempts, last, .. } => write!(f, "{attempts} attempts; last: {last}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Stop<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Permanent(e) => e.source(),
            Self::GaveUp { last, .. } => Some(last),
        }
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy's
/// budget is spent. Each retry is logged with `what`, the attempt number,
/// the delay and the error's Display (so `E` must never show secrets).
///
/// A wait that would end past the budget is not slept at all: sleeping to
/// the deadline only to give up then would delay the caller for nothing,
/// and retrying before a server-given time would only be refused again.
pub fn retry<T, E: Display>(
    policy: &RetryPolicy,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, Failure<E>>,
) -> Result<T, Stop<E>> {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (error, asked) = match attempt() {
            Ok(value) => return Ok(value),
            Err(Failure::Permanent(error)) => return Err(Stop::Permanent(error)),
            Err(Failure::Transient { error, wait }) => (error, wait),
        };
        let elapsed = start.elapsed();
        let left = policy.budget.saturating_sub(elapsed);
        let delay = asked.unwrap_or_else(|| policy.backoff(attempts));
        if attempts >= policy.max_attempts || delay >= left {
            let note = asked.filter(|_| delay >= left).map(|wait| {
                format!(
                    "the server asked to wait {:.1}s, more than the {:.1}s left of the retry budget",
                    wait.as_secs_f64(),
                    left.as_secs_f64()
                )
            });
            return Err(Stop::GaveUp {
                attempts,
                elapsed,
                last: error,
                note,
            });
        }
        tracing::warn!(
            attempt = attempts,
            max_attempts = policy.max_attempts,
            delay_ms = delay.as_millis() as u64,
            server_asked = asked.is_some(),
            reason = %error,
            "{what} failed; retrying"
        );
        std::thread::sleep(delay);
    }
}

/// A number in `[0, 1)`, unpredictable enough to decorrelate clients.
/// Each `RandomState` carries fresh random keys (seeded once per thread
/// from the OS, then varied per instance); hashing the clock through it
/// gives a new value per call with no extra dependency. Not for secrets.
fn random_fraction() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let bits = RandomState::new().hash_one(nanos);
    // The top 53 bits fill an f64 mantissa exactly.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn policy(max_attempts: u32, budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            budget: Duration::from_millis(budget_ms),
            max_attempts,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            budget: Duration::from_secs(120),
            max_attempts: 8,
        };
        for (retry, ceiling) in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (40, 30)] {
            let delays: Vec<_> = (0..200).map(|_| p.backoff(retry)).collect();
            let max = delays.iter().max().copied().unwrap_or_default();
            let min = delays.iter().min().copied().unwrap_or_default();
            assert!(max <= Duration::from_secs(ceiling), "{retry}: {max:?}");
            // 200 uniform draws all in the lower or upper half: ~1e-60.
            assert!(max > Duration::from_secs(ceiling) / 2, "{retry}: {max:?}");
            assert!(min < Duration::from_secs(ceiling) / 2, "{retry}: {min:?}");
        }
    }

    #[test]
    fn stops_at_max_attempts_with_the_last_error() {
        let calls = Cell::new(0);
        let out: Result<(), _> = retry(&policy(3, 10_000), "test", || {
            calls.set(calls.get() + 1);
            Err(Failure::Transient {
                error: format!("failure {}", calls.get()),
                wait: None,
            })
        });
        match out {
            Err(Stop::GaveUp {
                attempts: 3,
                last,
                note: None,
                ..
            }) => assert_eq!(last, "failure 3"),
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn permanent_failures_and_successes_end_at_once() {
        let calls = Cell::new(0);
        let out: Result<(), _> = retry(&policy(5, 10_000), "test", || {
            calls.set(calls.get() + 1);
            Err(Failure::Permanent("no"))
        });
        assert!(matches!(out, Err(Stop::Permanent("no"))), "{out:?}");
        assert_eq!(calls.get(), 1);

        let out: Result<u8, Stop<&str>> = retry(&policy(0, 0), "test", || Ok(7));
        assert_eq!(out.ok(), Some(7));
    }

    #[test]
    fn a_server_wait_past_the_budget_gives_up_without_sleeping() {
        let start = Instant::now();
        let out: Result<(), _> = retry(&policy(5, 500), "test", || {
            Err(Failure::Transient {
                error: "slow down",
                wait: Some(Duration::from_secs(60)),
            })
        });
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "it slept the 60 s"
        );
        match out {
            Err(Stop::GaveUp {
                attempts: 1,
                note: Some(note),
                ..
            }) => assert!(note.contains("60.0s"), "{note}"),
            other => panic!("{other:?}"),
        }
    }
}
