//! Waiting for child processes and writing to them with a bound, which std
//! does not offer, and finding processes through `/proc`.
//!
//! Waits block in `poll` on a pidfd of the child, so they end the moment the
//! child exits: a short job costs its CPU time, not polling intervals.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A file descriptor that becomes readable when a process exits: a pidfd.
#[derive(Debug)]
pub struct ExitFd(OwnedFd);

impl ExitFd {
    /// The pidfd of `child`, which must not have been reaped (so its pid
    /// still names it). `None` where the kernel has no `pidfd_open` (before
    /// Linux 5.3) or forbids it: callers then poll.
    #[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
    pub fn of(child: &Child) -> Option<Self> {
        let pid = nix::libc::pid_t::try_from(child.id()).ok()?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new file
        // descriptor (close-on-exec) or -1; it touches no memory of ours.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        let fd = std::os::fd::RawFd::try_from(fd)
            .ok()
            .filter(|&fd| fd >= 0)?;
        // SAFETY: the descriptor was just created for us and nothing else owns it.
        Some(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Blocks until the process exits or `timeout` passes (or a signal
    /// arrives); `Ok(true)` once it has exited.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(timeout)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for ExitFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// `timeout` for `poll`: in whole milliseconds rounded up, so that a wait
/// never ends just before its deadline and spins.
pub fn poll_timeout(timeout: Duration) -> PollTimeout {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
}

/// Waits for `child` until `deadline`; `Ok(None)` means it is still running.
/// Needs no signal handling and leaves the caller's thread its own.
pub fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut exit: Option<Option<ExitFd>> = None;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        match exit.get_or_insert_with(|| ExitFd::of(child)) {
            Some(fd) => {
                fd.wait(deadline - now)?;
            }
            // No pidfd: poll, more slowly as the wait goes on.
            None => {
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// Waits up to `timeout`, then kills `child` and reaps it. `Ok(None)` means
/// it had to be killed.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    wait_or_kill_at(child, Instant::now() + timeout)
}

/// [`wait_or_kill`] with a deadline: for a bound shared with earlier work
/// (writing the child's input, say).
pub fn wait_or_kill_at(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    match wait_until(child, deadline)? {
        Some(status) => Ok(Some(status)),
        None => {
            let _ = child.kill();
            child.wait()?;
            Ok(None)
        }
    }
}

/// Writes all of `data` to `pipe` (a child's stdin) by `deadline`, so a
/// reader that never reads cannot hold the writer, however large `data` is.
/// The pipe is made non-blocking for this; `ErrorKind::TimedOut` means the
/// deadline passed first, and a reader that went away gives `BrokenPipe`.
pub fn write_within(
    pipe: &mut (impl Write + AsFd),
    mut data: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(pipe.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(pipe.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    while !data.is_empty() {
        match pipe.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                let wait = poll_timeout(left);
                let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, wait) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Pids of the live processes (zombies excluded) whose environment holds
/// `key=value`, but this one. Processes whose environment cannot be read
/// (another user's, already gone) are not listed.
pub fn marked(key: &str, value: &str) -> Vec<i32> {
    let marker = format!("{key}={value}");
    let me = std::process::id() as i32;
    let Ok(procs) = processes() else {
        return Vec::new();
    };
    procs
        .filter(|(pid, _)| *pid != me)
        .filter_map(|(pid, dir)| {
            let environ = std::fs::read(dir.join("environ")).ok()?;
            let has = environ.split(|&b| b == 0).any(|v| v == marker.as_bytes());
            (has && ProcStat::read(&dir)?.is_live()).then_some(pid)
        })
        .collect()
}

/// Every process in `/proc`, as its pid and its directory there.
pub(crate) fn processes() -> std::io::Result<impl Iterator<Item = (i32, PathBuf)>> {
    Ok(std::fs::read_dir("/proc")?.flatten().filter_map(|entry| {
        let pid = entry.file_name().to_str()?.parse().ok()?;
        Some((pid, entry.path()))
    }))
}

/// What qci needs from `/proc/PID/stat`.
pub(crate) struct ProcStat {
    /// `R`, `S`, `Z`...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

impl ProcStat {
    /// Reads the stat of the process whose `/proc` directory is `dir`; `None`
    /// if it is gone.
    pub fn read(dir: &Path) -> Option<Self> {
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // `pid (comm) state ppid pgrp ...`; comm may hold anything but ends
        // at the last `)`.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Self { state, ppid, pgrp })
    }

    /// Neither a zombie nor dead: it can still run and hold resources.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Kills (SIGKILL) every process [`marked`] `key=value`. A runner marks its
/// steps' environment this way, so when a runner was killed and its steps
/// outlived it (even ones that left their process group), the next run
/// finds and stops them. Returns their pids.
pub fn kill_marked(key: &str, value: &str) -> Vec<i32> {
    marked(key, value)
        .into_iter()
        .filter(|&pid| {
            let target = nix::unistd::Pid::from_raw(pid);
            nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok()
        })
        .collect()
}

/// Every process below `root` in the process tree, parents before their
/// children, zombies included, with its stat.
///
/// Read from the kernel's list of each thread's children
/// (`/proc/PID/task/TID/children`): a few files for a small tree, where a
/// scan reads the stat of every process on the machine. Where the kernel
/// keeps no such lists, from that scan.
pub(crate) fn descendants(root: i32) -> Vec<(i32, ProcStat)> {
    if !Path::new("/proc/thread-self/children").exists() {
        return descendants_by_scan(root);
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for pid in children(parent) {
            // Gone since it was listed: nothing left of it to find.
            if let Some(stat) = ProcStat::read(Path::new(&format!("/proc/{pid}"))) {
                found.push((pid, stat));
                next.push(pid);
            }
        }
    }
    found
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    found
}

/// [`descendants`] from the stat of every process.
fn descendants_by_scan(root: i32) -> Vec<(i32, ProcStat)> {
    let mut children: HashMap<i32, Vec<(i32, ProcStat)>> = HashMap::new();
    for (pid, dir) in processes().into_iter().flatten() {
        if let Some(stat) = ProcStat::read(&dir) {
            children.entry(stat.ppid).or_default().push((pid, stat));
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for (pid, stat) in children.remove(&parent).into_iter().flatten() {
            found.push((pid, stat));
            next.push(pid);
        }
    }
    found
}

/// Kills (SIGKILL) every process below this one and reaps those that end
/// up as its children, until none is left or `within` has passed; returns
/// the pids killed.
///
/// Meant for a process that is a child subreaper
/// (`PR_SET_CHILD_SUBREAPER`): orphans of its children, even ones that left
/// their session and process group, were handed to it, so "below this
/// process" is everything it started that still runs. Call it only when
/// this process waits for no child of its own: it reaps any child it finds.
pub fn stop_descendants(within: Duration) -> Vec<i32> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + within;
    let mut killed = Vec::new();
    loop {
        let tree = descendants(me);
        if tree.is_empty() {
            break;
        }
        // Parents first: a killed parent's children come to us, and are
        // killed in this same pass or found in the next.
        for (pid, stat) in &tree {
            if stat.is_live()
                && kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok()
                && !killed.contains(pid)
            {
                killed.push(*pid);
            }
        }
        for (pid, stat) in &tree {
            if stat.ppid == me {
                let _ = waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG));
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn kill_marked_stops_only_the_marked_processes() {
        let value = format!("test-{}", std::process::id());
        let mut target = Command::new("sleep")
            .arg("30")
            .env("QCI_TEST_MARK", &value)
            .spawn()
            .unwrap();
        let mut other = Command::new("sleep")
            .arg("30")
            .env("QCI_TEST_MARK", "someone-else")
            .spawn()
            .unwrap();
        // Until the child has exec'd, /proc shows the environment it forked
        // with (ours), so wait for the marker to appear before killing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !marked("QCI_TEST_MARK", &value).contains(&(target.id() as i32)) {
            assert!(Instant::now() < deadline, "marker never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = kill_marked("QCI_TEST_MARK", &value);
        assert_eq!(killed, vec![target.id() as i32]);
        let status = wait_or_kill(&mut target, Duration::from_secs(5))
            .unwrap()
            .expect("killed");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unmarked process was killed"
        );
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn a_write_to_a_reader_that_never_reads_ends_at_the_deadline() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let start = Instant::now();
        // Far more than a pipe holds.
        let err = write_within(
            &mut stdin,
            &vec![b'x'; 4 << 20],
            start + Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn descendants_from_the_childrens_lists_are_those_a_full_scan_finds() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let pids = |tree: Vec<(i32, ProcStat)>| {
            let mut pids: Vec<i32> = tree.into_iter().map(|(pid, _)| pid).collect();
            pids.sort_unstable();
            pids
        };
        // The shell and its two sleeps, once both are started.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids(descendants_by_scan(me)).len() < 3 {
            assert!(Instant::now() < deadline, "the sleeps never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let tree = descendants(me);
        assert!(
            tree.iter()
                .any(|(pid, stat)| *pid == child.id() as i32 && stat.ppid == me),
            "parents first: the shell, below this process"
        );
        assert_eq!(pids(tree), pids(descendants_by_scan(me)));
        let _ = child.kill();
        let _ = child.wait();
    }
}
