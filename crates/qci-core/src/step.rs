//! Runs one pipeline step: `sh -c COMMAND` in its own process group, stdout
//! and stderr merged into the log line by line as they arrive, with a timeout
//! that kills the whole group (SIGTERM, grace period, SIGKILL).
//!
//! Output is read on a separate thread into a bounded channel of lines, so
//! memory stays bounded and the calling thread keeps watching the clock even
//! while the step floods its output.
//!
//! Limits: only processes that stay in the step's process group are stopped.
//! One that leaves it (`setsid`, or `set -m` job control) outlives the step;
//! if it keeps the output pipe open, reading stops [`DRAIN`] after the step
//! ends and the reader thread is left behind, blocked on the pipe, until that
//! process writes (it then gets `EPIPE`) or exits. Containing such processes
//! would take a cgroup, which dom0 has but this module does not manage.

use crate::log::{LineSplitter, LogWriter};
use crate::pipeline::Step;
use crate::process::{ProcStat, processes};
use nix::sys::signal::{Signal, killpg};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use std::io::{PipeReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime};

/// How long output is still read once the step and its group are gone.
pub const DRAIN: Duration = Duration::from_secs(2);
/// How often the child, the clock and the cancel flag are looked at while no
/// output arrives.
const TICK: Duration = Duration::from_millis(50);
/// One read of the step's output; the lines it completes travel together.
const READ_BYTES: usize = 64 * 1024;
/// Reads waiting between the reader thread and the log. A batch holds at
/// most `READ_BYTES` plus one carried-over line of at most 64 KiB, so the
/// queue stays under 4 MiB; a step that outruns the log is slowed down by
/// the full pipe instead.
const QUEUE_BATCHES: usize = 32;

/// The complete lines of one read, stamped when the read returned.
type Batch = (SystemTime, Vec<Vec<u8>>);

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Succeeded,
    /// Exited non-zero (`code`) or was killed by a signal not of our sending.
    Failed {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Ran past its timeout and was killed with its process group.
    TimedOut,
    /// Was stopped on request (`StepContext::cancel`), like a timeout.
    Canceled,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot start step {step}: {source}")]
    Spawn {
        step: String,
        source: std::io::Error,
    },
    #[error("cannot wait for step {step}: {source}")]
    Wait {
        step: String,
        source: std::io::Error,
    },
    #[error("cannot write the log: {0}")]
    Log(#[from] std::io::Error),
}

/// Settings for every step of a run.
#[derive(Debug, Clone)]
pub struct StepContext<'a> {
    pub workdir: &'a Path,
    /// Set after `CI=true` and before the step's own environment, so the run
    /// can tell the step about itself (`QCI_JOB`, ...).
    pub env: Vec<(String, String)>,
    /// Between SIGTERM and SIGKILL, to let the step clean up when stopped.
    pub grace: Duration,
    /// When set to true, the step is stopped like on a timeout and ends
    /// `Canceled`. Looked at every [`TICK`].
    pub cancel: Option<&'a AtomicBool>,
    /// The file mode creation mask the step starts with, whatever the
    /// runner's own (see `qci-dom0`'s runner for the choice).
    pub umask: Mode,
}

