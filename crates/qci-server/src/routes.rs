//! The routes: which handler answers which path.

use crate::app::App;
use crate::{api, pages, relay};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use reqwest::header::HeaderValue;

pub fn router(app: App) -> Router {
    let max_body = app.config.max_body_bytes;
    Router::new()
        .route("/", get(pages::monitor))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/log", get(pages::log_text))
        .route("/jobs/{id}/events", get(pages::log_events))
        .route(
            "/jobs/{id}/artifacts/{*path}",
            get(pages::results::download),
        )
        .route("/jobs/{id}/screenshot.png", get(pages::results::screenshot))
        .route("/tests", get(pages::results::overview))
        .route("/pool", get(pages::pool))
        .route("/healthz", get(pages::healthz))
        .route("/metrics", get(pages::metrics))
        .route(pages::SCRIPT_PATH, get(pages::script))
        .route(pages::STYLE_PATH, get(pages::style))
        .route(
            "/webhook",
            post(api::webhook).layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/api/deliveries/{id}", get(api::delivery))
        .route("/api/jobs", get(api::list))
        .route("/api/jobs/{id}", get(api::show))
        .route("/api/jobs/{id}/tests", get(api::tests))
        .route("/api/jobs/{id}/cancel", post(api::cancel))
        .route("/api/jobs/{id}/retry", post(api::retry))
        .route(
            "/api/jobs/{id}/status",
            post(relay::post_status).layer(DefaultBodyLimit::max(
                qci_core::StatusEvent::MAX_WIRE_BYTES as usize,
            )),
        )
        .layer(axum::middleware::map_response(nosniff))
        .layer(axum::middleware::map_response(
            pages::content_security_policy,
        ))
        .with_state(app)
}

/// Nothing we serve is for the browser to guess at: a log or a body from a
/// machine must never be sniffed into HTML on our origin.
async fn nosniff(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
