//! Shared by the benches: where the release binaries are, how big to go,
//! whole jobs through `qci run --local`, the reference-style runner, paired
//! runs and their medians, and the table rows every bench prints.
//!
//! Figures go to stdout as rows of one table (`scripts/bench` prints its
//! header), progress to stderr.

#![expect(dead_code, reason = "each test binary uses part of the shared support")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const MIB: f64 = 1024.0 * 1024.0;

/// Paired runs per figure, whatever `QCI_BENCH_SCALE` says: a median of
/// fewer would not be a result on a noisy machine.
pub const MIN_PAIRS: usize = 5;

/// `target/release`, found from this bench's own executable
/// (`target/release/deps/NAME-HASH`), holding `qci`, `qci-dom0` and `qci-vm`.
/// Exits with a clear message when they are not built.
pub fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench executable is in target/release/deps")
        .to_owned();
    for name in ["qci", "qci-dom0", "qci-vm"] {
        if !dir.join(name).is_file() {
            eprintln!(
                "bench: {name} is not built in {}: run cargo build --release first \
                 (cargo build --release --workspace --bins, or scripts/bench)",
                dir.display()
            );
            std::process::exit(2);
        }
    }
    dir
}

/// `QCI_BENCH_SCALE` (default 1): multiplies every size, to run smaller.
pub fn scale() -> f64 {
    match std::env::var("QCI_BENCH_SCALE") {
        Err(_) => 1.0,
        Ok(s) => match s.parse::<f64>() {
            Ok(f) if f > 0.0 && f.is_finite() => f,
            _ => {
                eprintln!("bench: QCI_BENCH_SCALE must be a positive number, not {s:?}");
                std::process::exit(2);
            }
        },
    }
}

/// `n` scaled, at least `min`.
pub fn scaled(n: u64, min: u64) -> u64 {
    ((n as f64 * scale()).round() as u64).max(min)
}

/// A directory for one bench's files under `TMPDIR`, readable by the
/// emulated domains (which may run as another user than the bench).
pub fn scratch() -> tempfile::TempDir {
    scratch_in(&std::env::temp_dir())
}

/// [`scratch`] under `parent`.
pub fn scratch_in(parent: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("qci-bench-")
        .tempdir_in(parent)
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the scratch directory");
    dir
}

/// splitmix64: fast, and its output does not compress or leave holes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// The middle value, or the mean of the two middle ones.
pub fn median<T: Middle>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    assert!(n > 0, "median of nothing");
    if n % 2 == 1 {
        v[n / 2]
    } else {
        T::between(v[n / 2 - 1], v[n / 2])
    }
}

/// What [`median`] takes the middle of.
pub trait Middle: Copy + PartialOrd {
    /// Halfway between `a` and `b`.
    fn between(a: Self, b: Self) -> Self;
}

impl Middle for f64 {
    fn between(a: Self, b: Self) -> Self {
        (a + b) / 2.0
    }
}

impl Middle for Duration {
    fn between(a: Self, b: Self) -> Self {
        (a + b) / 2
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds of each duration.
pub fn all_ms(times: &[Duration]) -> Vec<f64> {
    times.iter().map(|&t| ms(t)).collect()
}

/// Lowest and highest, to show the spread beside a median.
pub fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB / d.as_secs_f64()
}

/// Flushes dirty pages, so one run's writeback does not slow the next.
pub fn sync() {
    let _ = Command::new("sync").status();
}

/// Runs `ours` and `theirs` one after the other, `ours` first in even
/// rounds: each side runs first as often as second, so neither always gets
/// the warmer cache or the quieter moment.
pub fn paired(round: usize, ours: impl FnOnce(), theirs: impl FnOnce()) {
    if round.is_multiple_of(2) {
        ours();
        theirs();
    } else {
        theirs();
        ours();
    }
}

/// Runs `f`, timed.
pub fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

/// One row of the table: what is measured, the goal, the figure, and
/// whether the goal is met (`None`: a figure for context, with no goal).
pub fn row(figure: &str, goal: &str, measured: &str, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "",
    };
    println!("| {figure} | {goal} | {measured} | {verdict} |");
}

/// Where a job through the binaries runs: one emulated machine, kept
/// between runs as a developer's `.qci` is.
pub struct Qci {
    bin: PathBuf,
    state: PathBuf,
}

/// One finished `qci run --local`.
pub struct Job {
    pub elapsed: Duration,
    pub id: String,
    /// dom0's log of the job.
    pub log: PathBuf,
    /// What `qci run` printed, when asked to keep it.
    pub stdout: Vec<u8>,
}

