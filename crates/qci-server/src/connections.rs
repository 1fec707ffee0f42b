//! How many connections a client can hold, and for how long. The server
//! faces the internet (GitHub's webhooks) and machines running untrusted
//! code (the relay), so an idle socket must cost it nothing lasting: hyper
//! closes a connection that has not sent a whole request head within
//! [`HEADER_READ_TIMEOUT`], whether it just connected or sits idle between
//! keep-alive requests; and at the cap, a new connection closes the oldest
//! one, so descriptors never run out, `accept` never fails for want of
//! them, and a client that hoards sockets loses its own oldest first while
//! a webhook that arrives now is served now.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The time to send a request's head, from the connection's start or the
/// end of its previous request (hyper's header read timeout covers both):
/// enough for a slow client, too short to hoard sockets.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once, at most; the descriptor limit lowers it.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a stopping server waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Raises the soft descriptor limit to the hard one (a default service gets
/// 1024) and returns the connection cap that leaves half of it for files,
/// the database and the machines' processes.
pub fn connection_cap() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the descriptor limit to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!("cannot read the descriptor limit: {e}");
            1024
        }
    };
    usize::try_from(soft / 2)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(16, MAX_CONNECTIONS)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cap: usize,
    shutdown: impl Future<Output = ()>,
) {
    // Open connections by age: the first is the oldest.
    let open: Arc<Mutex<BTreeMap<u64, AbortHandle>>> = Arc::default();
    let mut next_id = 0u64;
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: the cap makes this rare,
                    // and waiting a moment lets connections end.
                    tracing::warn!("accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        next_id += 1;
        let id = next_id;
        {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            while open.len() >= cap {
                let Some((_, oldest)) = open.pop_first() else {
                    break;
                };
                tracing::debug!("{cap} connections open: the oldest is closed");
                oldest.abort();
            }
        }
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let conn = graceful.watch(conn);
        let ended = open.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            ended.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
        // A task that ended already leaves an entry that only waits to be
        // the oldest: aborting it then does nothing.
        open.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, task.abort_handle());
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}: dropped");
    }
}
