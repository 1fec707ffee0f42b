//! Output volume, as a user sees it: `qci run --local` of a project whose
//! step prints a flood of lines, stdout to /dev/null.
//!
//! - Memory: the peak RSS (VmHWM) of the runner, `qci-dom0`, read by a last
//!   step from `/proc/$PPID/status` (the step's parent is the runner), for
//!   1 GiB of 1-byte lines, of empty lines and of 95-byte lines, and for
//!   4 GiB of 95-byte lines. The largest peak of any process of the job
//!   (`getrusage` of `qci run`'s descendants) is shown beside it.
//! - Throughput: 1 GiB of 95-byte lines, paired rounds of the job and of the
//!   same command writing to /dev/null; the figure is the median job.
//! - The reference-style runner on 1/16 of that volume, once (it holds the
//!   whole output in memory and logs line by line), for comparison.
//! - In-process: the step executor and log writer alone
//!   (`qci_core::step::run_step` into a `LogWriter`, echo to /dev/null).
//!
//! `QCI_BENCH_SCALE` scales the volumes.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod common;

use common::{
    MIB, MIN_PAIRS, Qci, Reference, median, mib_per_s, ms, paired, range, release_dir, row, scaled,
    scratch, shell, timed,
};
use qci_core::log::LogWriter;
use qci_core::pipeline::Step;
use qci_core::step::{StepContext, StepOutcome, run_step};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// 94 characters and the newline.
const LINE: &str = "qci benchmark line of moderate length ........................................................";
const GIB: u64 = 1 << 30;
const RSS_GOAL_MIB: f64 = 32.0;
const THROUGHPUT_GOAL: f64 = 300.0;
/// What the log adds to each line of the `flood` step:
/// `2026-11-22T10:15:00.123Z [flood] `.
const LOG_PREFIX: u64 = 33;
/// The last step: the runner's peak RSS, into the log.
const HWM_STEP: &str = "sed -n 's/^VmHWM:[[:space:]]*//p' /proc/$PPID/status";

