//! The job file the host (or `qci run --local`, or `qci-vm begin` used by
//! hand) places in the dev VM at `~/.qci/jobs/JOB.json`. Only the dev VM
//! reads it: dom0 takes the job id from the qrexec call and everything else
//! from the exported code.

use crate::JobId;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `.qci/jobs/JOB.json`: where a job's file lives, relative to the dev VM's home.
pub fn job_file_rel(job: &JobId) -> PathBuf {
    PathBuf::from(".qci/jobs").join(format!("{job}.json"))
}

/// `.qci/status/JOB.jsonl`: where the default `file` sink of a job appends,
/// relative to the dev VM's home (a relative sink path is under `$HOME`).
pub fn status_file_rel(job: &JobId) -> PathBuf {
    PathBuf::from(".qci/status").join(format!("{job}.jsonl"))
}

/// The GitHub API a `github` sink posts to unless told otherwise.
pub const GITHUB_API_URL: &str = "https://api.github.com";

/// What the dev VM needs to prepare a job and report on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub repository: Repository,
    /// The commit under test (40 hex digits). With `source` unset the dev VM
    /// clones `repository.url` at this commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSha>,
    /// A working tree to run as it is, uncommitted changes included
    /// (`qci run --local` without `--commit`). Takes precedence over cloning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    pub reason: Reason,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub message: String,
    pub sink: Sink,
    /// The commit status context, e.g. `qci/qubes-4.2`.
    #[serde(default = "default_context")]
    pub context: String,
    /// How long `begin` waits for dom0's runner before giving up.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_context() -> String {
    "qci".to_owned()
}

fn default_timeout() -> u64 {
    6 * 60 * 60
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// Anything `git clone` accepts.
    pub url: String,
    /// `OWNER/REPO`, used for the GitHub statuses API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Push,
    PullRequest,
    Nightly,
    Manual,
}

/// Where `qci.Status` forwards status events for this job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sink {
    /// Appends each event as a JSON line; a relative path is under `$HOME`.
    File { path: PathBuf },
    /// Posts commit statuses straight to GitHub (manual use inside Qubes).
    Github {
        /// `https://api.github.com`, or a GitHub Enterprise `/api/v3` base.
        #[serde(default = "default_api_url")]
        api_url: String,
        /// A file holding the token; a relative path is under `$HOME`.
        token_file: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_url: Option<String>,
        #[serde(flatten)]
        retry: RetrySettings,
    },
    /// Posts status events to the host that placed the job (`qci serve`),
    /// which holds the GitHub credentials and posts the commit status itself.
    Relay {
        /// `http://HOST/api/jobs/JOB/status`.
        url: String,
        /// The job's one-time token: it can only post statuses for this job,
        /// and only until the job ends. Inline rather than in a file beside
        /// the job file: it is as short-lived and job-scoped as the job file
        /// itself, the host places both in one atomic write, and a second
        /// file would be one more thing to place and to clean up.
        token: String,
        #[serde(flatten)]
        retry: RetrySettings,
    },
}

/// How hard a sink tries to deliver one status: the same settings, with the
/// same defaults, for the `github` and the `relay` sink. Flattened into
/// each, so the job file keeps them beside `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySettings {
    /// The timeout of each request, connecting included.
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    /// No retry starts later than this after the first attempt, so an
    /// outage delays the job by a bounded time.
    #[serde(default = "default_retry_budget")]
    pub retry_budget_secs: u64,
    /// Attempts in all, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            timeout_secs: default_http_timeout(),
            retry_budget_secs: default_retry_budget(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_api_url() -> String {
    GITHUB_API_URL.to_owned()
}

fn default_http_timeout() -> u64 {
    30
}

fn default_retry_budget() -> u64 {
    120
}

fn default_max_attempts() -> u32 {
    8
}

impl Sink {
    /// A `github` sink with the default request timeout and retries;
    /// `api_url` defaults to [`GITHUB_API_URL`].
    pub fn github(
        token_file: PathBuf,
        api_url: Option<String>,
        target_url: Option<String>,
    ) -> Self {
        Self::Github {
            api_url: api_url.unwrap_or_else(default_api_url),
            token_file,
            target_url,
            retry: RetrySettings::default(),
        }
    }

    /// A `relay` sink with the default request timeout and retries.
    pub fn relay(url: String, token: String) -> Self {
        Self::Relay {
            url,
            token,
            retry: RetrySettings::default(),
        }
    }
}

/// How long a caller of `qci.Run` waits past the job's timeout before it
/// gives up on dom0: dom0 stops the steps at the deadline (SIGTERM, its
/// grace period, SIGKILL), sweeps what they left and reports, which takes
/// a while; the caller giving up first would end the job in its own words.
pub const RUN_CLOSING: std::time::Duration = std::time::Duration::from_secs(60);

/// What the caller of `qci.Run` (`qci-vm begin`) asks of dom0: one JSON line
/// on the service's stdin, after which the caller holds stdin open for the
/// whole job, so that its end (EOF) tells dom0 the caller has gone. It comes
/// from the dev VM, so dom0 reads it bounded and strictly, and a request
/// only ever narrows dom0's own settings (its `job_timeout` stays the upper
/// bound). A caller that sends none (stdin empty, or a person at a
/// terminal) gets dom0's settings as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The job's timeout (the job file's `timeout_secs`).
    pub timeout_secs: u64,
}

