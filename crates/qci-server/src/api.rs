//! The HTTP API: GitHub's webhooks, what became of a delivery, and the
//! operators' job API (list, cancel, retry) that `qci jobs` calls.

use crate::app::App;
use crate::queue::{self, Applied, CancelOutcome, RetryOutcome};
use crate::tokens;
use crate::webhook::{self, PayloadError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use qci_core::JobId;
use serde_json::json;
use std::time::Instant;

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    msg.push('\n');
    (code, msg).into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A delivery id is GitHub's GUID; anything printable and short is taken.
fn valid_delivery(id: &str) -> bool {
    !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `POST /webhook`. Checks run cheapest and most damning first; a request
/// refused before the commit leaves nothing behind, and 2xx means the
/// delivery and its jobs are on disk.
pub async fn webhook(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let reply = handle_webhook(&app, &headers, &body).await;
    app.metrics.webhook(reply.status(), start.elapsed());
    reply
}

async fn handle_webhook(app: &App, headers: &HeaderMap, body: &Bytes) -> Response {
    let signature = header_str(headers, "x-hub-signature-256");
    if !webhook::signature_valid(app.webhook_secret.as_bytes(), body, signature) {
        return text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Hub-Signature-256",
        );
    }
    let json_body = header_str(headers, header::CONTENT_TYPE.as_str())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the webhook's content type must be application/json",
        );
    }
    let Some(event) = header_str(headers, "x-github-event") else {
        return text(StatusCode::BAD_REQUEST, "no X-GitHub-Event header");
    };
    let Some(delivery) = header_str(headers, "x-github-delivery").filter(|d| valid_delivery(d))
    else {
        return text(StatusCode::BAD_REQUEST, "no valid X-GitHub-Delivery header");
    };
    let plan = match webhook::plan(&app.config, event, body) {
        Ok(p) => p,
        Err(e @ PayloadError::UnknownEvent(_)) => {
            return text(StatusCode::BAD_REQUEST, e.to_string());
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // A signed delivery says which installation the repository is in:
    // its calls then need no lookup.
    if let Some(github_app) = app.github.app()
        && let Some((repo, id)) = webhook::installation(body)
        && app.config.repo(&repo).is_some()
    {
        github_app.remember_installation(&repo, id);
    }
    let (delivery, event) = (delivery.to_owned(), event.to_owned());
    let d = delivery.clone();
    let applied = app
        .store
        .write(move |conn| queue::apply(conn, &d, &event, &plan))
        .await;
    match applied {
        Ok(Applied::Duplicate) => text(
            StatusCode::CONFLICT,
            format!("delivery {delivery} was received already"),
        ),
        Ok(Applied::Done { outcome, trigger }) => {
            // 202: the jobs are worked out next (see `resolve`); the
            // delivery's page tells what became of it.
            let code = if trigger.is_some() {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let url = format!("/api/deliveries/{delivery}");
            (
                code,
                Json(json!({"delivery": delivery, "outcome": outcome, "status": url})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!("webhook {delivery}: {e}");
            // Not committed: GitHub's redelivery will bring it again.
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot record the delivery now",
            )
        }
    }
}

/// Checks the operator token of the job API.
fn operator(app: &App, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let Some(expected) = &app.admin_token_hash else {
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "the job API is off: set server.admin_token in the host config",
        )));
    };
    if !tokens::bears(headers, expected) {
        return Err(Box::new(text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong operator token",
        )));
    }
    let who = header_str(headers, "x-qci-user")
        .map(|u| {
            u.chars()
                .filter(|c| !c.is_control())
                .take(40)
                .collect::<String>()
        })
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "an operator".into());
    Ok(who)
}

