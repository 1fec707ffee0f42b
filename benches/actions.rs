//! GitHub Actions jobs on the pool (issue 18), through the release `qci
//! serve` in App mode against the fake GitHub of the end-to-end tests
//! (`tests/actions_support/host.rs`), on an emulated `local` machine:
//!
//! 1. webhook `workflow_job queued` sent -> the free machine powered on
//!    (goal: < 1 s);
//! 2. two queued jobs, one machine: the first job's machine off (freed) ->
//!    on again for the second (goal: < 1 s).
//!
//! Each is paired, round by round, with the pool's own way of doing the same
//! without the engine: `qci run --qubes 4.2` spawned -> the same machine on,
//! and the hand-over between two `qci run --qubes 4.2` processes waiting on
//! it (the pool's FIFO). Both sides share the host, its config and machine,
//! and are timed the same way, by polling the machine's `control.json`.
//!
//! The runner is `sleep 0.3`: it exits 0, which ends the runner and frees
//! the machine; what a real runner does in between is not what is measured.
//! 11 rounds, scaled by QCI_BENCH_SCALE, never fewer than 5.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[path = "common/mod.rs"]
mod common;
#[path = "../crates/qci-server/tests/support/fake_github.rs"]
mod fake_github;
#[expect(dead_code, reason = "the bench uses part of the tests' harness")]
#[path = "../tests/actions_support/host.rs"]
mod host;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{MIN_PAIRS, median, paired, range, row, scaled};
use host::{Host, Setup};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MACHINE: &str = "emu-42";
const LABELS: [&str; 2] = ["self-hosted", "qubes-4.2"];
/// What the runner and the baseline's step do while they hold the machine.
const HOLD: &str = "sleep 0.3";