/// Runs `step` to its end, logging its output as it comes under the step's
/// name and notes of our own under `qci`. A step that exits while processes
/// it started in the background still run has them stopped (SIGTERM, grace,
/// SIGKILL): they would otherwise hold the log open and outlive the run.
pub fn run_step(
    step: &Step,
    ctx: &StepContext<'_>,
    log: &mut LogWriter,
) -> Result<StepOutcome, StepError> {
    let spawn_err = |source| StepError::Spawn {
        step: step.name.clone(),
        source,
    };
    let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
    let (tx, rx) = sync_channel(QUEUE_BATCHES);
    // Detached on purpose: see the module documentation.
    std::thread::Builder::new()
        .name(format!("qci-read-{}", step.name))
        .spawn({
            let splitter = LineSplitter::masking(log.mask().clone());
            move || read_lines(reader, splitter, tx)
        })
        .map_err(spawn_err)?;

    let child = {
        // The Command holds the parent's copies of the write end: it must be
        // dropped right after the spawn, or the reader never sees the end.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&step.command)
            .current_dir(ctx.workdir)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(spawn_err)?)
            .stderr(writer)
            .env("CI", "true")
            .envs(ctx.env.iter().map(|(k, v)| (k, v)))
            .envs(&step.env)
            .process_group(0);
        let umask = ctx.umask;
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::stat::umask(umask);
                Ok(())
            });
        }
        cmd.spawn().map_err(spawn_err)?
    };
    let mut group = Group::new(child, ctx.grace);
    let mut output = Output { rx, open: true };
    let wait_err = |source| StepError::Wait {
        step: step.name.clone(),
        source,
    };

    // Until the main process exits. It is left unreaped (a zombie) until the
    // end: that keeps its pid, which is the group id, from being reused, so
    // no signal below can reach a stranger's group.
    let deadline = Instant::now().checked_add(step.timeout);
    let mut stopped = None;
    while !group.leader_exited().map_err(|e| wait_err(e.into()))? {
        output.pump(log, &step.name)?;
        if stopped.is_none() {
            let canceled = ctx.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if canceled {
                log.line("qci", format!("step {} canceled", step.name).as_bytes())?;
                stopped = Some(StepOutcome::Canceled);
            } else if timed_out {
                let after = humantime::format_duration(step.timeout);
                let note = format!("step {} timed out after {after}", step.name);
                log.line("qci", note.as_bytes())?;
                stopped = Some(StepOutcome::TimedOut);
            }
            if stopped.is_some() {
                group.terminate();
            }
        }
        group.kill_after_grace();
    }

    // Whatever the step left running in its group.
    if group.has_live_members() {
        if stopped.is_none() {
            let note = format!("step {} left processes running: stopping them", step.name);
            log.line("qci", note.as_bytes())?;
        }
        group.terminate();
        while group.has_live_members() && !group.killed {
            output.pump(log, &step.name)?;
            group.kill_after_grace();
        }
    }
    let status = group.reap().map_err(wait_err)?;

    let drain_end = Instant::now() + DRAIN;
    while output.open && Instant::now() < drain_end {
        output.pump(log, &step.name)?;
    }

    Ok(match stopped {
        Some(outcome) => outcome,
        None if status.success() => StepOutcome::Succeeded,
        None => StepOutcome::Failed {
            code: status.code(),
            signal: status.signal(),
        },
    })
}

/// Reads the step's output into lines stamped on arrival. Ends at the end of
/// the output, or when nobody takes its lines any more.
fn read_lines(mut pipe: PipeReader, mut splitter: LineSplitter, tx: SyncSender<Batch>) {
    let mut buf = vec![0; READ_BYTES];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("cannot read step output: {e}");
                break;
            }
        };
        let at = SystemTime::now();
        let lines = splitter.push(&buf[..n]);
        if !lines.is_empty() && tx.send((at, lines)).is_err() {
            return;
        }
    }
    if let Some(line) = splitter.finish() {
        let _ = tx.send((SystemTime::now(), vec![line]));
    }
}

/// The calling thread's end of the output.
struct Output {
    rx: Receiver<Batch>,
    /// False once the reader thread has ended and every line is logged.
    open: bool,
}

impl Output {
    /// Logs what arrives within one tick (or sleeps a tick once the output
    /// has ended), so callers can poll between calls.
    fn pump(&mut self, log: &mut LogWriter, step: &str) -> std::io::Result<()> {
        if !self.open {
            std::thread::sleep(TICK);
            return Ok(());
        }
        match self.rx.recv_timeout(TICK) {
            Ok((at, lines)) => log.lines_at(step, &lines, at)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.open = false,
        }
        // Whatever else is already there, without waiting.
        while let Ok((at, lines)) = self.rx.try_recv() {
            log.lines_at(step, &lines, at)?;
        }
        Ok(())
    }
}

/// The step's process group, led by the `sh` we started.
struct Group {
    child: Child,
    pgid: Pid,
    grace: Duration,
    /// When SIGTERM was sent to the group.
    terminated: Option<Instant>,
    /// SIGKILL was sent to the group.
    killed: bool,
    reaped: bool,
}

impl Group {
    fn new(child: Child, grace: Duration) -> Self {
        // A pid is a pid_t; `process_group(0)` makes it the group id.
        let pgid = Pid::from_raw(child.id() as i32);
        Self {
            child,
            pgid,
            grace,
            terminated: None,
            killed: false,
            reaped: false,
        }
    }

    /// Whether the leader has exited, without reaping it.
    fn leader_exited(&self) -> nix::Result<bool> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            match waitid(nix::sys::wait::Id::Pid(self.pgid), flags) {
                Ok(WaitStatus::StillAlive) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => tracing::warn!("cannot send {signal} to process group {}: {e}", self.pgid),
        }
    }

    /// Sends SIGTERM to the group, once.
    fn terminate(&mut self) {
        if self.terminated.is_none() {
            self.signal(Signal::SIGTERM);
            self.terminated = Some(Instant::now());
        }
    }

    /// Sends SIGKILL to the group once the grace period after SIGTERM is over.
    fn kill_after_grace(&mut self) {
        if let Some(at) = self.terminated
            && !self.killed
            && at.elapsed() >= self.grace
        {
            self.signal(Signal::SIGKILL);
            self.killed = true;
        }
    }

    fn has_live_members(&self) -> bool {
        group_has_live_members(self.pgid)
    }

    fn reap(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(status)
    }
}

