//! The database's schema and how a database made by an earlier qci is
//! brought up to it: numbered migrations (`rusqlite_migration`, which
//! counts them in SQLite's `user_version`), run once each, in order, in one
//! transaction when the store opens.
//!
//! Databases made before the migrations existed have `user_version` 0:
//! the first migration is the schema they were made with (every statement
//! `IF NOT EXISTS`, so it changes nothing in them), and the next ones add
//! what the oldest of them lack.

use rusqlite::{Connection, Transaction};
use rusqlite_migration::{HookResult, M, Migrations};

/// The schema as qci made it before its migrations were numbered: the
/// first migration, unchanged forever. Later changes are new migrations.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id          TEXT PRIMARY KEY,      -- X-GitHub-Delivery
    event       TEXT NOT NULL,
    received_at INTEGER NOT NULL,      -- Unix ms, as every time here
    outcome     TEXT NOT NULL
);
-- A delivery that asks for something, kept until the resolver has done it,
-- in the order deliveries came (a push's jobs need its .qci.toml first).
CREATE TABLE IF NOT EXISTS triggers (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery    TEXT NOT NULL UNIQUE,
    plan        TEXT NOT NULL,         -- JSON of webhook::Plan
    received_at INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX IF NOT EXISTS triggers_open ON triggers(resolved_at, seq);
CREATE TABLE IF NOT EXISTS jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO order
    id             TEXT NOT NULL UNIQUE,
    delivery       TEXT,
    repo           TEXT NOT NULL,
    clone_url      TEXT NOT NULL,
    sha            TEXT NOT NULL,
    git_ref        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    author         TEXT NOT NULL,
    message        TEXT NOT NULL,
    qubes          TEXT NOT NULL,
    context        TEXT NOT NULL,
    supersede_key  TEXT,
    pr             INTEGER,
    needs_approval INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL,
    description    TEXT NOT NULL,
    token_hash     TEXT,               -- SHA-256 of the relay token, minted at dispatch
    retry_of       TEXT,
    start_failures INTEGER NOT NULL DEFAULT 0,  -- hand-overs to the pool that did not start
    not_before     INTEGER,            -- not handed over again before this
    created_at     INTEGER NOT NULL,
    dispatched_at  INTEGER,            -- handed to the pool
    started_at     INTEGER,            -- the job began on a machine
    finished_at    INTEGER,
    log_published  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, qubes, seq);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs(supersede_key, state);
CREATE INDEX IF NOT EXISTS jobs_by_token ON jobs(token_hash);
CREATE INDEX IF NOT EXISTS jobs_by_delivery ON jobs(delivery);
CREATE TABLE IF NOT EXISTS events (
    job         TEXT NOT NULL,
    at          INTEGER NOT NULL,
    state       TEXT NOT NULL,
    description TEXT NOT NULL,
    source      TEXT NOT NULL          -- relay, host
);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job);
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL,           -- github, slack, webhook
    job       TEXT NOT NULL,
    body      TEXT NOT NULL,           -- the JSON to post
    ready     INTEGER NOT NULL,        -- 0 until the job's log is published
    sent_at   INTEGER,
    error     TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(kind, sent_at, ready, id);
CREATE INDEX IF NOT EXISTS outbox_by_job ON outbox(job, kind, id);
";
/// Columns `jobs` gained before the migrations were numbered: a database
/// made before them lacks them, one made after has them from [`SCHEMA`].
const LATE_JOB_COLUMNS: [(&str, &str); 2] = [
    ("start_failures", "INTEGER NOT NULL DEFAULT 0"),
    ("not_before", "INTEGER"),
];