impl Qci {
    pub fn new(bin: &Path, state: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            state: state.to_owned(),
        }
    }

    pub fn machine(&self) -> PathBuf {
        self.state.join("machine")
    }

    /// `qci run --local PROJECT`, timed from start to exit; it must succeed.
    /// With `keep_stdout` false, stdout goes to /dev/null, as when nobody
    /// watches the live log.
    pub fn run(&self, project: &Path, keep_stdout: bool) -> Job {
        let mut cmd = Command::new(self.bin.join("qci"));
        cmd.args(["run", "--local"])
            .arg(project)
            .arg("--state-dir")
            .arg(&self.state)
            .env("QCI_BIN_DIR", &self.bin)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        cmd.stdout(if keep_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let (elapsed, out) = timed(|| cmd.output().expect("run qci"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "qci run --local {} failed ({}):\n{}\n{stderr}",
            project.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
        // `qci: job ID on MACHINE (VM)`, on stderr before the job starts.
        let id = stderr
            .lines()
            .find_map(|l| l.strip_prefix("qci: job ")?.split(' ').next())
            .expect("qci names its job on stderr")
            .to_owned();
        let log = self
            .machine()
            .join("dom0/var/log/qci")
            .join(format!("{id}.log"));
        Job {
            elapsed,
            id,
            log,
            stdout: out.stdout,
        }
    }

    /// dom0's copy of the last job's tree.
    pub fn dom0_workspace(&self, job: &Job) -> PathBuf {
        self.machine().join("dom0/var/lib/qci/jobs").join(&job.id)
    }

    /// Removes what a job leaves that can be large (its log, the dev VM's
    /// workspace, dom0's copy of the tree), outside any timing: the disk
    /// must not fill over many runs. dom0's copy goes too, as the baselines'
    /// destinations are emptied untimed: otherwise the next job would also
    /// pay for removing it (dom0 does that at the lowest priority while the
    /// job runs, and waits for it at the end), and the baseline would not.
    pub fn forget(&self, job: &Job) {
        let _ = std::fs::remove_file(&job.log);
        let _ = std::fs::remove_dir_all(self.dom0_workspace(job));
        let work = self
            .machine()
            .join("sd-dev/home/user/.qci/work")
            .join(&job.id);
        let _ = std::fs::remove_dir_all(work);
    }
}

/// The reference-style runner (`benches/reference_runner.py`), written as
/// securedrop-workstation-ci's `dom0/runner.py` is: the tree through a
/// temporary tar file, then each step with `Popen(...).communicate()`.
pub struct Reference {
    python: PathBuf,
    script: PathBuf,
}

impl Reference {
    /// Finds the real interpreter once: a version manager's `python3` shim
    /// can cost more than the whole job being measured.
    pub fn new() -> Self {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed for the reference runner");
        assert!(out.status.success(), "python3 does not run");
        let python = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference_runner.py");
        Self { python, script }
    }

    /// Copies `project` to `work` (emptied first) and runs `steps` there,
    /// logging to `log`; timed. stdout goes to /dev/null.
    pub fn run(&self, project: &Path, work: &Path, log: &Path, steps: &[&str]) -> Duration {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .arg(project)
            .arg(work)
            .arg(log)
            .args(steps)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (elapsed, out) = timed(|| cmd.output().expect("run the reference runner"));
        assert!(
            out.status.success(),
            "the reference runner failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        elapsed
    }
}

/// `sh -c COMMAND` in `dir`, timed; it must succeed.
pub fn shell(dir: &Path, command: &str) -> Duration {
    let (elapsed, status) = timed(|| {
        Command::new("sh")
            .args(["-c", command])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run sh")
    });
    assert!(status.success(), "{command} failed: {status}");
    elapsed
}

/// Writes `.qci.toml` with these `(name, command)` steps.
pub fn write_pipeline(project: &Path, steps: &[(&str, &str)]) {
    let mut text = String::new();
    for (name, command) in steps {
        let command = command.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!(
            "[[steps]]\nname = \"{name}\"\ncommand = \"{command}\"\ntimeout = \"2h\"\n\n"
        ));
    }
    std::fs::write(project.join(".qci.toml"), text).expect("write .qci.toml");
}

/// Commits everything in `dir` as a new git repository, as a project's
/// working tree is: `qci run --local` then sends what git lists.
pub fn git_commit_all(dir: &Path) {
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@localhost",
                "-c",
                "core.looseCompression=0",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .status()
            .expect("run git");
        assert!(status.success(), "git {args:?} failed");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "bench tree"]);
}

/// The file system type of `dir` (`stat -f`).
pub fn fs_type(dir: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown file system".into(),
    }
}

/// The 1-minute load average, printed beside figures: the machine is
/// shared, and a figure taken under load says so.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}
