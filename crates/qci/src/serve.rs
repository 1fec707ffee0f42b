//! `qci serve --config HOST.toml`: the host's web side (qci-server), its
//! jobs run on the machine pool of the same file.

use qci_core::ExitCode;
use qci_server::HostConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a stopping host waits for its own threads.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why `qci serve` stopped, or never started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] qci_server::config::ConfigError),
    /// Another host holds the state dir.
    #[error(transparent)]
    Lock(#[from] qci_server::state_lock::StateLockError),
    #[error(transparent)]
    Pool(#[from] qci_pool::PoolError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] qci_server::ServeError),
    #[error(transparent)]
    Activation(#[from] crate::socket_activation::ActivationError),
    #[error("cannot serve on the socket passed in: {0}")]
    Listener(#[source] std::io::Error),
}

impl ServeError {
    /// A bad config is the operator's to fix (exit 2); the rest is the CI's.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_)
            | Self::Serve(qci_server::ServeError::Config(_))
            | Self::Activation(_) => ExitCode::BadInput,
            Self::Pool(e) => e.exit_code(),
            Self::Lock(_) | Self::Runtime(_) | Self::Serve(_) | Self::Listener(_) => {
                ExitCode::CiError
            }
        }
    }
}

pub fn serve(config: &Path) -> Result<ExitCode, ServeError> {
    let config = HostConfig::load(config)?;
    // Taken first, so a bad hand-over is told before anything is opened.
    let inherited = crate::socket_activation::inherited_listener()?;
    // Before the pool or the database is opened: a second host on the same
    // state dir must change nothing.
    let lock = qci_server::StateLock::acquire(config.state_dir())?;
    let pool = qci_pool::Pool::open(config.pool.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let served = runtime.block_on(async {
        // Given, it replaces the config's `listen`.
        let listener = inherited
            .map(tokio::net::TcpListener::from_std)
            .transpose()
            .map_err(ServeError::Listener)?;
        Ok::<_, ServeError>(qci_server::serve(config, Arc::new(pool), listener, lock).await)
    })?;
    // Jobs still running on machines are not waited for: their leases name
    // this process, so the next start reconciles them.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    served?;
    Ok(ExitCode::Success)
}
