//! The host's SQLite database: the queue, the job history and the outbox
//! of statuses and notifications still to send.
//!
//! Every write goes through one writer thread that commits in groups: it
//! takes every write waiting, runs each in its own savepoint (one failing
//! write does not undo the others), commits once, and only then answers
//! each caller. So a webhook is answered 2xx only once it is on disk
//! (`synchronous=FULL`), and a burst of webhooks costs one fsync, not one
//! each. Reads use their own connection (WAL lets them run beside writes).

use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

pub mod schema;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database: cannot bring the schema up to date: {0}")]
    Migrate(#[from] rusqlite_migration::Error),
    /// Shared: one failed commit fails every write of its batch.
    #[error("database commit failed: cannot begin a transaction: {0}")]
    Begin(#[source] Arc<rusqlite::Error>),
    #[error("database commit failed: {0}")]
    Commit(#[source] Arc<rusqlite::Error>),
    #[error("database commit failed: cannot start the writer: {0}")]
    Writer(#[source] std::io::Error),
    #[error("database: cannot encode a request: {0}")]
    Encode(#[from] serde_json::Error),
    /// A row the queue wrote that does not read back (a Qubes version that
    /// makes no job id, a commit that is no SHA).
    #[error("database: {0}")]
    BadJobId(#[from] qci_core::job_id::JobIdError),
    #[error("database: job {job}: {source}")]
    BadCommit {
        job: qci_core::JobId,
        #[source]
        source: qci_core::job_file::JobFileError,
    },
    #[error("the database writer has stopped")]
    Closed,
}

/// Why a batch of writes did not commit, told to each of its callers.
#[derive(Debug, Clone)]
enum BatchFailure {
    Begin(Arc<rusqlite::Error>),
    Commit(Arc<rusqlite::Error>),
}

impl From<BatchFailure> for StoreError {
    fn from(failure: BatchFailure) -> Self {
        match failure {
            BatchFailure::Begin(e) => StoreError::Begin(e),
            BatchFailure::Commit(e) => StoreError::Commit(e),
        }
    }
}

/// A write: runs in the writer thread, then hands back what answers its caller.
/// Run with the writer's connection inside the batch's transaction, or with
/// why the transaction could not begin.
type Task = Box<dyn FnOnce(Result<&Connection, &BatchFailure>) -> Finish + Send>;

impl StoreError {
    /// The disk or the file failed, not the request: worth trying again
    /// once space or the device comes back.
    pub fn is_storage_failure(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Begin(_) | StoreError::Commit(_) | StoreError::Writer(_) => true,
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::DiskFull
                    | C::SystemIoFailure
                    | C::CannotOpen
                    | C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::ReadOnly
                    | C::OutOfMemory
            ),
            _ => false,
        }
    }
}

/// Whether the last write reached the disk, for `/healthz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    failing: Mutex<Option<String>>,
    failures: std::sync::atomic::AtomicU64,
    /// How many times writes came back after failing, rung each time:
    /// what was refused meanwhile (webhooks) can be asked for again.
    recoveries: (Mutex<u64>, Condvar),
}

impl Health {
    fn record<R>(&self, out: &Result<R, StoreError>) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match out {
            Err(e) if e.is_storage_failure() => {
                self.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *failing = Some(e.to_string());
            }
            Ok(_) => {
                if failing.take().is_some() {
                    let (count, cvar) = &self.recoveries;
                    *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    cvar.notify_all();
                }
            }
            Err(_) => {}
        }
    }

    /// How many times storage recovered so far: pass it to
    /// [`Health::wait_recovery`].
    pub fn recoveries(&self) -> u64 {
        *self.recoveries.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until storage recovers after `seen` recoveries, or `timeout`.
    pub fn wait_recovery(&self, seen: u64, timeout: Duration) -> u64 {
        let (count, cvar) = &self.recoveries;
        let guard = count.lock().unwrap_or_else(|p| p.into_inner());
        let (n, _) = cvar
            .wait_timeout_while(guard, timeout, |n| *n == seen)
            .unwrap_or_else(|p| p.into_inner());
        *n
    }

    /// Why writes fail now, if they do.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes that failed for the disk's sake since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Answers a write's caller once the commit is known (`Some` if it failed).
type Finish = Box<dyn FnOnce(Option<&BatchFailure>) + Send>;

/// Writes waiting beyond this are left for the next commit, so one commit
/// never holds its first caller for long.
const MAX_BATCH: usize = 1024;

/// The longest wait between two tries of a write the disk refused.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Store {
    tasks: mpsc::Sender<Task>,
    reader: Arc<Mutex<Connection>>,
    /// Rung after every commit: the dispatcher looks again.
    pub changed: Arc<Notify>,
    /// The same for threads outside the runtime: a commit count.
    commits: Arc<(Mutex<u64>, Condvar)>,
    pub health: Arc<Health>,
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut writer = open_conn(path)?;
        schema::migrate(&mut writer)?;
        let reader = open_conn(path)?;
        let (tasks, rx) = mpsc::channel::<Task>();
        let changed = Arc::new(Notify::new());
        let commits = Arc::new((Mutex::new(0), Condvar::new()));
        let (ring, count) = (changed.clone(), commits.clone());
        std::thread::Builder::new()
            .name("qci-db-writer".into())
            .spawn(move || write_loop(writer, rx, &ring, &count))
            .map_err(StoreError::Writer)?;
        Ok(Self {
            tasks,
            reader: Arc::new(Mutex::new(reader)),
            changed,
            commits,
            health: Arc::default(),
        })
    }

    /// How many commits so far: pass it to [`Store::wait_commit`].
    pub fn commit_count(&self) -> u64 {
        *self.commits.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until a commit after `seen`, or `timeout`.
    pub fn wait_commit(&self, seen: u64, timeout: Duration) {
        let (count, cvar) = &*self.commits;
        let guard = count.lock().unwrap_or_else(|p| p.into_inner());
        let _ = cvar.wait_timeout_while(guard, timeout, |n| *n == seen);
    }

    fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<R, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let health = self.health.clone();
        let task: Task = Box::new(move |conn| {
            let out = match conn {
                Ok(conn) => in_savepoint(conn, f),
                Err(why) => Err(why.clone().into()),
            };
            Box::new(move |failed: Option<&BatchFailure>| {
                let out = match failed {
                    Some(why) => Err(why.clone().into()),
                    None => out,
                };
                health.record(&out);
                let _ = reply.send(out);
            })
        });
        self.tasks.send(task).map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Runs `f` in a transaction and returns once it is committed.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(f)?.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write`] for threads outside the async runtime.
    pub fn write_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(f)?
            .blocking_recv()
            .map_err(|_| StoreError::Closed)?
    }

    /// A write that must not be lost (a job's end, an outbox row): tried
    /// again, with backoff, for as long as the disk fails, and given up only
    /// for an error of the request itself. Meanwhile `/healthz` says why.
    pub fn write_durable_blocking<R: Send + 'static>(
        &self,
        what: &str,
        f: impl Fn(&Connection) -> Result<R, StoreError> + Send + Sync + 'static,
    ) -> Result<R, StoreError> {
        let f = Arc::new(f);
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = f.clone();
            match self.write_blocking(move |conn| attempt(conn)) {
                Err(e) if e.is_storage_failure() => {
                    tracing::error!("cannot record {what}: {e}; trying again in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                done => return done,
            }
        }
    }

    /// Reads on the reading connection (blocking: call from a blocking thread).
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Reads from async code, on a blocking thread.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    // Cached: a burst of webhooks runs these thousands of times a second.
    conn.prepare_cached("SAVEPOINT task")?.execute([])?;
    let out = f(conn);
    if out.is_err() {
        conn.prepare_cached("ROLLBACK TO task")?.execute([])?;
    }
    conn.prepare_cached("RELEASE task")?.execute([])?;
    out
}

fn write_loop(
    conn: Connection,
    rx: mpsc::Receiver<Task>,
    changed: &Notify,
    commits: &(Mutex<u64>, Condvar),
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        let begun = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]));
        let failed = match begun {
            Err(e) => {
                // Nothing ran: every caller hears why.
                let why = BatchFailure::Begin(Arc::new(e));
                for task in batch {
                    task(Err(&why))(None);
                }
                Some(why)
            }
            Ok(_) => {
                let finishes: Vec<Finish> = batch.into_iter().map(|task| task(Ok(&conn))).collect();
                let committed = conn
                    .prepare_cached("COMMIT")
                    .and_then(|mut s| s.execute([]));
                let failed = committed.err().map(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    BatchFailure::Commit(Arc::new(e))
                });
                for finish in finishes {
                    finish(failed.as_ref());
                }
                failed
            }
        };
        if let Some(why) = failed {
            tracing::error!("{}", StoreError::from(why));
        }
        changed.notify_waiters();
        changed.notify_one();
        *commits.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        commits.1.notify_all();
    }
}