/// Whether a process other than a zombie is in group `pgid`. The unreaped
/// leader is in it too, so `kill(-pgid, 0)` cannot tell; the process table
/// can. If it cannot be read, the answer is yes, which costs at most a grace
/// period.
fn group_has_live_members(pgid: Pid) -> bool {
    let Ok(mut procs) = processes() else {
        return true;
    };
    procs.any(|(_, dir)| {
        ProcStat::read(&dir).is_some_and(|stat| stat.pgrp == pgid.as_raw() && stat.is_live())
    })
}

impl Drop for Group {
    /// On an early return (the log failed) or a panic, nothing of the step
    /// may keep running unwatched.
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::SecretMask;
    use crate::log::tests::parse_line;
    use crate::pipeline::Pipeline;
    use std::collections::BTreeMap;

    struct Run {
        outcome: StepOutcome,
        elapsed: Duration,
        /// (timestamp, step, text) of each log line.
        lines: Vec<(String, String, String)>,
        dir: tempfile::TempDir,
    }

    fn run(command: &str, timeout: Duration) -> Run {
        run_masking(command, timeout, &[])
    }

    fn run_masking(command: &str, timeout: Duration, secrets: &[&str]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let step = Step {
            name: "test".into(),
            command: command.into(),
            timeout,
            env: BTreeMap::from([("FROM_STEP".into(), "step".into())]),
        };
        let ctx = StepContext {
            workdir: dir.path(),
            env: vec![("FROM_CTX".into(), "ctx".into())],
            grace: Duration::from_millis(500),
            cancel: None,
            umask: Mode::from_bits_truncate(0o027),
        };
        let log_path = dir.path().join("job.log");
        let mask = SecretMask::new(secrets.iter().map(|s| s.to_string()));
        let mut log = LogWriter::create(&log_path, None)
            .unwrap()
            .with_secrets(mask);
        let start = Instant::now();
        let outcome = run_step(&step, &ctx, &mut log).unwrap();
        let elapsed = start.elapsed();
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines = text
            .lines()
            .map(|l| {
                let (ts, step, text) = parse_line(l).unwrap_or_else(|| panic!("bad line {l:?}"));
                (ts.to_owned(), step.to_owned(), text.to_owned())
            })
            .collect();
        Run {
            outcome,
            elapsed,
            lines,
            dir,
        }
    }

    fn texts(run: &Run, step: &str) -> Vec<String> {
        let lines = run.lines.iter().filter(|l| l.1 == step);
        lines.map(|l| l.2.clone()).collect()
    }

