//! Counters for `/metrics` that the database does not hold: webhook
//! answers and their latency.

use axum::http::StatusCode;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the webhook latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_code: std::collections::BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn webhook(&self, code: StatusCode, took: Duration) {
        let secs = took.as_secs_f64();
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.by_code.entry(code.as_u16()).or_default() += 1;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                m.buckets[i] += 1;
            }
        }
        m.count += 1;
        m.sum += secs;
    }

    /// Appends the webhook metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP qci_webhooks_total Webhook requests by HTTP status answered.\n");
        out.push_str("# TYPE qci_webhooks_total counter\n");
        for (code, n) in &m.by_code {
            let _ = writeln!(out, "qci_webhooks_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP qci_webhook_seconds Time from request to answer.\n");
        out.push_str("# TYPE qci_webhook_seconds histogram\n");
        for (bound, n) in BUCKETS.iter().zip(m.buckets) {
            let _ = writeln!(out, "qci_webhook_seconds_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "qci_webhook_seconds_bucket{{le=\"+Inf\"}} {}", m.count);
        let _ = writeln!(out, "qci_webhook_seconds_sum {}", m.sum);
        let _ = writeln!(out, "qci_webhook_seconds_count {}", m.count);
    }
}
