//! The one way a status event leaves the dev VM: dom0's reports (through
//! `qci.Status`) and `begin`'s own alike come through here.
//!
//! This is where the promise that every job ends with one final status is
//! kept. The first final state that reaches the sink is recorded, durably
//! and atomically, in `~/.qci/status/JOB.final.json`. Nothing is forwarded
//! for the job after it (a late `running` would make the commit pending
//! again), and `begin` reads it to know whether dom0 ended the job, whatever
//! dom0's exit code says. Events of one job are delivered one at a time,
//! under a lock on its job file, so two final states cannot both pass.

use crate::paths::Paths;
use crate::sink::{self, SinkError};
use nix::fcntl::{Flock, FlockArg};
use qci_core::job_file::JobFile;
use qci_core::{JobId, State, StatusEvent};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("job {job} has ended already ({ended}): its {state} status is not forwarded")]
    Ended {
        job: JobId,
        ended: State,
        state: State,
    },
    #[error("cannot lock the job file {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the {state} status was forwarded, but cannot be recorded in {path}: {source}")]
    Record {
        state: State,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Forwards `event` to the job's sink, unless the job has ended, and
/// records it when it ends the job.
pub fn deliver(event: &StatusEvent, job_file: &JobFile, paths: &Paths) -> Result<(), DeliverError> {
    let job = &event.job;
    let path = paths.job_file(job);
    let lock_err = |source| DeliverError::Lock {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(lock_err)?;
    let _held = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| lock_err(e.into()))?;
    if let Some(end) = ended(paths, job) {
        return Err(DeliverError::Ended {
            job: job.clone(),
            ended: end.state,
            state: event.state,
        });
    }
    sink::forward(event, job_file, paths)?;
    if event.state.is_final() {
        let record = paths.final_record(job);
        write_atomically(&record, event.to_json().as_bytes()).map_err(|source| {
            DeliverError::Record {
                state: event.state,
                path: record,
                source,
            }
        })?;
    }
    Ok(())
}

/// The event that ended `job`, if one has.
pub fn ended(paths: &Paths, job: &JobId) -> Option<StatusEvent> {
    let bytes = std::fs::read(paths.final_record(job)).ok()?;
    StatusEvent::parse_for(&bytes, job).ok()
}

/// Writes `path` whole or not at all, and makes it survive a crash: a
/// temporary file, synced, renamed into place, and the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| std::fs::File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use qci_core::job_file::{Reason, Repository, Sink};

    fn setup() -> (tempfile::TempDir, Paths, JobFile, JobId) {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths {
            home: home.path().to_owned(),
        };
        let job = JobId::parse("J1").unwrap();
        let job_file = JobFile {
            repository: Repository {
                url: "/src".into(),
                slug: None,
            },
            source: Some("/src".into()),
            commit: None,
            git_ref: None,
            reason: Reason::Manual,
            author: String::new(),
            message: String::new(),
            sink: Sink::File {
                path: ".qci/status/J1.jsonl".into(),
            },
            context: "qci/test".into(),
            timeout_secs: 60,
        };
        job_file.save(&paths.job_file(&job)).unwrap();
        (home, paths, job_file, job)
    }

    #[test]
    fn the_first_final_state_ends_the_job_and_nothing_follows_it() {
        let (_home, paths, job_file, job) = setup();
        let send =
            |state, text: &str| deliver(&StatusEvent::new(&job, state, text), &job_file, &paths);

        send(State::Running, "Fetching the code").unwrap();
        assert!(ended(&paths, &job).is_none());
        send(State::Failure, "make test failed (exit 2)").unwrap();
        let end = ended(&paths, &job).unwrap();
        assert_eq!(
            (end.state, end.description.as_str()),
            (State::Failure, "make test failed (exit 2)")
        );

        for state in [State::Error, State::Running, State::Success] {
            match send(state, "late") {
                Err(DeliverError::Ended { ended, .. }) => assert_eq!(ended, State::Failure),
                other => panic!("{state}: expected a refusal, got {other:?}"),
            }
        }
        let sunk = std::fs::read_to_string(paths.status_file(&job)).unwrap();
        assert_eq!(sunk.lines().count(), 2, "{sunk}");
        let leftovers: Vec<_> = std::fs::read_dir(paths.final_record(&job).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_failed_sink_records_nothing() {
        let (_home, paths, mut job_file, job) = setup();
        // A directory where the file sink's file should be.
        std::fs::create_dir_all(paths.home.join("blocked.jsonl")).unwrap();
        job_file.sink = Sink::File {
            path: "blocked.jsonl".into(),
        };
        let err = deliver(
            &StatusEvent::new(&job, State::Success, "ok"),
            &job_file,
            &paths,
        )
        .unwrap_err();
        assert!(matches!(err, DeliverError::Sink(_)), "{err:?}");
        assert!(ended(&paths, &job).is_none());
    }
}
