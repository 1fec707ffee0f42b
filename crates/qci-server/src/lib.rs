//! The host's web side of qci (`qci serve`): GitHub webhooks become jobs in
//! a SQLite queue that survives crashes; dispatch runs them on the machine
//! pool; the dev VM reports statuses through a job-scoped relay token; the
//! host publishes the live log and reports to GitHub: commit statuses with a
//! personal token, check runs as a GitHub App.
//!
//! - [`app`]: the shared state every handler and task holds; it imports none of them
//! - [`serve`]: start-up and the background tasks; [`routes`]: which handler answers what
//! - [`webhook`]: signatures and payloads; [`api`]: the HTTP API
//! - [`resolve`]: deliveries into jobs, one per Qubes version of the commit's `.qci.toml`
//! - [`redelivery`]: webhooks GitHub sent while the host was down, asked for again
//! - [`queue`]: the queue's rules as transactions; [`store`]: SQLite, its schema and migrations
//! - [`tokens`]: job and operator tokens; [`relay`]: the status endpoint
//! - [`outbox`]: GitHub and notifications; [`check_run`]: what a job's check run says
//! - [`check_run_sender`]: App mode's check runs, one per job, from the outbox
//! - [`github`]: GitHub's REST API (headers, retries, reading `.qci.toml`)
//! - [`github_app`]: GitHub App authentication (a JWT, installation tokens)
//! - [`credentials`]: a personal token or the App, as the config chooses
//! - [`dispatch`]: runs jobs on the machine pool ([`executor`]); [`running`]: the runs in flight
//! - [`state_lock`]: one server per state dir; [`connections`]: what a client can hold
//! - [`actions`]: GitHub Actions jobs on fresh machines; [`actions_runs`]: the ones held
//! - [`logs`]: published logs; [`pages`]: the monitor and job pages

#![forbid(unsafe_code)]

pub mod actions;
pub mod actions_runs;
pub mod api;
pub mod app;
pub mod check_run;
pub mod check_run_sender;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod dispatch;
pub mod executor;
pub mod github;
pub mod github_app;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod pages;
pub mod queue;
pub mod rate_limit;
pub mod redelivery;
pub mod relay;
pub mod resolve;
pub mod routes;
pub mod running;
pub mod serve;
pub mod state_lock;
pub mod store;
pub mod tokens;
pub mod webhook;

pub use config::HostConfig;
pub use executor::Executor;
pub use serve::{ServeError, serve};
pub use state_lock::StateLock;