fn add_late_job_columns(tx: &Transaction) -> HookResult {
    let columns: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('jobs')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, decl) in LATE_JOB_COLUMNS {
        if !columns.iter().any(|c| c == name) {
            tx.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

/// Migration 3: the machine and the snapshot a job ran on, as the pool
/// reports them (`Phase::Leased`, `Phase::Reverting`); none for older jobs.
const MACHINE_COLUMNS: &str = "
ALTER TABLE jobs ADD COLUMN machine TEXT;
ALTER TABLE jobs ADD COLUMN snapshot TEXT;
";

/// Migration 4: per-test results and the files a job left.
/// A result row copies its job's repository, Qubes version, ref, commit and
/// queue order, so a test's history is one indexed range, not a join.
const RESULTS: &str = "
CREATE TABLE test_results (
    job         TEXT NOT NULL,
    seq         INTEGER NOT NULL,      -- the job's place in the queue: history's order
    repo        TEXT NOT NULL,
    qubes       TEXT NOT NULL,
    git_ref     TEXT NOT NULL,
    sha         TEXT NOT NULL,
    classname   TEXT NOT NULL,
    name        TEXT NOT NULL,
    outcome     TEXT NOT NULL,         -- passed, failed, errored, skipped
    duration_ms INTEGER,
    message     TEXT,
    details     TEXT,                  -- dropped with the job's log
    output      TEXT,                  -- dropped with the job's log
    file        TEXT,
    line        INTEGER
);
CREATE INDEX test_results_by_job ON test_results(job);
CREATE INDEX test_results_by_test ON test_results(repo, qubes, classname, name, seq);
CREATE TABLE artifacts (
    job   TEXT NOT NULL,
    path  TEXT NOT NULL,               -- relative to the job's artifact directory
    bytes INTEGER NOT NULL,
    PRIMARY KEY (job, path)
);
";

/// Migration 5: the GitHub check run that reports a job in App mode, once
/// GitHub has given its id (none in token mode, and for older jobs): each
/// later message of the job updates that check run instead of making one.
const CHECK_RUN_ID: &str = "ALTER TABLE jobs ADD COLUMN check_run_id INTEGER;";

/// Migration 6: GitHub Actions jobs queued for a machine and not yet on a
/// runner, so that a host that restarts takes them up again (GitHub would
/// otherwise hold them queued until its own timeout).
const ACTIONS_WAITING: &str = "
CREATE TABLE actions_waiting (
    job_id    INTEGER PRIMARY KEY,  -- GitHub's workflow_job id
    plan      TEXT NOT NULL,        -- JSON of webhook::ActionsJob
    queued_at INTEGER NOT NULL
);
";

/// Every migration, oldest first. Append only: a database records how
/// many it has run.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(SCHEMA).comment("the schema of the first databases"),
        M::up_with_hook("", add_late_job_columns)
            .comment("jobs: start_failures and not_before, where a database lacks them"),
        M::up(MACHINE_COLUMNS).comment("jobs: the machine and snapshot a job ran on"),
        M::up(RESULTS).comment("test results and artifacts"),
        M::up(CHECK_RUN_ID).comment("jobs: the id of the job's GitHub check run"),
        M::up(ACTIONS_WAITING).comment("GitHub Actions jobs waiting for a machine"),
    ])
}

