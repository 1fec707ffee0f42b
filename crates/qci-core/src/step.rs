//! Runs one pipeline step: `sh -c COMMAND` in its own process group, stdout
//! and stderr merged into the log line by line as they arrive, with a timeout
//! that kills the whole group (SIGTERM, grace period, SIGKILL).
//!
//! One thread does it all, blocked in `poll` on the output pipe and the
//! step's pidfd: it wakes when output arrives, when the step exits, or when a
//! deadline is due, and looks at the clock after every read, so a step that
//! floods its output cannot hide its timeout. Output is read, split and
//! logged one read at a time; nothing queues, so memory stays bounded (one
//! read, formatted) whatever the volume and the line length.
//!
//! Limits: only processes that stay in the step's process group are stopped.
//! One that leaves it (`setsid`, or `set -m` job control) outlives the step;
//! if it keeps the output pipe open, reading stops [`DRAIN`] after the step
//! ends and the pipe is closed (its next write fails). Containing such
//! processes would take a cgroup, which dom0 has but this module does not
//! manage.

use crate::log::{Line, LineSplitter, LogWriter};
use crate::pipeline::Step;
use crate::process::{ExitFd, ProcStat, descendants, poll_timeout, processes};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use std::io::{PipeReader, Read};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How long output is still read once the step and its group are gone.
pub const DRAIN: Duration = Duration::from_secs(2);
/// The longest wait without looking at the cancel flag. A cancel signal to
/// this (single-threaded) process ends the wait at once anyway; this bounds
/// a cancel set from another thread.
const TICK: Duration = Duration::from_millis(50);
/// How often the process table is looked at while processes the step left
/// behind are stopping (they are no children of ours: no pidfd to wait on).
const MEMBER_TICK: Duration = Duration::from_millis(10);
/// How often the step is looked at where the kernel gives no pidfd.
const NO_PIDFD_TICK: Duration = Duration::from_millis(5);
/// One read of the step's output; the lines it completes are logged
/// together, with one stamp.
const READ_BYTES: usize = 256 * 1024;
/// The size asked for the output pipe (Linux's default unprivileged
/// maximum): a step that floods its output runs ahead while a batch is
/// written, instead of both taking turns one page at a time.
pub const PIPE_BYTES: i32 = 1 << 20;

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
    /// `Canceled`. Looked at on every wake-up, at least every [`TICK`].
    pub cancel: Option<&'a AtomicBool>,
    /// The file mode creation mask the step starts with, whatever the
    /// runner's own (see `qci-dom0`'s runner for the choice).
    pub umask: Mode,
}

/// Runs `step` to its end, logging its output as it comes under the step's
/// name and notes of our own under `qci`. A step that exits while processes
/// it started in the background still run has them stopped (SIGTERM, grace,
/// SIGKILL): they would otherwise hold the log open and outlive the run.
#[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
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
    // Not granted (a lower system limit): the default size works too.
    let _ = nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
    let child = {
        // The Command holds the parent's copies of the write end: it must be
        // dropped right after the spawn, or the output never ends.
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
    let mut output = Output {
        pipe: Some(reader),
        splitter: LineSplitter::masking(log.mask().clone()),
        buf: vec![0; READ_BYTES],
    };
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
        if stopped.is_none() {
            let canceled = ctx.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if canceled {
                log.note("qci", &format!("step {} canceled", step.name))?;
                stopped = Some(StepOutcome::Canceled);
            } else if timed_out {
                let after = humantime::format_duration(step.timeout);
                let note = format!("step {} timed out after {after}", step.name);
                log.note("qci", &note)?;
                stopped = Some(StepOutcome::TimedOut);
            }
            if stopped.is_some() {
                group.terminate();
            }
        }
        group.kill_after_grace();
        let wake = match stopped {
            None => deadline,
            Some(_) => group.kill_at(),
        };
        let tick = if group.exit.is_some() {
            TICK
        } else {
            NO_PIDFD_TICK
        };
        output.wait(log, &step.name, group.exit.as_ref(), wake, tick)?;
    }

    // Whatever the step left running in its group.
    if group.has_live_members() {
        if stopped.is_none() {
            let note = format!("step {} left processes running: stopping them", step.name);
            log.note("qci", &note)?;
        }
        group.terminate();
        while group.has_live_members() && !group.killed {
            output.wait(log, &step.name, None, group.kill_at(), MEMBER_TICK)?;
            group.kill_after_grace();
        }
    }
    let status = group.reap().map_err(wait_err)?;

    let drain_end = Instant::now() + DRAIN;
    while output.pipe.is_some() && Instant::now() < drain_end {
        output.wait(log, &step.name, None, Some(drain_end), DRAIN)?;
    }
    output.finish(log, &step.name)?;

    Ok(match stopped {
        Some(outcome) => outcome,
        None if status.success() => StepOutcome::Succeeded,
        None => StepOutcome::Failed {
            code: status.code(),
            signal: status.signal(),
        },
    })
}

