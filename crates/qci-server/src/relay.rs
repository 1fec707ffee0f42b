//! Job-scoped relay tokens, and `POST /api/jobs/JOB/status`, where the dev
//! VM's `qci.Status` posts the events dom0 reports.
//!
//! A token is 32 random bytes, given to exactly one job's file; the host
//! keeps only its SHA-256, so a copy of the database posts nothing. It is
//! good for that job only, and only until the job has a final state.

use crate::app::App;
use crate::queue::{self, RelayRefusal};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use qci_core::{JobId, StatusEvent};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use subtle::ConstantTimeEq;

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
    fn allow(&self, job: &JobId) -> bool {
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

/// A new token and the hash the host keeps of it.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS gives random bytes");
    let token = crate::webhook::hex(&bytes);
    let hash = hash(&token);
    (token, hash)
}

pub fn hash(token: &str) -> String {
    crate::webhook::hex(&Sha256::digest(token.as_bytes()))
}

pub fn same_hash(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

type Reply = (StatusCode, String);

fn refuse(code: StatusCode, why: impl Into<String>) -> Reply {
    let why = why.into();
    tracing::warn!(status = code.as_u16(), "relay refused a status: {why}");
    (code, format!("{why}\n"))
}

pub async fn post_status(
    State(app): State<App>,
    Path(job): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let Ok(job) = JobId::parse(&job) else {
        return refuse(StatusCode::NOT_FOUND, "no such job");
    };
    let Some(token) = bearer(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a job token is required (Authorization: Bearer)",
        );
    };
    let token_hash = hash(token);
    let event = match StatusEvent::parse_for(&body, &job) {
        Ok(e) => e,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if !event.state.is_final() && !app.relay_rate.allow(&job) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many statuses for this job: slow down",
        );
    }
    let id = job.as_str().to_owned();
    let (state, description) = (event.state, event.description.clone());
    let outcome = app
        .store
        .write(move |conn| queue::relay(conn, &id, &token_hash, state, &description))
        .await;
    match outcome {
        Ok(Ok(())) => {
            if event.state.is_final() {
                // The run stops on its own; the dispatcher publishes the log.
                tracing::info!(job = %job, state = %event.state, "final status relayed");
            }
            (StatusCode::NO_CONTENT, String::new())
        }
        Ok(Err(refusal)) => match refusal {
            RelayRefusal::NoSuchJob => refuse(StatusCode::NOT_FOUND, "no such job"),
            RelayRefusal::BadToken => refuse(StatusCode::UNAUTHORIZED, "wrong token for this job"),
            RelayRefusal::Ended(state) => refuse(
                StatusCode::CONFLICT,
                format!("job {job} has ended ({state}); its token is no longer valid"),
            ),
            RelayRefusal::Backwards { from, to } => refuse(
                StatusCode::CONFLICT,
                format!("job {job} cannot go from {from} back to {to}"),
            ),
        },
        Err(e) => {
            tracing::error!("relay: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot record the status now; retry\n".into(),
            )
        }
    }
}
