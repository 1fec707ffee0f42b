//! What a job's tests said, and what each failing test's history says of it.
//!
//! History is kept per repository, Qubes version and test (class and
//! name). A failure's streak is read along the job's own ref (branch): a
//! branch's tests say since when they fail *there*, whatever other
//! branches do. Flakiness is read across refs: a test that both passed and
//! failed on one commit is flaky, whichever branch ran it.

use super::job::bad_column;
use crate::store::StoreError;
use qci_core::JobId;
use qci_junit::{Counts, Outcome, TestCase};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// How many of a test's latest runs its flip rate is read over.
pub const FLAKY_WINDOW: u32 = 20;
/// How far back a failure's streak is followed.
const STREAK_WINDOW: u32 = 500;
/// The most failing tests a job's page and API list (a broken build can
/// fail every test): the counts still cover them all.
pub const MAX_LISTED: usize = 1000;

/// One test's result in one job, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub classname: String,
    pub name: String,
    #[serde(serialize_with = "outcome_word")]
    pub outcome: Outcome,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
    /// The failure's text (a traceback). Gone once the job's log is pruned.
    pub details: Option<String>,
    /// What the test printed. Gone once the job's log is pruned.
    pub output: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

fn outcome_word<S: serde::Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(o.as_str())
}

/// Where a failing test stands in its history on this ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Since {
    /// It did not fail in the run before this one (or never ran before).
    New { last_passed: Option<String> },
    /// It failed in every run since `first`, this one included (`runs`).
    Failing {
        first: String,
        runs: u32,
        last_passed: Option<String>,
    },
}

/// A commit as history names it: its first 12 hex digits.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The words the job page, `qci jobs tests` and GitHub use.
impl std::fmt::Display for Since {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last_passed = match self {
            Self::New { last_passed } => {
                f.write_str("new failure")?;
                last_passed
            }
            Self::Failing {
                first,
                runs,
                last_passed,
            } => {
                write!(f, "failing since {} ({runs} runs)", short(first))?;
                last_passed
            }
        };
        match last_passed {
            Some(sha) => write!(f, ", last passed at {}", short(sha)),
            None => Ok(()),
        }
    }
}

/// A test that passed and failed on one commit, with how often it changed
/// outcome over its latest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Flakiness {
    pub flips: u32,
    pub runs: u32,
}

impl std::fmt::Display for Flakiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "flaky: {} flips in its last {} runs ({}%)",
            self.flips,
            self.runs,
            self.rate()
        )
    }
}

impl Flakiness {
    /// Flips per pair of consecutive runs, in percent.
    pub fn rate(&self) -> u32 {
        if self.runs < 2 {
            0
        } else {
            self.flips * 100 / (self.runs - 1)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Failing {
    #[serde(flatten)]
    pub test: TestResult,
    pub since: Since,
    pub flaky: Option<Flakiness>,
}

/// A job's tests as its page shows them: the failures first, with their
/// history; then the counts; then the other tests known to be flaky.
#[derive(Debug, Clone)]
pub struct JobTests {
    pub counts: Counts,
    /// Failed and errored tests, at most [`MAX_LISTED`].
    pub failing: Vec<Failing>,
    /// Tests of this job that did not fail here but are flaky.
    pub flaky: Vec<(TestResult, Flakiness)>,
}

/// A file the job left, as stored: its path in the job's artifact
/// directory, and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub path: String,
    pub bytes: u64,
}

/// Stores a job's tests and artifacts, replacing any stored before (a
/// durable write may run again after a storage failure).
pub fn record(
    conn: &Connection,
    job: &JobId,
    tests: &[TestCase],
    artifacts: &[Artifact],
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM test_results WHERE job = ?1")?
        .execute([job.as_str()])?;
    conn.prepare_cached("DELETE FROM artifacts WHERE job = ?1")?
        .execute([job.as_str()])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO test_results (job, seq, repo, qubes, git_ref, sha, classname, name, outcome,
                                   duration_ms, message, details, output, file, line)
         SELECT id, seq, repo, qubes, git_ref, sha, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
         FROM jobs WHERE id = ?1",
    )?;
    for t in tests {
        let ms = t
            .duration
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        insert.execute(params![
            job.as_str(),
            t.classname,
            t.name,
            t.outcome.as_str(),
            ms,
            t.message,
            t.details,
            t.output,
            t.file,
            t.line,
        ])?;
    }
    let mut insert = conn.prepare_cached(
        "INSERT OR REPLACE INTO artifacts (job, path, bytes) VALUES (?1, ?2, ?3)",
    )?;
    for a in artifacts {
        insert.execute(params![
            job.as_str(),
            a.path,
            i64::try_from(a.bytes).unwrap_or(i64::MAX)
        ])?;
    }
    Ok(())
}

/// When a job's log is pruned its tests' long texts and its files go with
/// it; the outcomes stay, for the history.
pub fn forget(conn: &Connection, job: &JobId) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE test_results SET details = NULL, output = NULL WHERE job = ?1")?
        .execute([job.as_str()])?;
    conn.prepare_cached("DELETE FROM artifacts WHERE job = ?1")?
        .execute([job.as_str()])?;
    Ok(())
}