fn main() {
    let bin = common::release_dir();
    let rounds = (scaled(11, 1) as usize).max(MIN_PAIRS);
    let qci_bin = bin.clone();
    let host = Host::start_with(
        &[(MACHINE, "4.2")],
        Setup {
            app: true,
            pickup: "60s".into(),
            runner: Some(HOLD.into()),
            qci: Box::new(move || release_qci(&qci_bin)),
            actions: String::new(),
        },
    );
    let repo = Repo::new(&host.dir);
    let baseline = Baseline {
        host: &host,
        bin: &bin,
        repo: &repo,
    };
    let load_before = common::loadavg();

    eprintln!("actions: warm-up");
    let mut next_id = 1u64;
    let mut job = || {
        next_id += 1;
        next_id
    };
    start_by_webhook(&host, job());
    baseline.start(0);

    eprintln!("actions: {rounds} rounds");
    let (mut start_ours, mut start_base) = (Vec::new(), Vec::new());
    let (mut hand_ours, mut hand_base) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        paired(
            i,
            || start_ours.push(start_by_webhook(&host, job())),
            || start_base.push(baseline.start(i)),
        );
        paired(
            i,
            || hand_ours.push(handover_by_webhook(&host, job(), job())),
            || hand_base.push(baseline.handover(i)),
        );
        eprintln!(
            "actions: round {}: start {:.3}s vs {:.3}s, hand-over {:.3}s vs {:.3}s",
            i + 1,
            start_ours[i],
            start_base[i],
            hand_ours[i],
            hand_base[i]
        );
    }

    let figure = |what: &str, baseline: &str, ours: &[f64], theirs: &[f64]| {
        let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
        let (m_ours, m_theirs, m_ratio) = (median(ours), median(theirs), median(&ratios));
        row(
            &format!("{what} (median of {rounds})"),
            "< 1 s",
            &format!(
                "{m_ours:.3} s; {baseline} {m_theirs:.3} s; ours/baseline {m_ratio:.2}x (median of pair ratios)"
            ),
            Some(m_ours < 1.0),
        );
        let (lo, hi) = range(ours);
        let (blo, bhi) = range(theirs);
        row(
            "  range: ours; baseline",
            "",
            &format!("{lo:.3}-{hi:.3} s; {blo:.3}-{bhi:.3} s"),
            None,
        );
    };
    figure(
        "webhook `workflow_job queued` -> machine on",
        "`qci run --qubes 4.2` spawned -> on",
        &start_ours,
        &start_base,
    );
    figure(
        "one machine, two queued jobs: first freed (off) -> on for the second",
        "hand-over between two `qci run --qubes 4.2`",
        &hand_ours,
        &hand_base,
    );
    row(
        "  load average (1 min)",
        "",
        &format!(
            "{load_before} before, {} after; {} cores",
            common::loadavg(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        None,
    );
}

/// The release `qci`, quiet but for warnings: its log would bury the
/// bench's progress.
fn release_qci(bin: &Path) -> Command {
    let mut cmd = Command::new(bin.join("qci"));
    cmd.env("QCI_BIN_DIR", bin)
        .env("QCI_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Polls the machine's power every 5 ms until it is `want`: when it was.
fn wait_power(host: &Host, want: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if host.power(MACHINE) == want {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{MACHINE} never went {want}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Seconds from one queued job's webhook to its machine on; returns once
/// the runner has exited and the machine is off and free again.
fn start_by_webhook(host: &Host, id: u64) -> f64 {
    assert_eq!(host.power(MACHINE), "off");
    let sent = Instant::now();
    let code = host
        .github
        .queue_actions_job(id, "bench", &LABELS, "on: push\n", &[]);
    assert_eq!(code, 202);
    let on = wait_power(host, "on", Duration::from_secs(30));
    host.wait_off_and_free(MACHINE, Duration::from_secs(60));
    (on - sent).as_secs_f64()
}

/// Seconds from job `first`'s machine off to its start for job `second`,
/// both queued at once; returns once both are done.
fn handover_by_webhook(host: &Host, first: u64, second: u64) -> f64 {
    assert_eq!(host.power(MACHINE), "off");
    for id in [first, second] {
        let code = host
            .github
            .queue_actions_job(id, "bench", &LABELS, "on: push\n", &[]);
        assert_eq!(code, 202);
    }
    let waiter = format!("actions-{second}");
    let gap = handover(host, || host.waiting() == [waiter.as_str()]);
    host.wait_off_and_free(MACHINE, Duration::from_secs(60));
    gap
}

/// Once the machine is on and `waiting` says the second job waits for it:
/// seconds from the machine off (freed) to on again.
fn handover(host: &Host, waiting: impl FnMut() -> bool) -> f64 {
    wait_power(host, "on", Duration::from_secs(30));
    support::wait_for(
        "the second job in the pool's FIFO",
        Duration::from_secs(10),
        waiting,
    );
    let freed = wait_power(host, "off", Duration::from_secs(60));
    let on = wait_power(host, "on", Duration::from_secs(30));
    (on - freed).as_secs_f64()
}

/// A repository whose one step holds the machine as the runner does.
struct Repo {
    url: PathBuf,
    sha: String,
}

impl Repo {
    /// In the host's directory, where the machine's user can read it.
    fn new(host_dir: &Path) -> Self {
        let dir = host_dir.join("baseline-repo");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(".qci.toml"),
            format!("[[steps]]\nname = \"hold\"\ncommand = \"{HOLD}\"\ntimeout = \"5m\"\n"),
        )
        .unwrap();
        support::git(&dir, &["init", "-q"]);
        support::git(&dir, &["add", "."]);
        support::git(&dir, &["commit", "-qm", "bench"]);
        let sha = support::git(&dir, &["rev-parse", "HEAD"]);
        Self { url: dir, sha }
    }
}

/// The pool's own lease-and-start, without the engine: `qci run --qubes`
/// on the same host config and machine.
struct Baseline<'a> {
    host: &'a Host,
    bin: &'a Path,
    repo: &'a Repo,
}

impl Baseline<'_> {
    fn spawn(&self, job: &str) -> Child {
        release_qci(self.bin)
            .args(["run", "--qubes", "4.2", "--repo"])
            .arg(&self.repo.url)
            .args(["--commit", &self.repo.sha, "--job", job, "--config"])
            .arg(self.host.dir.join("host.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qci run")
    }

    fn finish(&self, child: Child) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "qci run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Seconds from `qci run` spawned to the machine on.
    fn start(&self, round: usize) -> f64 {
        assert_eq!(self.host.power(MACHINE), "off");
        let spawned = Instant::now();
        let child = self.spawn(&format!("base-start-{round}"));
        let on = wait_power(self.host, "on", Duration::from_secs(30));
        self.finish(child);
        self.host
            .wait_off_and_free(MACHINE, Duration::from_secs(60));
        (on - spawned).as_secs_f64()
    }

    /// Seconds from the first `qci run`'s machine off to on for the second,
    /// which waited in the pool's FIFO.
    fn handover(&self, round: usize) -> f64 {
        assert_eq!(self.host.power(MACHINE), "off");
        let first = self.spawn(&format!("base-first-{round}"));
        let waiter = format!("base-second-{round}");
        let mut second = None;
        let gap = handover(self.host, || {
            second.get_or_insert_with(|| self.spawn(&waiter));
            self.host.waiting() == [waiter.as_str()]
        });
        self.finish(first);
        self.finish(second.unwrap());
        self.host
            .wait_off_and_free(MACHINE, Duration::from_secs(60));
        gap
    }
}