impl RunRequest {
    /// A request line longer than this is refused unread.
    pub const MAX_BYTES: usize = 1024;

    /// The request as sent: one JSON object and a newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one request line (its newline removed or not).
    pub fn parse(line: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(line.trim_ascii())
    }

    /// The job's timeout, as dom0 may grant it: at most `limit`.
    pub fn timeout_within(&self, limit: std::time::Duration) -> std::time::Duration {
        limit.min(std::time::Duration::from_secs(self.timeout_secs))
    }
}

/// Whether `slug` is `OWNER/REPO` made of plain names: it becomes part of
/// GitHub API paths, so it must be exactly two of them.
pub fn valid_slug(slug: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    matches!(slug.split_once('/'), Some((owner, repo)) if plain(owner) && plain(repo))
}

/// A full 40-hex-digit commit id; abbreviations are ambiguous over time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(s: &str) -> Result<Self, JobFileError> {
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(JobFileError::BadCommit(s.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CommitSha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for CommitSha {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CommitSha {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("commit must be 40 hex digits, got {0:?}")]
    BadCommit(String),
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("job file {0} names neither a source tree nor a commit to check out")]
    NothingToRun(PathBuf),
    #[error(
        "job file {0} already exists: a job id is used once (the old job's statuses would mix with the new one's); pick another"
    )]
    Exists(PathBuf),
    #[error("cannot write job file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl JobFile {
    pub fn load(path: &Path) -> Result<Self, JobFileError> {
        let bytes = std::fs::read(path).map_err(|source| JobFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// [`JobFile::load`] without the file system, so that a fuzzer can drive
    /// it; `path` only names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, JobFileError> {
        let job: JobFile = serde_json::from_slice(bytes).map_err(|source| JobFileError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if job.source.is_none() && job.commit.is_none() {
            return Err(JobFileError::NothingToRun(path.to_owned()));
        }
        Ok(job)
    }

    /// Writes the job file to `path`, creating its directory, and refuses
    /// ([`JobFileError::Exists`]) if a file is there already: job ids are
    /// never reused. Atomic: the file is written under a temporary name in
    /// the same directory and then linked into place, so a reader sees the
    /// whole file or none, and of two writers racing for one id only one wins.
    ///
    /// Not synced to disk: the file only matters to the job that starts at
    /// once, which a crash ends anyway, and ids are never reused, so a file
    /// a crash left half-written is never read. An fsync here would cost a
    /// journal commit on every job's path.
    pub fn save(&self, path: &Path) -> Result<(), JobFileError> {
        let failed = |source| JobFileError::Write {
            path: path.to_owned(),
            source,
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(failed(std::io::Error::other("not a file path")));
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| failed(e.into()))?;
        text.push(b'\n');
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&text))
            // A hard link, unlike a rename, never replaces what is there.
            .and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(JobFileError::Exists(path.to_owned()))
            }
            other => other.map_err(failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_host_written_job() {
        let raw = r#"{
            "repository": {"url": "https://github.com/freedomofpress/securedrop-workstation", "slug": "freedomofpress/securedrop-workstation"},
            "commit": "0123456789ABCDEF0123456789abcdef01234567",
            "ref": "refs/heads/main", "reason": "pull_request", "author": "a", "message": "m",
            "sink": {"kind": "github", "token_file": "/run/token"},
            "context": "qci/qubes-4.2"
        }"#;
        let job: JobFile = serde_json::from_str(raw).unwrap();
        assert_eq!(
            job.commit.unwrap().as_str(),
            "0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(job.reason, Reason::PullRequest);
        match job.sink {
            Sink::Github {
                api_url,
                retry:
                    RetrySettings {
                        timeout_secs,
                        retry_budget_secs,
                        max_attempts,
                    },
                ..
            } => {
                assert_eq!(api_url, "https://api.github.com");
                assert_eq!(timeout_secs, 30);
                assert_eq!(retry_budget_secs, 120);
                assert_eq!(max_attempts, 8);
            }
            other => panic!("wrong sink {other:?}"),
        }
    }

    #[test]
    fn sinks_keep_their_retry_settings_beside_kind_and_refuse_unknown_fields() {
        let relay = Sink::Relay {
            url: "http://host/api/jobs/J1/status".into(),
            token: "t".into(),
            retry: RetrySettings {
                timeout_secs: 5,
                retry_budget_secs: 60,
                max_attempts: 3,
            },
        };
        let wire = serde_json::json!({
            "kind": "relay", "url": "http://host/api/jobs/J1/status", "token": "t",
            "timeout_secs": 5, "retry_budget_secs": 60, "max_attempts": 3,
        });
        assert_eq!(serde_json::to_value(&relay).unwrap(), wire);
        assert_eq!(serde_json::from_value::<Sink>(wire).unwrap(), relay);
        let github = Sink::github("/run/token".into(), None, None);
        assert_eq!(
            serde_json::to_value(&github).unwrap(),
            serde_json::json!({
                "kind": "github", "api_url": "https://api.github.com",
                "token_file": "/run/token", "timeout_secs": 30,
                "retry_budget_secs": 120, "max_attempts": 8,
            })
        );
        for bad in [
            r#"{"kind": "relay", "url": "u", "token": "t", "retries": 3}"#,
            r#"{"kind": "github", "token_file": "/t", "max_attempt": 3}"#,
            r#"{"kind": "file", "path": "p", "timeout_secs": 3}"#,
        ] {
            let err = serde_json::from_str::<Sink>(bad).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{bad}: {err}");
        }
    }

    #[test]
    fn save_writes_a_loadable_file_once_and_leaves_no_temporary() {
        let home = tempfile::tempdir().unwrap();
        let job = JobId::parse("j1").unwrap();
        let path = home.path().join(job_file_rel(&job));
        let written = JobFile {
            repository: Repository {
                url: "/src".into(),
                slug: None,
            },
            commit: None,
            source: Some("/src".into()),
            git_ref: None,
            reason: Reason::Manual,
            author: "a".into(),
            message: String::new(),
            sink: Sink::File {
                path: status_file_rel(&job),
            },
            context: "qci/manual".into(),
            timeout_secs: 60,
        };
        written.save(&path).unwrap();
        assert_eq!(JobFile::load(&path).unwrap(), written);
        assert_eq!(
            path.strip_prefix(home.path()).unwrap(),
            Path::new(".qci/jobs/j1.json")
        );

        let mut other = written.clone();
        other.author = "b".into();
        let err = other.save(&path).unwrap_err();
        assert!(matches!(err, JobFileError::Exists(_)), "{err:?}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            JobFile::load(&path).unwrap().author,
            "a",
            "the old file is kept"
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["j1.json"]);
    }

    #[test]
    fn a_run_request_round_trips_and_never_widens_the_timeout() {
        let r = RunRequest { timeout_secs: 2 };
        assert_eq!(r.to_line(), "{\"timeout_secs\":2}\n");
        assert_eq!(RunRequest::parse(r.to_line().as_bytes()).unwrap(), r);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(r.timeout_within(hour).as_secs(), 2);
        let long = RunRequest {
            timeout_secs: u64::MAX,
        };
        assert_eq!(long.timeout_within(hour), hour);
        for (bad, why) in [
            (&b"{\"timeout_secs\":1,\"x\":1}"[..], "unknown field `x`"),
            (b"{}", "missing field `timeout_secs`"),
            (b"-1", "invalid type: integer `-1`"),
            (b"junk", "expected value"),
        ] {
            match RunRequest::parse(bad) {
                Ok(r) => panic!("accepted {bad:?} as {r:?}"),
                Err(e) => assert!(e.to_string().contains(why), "{bad:?}: {e}"),
            }
        }
    }

    #[test]
    fn refuses_short_commits_and_unknown_fields() {
        assert!(matches!(
            CommitSha::parse("abc123"),
            Err(JobFileError::BadCommit(c)) if c == "abc123"
        ));
        let raw = r#"{"repository":{"url":"x"},"reason":"manual","sink":{"kind":"file","path":"s"},"extra":1}"#;
        let err = serde_json::from_str::<JobFile>(raw).unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
        let raw =
            r#"{"repository":{"url":"x"},"reason":"manual","sink":{"kind":"slack","path":"s"}}"#;
        let err = serde_json::from_str::<JobFile>(raw).unwrap_err();
        assert!(err.to_string().contains("unknown variant `slack`"), "{err}");
    }
}