/// The step's output: the read end of its pipe, until the end of output.
struct Output {
    /// `None` once the output has ended.
    pipe: Option<PipeReader>,
    splitter: LineSplitter,
    buf: Vec<u8>,
}

impl Output {
    /// Waits until output arrives, `exit` becomes readable, `until` passes
    /// or `tick` has gone by, whichever is first; logs what one read of the
    /// output brings.
    fn wait(
        &mut self,
        log: &mut LogWriter,
        step: &str,
        exit: Option<&ExitFd>,
        until: Option<Instant>,
        tick: Duration,
    ) -> std::io::Result<()> {
        let timeout = until.map_or(tick, |u| {
            u.saturating_duration_since(Instant::now()).min(tick)
        });
        let mut fds = Vec::with_capacity(2);
        if let Some(pipe) = &self.pipe {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        if let Some(exit) = exit {
            fds.push(PollFd::new(exit.as_fd(), PollFlags::POLLIN));
        }
        let readable = match poll(&mut fds, poll_timeout(timeout)) {
            Ok(_) => self.pipe.is_some() && fds[0].any() == Some(true),
            Err(nix::errno::Errno::EINTR) => false,
            Err(e) => return Err(e.into()),
        };
        if readable {
            self.read(log, step)?;
        }
        Ok(())
    }

    /// One read: the lines it completes go to the log, stamped now.
    fn read(&mut self, log: &mut LogWriter, step: &str) -> std::io::Result<()> {
        let Some(pipe) = &mut self.pipe else {
            return Ok(());
        };
        let n = match pipe.read(&mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => {
                tracing::warn!("cannot read step output: {e}");
                0
            }
        };
        if n == 0 {
            self.pipe = None;
            return Ok(());
        }
        let mut batch = log.batch(step, SystemTime::now());
        self.splitter.push(&self.buf[..n], |line| batch.line(line));
        batch.write()
    }

    /// Logs the last line if it had no newline.
    fn finish(&mut self, log: &mut LogWriter, step: &str) -> std::io::Result<()> {
        self.pipe = None;
        match self.splitter.finish() {
            Some(line) => {
                let mut batch = log.batch(step, SystemTime::now());
                batch.line(Line::new(&line));
                batch.write()
            }
            None => Ok(()),
        }
    }
}

/// The step's process group, led by the `sh` we started.
struct Group {
    child: Child,
    pgid: Pid,
    /// Readable once the leader has exited; `None` without pidfds.
    exit: Option<ExitFd>,
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
            exit: ExitFd::of(&child),
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

    /// When SIGKILL is due: the grace period after SIGTERM is over.
    fn kill_at(&self) -> Option<Instant> {
        match self.terminated {
            Some(at) if !self.killed => Some(at + self.grace),
            _ => None,
        }
    }

    /// Sends SIGKILL to the group once the grace period after SIGTERM is over.
    fn kill_after_grace(&mut self) {
        if self.kill_at().is_some_and(|at| Instant::now() >= at) {
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
///
/// Below a child subreaper (qci-dom0 is one), every process the step
/// started is a descendant of this one, orphans included: looking there is
/// enough, and far cheaper than reading every process on the machine.
fn group_has_live_members(pgid: Pid) -> bool {
    let member = |stat: &ProcStat| stat.pgrp == pgid.as_raw() && stat.is_live();
    if nix::sys::prctl::get_child_subreaper().unwrap_or(false) {
        return descendants(std::process::id() as i32)
            .iter()
            .any(|(_, stat)| member(stat));
    }
    let Ok(mut procs) = processes() else {
        return true;
    };
    procs.any(|(_, dir)| ProcStat::read(&dir).is_some_and(|stat| member(&stat)))
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
        // Colours (plain SGR) are kept for the job page; see `log`.
        assert_eq!(
            texts(&r, "test"),
            ["\x1b[32mok\x1b[0m \u{FFFD}", "no newline"]
        );
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
