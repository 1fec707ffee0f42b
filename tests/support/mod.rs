//! Shared helpers for the end-to-end tests: the workspace's real binaries,
//! driven through an emulated Qubes machine in a temporary directory.

#![expect(dead_code, reason = "each test binary uses part of the shared support")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binaries the end-to-end tests drive, built from the sources as they
/// are now.
///
/// They belong to other packages of the workspace, so cargo does not build
/// them for this package's tests, and binaries left by an earlier build would
/// test old code. So the first call in each test process runs `cargo build`
/// for them, into this test's own target dir and profile: a no-op when they
/// are fresh, a rebuild when a source changed, and the build's own error
/// when the sources do not build. It builds the whole workspace's binaries,
/// as `cargo build` and `scripts/test-all` do: a build of only these
/// packages would unify dependency features differently, so each of the two
/// would rebuild what the other just built.
pub fn bin_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_binaries).clone()
}

const BINARIES: [&str; 3] = ["qci", "qci-dom0", "qci-vm"];

/// `target/PROFILE`, where this test's executable is (in `deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

/// The target dir this test was built into: `CARGO_TARGET_DIR` when set.
pub fn target_dir() -> PathBuf {
    profile_dir().parent().expect("target dir").to_owned()
}

fn build_binaries() -> PathBuf {
    let profile_dir = profile_dir();
    let target_dir = target_dir();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("no profile in {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut build = Command::new(cargo);
    // What cargo set for this test process describes this package; build
    // scripts that watch such variables (ring watches CARGO_MANIFEST_DIR)
    // would otherwise see a change and rebuild, then rebuild again for the
    // next plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            build.env_remove(&*name);
        }
    }
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--bins",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    let out = build
        .stdin(Stdio::null())
        .output()
        .expect("cargo runs for the end-to-end tests' binaries");
    assert!(
        out.status.success(),
        "building {BINARIES:?} for the end-to-end tests failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in BINARIES {
        assert!(
            profile_dir.join(name).is_file(),
            "cargo built no {name} in {}",
            profile_dir.display()
        );
    }
    profile_dir
}

pub fn qci() -> Command {
    let mut cmd = Command::new(bin_dir().join("qci"));
    cmd.env("QCI_BIN_DIR", bin_dir()).stdin(Stdio::null());
    cmd
}

