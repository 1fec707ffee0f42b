//! `qci serve`: opens the state, reconciles what a crash left (and queues
//! the GitHub Actions jobs that were waiting again), starts the background
//! tasks (dispatch, the resolver, the outbox senders, the redeliverer of
//! missed webhooks, idle Actions runners, log pruning) and serves the
//! routes.

use crate::app::App;
use crate::config::{ConfigError, HostConfig, ServerConfig};
use crate::credentials::Credentials;
use crate::executor::Executor;
use crate::github_app::{AppError, GithubApp};
use crate::logs::Logs;
use crate::outbox::{self, Destination};
use crate::queue::{self, Kind};
use crate::redelivery;
use crate::state_lock::{StateLock, StateLockError};
use crate::store::{Store, StoreError};
use crate::{dispatch, resolve, routes, tokens};
use qci_core::JobId;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] StateLockError),
    #[error("the GitHub token is not usable in an HTTP header")]
    BadToken,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Opens the state, reconciles what a crash left, starts the background
/// tasks and serves until SIGTERM or SIGINT. `listener` replaces binding
/// `server.listen` (tests pass one already bound).
///
/// The order matters: the caller holds the state dir's lock before anything
/// is opened (`_lock`, held until this returns), so a second host changes
/// nothing; the port is bound before anything is reconciled, so a host that
/// cannot listen changes nothing either; and pages are served before the
/// first status goes out, so the link in a status answers.
pub async fn serve(
    config: HostConfig,
    executor: Arc<dyn Executor>,
    listener: Option<tokio::net::TcpListener>,
    _lock: StateLock,
) -> Result<(), ServeError> {
    let server = config.server.clone();
    let webhook_secret: Arc<str> = server.webhook_secret.read()?.into();
    let github = credentials(&server)?;
    let admin_token_hash = server
        .admin_token
        .as_ref()
        .map(|s| s.read().map(|t| tokens::hash(&t)))
        .transpose()?;
    let slack_url = server
        .notify
        .slack_url
        .as_ref()
        .map(|s| s.read())
        .transpose()?;

    let state_dir = config.state_dir().to_owned();
    std::fs::create_dir_all(&state_dir)
        .map_err(io(format!("cannot create {}", state_dir.display())))?;
    let store = Store::open(&state_dir.join("server.sqlite"))?;
    let listener = match listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(server.listen)
            .await
            .map_err(io(format!("cannot listen on {}", server.listen)))?,
    };
    let addr = listener.local_addr().map_err(io("no local address"))?;
    let (requeued, ended) = store.write(queue::reconcile).await?;
    if !requeued.is_empty() || !ended.is_empty() {
        // Listed as `["1-q4.2"]`, as the ids were before they were typed.
        let requeued: Vec<&str> = requeued.iter().map(JobId::as_str).collect();
        let ended: Vec<&str> = ended.iter().map(JobId::as_str).collect();
        tracing::warn!(
            "host restarted: queued again {requeued:?} (never started), ended {ended:?} as error"
        );
    }
    // Published logs, apart from the pool's own copies in `logs/`.
    let logs = Logs::open(&state_dir.join("published")).map_err(io(format!(
        "cannot create {}/published",
        state_dir.display()
    )))?;

    let app = App {
        config: Arc::new(server.clone()),
        store,
        logs,
        running: Arc::default(),
        executor,
        metrics: Arc::default(),
        webhook_secret,
        github,
        admin_token_hash,
        relay_rate: Arc::default(),
        artifacts: state_dir.join("artifacts"),
        actions: Arc::default(),
    };
    if server.actions.is_some() && app.github.app().is_none() {
        tracing::warn!(
            "[server.actions] needs App mode ([server.github_app]): a runner's JIT config \
             is made with an installation token; workflow_job deliveries are ignored"
        );
        eprintln!(
            "qci serve: warning: [server.actions] is ignored in token mode (it needs [server.github_app])"
        );
    }

    // Said once at start; each such job also ends as `error` saying so.
    let machines = app.executor.versions();
    for repo in &server.repos {
        for v in repo.qubes.iter().filter(|v| !machines.contains(v)) {
            tracing::warn!(
                "server.repos {}: no machine of the pool runs Qubes {v}; its jobs will end as error",
                repo.slug
            );
        }
    }

    let github = Destination {
        kind: Kind::Github,
        url: server.github_api_url.clone(),
        token: match &app.github {
            Credentials::Token(token) => Some(token.clone()),
            Credentials::App(_) => None,
        },
        policy: outbox::policy(server.github_retry_budget),
    };
    let source = resolve::Source {
        api_url: server.github_api_url.clone(),
        policy: outbox::policy(server.github_retry_budget),
    };
    let notify = |kind, url: Option<String>| {
        url.map(|url| Destination {
            kind,
            url,
            token: None,
            policy: outbox::policy(Duration::from_secs(5 * 60)),
        })
    };
    let webhook_url = server.notify.webhook_url.clone();
    tracing::info!("listening on http://{addr}");
    println!("qci serve: listening on http://{addr}");
    let cap = crate::connections::connection_cap();
    let pages = tokio::spawn(crate::connections::serve(
        listener,
        routes::router(app.clone()),
        cap,
        shutdown(),
    ));
    // Machines whose jobs died with the host are powered off and freed
    // before anything new is dispatched.
    let finals = dispatch::Finals { app: app.clone() };
    let executor = app.executor.clone();
    let freed = tokio::task::spawn_blocking(move || executor.reconcile(&finals))
        .await
        .unwrap_or_default();
    for line in freed {
        tracing::warn!("reconciled: {line}");
    }
    // Once the machines the dead host's runners held are free.
    let resumer = app.clone();
    let resumed = tokio::task::spawn_blocking(move || crate::actions::resume(&resumer))
        .await
        .unwrap_or_default();
    if resumed > 0 {
        tracing::warn!("host restarted: {resumed} GitHub Actions job(s) queued again");
    }
    // After them: the waiting jobs come first in the pool's FIFO.
    crate::actions::keep_idle(&app);
    for (kind, dest) in [
        (Kind::Github, Some(github)),
        (Kind::Slack, notify(Kind::Slack, slack_url)),
        (Kind::Webhook, notify(Kind::Webhook, webhook_url)),
    ] {
        outbox::spawn(app.clone(), kind, dest).map_err(io("cannot start a sender"))?;
    }
    resolve::spawn(app.clone(), source).map_err(io("cannot start the resolver"))?;
    // Once the server listens: what GitHub redelivers is taken.
    let missed = redelivery::Source {
        api_url: server.github_api_url.clone(),
        webhook_url: format!("{}/webhook", server.public_base()),
        repos: server.repos.iter().map(|r| r.slug.clone()).collect(),
        within: server.redeliver_within,
        policy: outbox::policy(server.github_retry_budget),
    };
    redelivery::spawn(app.clone(), missed).map_err(io("cannot start the redeliverer"))?;
    tokio::spawn(dispatch::run(app.clone()));
    tokio::spawn(prune(app));

    match pages.await {
        Ok(()) => Ok(()),
        Err(e) => Err(ServeError::Io {
            what: "the server stopped".into(),
            source: std::io::Error::other(e),
        }),
    }
}

