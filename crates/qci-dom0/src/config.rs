//! dom0's own settings. dom0 trusts its configuration and nothing from the
//! dev VM, so everything that bounds a run (who may call, where files go, how
//! long things may take, how much code may arrive) is set here.

use qci_core::toml_file::{self, TomlFileError};
use qci_core::unpack::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Read when `QCI_DOM0_CONFIG` does not name another file.
pub const DEFAULT_PATH: &str = "/etc/qci/dom0.toml";

#[derive(Debug, Clone)]
pub struct Config {
    /// The only qube allowed to call `qci.Run` (also enforced by policy).
    pub dev_vm: String,
    /// Where `JOB.log` is written.
    pub log_dir: PathBuf,
    /// Where the exported code is unpacked and the lock lives.
    pub work_dir: PathBuf,
    /// Whole-job bound, whatever the steps' own timeouts say.
    pub job_timeout: Duration,
    /// Bound on one `qci.Status` call.
    pub status_timeout: Duration,
    /// Bound on pulling the code.
    pub export_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a step is stopped.
    pub kill_grace: Duration,
    pub limits: Limits,
    /// Where `JOB.tar`, a job's artifacts, is written.
    pub artifact_dir: PathBuf,
    pub artifact_limits: ArtifactLimits,
    /// Values replaced by `***` wherever they would appear in the log or on
    /// stdout (a step may print a credential it was given).
    pub secrets: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dev_vm: "sd-dev".into(),
            log_dir: "/var/log/qci".into(),
            work_dir: "/var/lib/qci".into(),
            job_timeout: Duration::from_secs(6 * 3600),
            status_timeout: qci_core::status::DEFAULT_STATUS_TIMEOUT,
            export_timeout: Duration::from_secs(30 * 60),
            kill_grace: Duration::from_secs(10),
            limits: Limits::default(),
            artifact_dir: "/var/lib/qci/artifacts".into(),
            artifact_limits: ArtifactLimits::default(),
            secrets: Vec::new(),
        }
    }
}

