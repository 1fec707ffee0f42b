//! `POST /api/jobs/JOB/status`, where the dev VM's `qci.Status` posts the
//! events dom0 reports, with the job's token (see [`crate::tokens`]).

use crate::app::App;
use crate::queue::{self, RelayRefusal};
use crate::tokens;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use qci_core::{JobId, StatusEvent};

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
    let Some(token) = tokens::bearer(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a job token is required (Authorization: Bearer)",
        );
    };
    let token_hash = tokens::hash(token);
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
    let id = job.clone();
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