/// A scratch area holding a project and a state directory.
///
/// The machine's domains run as an unprivileged user when the tests run as
/// root (as in CI), so the scratch area is open to everyone (0755) and what
/// the tests write in it is readable (umask 0022), as a developer's home
/// and projects are to the developer.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the scratch area");
        Self { dir }
    }

    /// A copy of `examples/NAME` in the scratch area, where the machine's
    /// user can read it wherever the repository itself lives.
    pub fn example(&self, name: &str) -> PathBuf {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let to = self.dir.path().join(name);
        let status = Command::new("cp")
            .arg("-R")
            .arg(&from)
            .arg(&to)
            .status()
            .expect("run cp");
        assert!(status.success(), "copying {}", from.display());
        to
    }

    /// The user the machine's processes run as, from `machine.toml`.
    pub fn machine_user(&self) -> (String, u32, u32) {
        let text = std::fs::read_to_string(self.machine().join("machine.toml")).unwrap();
        let manifest: toml::Table = toml::from_str(&text).unwrap();
        let user = &manifest["user"];
        let id = |key: &str| user[key].as_integer().unwrap() as u32;
        (
            user["name"].as_str().unwrap().to_owned(),
            id("uid"),
            id("gid"),
        )
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn machine(&self) -> PathBuf {
        self.state().join("machine")
    }

    /// A project directory with the given files.
    pub fn project(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.path().join(name);
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    /// A project (in a directory named after the step) whose `.qci.toml`
    /// has one step; `command` is written as a TOML basic string, already
    /// escaped, and `extra` adds keys to the step.
    pub fn one_step(&self, name: &str, command: &str, extra: &str) -> PathBuf {
        let toml = format!("[[steps]]\nname = \"{name}\"\ncommand = \"{command}\"\n{extra}\n");
        self.project(name, &[(".qci.toml", &toml)])
    }

    /// A project whose `.qci.toml` has the one step `true`.
    pub fn noop_project(&self) -> PathBuf {
        self.one_step("noop", "true", "")
    }

    /// Creates the machine (and installs qci into it) by running a job that
    /// succeeds; returns its stdout.
    pub fn prepare_machine(&self) -> String {
        let out = self.run(&self.noop_project(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "preparing the machine failed:\n{stdout}"
        );
        stdout
    }

    /// `qci run --local DIR --state-dir STATE`, not started yet.
    fn run_command(&self, dir: &Path) -> Command {
        let mut cmd = qci();
        cmd.args(["run", "--local"])
            .arg(dir)
            .arg("--state-dir")
            .arg(self.state());
        cmd
    }

    /// `qci run --local DIR --state-dir STATE EXTRA`, to its end.
    pub fn run(&self, dir: &Path, extra: &[&str]) -> Output {
        self.run_command(dir).args(extra).output().expect("run qci")
    }

    /// Runs with stdout piped and returns each line with its arrival time.
    pub fn run_watched(&self, dir: &Path) -> (i32, Vec<(Instant, String)>, Instant) {
        let mut child = self
            .run_command(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn qci");
        let mut lines = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            lines.push((Instant::now(), line.expect("utf-8 stdout")));
        }
        let status = child.wait().unwrap();
        (status.code().unwrap_or(-1), lines, Instant::now())
    }

    /// Checks that `qci run` exited with `code`, and returns its job id and
    /// the last status its sink recorded, `(job, state, description)`.
    pub fn ended(&self, out: &Output, code: i32) -> (String, String, String) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let job = job_id(&stdout);
        let (state, description) = states(&self.status_file(&job))
            .pop()
            .expect("a status was recorded");
        (job, state, description)
    }

    /// The text of dom0's log of `job`.
    pub fn job_log(&self, job: &str) -> String {
        std::fs::read_to_string(self.dom0_log_dir().join(format!("{job}.log"))).unwrap()
    }

    pub fn dom0_log_dir(&self) -> PathBuf {
        self.machine().join("dom0/var/log/qci")
    }

    pub fn status_file(&self, job: &str) -> PathBuf {
        self.machine()
            .join("sd-dev/home/user/.qci/status")
            .join(format!("{job}.jsonl"))
    }

    /// `qci qrexec --machine M --from VM TARGET SERVICE`.
    pub fn qrexec(&self, from: &str, target: &str, service: &str, stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = qci()
            .args(["qrexec", "--machine"])
            .arg(self.machine())
            .args(["--from", from, target, service])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qci qrexec");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// The job id `qci run` printed in its closing line `qci: job JOB: STATE (...)`.
pub fn job_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("qci: job "))
        .and_then(|rest| rest.split(':').next())
        .expect("closing line with the job id")
        .to_owned()
}

/// The states a job's file sink recorded, in order.
pub fn states(status_file: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(status_file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("status line is JSON");
            (
                v["state"].as_str().unwrap().to_owned(),
                v["description"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// One parsed log line: `2026-11-22T10:15:00.123Z [step] text`.
#[derive(Debug)]
pub struct LogLine {
    pub millis: u64,
    pub step: String,
    pub text: String,
}

/// Parses every line of a log, asserting the documented format.
pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .map(|line| {
            let (stamp, rest) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("no stamp: {line:?}"));
            assert_eq!(stamp.len(), 24, "stamp {stamp:?}");
            assert!(
                stamp.ends_with('Z') && &stamp[10..11] == "T" && &stamp[19..20] == ".",
                "stamp {stamp:?}"
            );
            let (step, text) = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once("] "))
                .or_else(|| {
                    rest.strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .map(|s| (s, ""))
                })
                .unwrap_or_else(|| panic!("no [step]: {line:?}"));
            let hms: Vec<u64> = stamp[11..23]
                .split([':', '.'])
                .map(|n| n.parse().unwrap())
                .collect();
            let day: u64 = stamp[8..10].parse().unwrap();
            LogLine {
                millis: ((day * 24 + hms[0]) * 3600 + hms[1] * 60 + hms[2]) * 1000 + hms[3],
                step: step.to_owned(),
                text: text.to_owned(),
            }
        })
        .collect()
}

/// A shell command that waits until `release` exists (a minute at most), to
/// hold a step mid-run for as long as a test needs, however loaded the
/// machine: the test creates the file to let the step go on.
pub fn hold_until(release: &Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
        release.display()
    )
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Scratch {
    /// Writes dom0's settings before the machine's first run (qci writes the
    /// file only when it is missing), keeping the machine's own directories.
    pub fn dom0_config(&self, extra: &str) {
        let dom0 = self.machine().join("dom0");
        let path = dom0.join("etc/qci/dom0.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = format!(
            "dev_vm = \"sd-dev\"\nlog_dir = {:?}\nwork_dir = {:?}\n{extra}\n",
            dom0.join("var/log/qci"),
            self.work_dir()
        );
        std::fs::write(path, text).unwrap();
    }

    pub fn work_dir(&self) -> PathBuf {
        self.machine().join("dom0/var/lib/qci")
    }

    /// Starts `qci run --local DIR` in the background, stdout and stderr piped.
    pub fn spawn_run(&self, dir: &Path) -> std::process::Child {
        self.run_command(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qci")
    }

    /// Replaces the dev VM's `qci.Export` with a shell `script`.
    pub fn dev_vm_export(&self, script: &str) {
        self.dev_vm_service("qci.Export", script);
    }

    /// Replaces the dev VM's service `name` with a shell `script`: a file in
    /// `usr/local/etc/qubes-rpc` comes before the installed one, as in Qubes.
    /// The machine must exist already.
    pub fn dev_vm_service(&self, name: &str, script: &str) {
        let service = self
            .machine()
            .join("sd-dev/usr/local/etc/qubes-rpc")
            .join(name);
        std::fs::create_dir_all(service.parent().unwrap()).unwrap();
        std::fs::write(&service, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&service, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `qci run --local DIR` to its end, with at most `files` open files
    /// for it and everything it starts (the machine's processes included).
    #[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
    pub fn run_with_open_files(&self, dir: &Path, files: u64) -> Output {
        use nix::sys::resource::{Resource, setrlimit};
        use std::os::unix::process::CommandExt;
        let mut cmd = self.run_command(dir);
        // SAFETY: setrlimit(2) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, files, files)?;
                Ok(())
            });
        }
        cmd.output().expect("run qci")
    }

    /// Whether dom0's run lock is free, i.e. no runner holds it.
    pub fn dom0_is_free(&self) -> bool {
        let Ok(file) = std::fs::File::open(self.work_dir().join("run.lock")) else {
            return true;
        };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    }

    /// The text of the only log in dom0's log directory, once there is one.
    pub fn current_log(&self) -> String {
        std::fs::read_dir(self.dom0_log_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    }
}

impl Drop for Scratch {
    /// Whatever a test left running on its machine (a stalled service, a
    /// step of a test that failed) is stopped with it.
    fn drop(&mut self) {
        let emu = format!("QCI_EMU_MACHINE={}", self.machine().display());
        for pid in processes(&emu, |_| true) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Pids of live processes whose environment holds `marker` (`KEY=VALUE`)
/// and whose command line satisfies `pick`: how tests find a machine's processes.
pub fn processes(marker: &str, pick: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let (key, value) = marker.split_once('=').expect("KEY=VALUE");
    qci_core::process::marked(key, value)
        .into_iter()
        .filter(|pid| {
            let cmdline: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            pick(&cmdline)
        })
        .collect()
}

/// Sends signal `name` (`KILL`, `TERM`, ...) to `pid`.
pub fn signal(pid: i32, name: &str) {
    let signal: nix::sys::signal::Signal = format!("SIG{name}").parse().expect("a signal name");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("kill -{name} {pid}: {e}"));
}

/// Whether `pid` is gone or only a zombie.
pub fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, f)| f.trim_start().starts_with('Z')),
    }
}

