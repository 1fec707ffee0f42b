//! The files a job leaves behind, as dom0 hands them to whoever reads them
//! (the host through the guest channel, `qci run --local`, a person in
//! dom0): one plain tar archive per job, `ARTIFACT_DIR/JOB.tar`.
//!
//! The archive holds only directories and regular files, under
//! [`FILES_DIR`], at the paths they had in the workspace, and one list,
//! [`REPORTS_LIST`], of the paths under `files/` that `.qci.toml`'s
//! `reports` named (JUnit XML), one per line. Its reader must still treat
//! every byte as hostile: the steps ran as dom0's user, with sudo, and could
//! have written the archive themselves.

use crate::JobId;

/// Where the collected files sit in the archive.
pub const FILES_DIR: &str = "files";
/// The archive entry that lists the test reports among the files.
pub const REPORTS_LIST: &str = "reports";

/// `JOB.tar`: the archive's name in dom0's artifact directory.
pub fn archive_name(job: &JobId) -> String {
    format!("{job}.tar")
}
