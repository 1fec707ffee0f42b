//! The host's web side of qci (`qci serve`): GitHub webhooks become jobs in
//! a SQLite queue that survives crashes; dispatch runs them on the machine
//! pool; the dev VM reports statuses through a job-scoped relay token; the
//! host publishes the live log and posts the commit statuses to GitHub.
//!
//! - [`webhook`]: signatures and payloads; [`api`]: the HTTP API
//! - [`resolve`]: deliveries into jobs, one per Qubes version of the commit's `.qci.toml`
//! - [`queue`]: the queue's rules as transactions; [`store`]: SQLite
//! - [`relay`]: tokens and the status endpoint; [`outbox`]: GitHub and notifications
//! - [`github`]: GitHub's REST API (headers, retries, reading `.qci.toml`)
//! - [`dispatch`]: runs jobs on the machine pool (`qci_pool`)
//! - [`state_lock`]: one server per state dir; [`connections`]: what a client can hold
//! - [`logs`]: published logs; [`pages`]: the monitor and job pages

pub mod api;
pub mod app;
pub mod config;
pub mod connections;
pub mod dispatch;
pub mod github;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod pages;
pub mod queue;
pub mod relay;
pub mod resolve;
pub mod state_lock;
pub mod store;
pub mod webhook;

pub use app::{ServeError, serve};
pub use config::HostConfig;
pub use dispatch::Executor;
pub use state_lock::StateLock;
