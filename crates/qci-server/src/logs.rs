//! Published logs: `STATE/logs/JOB.log` on the host, appended as the live
//! log arrives from the machine, and watched by the live pages. The file is
//! the only copy readers use, so memory stays bounded whatever the volume:
//! a watcher is told how far the file has grown and reads the new part.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How far a live log has grown, and whether it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub bytes: u64,
    pub done: bool,
}

#[derive(Clone)]
pub struct Logs {
    dir: PathBuf,
    live: Arc<Mutex<HashMap<String, Live>>>,
}

struct Live {
    file: std::fs::File,
    progress: watch::Sender<Progress>,
}

impl Logs {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            live: Arc::default(),
        })
    }

    /// Job ids are validated before they get here; they make plain file names.
    pub fn path(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{job}.log"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a job's live log (empty: a job runs once).
    pub fn start(&self, job: &str) -> std::io::Result<()> {
        let file = std::fs::File::create(self.path(job))?;
        let (progress, _) = watch::channel(Progress::default());
        self.lock().insert(job.to_owned(), Live { file, progress });
        Ok(())
    }

    /// Appends a chunk of the machine's log and tells the watchers.
    pub fn append(&self, job: &str, chunk: &[u8]) -> std::io::Result<()> {
        let mut live = self.lock();
        let Some(log) = live.get_mut(job) else {
            return Ok(());
        };
        log.file.write_all(chunk)?;
        log.progress.send_modify(|p| p.bytes += chunk.len() as u64);
        Ok(())
    }

    /// Replaces the live log with the complete copy at `from` (written
    /// beside it, then renamed over it, so readers see one or the other).
    pub fn replace(&self, job: &str, from: &Path) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{job}.log.tmp"));
        std::fs::copy(from, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.path(job))
    }

    /// The log is complete: synced to disk, and watchers told.
    pub fn finish(&self, job: &str) {
        if let Some(log) = self.lock().remove(job) {
            if let Err(e) = log.file.sync_all() {
                tracing::warn!(job, "cannot sync the published log: {e}");
            }
            log.progress.send_modify(|p| p.done = true);
        }
    }

    /// A watcher of a live log, or `None` if the log is not live (complete,
    /// or never started).
    pub fn watch(&self, job: &str) -> Option<watch::Receiver<Progress>> {
        self.lock().get(job).map(|l| l.progress.subscribe())
    }

    /// Deletes a published log (pruned by age).
    pub fn remove(&self, job: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(job)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Reads `path` from `offset` up to `max` bytes, ending at the last whole
/// line unless `whole` (the log is complete). Returns the text and the new
/// offset.
pub fn read_lines(path: &Path, offset: u64, max: usize, whole: bool) -> (String, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), offset);
    };
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err()
        || file.take(max as u64).read_to_end(&mut buf).is_err()
    {
        return (String::new(), offset);
    }
    let end = match buf.iter().rposition(|&b| b == b'\n') {
        _ if whole && buf.len() < max => buf.len(),
        Some(i) => i + 1,
        // A line longer than `max` goes out in pieces rather than never.
        None if buf.len() == max => max,
        None => 0,
    };
    buf.truncate(end);
    (
        String::from_utf8_lossy(&buf).into_owned(),
        offset + end as u64,
    )
}