pub fn artifacts(conn: &Connection, job: &str) -> Result<Vec<Artifact>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT path, bytes FROM artifacts WHERE job = ?1 ORDER BY path")?;
    let rows = stmt
        .query_map([job], |r| {
            Ok(Artifact {
                path: r.get(0)?,
                bytes: r.get::<_, i64>(1)?.max(0) as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// One artifact of a job, if the job has it: the only way a download's
/// path is taken from a URL.
pub fn artifact(conn: &Connection, job: &str, path: &str) -> Result<Option<Artifact>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT path, bytes FROM artifacts WHERE job = ?1 AND path = ?2")?
        .query_row([job, path], |r| {
            Ok(Artifact {
                path: r.get(0)?,
                bytes: r.get::<_, i64>(1)?.max(0) as u64,
            })
        })
        .optional()?)
}

const RESULT_COLUMNS: &str =
    "classname, name, outcome, duration_ms, message, details, output, file, line";

fn outcome_column(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Outcome> {
    let word: String = r.get(column)?;
    word.parse().map_err(|e| bad_column(column, e))
}

fn result_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TestResult> {
    Ok(TestResult {
        classname: r.get(0)?,
        name: r.get(1)?,
        outcome: outcome_column(r, 2)?,
        duration_ms: r.get(3)?,
        message: r.get(4)?,
        details: r.get(5)?,
        output: r.get(6)?,
        file: r.get(7)?,
        line: r.get(8)?,
    })
}

/// Which test, where: the key of a test's history.
struct Key<'a> {
    repo: &'a str,
    qubes: &'a str,
    git_ref: &'a str,
    seq: i64,
}

/// A job's tests with their history; `None` when the job has none stored.
pub fn job_tests(conn: &Connection, job: &str) -> Result<Option<JobTests>, StoreError> {
    let Some((seq, repo, qubes, git_ref)) = conn
        .prepare_cached("SELECT seq, repo, qubes, git_ref FROM jobs WHERE id = ?1")?
        .query_row([job], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let key = Key {
        repo: &repo,
        qubes: &qubes,
        git_ref: &git_ref,
        seq,
    };
    let mut counts = Counts::default();
    let mut any = false;
    for row in conn
        .prepare_cached(
            "SELECT outcome, COUNT(*) FROM test_results WHERE job = ?1 GROUP BY outcome",
        )?
        .query_map([job], |r| {
            Ok((outcome_column(r, 0)?, r.get::<_, usize>(1)?))
        })?
    {
        let (outcome, n) = row?;
        any = true;
        match outcome {
            Outcome::Passed => counts.passed = n,
            Outcome::Failed => counts.failed = n,
            Outcome::Errored => counts.errored = n,
            Outcome::Skipped => counts.skipped = n,
        }
    }
    if !any {
        return Ok(None);
    }
    let failing_sql = format!(
        "SELECT {RESULT_COLUMNS} FROM test_results WHERE job = ?1 \
         AND outcome IN ('failed', 'errored') ORDER BY rowid LIMIT ?2"
    );
    let tests: Vec<TestResult> = conn
        .prepare_cached(&failing_sql)?
        .query_map(params![job, MAX_LISTED as i64], result_from_row)?
        .collect::<Result<_, _>>()?;
    let mut failing = Vec::with_capacity(tests.len());
    for test in tests {
        let since = since(conn, &key, &test)?;
        let flaky = flakiness(conn, &key, &test)?;
        failing.push(Failing { test, since, flaky });
    }
    let others_sql = format!(
        "SELECT {RESULT_COLUMNS} FROM test_results t WHERE t.job = ?1 \
         AND t.outcome NOT IN ('failed', 'errored') AND EXISTS (
            SELECT 1 FROM test_results p JOIN test_results f
              ON f.repo = p.repo AND f.qubes = p.qubes AND f.classname = p.classname
             AND f.name = p.name AND f.sha = p.sha
            WHERE p.repo = t.repo AND p.qubes = t.qubes AND p.classname = t.classname
              AND p.name = t.name AND p.seq <= t.seq AND f.seq <= t.seq
              AND p.outcome = 'passed' AND f.outcome IN ('failed', 'errored'))
         ORDER BY t.rowid LIMIT ?2"
    );
    let candidates: Vec<TestResult> = conn
        .prepare_cached(&others_sql)?
        .query_map(params![job, MAX_LISTED as i64], result_from_row)?
        .collect::<Result<_, _>>()?;
    let mut flaky = Vec::new();
    for test in candidates {
        if let Some(f) = flakiness(conn, &key, &test)? {
            flaky.push((test, f));
        }
    }
    Ok(Some(JobTests {
        counts,
        failing,
        flaky,
    }))
}

/// Follows the test's runs on this ref back from the job, over the runs
/// that failed, to the one that passed. Skipped runs neither break nor
/// lengthen a streak.
fn since(conn: &Connection, key: &Key<'_>, test: &TestResult) -> Result<Since, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT outcome, sha FROM test_results
         WHERE repo = ?1 AND qubes = ?2 AND classname = ?3 AND name = ?4
           AND git_ref = ?5 AND seq < ?6 AND outcome != 'skipped'
         ORDER BY seq DESC LIMIT ?7",
    )?;
    let rows = stmt.query_map(
        params![
            key.repo,
            key.qubes,
            test.classname,
            test.name,
            key.git_ref,
            key.seq,
            STREAK_WINDOW
        ],
        |r| Ok((outcome_column(r, 0)?, r.get::<_, String>(1)?)),
    )?;
    let mut first = None;
    let mut runs = 1;
    let mut last_passed = None;
    for row in rows {
        let (outcome, sha) = row?;
        if outcome == Outcome::Passed {
            last_passed = Some(sha);
            break;
        }
        first = Some(sha);
        runs += 1;
    }
    Ok(match first {
        None => Since::New { last_passed },
        Some(first) => Since::Failing {
            first,
            runs,
            last_passed,
        },
    })
}

/// `Some` when the test passed and failed on one commit among its latest
/// [`FLAKY_WINDOW`] runs (any ref) up to this job, with its flips there.
fn flakiness(
    conn: &Connection,
    key: &Key<'_>,
    test: &TestResult,
) -> Result<Option<Flakiness>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT outcome, sha FROM test_results
         WHERE repo = ?1 AND qubes = ?2 AND classname = ?3 AND name = ?4
           AND seq <= ?5 AND outcome != 'skipped'
         ORDER BY seq DESC LIMIT ?6",
    )?;
    let runs: Vec<(bool, String)> = stmt
        .query_map(
            params![
                key.repo,
                key.qubes,
                test.classname,
                test.name,
                key.seq,
                FLAKY_WINDOW
            ],
            |r| Ok((outcome_column(r, 0)? == Outcome::Passed, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    Ok(flakiness_of(&runs))
}

/// Over runs newest first, `(passed, commit)`.
fn flakiness_of(runs: &[(bool, String)]) -> Option<Flakiness> {
    let same_commit_both = runs.iter().any(|(passed, sha)| {
        runs.iter()
            .any(|(other, other_sha)| other != passed && other_sha == sha)
    });
    if !same_commit_both {
        return None;
    }
    let flips = runs.windows(2).filter(|w| w[0].0 != w[1].0).count() as u32;
    Some(Flakiness {
        flips,
        runs: runs.len() as u32,
    })
}

/// A test as `/tests` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TestSummary {
    pub repo: String,
    pub qubes: String,
    pub git_ref: String,
    pub classname: String,
    pub name: String,
    /// The latest job that ran it.
    pub job: String,
    pub since: Option<Since>,
    pub flaky: Option<Flakiness>,
}

/// The flakiest tests (by flip rate) and those failing longest (by runs),
/// at most `limit` of each.
pub fn overview(
    conn: &Connection,
    limit: usize,
) -> Result<(Vec<TestSummary>, Vec<TestSummary>), StoreError> {
    let latest = "SELECT t.repo, t.qubes, t.git_ref, t.classname, t.name, t.job, t.seq, \
                  t.outcome FROM test_results t \
                  WHERE t.outcome != 'skipped' AND t.seq = (SELECT MAX(u.seq) FROM test_results u \
                  WHERE u.repo = t.repo AND u.qubes = t.qubes AND u.classname = t.classname \
                  AND u.name = t.name AND u.git_ref = t.git_ref AND u.outcome != 'skipped')";
    let rows: Vec<(TestSummary, i64, Outcome)> = conn
        .prepare_cached(latest)?
        .query_map([], |r| {
            Ok((
                TestSummary {
                    repo: r.get(0)?,
                    qubes: r.get(1)?,
                    git_ref: r.get(2)?,
                    classname: r.get(3)?,
                    name: r.get(4)?,
                    job: r.get(5)?,
                    since: None,
                    flaky: None,
                },
                r.get(6)?,
                outcome_column(r, 7)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut failing = Vec::new();
    let mut flaky = Vec::new();
    for (mut summary, seq, outcome) in rows {
        let key = Key {
            repo: &summary.repo,
            qubes: &summary.qubes,
            git_ref: &summary.git_ref,
            seq,
        };
        let test = TestResult {
            classname: summary.classname.clone(),
            name: summary.name.clone(),
            outcome,
            duration_ms: None,
            message: None,
            details: None,
            output: None,
            file: None,
            line: None,
        };
        let flakiness = flakiness(conn, &key, &test)?;
        let since = match outcome {
            Outcome::Failed | Outcome::Errored => Some(since(conn, &key, &test)?),
            _ => None,
        };
        summary.flaky = flakiness;
        summary.since = since;
        if summary.flaky.is_some() {
            flaky.push(summary.clone());
        }
        if summary.since.is_some() {
            failing.push(summary);
        }
    }
    flaky.sort_by_key(|s| std::cmp::Reverse(s.flaky.map(|f| (f.rate(), f.flips))));
    flaky.truncate(limit);
    failing.sort_by_key(|s| {
        std::cmp::Reverse(match &s.since {
            Some(Since::Failing { runs, .. }) => *runs,
            _ => 1,
        })
    });
    failing.truncate(limit);
    Ok((flaky, failing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema;

    fn memory() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn).unwrap();
        conn
    }

    /// A finished job of `o/r` on Qubes 4.2 at commit `sha` (one letter,
    /// repeated) of `branch`, whose tests had these outcomes.
    fn job(conn: &Connection, sha: char, branch: &str, tests: &[(&str, Outcome)]) -> JobId {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        let id: JobId = format!("{}-q4.2", n + 1).parse().unwrap();
        conn.execute(
            "INSERT INTO jobs (id, repo, clone_url, sha, git_ref, reason, author, message, qubes,
                               context, state, description, created_at)
             VALUES (?1, 'o/r', '/src', ?2, ?3, 'push', 'a', 'm', '4.2', 'qci/qubes-4.2',
                     'failure', 'd', 0)",
            params![
                id.as_str(),
                sha.to_string().repeat(40),
                format!("refs/heads/{branch}")
            ],
        )
        .unwrap();
        let cases: Vec<TestCase> = tests
            .iter()
            .map(|(name, outcome)| TestCase {
                name: name.to_string(),
                classname: "tests.test_vm".into(),
                outcome: *outcome,
                duration: Some(std::time::Duration::from_millis(1500)),
                message: (*outcome == Outcome::Failed).then(|| "assert 1 == 2".into()),
                details: Some("Traceback".into()),
                output: Some("printed".into()),
                file: Some("tests/test_vm.py".into()),
                line: Some(12),
            })
            .collect();
        let files = [Artifact {
            path: "files/report.xml".into(),
            bytes: 10,
        }];
        record(conn, &id, &cases, &files).unwrap();
        id
    }

    fn sha(c: char) -> String {
        c.to_string().repeat(40)
    }

    fn failing_since(conn: &Connection, job: &JobId) -> Vec<(String, Since)> {
        job_tests(conn, job.as_str())
            .unwrap()
            .unwrap()
            .failing
            .into_iter()
            .map(|f| (f.test.name, f.since))
            .collect()
    }

    use Outcome::{Failed, Passed, Skipped};

    #[test]
    fn a_failure_is_new_then_failing_since_its_first_commit_then_cleared() {
        let conn = memory();
        let first = job(&conn, 'a', "main", &[("t_ok", Passed), ("t_bad", Failed)]);
        assert_eq!(
            failing_since(&conn, &first),
            [("t_bad".into(), Since::New { last_passed: None })]
        );
        // Another branch's runs are not this branch's history.
        job(&conn, 'f', "feature", &[("t_bad", Failed)]);
        job(&conn, 'g', "feature", &[("t_bad", Passed)]);
        let second = job(&conn, 'b', "main", &[("t_ok", Passed), ("t_bad", Failed)]);
        let third = job(&conn, 'c', "main", &[("t_bad", Skipped)]);
        let fourth = job(&conn, 'd', "main", &[("t_bad", Failed)]);
        assert_eq!(
            failing_since(&conn, &second),
            [(
                "t_bad".into(),
                Since::Failing {
                    first: sha('a'),
                    runs: 2,
                    last_passed: None
                }
            )]
        );
        assert_eq!(
            failing_since(&conn, &second)[0].1.to_string(),
            "failing since aaaaaaaaaaaa (2 runs)"
        );
        assert!(failing_since(&conn, &third).is_empty());
        // A skipped run neither ends the streak nor counts in it.
        assert_eq!(
            failing_since(&conn, &fourth),
            [(
                "t_bad".into(),
                Since::Failing {
                    first: sha('a'),
                    runs: 3,
                    last_passed: None
                }
            )]
        );
        let fixed = job(&conn, 'e', "main", &[("t_bad", Passed)]);
        let tests = job_tests(&conn, fixed.as_str()).unwrap().unwrap();
        assert!(tests.failing.is_empty());
        assert_eq!(tests.counts.passed, 1);
        let again = job(&conn, 'h', "main", &[("t_bad", Failed)]);
        assert_eq!(
            failing_since(&conn, &again),
            [(
                "t_bad".into(),
                Since::New {
                    last_passed: Some(sha('e'))
                }
            )]
        );
        assert_eq!(
            failing_since(&conn, &again)[0].1.to_string(),
            "new failure, last passed at eeeeeeeeeeee"
        );
        let (_, longest) = overview(&conn, 10).unwrap();
        let names: Vec<_> = longest
            .iter()
            .map(|s| (s.git_ref.as_str(), s.job.as_str()))
            .collect();
        assert_eq!(
            names,
            [("refs/heads/main", again.as_str())],
            "the feature branch passes now"
        );
    }

    #[test]
    fn one_commit_that_passed_and_failed_marks_the_test_flaky() {
        let conn = memory();
        let failed = job(&conn, 'a', "main", &[("t_flaky", Failed), ("t_ok", Passed)]);
        assert!(
            job_tests(&conn, failed.as_str()).unwrap().unwrap().failing[0]
                .flaky
                .is_none()
        );
        let passed = job(&conn, 'a', "main", &[("t_flaky", Passed), ("t_ok", Passed)]);
        let tests = job_tests(&conn, passed.as_str()).unwrap().unwrap();
        assert!(tests.failing.is_empty());
        let flaky: Vec<_> = tests
            .flaky
            .iter()
            .map(|(t, f)| (t.name.as_str(), *f))
            .collect();
        assert_eq!(flaky, [("t_flaky", Flakiness { flips: 1, runs: 2 })]);
        let (flakiest, _) = overview(&conn, 10).unwrap();
        assert_eq!(flakiest.len(), 1);
        assert_eq!(flakiest[0].name, "t_flaky");
    }

    #[test]
    fn a_pruned_job_keeps_its_outcomes_and_loses_its_texts_and_files() {
        let conn = memory();
        let id = job(&conn, 'a', "main", &[("t_bad", Failed)]);
        assert_eq!(artifacts(&conn, id.as_str()).unwrap().len(), 1);
        assert!(
            artifact(&conn, id.as_str(), "files/report.xml")
                .unwrap()
                .is_some()
        );
        assert!(
            artifact(&conn, id.as_str(), "files/../x")
                .unwrap()
                .is_none()
        );
        forget(&conn, &id).unwrap();
        let tests = job_tests(&conn, id.as_str()).unwrap().unwrap();
        let bad = &tests.failing[0].test;
        assert_eq!(
            (bad.message.as_deref(), bad.details.as_deref()),
            (Some("assert 1 == 2"), None)
        );
        assert!(artifacts(&conn, id.as_str()).unwrap().is_empty());
    }

    #[test]
    fn a_job_without_reports_has_no_tests() {
        let conn = memory();
        let id = job(&conn, 'a', "main", &[]);
        assert!(job_tests(&conn, id.as_str()).unwrap().is_none());
        assert!(job_tests(&conn, "nope").unwrap().is_none());
    }

    fn runs(outcomes: &[(bool, &str)]) -> Vec<(bool, String)> {
        outcomes.iter().map(|(p, s)| (*p, s.to_string())).collect()
    }

    #[test]
    fn a_test_is_flaky_only_when_one_commit_saw_both_outcomes() {
        assert_eq!(
            flakiness_of(&runs(&[(false, "b"), (true, "a"), (false, "a")])),
            Some(Flakiness { flips: 2, runs: 3 })
        );
        // Fixed on a later commit: a change of outcome, not flakiness.
        assert_eq!(flakiness_of(&runs(&[(true, "b"), (false, "a")])), None);
        assert_eq!(flakiness_of(&[]), None);
        assert_eq!(Flakiness { flips: 2, runs: 3 }.rate(), 100);
        assert_eq!(
            Flakiness { flips: 2, runs: 3 }.to_string(),
            "flaky: 2 flips in its last 3 runs (100%)"
        );
        assert_eq!(Flakiness { flips: 1, runs: 11 }.rate(), 10);
    }
}
