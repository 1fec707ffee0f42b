//! Output volume: a step printing 1 GiB of lines through the real step
//! executor (`qci_core::step::run_step`) and a real `LogWriter` (log file in
//! a temporary directory, echo on stdout sent to /dev/null, as qci-dom0
//! echoes to its stdout), against the same command writing to /dev/null.
//!
//! The step runs in a child process (this bench re-executed with `--child`)
//! so the runner's own peak RSS (VmHWM) can be read at its end, without the
//! parent's or the step's memory mixed in. `QCI_BENCH_SCALE` scales the volume.

mod common;

use common::{MIB, mib_per_s, release_dir, scaled};
use qci_core::log::LogWriter;
use qci_core::pipeline::Step;
use qci_core::step::{StepContext, StepOutcome, run_step};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 95 bytes with its newline.
const LINE: &str = "qci benchmark line of moderate length ........................................................";

fn command(bytes: u64) -> String {
    format!("yes '{LINE}' | head -c {bytes}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child") => child(Path::new(&args[2]), args[3].parse().expect("byte count")),
        Some("--child-idle") => println!("{}", vm_hwm_kib()),
        _ => parent(),
    }
}

fn parent() {
    // Not needed here, but the benches run against a complete release build.
    release_dir();
    let bytes = scaled(1 << 30, 1 << 20);
    let lines = bytes.div_ceil(LINE.len() as u64 + 1);
    let scratch = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("bench executable path");

    eprintln!(
        "output: {:.1} MiB through run_step and LogWriter",
        bytes as f64 / MIB
    );
    let status = Command::new(&exe)
        .arg("--child")
        .arg(scratch.path())
        .arg(bytes.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("start the child runner");
    assert!(status.success(), "the child runner failed: {status}");
    let report = std::fs::read_to_string(scratch.path().join("report")).expect("child report");
    let mut fields = report.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    let (nanos, hwm_kib, logged) = (
        fields.next().unwrap(),
        fields.next().unwrap(),
        fields.next().unwrap(),
    );
    assert_eq!(logged, lines, "lines in the log");
    let ours = Duration::from_nanos(nanos);

    let idle = Command::new(&exe)
        .arg("--child-idle")
        .output()
        .expect("start the idle child");
    let idle_kib: u64 = String::from_utf8_lossy(&idle.stdout)
        .trim()
        .parse()
        .expect("idle VmHWM");

    eprintln!("output: baseline to /dev/null");
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{} > /dev/null", command(bytes)))
        .status()
        .expect("run the baseline");
    let base = start.elapsed();
    assert!(status.success(), "baseline failed: {status}");

    let ours = mib_per_s(bytes, ours);
    let base = mib_per_s(bytes, base);
    println!(
        "output: {:.1} MiB in {lines} lines of {} bytes",
        bytes as f64 / MIB,
        LINE.len() + 1
    );
    println!("  run_step + LogWriter {ours:.1} MiB/s (target >= 200 MiB/s)");
    println!("  sh -c 'CMD >/dev/null' {base:.1} MiB/s (baseline)");
    println!("  ratio               {:.3}x", ours / base);
    println!(
        "  runner peak RSS     {:.1} MiB (target < 32 MiB; same binary idle: {:.1} MiB)",
        hwm_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0
    );
}

/// Runs the step, then writes `NANOS VMHWM_KIB LOG_LINES` to `dir/report`.
fn child(dir: &Path, bytes: u64) {
    let log_path = dir.join("job.log");
    let mut log =
        LogWriter::create(&log_path, Some(Box::new(std::io::stdout()))).expect("create the log");
    let step = Step {
        name: "output".into(),
        command: command(bytes),
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
    let start = Instant::now();
    let outcome = run_step(&step, &ctx, &mut log).expect("run the step");
    let elapsed = start.elapsed();
    drop(log);
    assert_eq!(outcome, StepOutcome::Succeeded);
    let hwm = vm_hwm_kib();

    // Every line made it to the file, each with its prefix.
    let mut file = std::fs::File::open(&log_path).expect("open the log");
    let mut buf = vec![0; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = file.read(&mut buf).expect("read the log");
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    std::fs::remove_file(&log_path).expect("remove the log");
    let report = format!("{} {hwm} {lines}\n", elapsed.as_nanos());
    std::fs::write(dir.join("report"), report).expect("write the report");
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