fn flood(line: &str, bytes: u64) -> String {
    format!("yes '{line}' | head -c {bytes}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child") => return child(Path::new(&args[2]), args[3].parse().expect("byte count")),
        Some("--job") => return job_child(Path::new(&args[2]), Path::new(&args[3])),
        _ => {}
    }
    let bin = release_dir();
    let dir = scratch();
    let qci = Qci::new(&bin, &dir.path().join("state"));
    let project = dir.path().join("project");
    std::fs::create_dir(&project).expect("project dir");

    let gib = scaled(GIB, 1 << 20);
    let size = |bytes: u64| match bytes {
        b if b >= GIB => format!("{:.0} GiB", b as f64 / GIB as f64),
        b => format!("{:.0} MiB", b as f64 / MIB),
    };
    // Every output line is a log line, 34 bytes longer (its stamp and step
    // name): 1 GiB of empty lines makes 34 GiB of log. Where the disk has
    // no room for that, less output is measured, and the row says so.
    let room = free_bytes(dir.path()) / 10 * 8;
    let fits = |line: &str, bytes: u64| {
        let per_line = line.len() as u64 + 1;
        let cap = room / (per_line + LOG_PREFIX) * per_line;
        (bytes.min(cap) / per_line * per_line).max(per_line)
    };
    let cases = [
        ("x", gib, "1-byte"),
        ("", gib, "empty"),
        (LINE, gib, "95-byte"),
        (LINE, 4 * gib, "95-byte"),
    ];
    for (line, wanted, kind) in cases {
        let bytes = fits(line, wanted);
        let what = format!("{} of {kind} lines", size(bytes));
        let command = flood(line, bytes);
        common::write_pipeline(&project, &[("flood", &command), ("hwm", HWM_STEP)]);
        eprintln!("output: {what}");
        let (hwm, largest, t) = peak_rss(dir.path(), &project);
        let ok = hwm <= RSS_GOAL_MIB && largest <= RSS_GOAL_MIB;
        row(
            &format!("runner peak RSS, {what}"),
            &format!("<= {RSS_GOAL_MIB:.0} MiB"),
            &format!(
                "qci-dom0 {hwm:.1} MiB; largest process of the job {largest:.1} MiB ({:.1} s)",
                t.as_secs_f64()
            ),
            Some(ok),
        );
    }

    let command = flood(LINE, gib);
    common::write_pipeline(&project, &[("flood", &command)]);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..MIN_PAIRS {
        let base = format!("{command} > /dev/null");
        paired(
            i,
            || {
                let job = qci.run(&project, false);
                qci.forget(&job);
                ours.push(job.elapsed);
            },
            || theirs.push(shell(&project, &base)),
        );
        eprintln!(
            "output: throughput: job {:.0} ms, to /dev/null {:.0} ms",
            ms(ours[i]),
            ms(theirs[i])
        );
    }
    let rates: Vec<f64> = ours.iter().map(|&t| mib_per_s(gib, t)).collect();
    let base: Vec<f64> = theirs.iter().map(|&t| mib_per_s(gib, t)).collect();
    let (lo, hi) = range(&rates);
    let rate = median(&rates);
    row(
        &format!(
            "throughput of a whole job, {:.0} MiB of 95-byte lines",
            gib as f64 / MIB
        ),
        &format!(">= {THROUGHPUT_GOAL:.0} MiB/s, median of {MIN_PAIRS}"),
        &format!(
            "{rate:.0} MiB/s (range {lo:.0}-{hi:.0}); the command to /dev/null {:.0} MiB/s",
            median(&base)
        ),
        Some(rate >= THROUGHPUT_GOAL),
    );

    let small = (gib / 16).max(1 << 20);
    let reference = Reference::new();
    let t = reference.run(
        &project,
        &dir.path().join("reference-work"),
        &dir.path().join("reference.log"),
        &[&format!("sh -c \"{}\"", flood(LINE, small))],
    );
    row(
        &format!(
            "  reference-style Python runner, {:.0} MiB of 95-byte lines",
            small as f64 / MIB
        ),
        "",
        &format!("{:.0} MiB/s", mib_per_s(small, t)),
        None,
    );

    in_process(&dir.path().join("in-process"), gib);
}

/// Runs the job in a child process (this bench again, with `--job`), so
/// that the largest peak RSS among its descendants is this job's alone;
/// then reads the runner's peak RSS from the log. In MiB.
fn peak_rss(dir: &Path, project: &Path) -> (f64, f64, Duration) {
    let exe = std::env::current_exe().expect("bench executable path");
    let out = Command::new(exe)
        .arg("--job")
        .arg(dir.join("state"))
        .arg(project)
        .stdin(Stdio::null())
        .output()
        .expect("start the job child");
    assert!(out.status.success(), "the job child failed: {}", out.status);
    let report = String::from_utf8_lossy(&out.stdout);
    let mut fields = report.split_whitespace();
    let (nanos, largest_kib, log) = (
        fields.next().and_then(|f| f.parse().ok()).expect("nanos"),
        fields
            .next()
            .and_then(|f| f.parse::<f64>().ok())
            .expect("max rss"),
        Path::new(fields.next().expect("log path")).to_owned(),
    );
    let text = tail(&log, 64 << 10);
    let hwm_kib: f64 = text
        .lines()
        .find_map(|l| l.split_once(" [hwm] ")?.1.strip_suffix(" kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in the log's end:\n{text}"));
    let _ = std::fs::remove_file(&log);
    (
        hwm_kib / 1024.0,
        largest_kib / 1024.0,
        Duration::from_nanos(nanos),
    )
}

