//! `/healthz` and `/metrics`: for the operator's monitoring, not people.

use super::unavailable;
use crate::app::App;
use crate::queue;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

pub async fn healthz(State(app): State<App>) -> Response {
    // Writes that fail (a full disk) are being retried: nothing is lost, but
    // nothing moves either, and the operator must hear of it.
    if let Some(why) = app.store.health.failing() {
        return unavailable(format!("the database cannot be written: {why}"));
    }
    match app
        .store
        .read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
    {
        Ok(_) => "ok\n".into_response(),
        Err(e) => unavailable(e),
    }
}

/// `/metrics`, in Prometheus text format.
pub async fn metrics(State(app): State<App>) -> Response {
    let counts = match app.store.read(queue::counts).await {
        Ok(x) => x,
        Err(e) => return unavailable(e),
    };
    let mut out = String::new();
    out.push_str(
        "# HELP qci_store_write_failures_total Database writes the disk refused (each is tried again).\n\
         # TYPE qci_store_write_failures_total counter\n",
    );
    let _ = writeln!(
        out,
        "qci_store_write_failures_total {}",
        app.store.health.failures()
    );
    out.push_str("# HELP qci_queue_length Jobs waiting for a machine, by Qubes version.\n");
    out.push_str("# TYPE qci_queue_length gauge\n");
    // Label values are written as they are, so each must be one that needs
    // no quoting in the exposition format (no `"`, `\` or newline). A Qubes
    // version was checked on the way in (the host's config and each
    // `.qci.toml`) to be `[A-Za-z0-9.]`; it is checked again here so that a
    // stored oddity is left out rather than breaking the page.
    for (qubes, n) in &counts.queued {
        if qci_core::pipeline::valid_qubes_version(qubes) {
            let _ = writeln!(out, "qci_queue_length{{qubes=\"{qubes}\"}} {n}");
        } else {
            tracing::warn!(
                qubes,
                "a queued job's Qubes version is not one: left out of /metrics"
            );
        }
    }
    out.push_str(
        "# HELP qci_triggers_unresolved Deliveries whose jobs are not worked out yet.\n\
         # TYPE qci_triggers_unresolved gauge\n",
    );
    let _ = writeln!(out, "qci_triggers_unresolved {}", counts.unresolved);
    out.push_str("# HELP qci_jobs Jobs by state.\n# TYPE qci_jobs gauge\n");
    // A state is one of `State`'s fixed words: nothing to escape.
    for (state, n) in &counts.by_state {
        let _ = writeln!(out, "qci_jobs{{state=\"{state}\"}} {n}");
    }
    app.metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