/// Bounds on what one job's artifacts may take of dom0's disk: the steps
/// choose what is there, the dev VM which patterns collect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    /// Bytes of file contents in one archive.
    pub max_bytes: u64,
    /// Files and directories in one archive.
    pub max_files: u64,
    /// Archives kept: older ones are removed after a new one is written.
    pub keep: usize,
    /// How long collecting may take: a tree that is slow to read (a network
    /// mount the steps left, millions of names) must not hold the job's end.
    pub timeout: Duration,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        Self {
            max_bytes: 512 * 1024 * 1024,
            max_files: 10_000,
            keep: 20,
            timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// The file's shape: every key optional, unknown keys refused (a typo in a
/// limit must not silently fall back to the default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dev_vm: Option<String>,
    log_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    job_timeout: Option<String>,
    status_timeout: Option<String>,
    export_timeout: Option<String>,
    kill_grace: Option<String>,
    max_total_bytes: Option<u64>,
    max_entries: Option<u64>,
    max_path_len: Option<usize>,
    artifact_dir: Option<PathBuf>,
    max_artifact_bytes: Option<u64>,
    max_artifact_files: Option<u64>,
    keep_artifacts: Option<usize>,
    artifact_timeout: Option<String>,
    #[serde(default)]
    secrets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] TomlFileError),
    #[error("{path}: {key}: {reason}")]
    Value {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

impl Config {
    /// Loads `path`; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let Some(raw): Option<RawConfig> = toml_file::read_optional(path)? else {
            return Ok(Self::default());
        };
        let mut c = Self::default();
        let duration = |key: &'static str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => {
                qci_core::pipeline::parse_duration(&s)
                    .ok()
                    .ok_or_else(|| ConfigError::Value {
                        path: path.into(),
                        key,
                        reason: format!("{s:?} is not a duration like 90s, 30m or 6h"),
                    })
            }
        };
        c.job_timeout = duration("job_timeout", raw.job_timeout, c.job_timeout)?;
        c.status_timeout = duration("status_timeout", raw.status_timeout, c.status_timeout)?;
        c.export_timeout = duration("export_timeout", raw.export_timeout, c.export_timeout)?;
        c.kill_grace = duration("kill_grace", raw.kill_grace, c.kill_grace)?;
        c.artifact_limits.timeout = duration(
            "artifact_timeout",
            raw.artifact_timeout,
            c.artifact_limits.timeout,
        )?;
        if let Some(vm) = raw.dev_vm {
            c.dev_vm = vm;
        }
        if let Some(d) = raw.log_dir {
            c.log_dir = d;
        }
        if let Some(d) = raw.work_dir {
            c.work_dir = d;
        }
        if let Some(v) = raw.max_total_bytes {
            c.limits.max_total_bytes = v;
        }
        if let Some(v) = raw.max_entries {
            c.limits.max_entries = v;
        }
        if let Some(v) = raw.max_path_len {
            c.limits.max_path_len = v;
        }
        // Below the work directory unless named: a dom0.toml written before
        // artifacts existed keeps working where it sets work_dir.
        c.artifact_dir = raw
            .artifact_dir
            .unwrap_or_else(|| c.work_dir.join("artifacts"));
        if let Some(v) = raw.max_artifact_bytes {
            c.artifact_limits.max_bytes = v;
        }
        if let Some(v) = raw.max_artifact_files {
            c.artifact_limits.max_files = v;
        }
        match raw.keep_artifacts {
            Some(0) => {
                return Err(ConfigError::Value {
                    path: path.into(),
                    key: "keep_artifacts",
                    reason: "must be at least 1: the job's own archive is kept".into(),
                });
            }
            Some(v) => c.artifact_limits.keep = v,
            None => {}
        }
        c.secrets = raw.secrets;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_defaults_and_keys_override() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&dir.path().join("none.toml")).unwrap();
        assert_eq!(c.dev_vm, "sd-dev");
        let p = dir.path().join("dom0.toml");
        std::fs::write(
            &p,
            "dev_vm = \"work\"\nkill_grace = \"2s\"\nmax_entries = 10\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(
            (c.dev_vm.as_str(), c.kill_grace, c.limits.max_entries),
            ("work", Duration::from_secs(2), 10)
        );
        assert_eq!(c.artifact_dir, Path::new("/var/lib/qci/artifacts"));
        assert_eq!(c.artifact_limits, ArtifactLimits::default());
    }

    #[test]
    fn artifacts_go_below_the_work_dir_unless_named_and_keep_one_at_least() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dom0.toml");
        std::fs::write(&p, "work_dir = \"/srv/ci\"\n").unwrap();
        assert_eq!(
            Config::load(&p).unwrap().artifact_dir,
            Path::new("/srv/ci/artifacts")
        );
        std::fs::write(
            &p,
            "work_dir = \"/srv/ci\"\nartifact_dir = \"/srv/out\"\n\
             max_artifact_bytes = 100\nmax_artifact_files = 5\nkeep_artifacts = 2\n\
             artifact_timeout = \"30s\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.artifact_dir, Path::new("/srv/out"));
        assert_eq!(
            c.artifact_limits,
            ArtifactLimits {
                max_bytes: 100,
                max_files: 5,
                keep: 2,
                timeout: Duration::from_secs(30),
            }
        );
        std::fs::write(&p, "keep_artifacts = 0\n").unwrap();
        assert_eq!(
            Config::load(&p).unwrap_err().to_string(),
            format!(
                "{}: keep_artifacts: must be at least 1: the job's own archive is kept",
                p.display()
            )
        );
    }

    #[test]
    fn typos_and_bad_durations_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dom0.toml");
        std::fs::write(&p, "dev_mv = \"x\"\n").unwrap();
        assert!(
            Config::load(&p)
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        std::fs::write(&p, "job_timeout = \"forever\"\n").unwrap();
        assert!(
            Config::load(&p)
                .unwrap_err()
                .to_string()
                .contains("job_timeout")
        );
    }
}
