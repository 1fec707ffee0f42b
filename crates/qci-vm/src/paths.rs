//! Where a job's files live in the dev VM, all under `$HOME/.qci`.

use qci_core::JobId;
use qci_core::job_file::{job_file_rel, status_file_rel};
use std::path::{Path, PathBuf};

/// The dev VM's qci directory for the user the services run as.
#[derive(Debug, Clone)]
pub struct Paths {
    pub home: PathBuf,
}

/// The services find the job's files under `$HOME`: without it, nowhere.
#[derive(Debug, thiserror::Error)]
#[error("HOME is not set")]
pub struct NoHome;

impl Paths {
    pub fn from_env() -> Result<Self, NoHome> {
        match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => Ok(Self { home: h.into() }),
            _ => Err(NoHome),
        }
    }

    /// `~/.qci/jobs/JOB.json`, placed by the host or by hand.
    pub fn job_file(&self, job: &JobId) -> PathBuf {
        self.home.join(job_file_rel(job))
    }

    /// `~/.qci/jobs/JOB.pipeline.toml`: the pipeline `qci-vm run -- COMMAND`
    /// generated, which `qci.Export` sends as the tree's `.qci.toml`. Kept
    /// beside the job file, out of the tree: what is under test can neither
    /// write it nor see it written.
    pub fn generated_pipeline(&self, job: &JobId) -> PathBuf {
        self.home
            .join(".qci/jobs")
            .join(format!("{job}.pipeline.toml"))
    }

    /// `~/.qci/status/JOB.jsonl`: where a job's default `file` sink appends.
    pub fn status_file(&self, job: &JobId) -> PathBuf {
        self.home.join(status_file_rel(job))
    }

    /// `~/.qci/status/JOB.final.json`: the event that ended the job, once
    /// one has (see `deliver`).
    pub fn final_record(&self, job: &JobId) -> PathBuf {
        self.home
            .join(".qci/status")
            .join(format!("{job}.final.json"))
    }

    /// `~/.qci/work/JOB`: the tree `qci.Export` sends to dom0, or for a job
    /// on a working tree, the list of what it sends from there.
    pub fn workspace(&self, job: &JobId) -> PathBuf {
        self.workspaces().join(job.as_str())
    }

    /// `~/.qci/work`: every job's workspace.
    pub fn workspaces(&self) -> PathBuf {
        self.home.join(".qci/work")
    }

    /// `~/.qci/config.toml`: the dev VM's own settings.
    pub fn settings(&self) -> PathBuf {
        self.home.join(".qci/config.toml")
    }

    /// In the workspace of a job on a working tree (`source` in its job
    /// file), the files to send: relative paths, each ended by a NUL.
    pub fn source_list(workspace: &Path) -> PathBuf {
        workspace.join("source-files")
    }

    /// Resolves a path from the job file: relative ones are under `$HOME`.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.home.join(p)
    }
}
