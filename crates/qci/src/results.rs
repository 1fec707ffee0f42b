//! What a job left, as `qci run` ends with it (`--local` and on a pool
//! machine alike): where its files are, then what its tests said.

use crate::out::{self, outln};
use qci_junit::Outcome;
use qci_pool::artifacts::JobArtifacts;

/// The run's last lines: the artifacts' place, the screenshot, why a
/// report could not be read, the tests' counts, then each failed test by
/// name with its message.
pub fn print(artifacts: &JobArtifacts) {
    if !artifacts.files.is_empty() {
        outln!(
            "qci: artifacts: {}/ ({} files)",
            artifacts.dir.display(),
            artifacts.files.len()
        );
    }
    if let Some(shot) = &artifacts.screenshot {
        outln!("qci: screenshot: {}", shot.display());
    }
    for problem in &artifacts.report_problems {
        outln!("qci: {}", out::remote(problem));
    }
    if artifacts.reports.is_empty() {
        return;
    }
    outln!("qci: tests: {}", qci_junit::Counts::of(&artifacts.tests));
    for t in artifacts
        .tests
        .iter()
        .filter(|t| matches!(t.outcome, Outcome::Failed | Outcome::Errored))
    {
        let name = if t.classname.is_empty() {
            t.name.clone()
        } else {
            format!("{}::{}", t.classname, t.name)
        };
        match &t.message {
            Some(m) => outln!(
                "qci:   {} {}: {}",
                t.outcome,
                out::remote(&name),
                out::remote(m)
            ),
            None => outln!("qci:   {} {}", t.outcome, out::remote(&name)),
        }
    }
}
