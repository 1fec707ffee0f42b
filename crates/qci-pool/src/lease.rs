//! Leases and the queue of jobs waiting for a machine, in SQLite.
//!
//! A lease is a row in `leases`, taken in one `BEGIN IMMEDIATE` transaction,
//! so two processes sharing the state directory never hold one machine.
//! (The marker on the hypervisor, set by the runner right after, keeps a
//! second *host* away: see [`crate::control::claim_marker`], a
//! compare-and-swap on vSphere, a write and read-back on libvirt.)
//!
//! Waiting is a FIFO: every waiter, of every process, is a row in `waiters`
//! in arrival order. Who gets which free machine is computed from the whole
//! table by [`assign`], first come first served, each waiter taking the
//! first free machine it accepts. A waiter owns a Unix datagram socket (in
//! the abstract namespace, so nothing is left on disk); whoever frees a
//! machine computes the assignment in the same transaction and sends one
//! datagram to each waiter that now gets a machine. The waiter wakes at once
//! and claims it: no polling interval stands between a machine freeing and
//! the next job starting. The socket exists before the waiter's row, so a
//! wake-up can never be lost. Waiters also look again every few seconds, but
//! only as a guard against a waiter ahead of them dying with a machine
//! assigned (its row goes when its process is seen dead).

use crate::config::MachineConfig;
use crate::error::PoolError;
use qci_core::JobId;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The guard re-check of a waiter (see the module's docs).
const GUARD: Duration = Duration::from_secs(5);
/// How often a waiter looks at its cancel flag and deadline.
const TICK: Duration = Duration::from_millis(200);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    machine TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    host TEXT NOT NULL,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    log_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS waiters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    want_machine TEXT,
    want_qubes TEXT,
    exclude TEXT NOT NULL,
    owner TEXT NOT NULL,
    socket TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine TEXT NOT NULL,
    job TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    waited_since REAL NOT NULL,
    acquired_at REAL NOT NULL,
    released_at REAL,
    marker TEXT
);
CREATE TABLE IF NOT EXISTS foreign_held (
    machine TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    until_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    job TEXT PRIMARY KEY,
    machine TEXT,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    log TEXT
);
";

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Which process holds a lease or waits: boot, pid and the pid's start
/// time, so a reused pid or a reboot never passes for the old owner.
pub fn me() -> String {
    owner_of(std::process::id() as i32).unwrap_or_else(|| format!("?:{}:?", std::process::id()))
}

/// An owner no process ever has: a lease handed to it is stale at once,
/// so the next reconcile cleans its machine up and frees it.
pub const NOBODY: &str = "?:0:?";

/// `pid`'s owner string (see [`me`]), if it lives: how a lease is handed
/// to a process that outlives the one that took it.
pub fn owner_of(pid: i32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    // starttime is field 22; after `)` the state is field 3.
    let start = fields.nth(18)?;
    Some(format!("{}:{pid}:{start}", boot.trim()))
}

/// Whether the process that wrote `owner` is still alive.
pub fn owner_alive(owner: &str) -> bool {
    owner
        .split(':')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .and_then(owner_of)
        .is_some_and(|o| o == owner)
}

/// What a waiter accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Machine(String),
    Qubes(String),
}

#[derive(Debug, Clone)]
pub struct Lease {
    pub machine: String,
    pub job: JobId,
    pub log_id: i64,
    pub waited_since: f64,
    pub acquired_at: f64,
}

/// One lease from the lease log: who held which machine when.
#[derive(Debug, Clone)]
pub struct LeaseInterval {
    pub machine: String,
    /// As stored: the log is a record to show, never acted on.
    pub job: String,
    pub host: String,
    pub pid: i64,
    /// When the job joined the queue.
    pub waited_since: f64,
    pub acquired_at: f64,
    /// `None` while the lease is held.
    pub released_at: Option<f64>,
    /// The marker read back from the hypervisor after it was set.
    pub marker: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub machine: String,
    pub job: JobId,
    pub host: String,
    pub owner: String,
    pub pid: i64,
    pub acquired_at: f64,
    pub expires_at: f64,
    pub log_id: i64,
}

/// The SQLite file every process of one host shares.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    path: PathBuf,
    host: String,
}

fn db(source: rusqlite::Error) -> PoolError {
    PoolError::Store { source }
}

/// How long a write waits for another process's.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Puts the database in WAL mode (it stays so: the mode is kept in the
/// file). SQLite answers "database is locked" at once, not after the busy
/// timeout, when another connection holds a lock while the mode changes,
/// as when several processes open a new store together: so this waits
/// for them itself, within the same bound.
fn write_ahead_log(conn: &Connection) -> Result<(), PoolError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(db(e)),
        }
    }
}