/// The config's GitHub credential, read now: the personal token, or the
/// App's private key (refused when others may read its file, and signed
/// with once so that a key that cannot sign is said at start). Both
/// refusals are the operator's config to fix (`qci serve` exits 2).
fn credentials(server: &ServerConfig) -> Result<Credentials, ServeError> {
    match (&server.github_token, &server.github_app) {
        (Some(token), None) => {
            let token = qci_github::bearer(&token.read()?).ok_or(ServeError::BadToken)?;
            Ok(Credentials::Token(token))
        }
        (None, Some(app)) => {
            let app = GithubApp::new(app, &server.github_api_url).map_err(|e| match e {
                AppError::Key(e) => e,
                other => ConfigError::Invalid(other.to_string()),
            })?;
            Ok(Credentials::App(Arc::new(app)))
        }
        // `HostConfig::load` refuses both and neither; a config built
        // otherwise is refused the same way.
        (Some(_), Some(_)) => {
            Err(ConfigError::Invalid(crate::config::BOTH_GITHUB_AUTHS.into()).into())
        }
        (None, None) => Err(ConfigError::Invalid(crate::config::NO_GITHUB_AUTH.into()).into()),
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

/// Deletes published logs older than `keep_logs`, hourly (or as often as
/// `keep_logs` itself, when that is shorter).
async fn prune(app: App) {
    let every = app
        .config
        .keep_logs
        .clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let cutoff = queue::now_ms() - app.config.keep_logs.as_millis() as i64;
        match app
            .store
            .read(move |conn| queue::expired_logs(conn, cutoff))
            .await
        {
            Ok(jobs) => {
                for job in jobs {
                    if let Err(e) = app.logs.remove(job.as_str()) {
                        tracing::warn!(job = job.as_str(), "cannot prune the log: {e}");
                    }
                    // The job's files go with its log; its tests' outcomes
                    // stay for the history.
                    let dir = crate::pages::results::artifact_dir(&app, job.as_str());
                    match std::fs::remove_dir_all(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            tracing::warn!(job = job.as_str(), "cannot prune the artifacts: {e}");
                        }
                        _ => {}
                    }
                    let id = job.clone();
                    if let Err(e) = app
                        .store
                        .write(move |conn| queue::results::forget(conn, &id))
                        .await
                    {
                        tracing::warn!(job = job.as_str(), "cannot prune the tests' texts: {e}");
                    }
                }
            }
            Err(e) => tracing::error!("pruning logs: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}
