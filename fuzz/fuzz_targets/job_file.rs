//! The job-file parser the dev VM's `begin` and `qci.Status` run on
//! `~/.qci/jobs/JOB.json`.
//!
//! An accepted job file names something to run, holds a full lower-case
//! commit id when it holds one, and survives the way `JobFile::save` writes
//! it (pretty JSON) and compact JSON: both parse back to the same job.
//!
//! The same bytes as the request `begin` sends on `qci.Run`'s stdin: an
//! accepted one survives the way it is sent, and never widens dom0's bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_core::job_file::{JobFile, JobFileError, RunRequest};
use std::path::Path;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = RunRequest::parse(data) {
        let sent = request.to_line();
        assert_eq!(RunRequest::parse(sent.as_bytes()).ok(), Some(request));
        let limit = Duration::from_secs(6 * 3600);
        assert!(request.timeout_within(limit) <= limit);
    }
    let path = Path::new("/home/user/.qci/jobs/J1.json");
    let job = match JobFile::parse(data, path) {
        Ok(job) => job,
        Err(JobFileError::Parse { .. } | JobFileError::NothingToRun(_)) => return,
        Err(other) => panic!("parsing gave an error that only I/O can cause: {other}"),
    };
    assert!(job.source.is_some() || job.commit.is_some());
    if let Some(commit) = &job.commit {
        let sha = commit.as_str();
        assert_eq!(sha.len(), 40);
        assert!(sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    let saved = serde_json::to_vec_pretty(&job).expect("a job file serializes");
    let back = JobFile::parse(&saved, path).unwrap_or_else(|e| {
        panic!(
            "what save writes does not load: {e}\n{}",
            String::from_utf8_lossy(&saved)
        )
    });
    assert_eq!(back, job);
    let compact = serde_json::to_vec(&job).expect("a job file serializes");
    assert_eq!(JobFile::parse(&compact, path).ok(), Some(job));
});