/// Runs `git -C dir ARGS` with a throwaway identity (a CI machine may have
/// none) and returns its trimmed stdout; fails the test if git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether a test that needs root may go on. CI runs as root, so under
/// `CI=true` a run as anyone else fails, saying why; elsewhere the test is
/// skipped with a note that says it.
pub fn root_or_skip(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root ({why}), as CI runs it"
    );
    eprintln!("SKIPPED: needs root: {why}");
    false
}

/// A loopback listener on a port of its own, for a server the test starts:
/// the test keeps it open and hands it over (see [`socket_activated`]), so
/// no other process can take the port between choosing and serving it.
pub fn listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener")
}

/// `cmd` started as systemd starts a socket-activated service
/// (`sd_listen_fds(3)`): `listener` as its fd 3, `LISTEN_FDS=1` and
/// `LISTEN_PID` its own pid, which a shell that `exec`s it knows. Stdio is
/// the caller's to set on the returned command.
#[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
pub fn socket_activated(cmd: &Command, listener: &std::net::TcpListener) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => sh.env(name, value),
            None => sh.env_remove(name),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe. The new fd 3 has no
    // FD_CLOEXEC; when the listener is fd 3 already, dup2 would do nothing
    // and leave the flag set (the socket would close at exec), so the flag
    // is cleared instead.
    unsafe {
        sh.pre_exec(move || {
            let done = if fd == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(fd, 3)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    sh
}