/// `--job STATE PROJECT`: one job; prints `NANOS MAXRSS_KIB LOG`, the peak
/// RSS being the largest of any process of the job (all are waited for).
fn job_child(state: &Path, project: &Path) {
    let qci = Qci::new(&release_dir(), state);
    let job = qci.run(project, false);
    let work = qci
        .machine()
        .join("sd-dev/home/user/.qci/work")
        .join(&job.id);
    let _ = std::fs::remove_dir_all(work);
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    println!(
        "{} {} {}",
        job.elapsed.as_nanos(),
        usage.max_rss(),
        job.log.display()
    );
}

/// Bytes free for an unprivileged user on the file system of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    stat.blocks_available() * stat.fragment_size()
}

/// The last `n` bytes of a file, as text.
fn tail(path: &Path, n: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).expect("open the log");
    let len = file.metadata().expect("log metadata").len();
    file.seek(SeekFrom::Start(len.saturating_sub(n)))
        .expect("seek");
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).expect("read the log");
    String::from_utf8_lossy(&buf).into_owned()
}

/// The step executor and log writer alone, in a child process (this bench
/// again, with `--child`) so that its peak RSS is its own.
fn in_process(dir: &Path, bytes: u64) {
    std::fs::create_dir_all(dir).expect("in-process dir");
    let exe = std::env::current_exe().expect("bench executable path");
    let (mut ours, mut theirs, mut hwm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..MIN_PAIRS {
        let base = format!("{} > /dev/null", flood(LINE, bytes));
        paired(
            i,
            || {
                let status = Command::new(&exe)
                    .arg("--child")
                    .arg(dir)
                    .arg(bytes.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .expect("start the child runner");
                assert!(status.success(), "the child runner failed: {status}");
                let report = std::fs::read_to_string(dir.join("report")).expect("child report");
                let mut fields = report.split_whitespace().map(|f| f.parse::<u64>().unwrap());
                let nanos = fields.next().unwrap();
                ours.push(mib_per_s(bytes, Duration::from_nanos(nanos)));
                hwm.push(fields.next().unwrap() as f64 / 1024.0);
            },
            || theirs.push(mib_per_s(bytes, shell(dir, &base))),
        );
    }
    row(
        "  in-process: run_step + LogWriter, 95-byte lines",
        "",
        &format!(
            "{:.0} MiB/s, peak RSS {:.1} MiB; the command to /dev/null {:.0} MiB/s",
            median(&ours),
            median(&hwm),
            median(&theirs)
        ),
        None,
    );
}

/// Runs the step, then writes `NANOS VMHWM_KIB` to `dir/report`.
fn child(dir: &Path, bytes: u64) {
    let log_path = dir.join("job.log");
    let mut log =
        LogWriter::create(&log_path, Some(Box::new(std::io::stdout()))).expect("create the log");
    let step = Step {
        name: "output".into(),
        command: flood(LINE, bytes),
        timeout: Duration::from_secs(3600),
        env: BTreeMap::new(),
    };
    let ctx = StepContext {
        workdir: dir,
        env: Vec::new(),
        grace: Duration::from_secs(5),
        cancel: None,
        umask: nix::sys::stat::Mode::from_bits_truncate(0o022),
    };
    let (elapsed, outcome) = timed(|| run_step(&step, &ctx, &mut log).expect("run the step"));
    drop(log);
    assert_eq!(outcome, StepOutcome::Succeeded);
    let lines = bytes.div_ceil(LINE.len() as u64 + 1);
    let logged = count_lines(&log_path);
    assert_eq!(logged, lines, "lines in the log");
    std::fs::remove_file(&log_path).expect("remove the log");
    let report = format!("{} {}\n", elapsed.as_nanos(), vm_hwm_kib());
    std::fs::write(dir.join("report"), report).expect("write the report");
}

fn count_lines(path: &Path) -> u64 {
    use std::io::Read;
    let mut file = std::fs::File::open(path).expect("open the log");
    let mut buf = vec![0; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = file.read(&mut buf).expect("read the log");
        if n == 0 {
            return lines;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// This process's peak resident set size, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}
