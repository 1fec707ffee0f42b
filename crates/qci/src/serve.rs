//! `qci serve --config HOST.toml`: the host's web side (qci-server), its
//! jobs run on the machine pool of the same file.

use qci_core::ExitCode;
use qci_server::HostConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a stopping host waits for its own threads.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub fn serve(config: &Path) -> ExitCode {
    let config = match HostConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qci: {e}");
            return ExitCode::BadInput;
        }
    };
    // Before the pool or the database is opened: a second host on the same
    // state dir must change nothing.
    let lock = match qci_server::StateLock::acquire(config.state_dir()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qci: {e}");
            return ExitCode::CiError;
        }
    };
    let pool = match qci_pool::Pool::open(config.pool.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("qci: {e}");
            return e.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qci: cannot start the async runtime: {e}");
            return ExitCode::CiError;
        }
    };
    let served = runtime.block_on(qci_server::serve(config, Arc::new(pool), None, lock));
    // Jobs still running on machines are not waited for: their leases name
    // this process, so the next start reconciles them.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match served {
        Ok(()) => ExitCode::Success,
        Err(e) => {
            eprintln!("qci: {e}");
            match e {
                qci_server::ServeError::Config(_) => ExitCode::BadInput,
                _ => ExitCode::CiError,
            }
        }
    }
}