/// `GET /api/jobs`: running, queued and recent jobs (public, as the page is).
pub async fn list(State(app): State<App>) -> Response {
    match app.store.read(|conn| queue::overview(conn, 100)).await {
        Ok((live, recent)) => Json(json!({"live": live, "recent": recent})).into_response(),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/jobs/JOB`: one job and its status events.
pub async fn show(State(app): State<App>, Path(id): Path<String>) -> Response {
    let got = app
        .store
        .read(move |conn| Ok((queue::get(conn, &id)?, queue::events(conn, &id)?)))
        .await;
    match got {
        Ok((Some(job), events)) => Json(json!({"job": job, "events": events})).into_response(),
        Ok((None, _)) => text(StatusCode::NOT_FOUND, "no such job"),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/jobs/JOB/tests`: the job's test counts, its failing tests
/// with their history (`history` in the words the page uses), the flaky
/// ones, and its artifacts. `tests` is null for a job with no reports.
pub async fn tests(State(app): State<App>, Path(id): Path<String>) -> Response {
    let got = app
        .store
        .read(move |conn| {
            Ok((
                queue::get(conn, &id)?,
                queue::results::job_tests(conn, &id)?,
                queue::results::artifacts(conn, &id)?,
            ))
        })
        .await;
    let (tests, artifacts) = match got {
        Ok((Some(_), tests, artifacts)) => (tests, artifacts),
        Ok((None, ..)) => return text(StatusCode::NOT_FOUND, "no such job"),
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let tests = tests.map(|t| {
        let failing: Vec<_> = t
            .failing
            .iter()
            .map(|f| {
                let mut v = json!(f);
                v["history"] = json!(f.since.to_string());
                v["flaky_text"] = json!(f.flaky.map(|x| x.to_string()));
                v
            })
            .collect();
        let c = &t.counts;
        json!({
            "counts": {"passed": c.passed, "failed": c.failed, "errored": c.errored, "skipped": c.skipped},
            "headline": c.to_string(),
            "failing": failing,
            "flaky": t.flaky.iter().map(|(test, f)| json!({
                "classname": test.classname, "name": test.name, "flaky_text": f.to_string(),
            })).collect::<Vec<_>>(),
        })
    });
    Json(json!({"tests": tests, "artifacts": artifacts})).into_response()
}

/// `GET /api/deliveries/DELIVERY`: what became of a webhook delivery (public,
/// as the jobs are): its outcome, whether its jobs are worked out yet, and
/// which they are.
pub async fn delivery(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.store.read(move |conn| queue::delivery(conn, &id)).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, "no such delivery"),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /api/jobs/JOB/cancel`.
pub async fn cancel(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match operator(&app, &headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    // Not a job id: no such job, as for any id never made.
    let Ok(job) = JobId::parse(&id) else {
        return text(StatusCode::NOT_FOUND, "no such job");
    };
    let canceled = job.clone();
    match app
        .store
        .write(move |conn| queue::cancel(conn, &canceled, &who))
        .await
    {
        Ok(CancelOutcome::NotFound) => text(StatusCode::NOT_FOUND, "no such job"),
        Ok(CancelOutcome::AlreadyFinal(state)) => text(
            StatusCode::CONFLICT,
            format!("job {id} has ended already ({state})"),
        ),
        Ok(CancelOutcome::Canceled { running }) => {
            if running {
                app.running.cancel(&job);
            }
            Json(json!({"canceled": id})).into_response()
        }
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /api/jobs/JOB/retry`: a new job on the same commit and context.
pub async fn retry(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = operator(&app, &headers) {
        return *r;
    }
    let Ok(job) = JobId::parse(&id) else {
        return text(StatusCode::NOT_FOUND, "no such job");
    };
    let versions = app.executor.versions();
    match app
        .store
        .write(move |conn| queue::retry(conn, &job, &versions, None))
        .await
    {
        Ok(RetryOutcome::NotFound) => text(StatusCode::NOT_FOUND, "no such job"),
        Ok(RetryOutcome::NotFinal(state)) => text(
            StatusCode::CONFLICT,
            format!("job {id} is still {state}; cancel it first"),
        ),
        Ok(RetryOutcome::NoMachine(qubes)) => text(
            StatusCode::CONFLICT,
            format!("job {id} ran on Qubes {qubes}, which no machine of the pool runs now"),
        ),
        Ok(RetryOutcome::Queued(new)) => (
            StatusCode::ACCEPTED,
            Json(json!({"queued": new, "retry_of": id})),
        )
            .into_response(),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
