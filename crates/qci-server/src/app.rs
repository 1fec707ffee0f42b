//! The host's shared state: what every request handler and background
//! task holds. It depends on no handler; the handlers depend on it.

use crate::actions_runs::ActionsRuns;
use crate::config::ServerConfig;
use crate::credentials::Credentials;
use crate::executor::Executor;
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimit;
use crate::running::Running;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything a request handler or a background task needs.
#[derive(Clone)]
pub struct App {
    pub config: Arc<ServerConfig>,
    pub store: Store,
    pub logs: Logs,
    pub running: Arc<Running>,
    pub executor: Arc<dyn Executor>,
    pub metrics: Arc<Metrics>,
    pub webhook_secret: Arc<str>,
    /// How the host authenticates to GitHub: a personal token or the App.
    pub github: Credentials,
    /// The operator token's hash ([`crate::tokens::hash`]), if the job API is on.
    pub admin_token_hash: Option<String>,
    pub relay_rate: Arc<RateLimit>,
    /// Where the pool leaves each job's files (`STATE/artifacts/JOB/`).
    pub artifacts: PathBuf,
    /// The GitHub Actions jobs a machine is waited for or runs a runner.
    pub actions: Arc<ActionsRuns>,
}

impl App {
    /// Where a job's log is published: its commit status links here.
    pub fn job_url(&self, job: &str) -> String {
        format!("{}/jobs/{job}", self.config.public_base())
    }
}