/// Brings `conn`'s database up to the latest schema. A database from a
/// newer qci (more migrations than this one knows) is refused.
pub fn migrate(conn: &mut Connection) -> Result<(), rusqlite_migration::Error> {
    migrations().to_latest(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_are_valid() {
        migrations().validate().unwrap();
    }

    /// A database as today's qci makes it before its migrations: [`SCHEMA`]
    /// run by hand, `user_version` 0; or, with `oldest`, the shape before
    /// the late columns. A row in every table.
    fn premigration_database(oldest: bool) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        fill_premigration(&conn, oldest);
        conn
    }

    fn fill_premigration(conn: &Connection, oldest: bool) {
        let mut schema = SCHEMA.to_owned();
        if oldest {
            for line in [
                "    start_failures INTEGER NOT NULL DEFAULT 0,  -- hand-overs to the pool that did not start\n",
                "    not_before     INTEGER,            -- not handed over again before this\n",
            ] {
                assert!(schema.contains(line));
                schema = schema.replace(line, "");
            }
        }
        conn.execute_batch(&schema).unwrap();
        conn.execute_batch(
            "INSERT INTO deliveries VALUES ('d1', 'push', 1, 'accepted: main');
             INSERT INTO triggers (delivery, plan, received_at) VALUES ('d1', '{}', 1);
             INSERT INTO jobs (id, delivery, repo, clone_url, sha, git_ref, reason, author,
                 message, qubes, context, state, description, created_at)
                 VALUES ('1-q4.2', 'd1', 'o/r', '/src', 'aa', 'refs/heads/main', 'push', 'a',
                 'm', '4.2', 'qci/qubes-4.2', 'queued', 'Queued', 1);
             INSERT INTO events VALUES ('1-q4.2', 1, 'queued', 'Queued', 'host');
             INSERT INTO outbox (kind, job, body, ready) VALUES ('github', '1-q4.2', '{}', 1);",
        )
        .unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0);
    }

    fn columns(conn: &Connection, table: &str) -> Vec<String> {
        conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn databases_made_before_the_migrations_keep_every_row() {
        let fresh = {
            let mut conn = Connection::open_in_memory().unwrap();
            migrate(&mut conn).unwrap();
            conn
        };
        for oldest in [false, true] {
            let mut conn = premigration_database(oldest);
            migrate(&mut conn).unwrap();
            migrate(&mut conn).unwrap();
            for table in ["deliveries", "triggers", "jobs", "events", "outbox"] {
                let rows: i64 = conn
                    .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                    .unwrap();
                assert_eq!(rows, 1, "{table} (oldest: {oldest})");
                let mut have = columns(&conn, table);
                let mut want = columns(&fresh, table);
                if !oldest {
                    // Made by today's SQL: the very same columns, in order.
                    assert_eq!(have, want, "{table}");
                }
                have.sort();
                want.sort();
                assert_eq!(have, want, "{table} (oldest: {oldest})");
            }
            let (id, failures, not_before): (String, i64, Option<i64>) = conn
                .query_row("SELECT id, start_failures, not_before FROM jobs", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!((id.as_str(), failures, not_before), ("1-q4.2", 0, None));
        }
    }

    #[test]
    fn the_store_opens_a_database_made_before_the_migrations() {
        for oldest in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("server.sqlite");
            fill_premigration(&Connection::open(&path).unwrap(), oldest);
            let store = crate::store::Store::open(&path).unwrap();
            let job: (String, String, i64) = store
                .read_blocking(|conn| {
                    Ok(conn.query_row(
                        "SELECT state, description, start_failures FROM jobs WHERE id = '1-q4.2'",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?)
                })
                .unwrap();
            assert_eq!(job, ("queued".into(), "Queued".into(), 0));
            let events: i64 = store
                .read_blocking(|conn| {
                    Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?)
                })
                .unwrap();
            assert_eq!(events, 1);
            let version: i64 = store
                .read_blocking(|conn| Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?))
                .unwrap();
            assert_eq!(version as usize, 6);
        }
    }

    #[test]
    fn a_database_of_migration_2_gets_the_machine_columns_and_keeps_its_jobs() {
        let mut conn = premigration_database(true);
        migrations().to_version(&mut conn, 2).unwrap();
        assert!(!columns(&conn, "jobs").contains(&"machine".to_owned()));
        migrate(&mut conn).unwrap();
        let (id, machine, snapshot): (String, Option<String>, Option<String>) = conn
            .query_row("SELECT id, machine, snapshot FROM jobs", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((id.as_str(), machine, snapshot), ("1-q4.2", None, None));
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 6);
    }

    #[test]
    fn a_database_of_migration_3_gets_the_results_tables_and_keeps_its_jobs() {
        let mut conn = premigration_database(false);
        migrations().to_version(&mut conn, 3).unwrap();
        assert!(columns(&conn, "test_results").is_empty());
        migrate(&mut conn).unwrap();
        assert!(columns(&conn, "test_results").contains(&"outcome".to_owned()));
        assert_eq!(columns(&conn, "artifacts"), ["job", "path", "bytes"]);
        let jobs: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jobs, 1);
    }

    #[test]
    fn a_database_of_migration_4_gets_the_check_run_column_and_keeps_its_jobs() {
        let mut conn = premigration_database(false);
        migrations().to_version(&mut conn, 4).unwrap();
        assert!(!columns(&conn, "jobs").contains(&"check_run_id".to_owned()));
        migrate(&mut conn).unwrap();
        let (id, check_run): (String, Option<i64>) = conn
            .query_row("SELECT id, check_run_id FROM jobs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((id.as_str(), check_run), ("1-q4.2", None));
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 6);
    }

    #[test]
    fn a_database_from_a_newer_qci_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(
                err,
                rusqlite_migration::Error::MigrationDefinition(
                    rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead
                )
            ),
            "{err:?}"
        );
    }
}