    fn millis(ts: &str) -> u64 {
        let at = humantime::parse_rfc3339(ts).unwrap();
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    const LONG: Duration = Duration::from_secs(60);

    /// Whether `pid` is gone or only a zombie.
    fn is_dead(pid: i32) -> bool {
        let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        !ProcStat::read(&dir).is_some_and(|stat| stat.is_live())
    }

    /// Whether `done` holds within a few seconds. A process sent SIGKILL
    /// still has to be scheduled to exit: `run_step` does not wait for that.
    fn soon(done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn pids(run: &Run) -> Vec<i32> {
        let text = std::fs::read_to_string(run.dir.path().join("pids")).unwrap();
        text.split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    #[test]
    fn lines_are_stamped_as_they_arrive() {
        let r = run("echo one; sleep 0.3; echo two; sleep 0.3; echo three", LONG);
        assert_eq!(r.outcome, StepOutcome::Succeeded);
        assert_eq!(texts(&r, "test"), ["one", "two", "three"]);
        let times: Vec<_> = r.lines.iter().map(|l| millis(&l.0)).collect();
        assert!(times[1] >= times[0] + 250, "{times:?}");
        assert!(times[2] >= times[1] + 250, "{times:?}");
    }

    #[test]
    fn stderr_is_logged_in_order_with_stdout() {
        let r = run("echo out; echo err >&2; echo out2", LONG);
        assert_eq!(texts(&r, "test"), ["out", "err", "out2"]);
    }

    #[test]
    fn a_non_zero_exit_is_a_failure() {
        let r = run("echo bye; exit 3", LONG);
        assert_eq!(
            r.outcome,
            StepOutcome::Failed {
                code: Some(3),
                signal: None
            }
        );
        let r = run("kill -9 $$", LONG);
        assert_eq!(
            r.outcome,
            StepOutcome::Failed {
                code: None,
                signal: Some(9)
            }
        );
    }

    #[test]
    fn a_slow_step_times_out() {
        let r = run("echo start; sleep 30", Duration::from_secs(1));
        assert_eq!(r.outcome, StepOutcome::TimedOut);
        assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
        assert_eq!(texts(&r, "test"), ["start"]);
        assert_eq!(texts(&r, "qci"), ["step test timed out after 1s"]);
    }

    #[test]
    fn a_timeout_kills_a_grandchild_that_ignores_sigterm() {
        let r = run(
            "echo $$ > group; sh -c 'trap \"\" TERM; echo $$ > pids; sleep 60' & sleep 60",
            Duration::from_secs(1),
        );
        assert_eq!(r.outcome, StepOutcome::TimedOut);
        assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
        let pids = pids(&r);
        assert!(soon(|| is_dead(pids[0])), "{} still runs", pids[0]);
        let group = std::fs::read_to_string(r.dir.path().join("group")).unwrap();
        let group = Pid::from_raw(group.trim().parse().unwrap());
        assert!(soon(|| !group_has_live_members(group)));
    }

    #[test]
    fn background_processes_do_not_hold_the_step() {
        let r = run("sleep 60 & echo $! > pids; echo done", LONG);
        assert_eq!(r.outcome, StepOutcome::Succeeded);
        assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
        assert_eq!(texts(&r, "test"), ["done"]);
        assert_eq!(texts(&r, "qci").len(), 1);
        let pids = pids(&r);
        assert!(is_dead(pids[0]), "{} still runs", pids[0]);
    }

    #[test]
    fn environment_has_ci_then_context_then_step_and_the_umask_asked_for() {
        let r = run("echo $CI $FROM_CTX $FROM_STEP; pwd; umask", LONG);
        let dir = r.dir.path().canonicalize().unwrap();
        assert_eq!(
            texts(&r, "test"),
            [
                "true ctx step".to_owned(),
                dir.display().to_string(),
                "0027".to_owned()
            ]
        );
    }

    #[test]
    fn escapes_and_invalid_utf8_are_cleaned() {
        let r = run(
            r"printf '\033[32mok\033[0m \377\n'; printf 'no newline'",
            LONG,
        );
        assert_eq!(r.outcome, StepOutcome::Succeeded);
        assert_eq!(texts(&r, "test"), ["ok \u{FFFD}", "no newline"]);
    }

    #[test]
    fn an_overlong_line_is_logged_in_pieces() {
        let r = run(
            "head -c 204800 /dev/zero | tr '\\0' x; echo; echo next",
            LONG,
        );
        let lens: Vec<_> = texts(&r, "test").iter().map(String::len).collect();
        let max = crate::log::MAX_LINE;
        assert_eq!(lens, [max, max, max, 204800 - 3 * max, 4]);
    }

    #[test]
    fn a_secret_at_the_cut_of_an_overlong_line_is_still_masked() {
        let max = crate::log::MAX_LINE;
        let command = format!(
            "head -c {} /dev/zero | tr '\\0' x; printf 'hunter2secret tail\\n'",
            max - 4
        );
        let r = run_masking(&command, LONG, &["hunter2secret"]);
        let texts = texts(&r, "test");
        assert_eq!(
            texts.len(),
            2,
            "{:?}",
            texts.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(texts[0].len() == max - 4 && texts[0].bytes().all(|b| b == b'x'));
        assert_eq!(texts[1], "*** tail");
    }

    #[test]
    fn a_flood_of_output_does_not_hide_the_timeout() {
        let r = run("while :; do echo flood; done", Duration::from_secs(1));
        assert_eq!(r.outcome, StepOutcome::TimedOut);
        assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
        assert_eq!(texts(&r, "qci").len(), 1);
    }

    #[test]
    fn a_cancel_stops_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let step = Step {
            name: "c".into(),
            command: "sleep 30".into(),
            timeout: LONG,
            env: BTreeMap::new(),
        };
        let cancel = AtomicBool::new(false);
        let ctx = StepContext {
            workdir: dir.path(),
            env: Vec::new(),
            grace: Duration::from_millis(500),
            cancel: Some(&cancel),
            umask: Mode::from_bits_truncate(0o022),
        };
        let mut log = LogWriter::create(&dir.path().join("log"), None).unwrap();
        let start = Instant::now();
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                cancel.store(true, Ordering::Relaxed);
            });
            run_step(&step, &ctx, &mut log).unwrap()
        });
        assert_eq!(outcome, StepOutcome::Canceled);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_workdir_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let step = Pipeline::default_steps().steps.remove(0);
        let ctx = StepContext {
            workdir: &dir.path().join("missing"),
            env: Vec::new(),
            grace: Duration::ZERO,
            cancel: None,
            umask: Mode::from_bits_truncate(0o022),
        };
        let mut log = LogWriter::create(&dir.path().join("log"), None).unwrap();
        let err = run_step(&step, &ctx, &mut log).unwrap_err();
        assert!(matches!(err, StepError::Spawn { .. }), "{err}");
    }
}