/// Column `i` as a job id: the database file is outside data, so what it
/// says is checked as it is read (a bad id is an error of the store).
fn job_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<JobId> {
    let text: String = r.get(i)?;
    JobId::parse(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl LeaseStore {
    pub fn open(state_dir: &Path, host: &str) -> Result<Self, PoolError> {
        std::fs::create_dir_all(state_dir).map_err(|source| PoolError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let store = Self {
            path: state_dir.join("pool.sqlite"),
            host: host.to_owned(),
        };
        let ready = store.conn().and_then(|mut conn| {
            write_ahead_log(&conn)?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            tx.execute_batch(SCHEMA).map_err(db)?;
            tx.commit().map_err(db)
        });
        match ready {
            Ok(()) => {}
            // A full disk: what exists can still be read (see `reader`).
            Err(e) if store.path.exists() => {
                tracing::warn!("{}: {e}; reading only", store.path.display());
            }
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// A connection to read with, also when the disk is full: after the
    /// last writer closed, SQLite must create the WAL's index to read, and
    /// cannot. The database file alone is then complete, so it is read as
    /// an immutable file, which needs no index.
    fn reader(&self) -> Result<Connection, PoolError> {
        self.conn().or_else(|e| {
            use rusqlite::OpenFlags;
            let uri = format!("file:{}?immutable=1", self.path.display());
            Connection::open_with_flags(
                uri,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(|_| e)
        })
    }

    pub fn conn(&self) -> Result<Connection, PoolError> {
        let conn = Connection::open(&self.path).map_err(|source| PoolError::Open {
            path: self.path.clone(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        Ok(conn)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Takes a machine `want` accepts (not in `exclude`), waiting in the FIFO
    /// until one frees, `cancel` is set or `deadline` passes. `queued` is
    /// told how many waiters are ahead whenever that changes.
    #[expect(
        clippy::too_many_arguments,
        reason = "one caller passes each of these; a struct would exist only for it"
    )]
    pub fn acquire(
        &self,
        job: &JobId,
        want: &Want,
        exclude: &[String],
        machines: &[MachineConfig],
        lease_for: Duration,
        cancel: &AtomicBool,
        deadline: Instant,
        queued: &mut dyn FnMut(usize),
    ) -> Result<Lease, PoolError> {
        static WAITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "qci-wait/{}/{}/{}",
            std::process::id(),
            WAITERS.fetch_add(1, Ordering::Relaxed),
            now()
        );
        let socket = UnixDatagram::bind_addr(
            &SocketAddr::from_abstract_name(name.as_bytes()).map_err(PoolError::WakeUp)?,
        )
        .map_err(PoolError::WakeUp)?;
        socket
            .set_read_timeout(Some(TICK))
            .map_err(PoolError::WakeUp)?;
        let since = now();
        let (machine_want, qubes_want) = match want {
            Want::Machine(m) => (Some(m.as_str()), None),
            Want::Qubes(q) => (None, Some(q.as_str())),
        };
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO waiters (job, want_machine, want_qubes, exclude, owner, socket, since)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.as_str(),
                machine_want,
                qubes_want,
                exclude.join(","),
                me(),
                name,
                since
            ],
        )
        .map_err(db)?;
        let seq = conn.last_insert_rowid();
        let result = self.wait_turn(
            &mut conn, seq, job, machines, lease_for, since, &socket, cancel, deadline, queued,
        );
        if result.is_err() {
            // Leave the queue, and pass on whatever was assigned to us.
            let _ = conn.execute("DELETE FROM waiters WHERE seq = ?1", [seq]);
            let _ = self.wake(&mut conn, machines);
        }
        result
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one caller passes each of these; a struct would exist only for it"
    )]
    fn wait_turn(
        &self,
        conn: &mut Connection,
        seq: i64,
        job: &JobId,
        machines: &[MachineConfig],
        lease_for: Duration,
        since: f64,
        socket: &UnixDatagram,
        cancel: &AtomicBool,
        deadline: Instant,
        queued: &mut dyn FnMut(usize),
    ) -> Result<Lease, PoolError> {
        let mut last_ahead = None;
        loop {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let assigned = assign(&tx, machines)?;
            if let Some(a) = assigned.iter().find(|a| a.seq == seq) {
                let at = now();
                tx.execute(
                    "INSERT INTO lease_log (machine, job, host, pid, waited_since, acquired_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        a.machine,
                        job.as_str(),
                        self.host,
                        std::process::id(),
                        since,
                        at
                    ],
                )
                .map_err(db)?;
                let log_id = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO leases (machine, job, host, owner, pid, acquired_at, expires_at, log_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        a.machine,
                        job.as_str(),
                        self.host,
                        me(),
                        std::process::id(),
                        at,
                        at + lease_for.as_secs_f64(),
                        log_id
                    ],
                )
                .map_err(db)?;
                tx.execute("DELETE FROM waiters WHERE seq = ?1", [seq])
                    .map_err(db)?;
                tx.commit().map_err(db)?;
                return Ok(Lease {
                    machine: a.machine.clone(),
                    job: job.clone(),
                    log_id,
                    waited_since: since,
                    acquired_at: at,
                });
            }
            let ahead: i64 = tx
                .query_row("SELECT COUNT(*) FROM waiters WHERE seq < ?1", [seq], |r| {
                    r.get(0)
                })
                .map_err(db)?;
            tx.commit().map_err(db)?;
            if last_ahead != Some(ahead) {
                queued(ahead as usize);
                last_ahead = Some(ahead);
            }
            let guard_at = Instant::now() + GUARD;
            let mut buf = [0u8; 16];
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(PoolError::Canceled);
                }
                if Instant::now() >= deadline {
                    return Err(PoolError::QueueTimeout);
                }
                match socket.recv(&mut buf) {
                    Ok(_) => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if Instant::now() >= guard_at {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(PoolError::WakeUp(e)),
                }
            }
        }
    }

    /// Ends `lease` (the log records when), then wakes whoever gets a
    /// machine now.
    pub fn release(
        &self,
        lease_machine: &str,
        job: &JobId,
        log_id: i64,
        machines: &[MachineConfig],
    ) -> Result<(), PoolError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        tx.execute(
            "DELETE FROM leases WHERE machine = ?1 AND job = ?2",
            params![lease_machine, job.as_str()],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE lease_log SET released_at = ?1 WHERE id = ?2 AND released_at IS NULL",
            params![now(), log_id],
        )
        .map_err(db)?;
        let assigned = assign(&tx, machines)?;
        tx.commit().map_err(db)?;
        send_wakeups(&assigned);
        Ok(())
    }

    /// Wakes the waiters that get a machine now (after a waiter left).
    fn wake(&self, conn: &mut Connection, machines: &[MachineConfig]) -> Result<(), PoolError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let assigned = assign(&tx, machines)?;
        tx.commit().map_err(db)?;
        send_wakeups(&assigned);
        Ok(())
    }

    /// Records what the runner read back from the hypervisor's marker.
    pub fn note_marker(&self, log_id: i64, marker: &str) -> Result<(), PoolError> {
        self.conn()?
            .execute(
                "UPDATE lease_log SET marker = ?1 WHERE id = ?2",
                params![marker, log_id],
            )
            .map(drop)
            .map_err(db)
    }

    /// Another host holds `machine` until `until`: nobody here is assigned
    /// it before then.
    pub fn note_foreign(&self, machine: &str, host: &str, until: f64) -> Result<(), PoolError> {
        self.conn()?
            .execute(
                "INSERT OR REPLACE INTO foreign_held (machine, host, until_at) VALUES (?1, ?2, ?3)",
                params![machine, host, until],
            )
            .map(drop)
            .map_err(db)
    }

    pub fn leases(&self) -> Result<Vec<LeaseRow>, PoolError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT machine, job, host, owner, pid, acquired_at, expires_at, log_id FROM leases",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(LeaseRow {
                    machine: r.get(0)?,
                    job: job_column(r, 1)?,
                    host: r.get(2)?,
                    owner: r.get(3)?,
                    pid: r.get(4)?,
                    acquired_at: r.get(5)?,
                    expires_at: r.get(6)?,
                    log_id: r.get(7)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Makes this process the owner of `row`'s lease if its owner is still
    /// the dead one: of several reconcilers, one wins.
    pub fn take_over(&self, row: &LeaseRow) -> Result<bool, PoolError> {
        let n = self
            .conn()?
            .execute(
                "UPDATE leases SET owner = ?1, pid = ?2 WHERE machine = ?3 AND owner = ?4",
                params![me(), std::process::id(), row.machine, row.owner],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Gives `job`'s lease of `machine` to another owner (see [`owner_of`],
    /// [`NOBODY`]): `false` if there is no such lease.
    pub fn hand_over(
        &self,
        machine: &str,
        job: &JobId,
        owner: &str,
        pid: i64,
    ) -> Result<bool, PoolError> {
        let n = self
            .conn()?
            .execute(
                "UPDATE leases SET owner = ?1, pid = ?2 WHERE machine = ?3 AND job = ?4",
                params![owner, pid, machine, job.as_str()],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    /// The record of one run: started when its machine is leased.
    pub fn run_started(&self, job: &JobId, machine: &str) -> Result<(), PoolError> {
        self.conn()?
            .execute(
                "INSERT INTO runs (job, machine, state, description, started_at) VALUES (?1, ?2, 'running', '', ?3)
                 ON CONFLICT(job) DO UPDATE SET machine = ?2, state = 'running', started_at = ?3",
                params![job.as_str(), machine, now()],
            )
            .map(drop)
            .map_err(db)
    }

    pub fn run_ended(
        &self,
        job: &JobId,
        state: &str,
        description: &str,
        log: Option<&Path>,
    ) -> Result<(), PoolError> {
        self.conn()?
            .execute(
                "INSERT INTO runs (job, state, description, started_at, ended_at, log) VALUES (?1, ?2, ?3, ?4, ?4, ?5)
                 ON CONFLICT(job) DO UPDATE SET state = ?2, description = ?3, ended_at = ?4, log = COALESCE(?5, log)",
                params![job.as_str(), state, description, now(), log.map(|p| p.to_string_lossy().into_owned())],
            )
            .map(drop)
            .map_err(db)
    }

    /// The final state the pool recorded for `job`, if any.
    pub fn run_state(&self, job: &JobId) -> Result<Option<(String, String)>, PoolError> {
        self.conn()?
            .query_row(
                "SELECT state, description FROM runs WHERE job = ?1 AND ended_at IS NOT NULL",
                [job.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)
    }

    /// The last run on `machine`: job, state, description.
    pub fn last_run(&self, machine: &str) -> Result<Option<(String, String, String)>, PoolError> {
        self.reader()?
            .query_row(
                "SELECT job, state, description FROM runs WHERE machine = ?1 ORDER BY started_at DESC LIMIT 1",
                [machine],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db)
    }

    /// Every lease ever taken here, oldest first.
    pub fn lease_log(&self) -> Result<Vec<LeaseInterval>, PoolError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT machine, job, host, pid, waited_since, acquired_at, released_at, marker
                 FROM lease_log ORDER BY id",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(LeaseInterval {
                    machine: r.get(0)?,
                    job: r.get(1)?,
                    host: r.get(2)?,
                    pid: r.get(3)?,
                    waited_since: r.get(4)?,
                    acquired_at: r.get(5)?,
                    released_at: r.get(6)?,
                    marker: r.get(7)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    pub fn waiting(&self) -> Result<usize, PoolError> {
        self.conn()?
            .query_row("SELECT COUNT(*) FROM waiters", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(db)
    }
}

struct Assigned {
    seq: i64,
    machine: String,
    socket: String,
}

/// First come, first served: each waiter in arrival order takes the first
/// free machine it accepts. Waiters whose process died are dropped here.
fn assign(
    tx: &rusqlite::Transaction<'_>,
    machines: &[MachineConfig],
) -> Result<Vec<Assigned>, PoolError> {
    let t = now();
    let taken: Vec<String> = {
        let mut stmt = tx
            .prepare("SELECT machine FROM leases UNION SELECT machine FROM foreign_held WHERE until_at > ?1")
            .map_err(db)?;
        let rows = stmt.query_map([t], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let mut free: Vec<&MachineConfig> = machines
        .iter()
        .filter(|m| !taken.contains(&m.name))
        .collect();
    struct Waiter {
        seq: i64,
        machine: Option<String>,
        qubes: Option<String>,
        exclude: String,
        owner: String,
        socket: String,
    }
    let waiters: Vec<Waiter> = {
        let mut stmt = tx
            .prepare("SELECT seq, want_machine, want_qubes, exclude, owner, socket FROM waiters ORDER BY seq")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Waiter {
                    seq: r.get(0)?,
                    machine: r.get(1)?,
                    qubes: r.get(2)?,
                    exclude: r.get(3)?,
                    owner: r.get(4)?,
                    socket: r.get(5)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let mut out = Vec::new();
    for w in waiters {
        if free.is_empty() {
            break;
        }
        if !owner_alive(&w.owner) {
            tx.execute("DELETE FROM waiters WHERE seq = ?1", [w.seq])
                .map_err(db)?;
            continue;
        }
        let excluded: Vec<&str> = w.exclude.split(',').filter(|s| !s.is_empty()).collect();
        let pick = free.iter().position(|m| {
            !excluded.contains(&m.name.as_str())
                && match (&w.machine, &w.qubes) {
                    (Some(name), _) => &m.name == name,
                    (None, Some(q)) => &m.qubes == q,
                    (None, None) => false,
                }
        });
        if let Some(i) = pick {
            let m = free.remove(i);
            out.push(Assigned {
                seq: w.seq,
                machine: m.name.clone(),
                socket: w.socket,
            });
        }
    }
    Ok(out)
}

fn send_wakeups(assigned: &[Assigned]) {
    let Ok(sender) = UnixDatagram::unbound() else {
        return;
    };
    for a in assigned {
        if let Ok(addr) = SocketAddr::from_abstract_name(a.socket.as_bytes()) {
            // A waiter that is gone is dropped by the next assignment.
            let _ = sender.send_to_addr(b"w", &addr);
        }
        tracing::debug!(machine = %a.machine, waiter = a.seq, "woke waiter");
    }
}

#[cfg(test)]
mod tests;
