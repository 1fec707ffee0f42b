//! Leases under load: many jobs of random length from several concurrent
//! `qci run --qubes` processes over a pool of 4 machines, through the
//! release binaries, as a hypervisor script would start them.
//!
//! Checks, and prints:
//! - double leases: from the lease-interval log (no two intervals on one
//!   machine overlap) and from the hypervisor's side (local machines keep a
//!   history of their marker: no other job's marker is set while one is;
//!   libvirt keeps none, so there every lease's marker, read back after it
//!   was set, must name its own job, and every marker is gone at the end);
//! - every job ran exactly once (each step appends its job id to a file);
//! - hand-over: from a machine freeing to the next waiting job holding it,
//!   median and p99 (the goal is p99 < 1 s).
//!
//! 1,000 jobs on `local` machines, then 100 on libvirt's test driver (each
//! domain paired with an emulated dom0), both scaled by QCI_BENCH_SCALE.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/pool_support/mod.rs"]
mod pool_support;
#[path = "../tests/support/mod.rs"]
mod support;

use pool_support::{Host, Libvirtd, Repo};
use qci_pool::lease::LeaseInterval;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MACHINES: usize = 4;
const PROCESSES: usize = 8;

fn main() {
    let _ = common::release_dir();
    let jobs = common::scaled(1000, 20) as usize;
    let mut host = Host::new();
    host.pool_keys = "boot_timeout = \"2m\"\nqueue_timeout = \"2h\"\n".into();
    for i in 1..=MACHINES {
        host.local(&format!("emu-{i}"), "4.2");
    }
    run("local", &host, jobs, |_| Vec::new());

    let Some(lv) = Libvirtd::start() else {
        println!("leases (libvirt): skipped, libvirtd is missing");
        return;
    };
    let mut host = Host::new();
    host.pool_keys = "boot_timeout = \"2m\"\nqueue_timeout = \"2h\"\n".into();
    for i in 1..=MACHINES {
        let name = format!("lv-{i}");
        lv.domain(&name);
        host.machine(&format!(
            "name = \"{name}\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\nuri = \"{}\"\n\
             dom0 = \"emulated\"\nemulated_path = {:?}\n",
            lv.uri(),
            host.path(&format!("guests/{name}"))
        ));
    }
    let jobs = common::scaled(100, 10) as usize;
    run("libvirt", &host, jobs, |log| {
        // Every marker, read back once set, named its own job; none is left.
        let mut bad = Vec::new();
        for l in log {
            if !l
                .marker
                .as_deref()
                .unwrap_or("")
                .contains(&format!("job={}", l.job))
            {
                bad.push(format!("{}: marker {:?}", l.job, l.marker));
            }
        }
        for i in 1..=MACHINES {
            let left = std::process::Command::new("virsh")
                .args(["-q", "-c", &lv.uri(), "metadata", &format!("lv-{i}")])
                .args(["--uri", qci_pool::backend::libvirt::MARKER_URI])
                .output()
                .unwrap();
            if left.status.success() {
                bad.push(format!("lv-{i}: a marker is left"));
            }
        }
        bad
    });
}

/// Runs `jobs` jobs through `PROCESSES` concurrent `qci run` processes and
/// prints the figures; `markers` checks the hypervisor's side.
fn run(kind: &str, host: &Host, jobs: usize, markers: impl Fn(&[LeaseInterval]) -> Vec<String>) {
    let ran = host.path("ran.txt");
    // Steps run as the machines' user, who may not be us.
    std::fs::write(&ran, "").unwrap();
    std::fs::set_permissions(&ran, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    // 0 to 90 ms of work, picked from the job id (the job knows nothing else).
    let step = format!(
        "n=$(printf %s \"$QCI_JOB\" | cksum | cut -d' ' -f1); sleep 0.0$((n % 10)); echo \"$QCI_JOB\" >> '{}'",
        ran.display()
    );
    let repo = Repo::new(host, "repo", &step);
    // Create the machines and their first snapshots before timing.
    let pool = host.run(&["pool"]);
    assert_eq!(
        pool.status.code(),
        Some(0),
        "{}",
        pool_support::stderr(&pool)
    );

    let load_before = common::loadavg();
    let next = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    eprintln!("bench leases ({kind}): {jobs} jobs, {PROCESSES} processes, {MACHINES} machines");
    std::thread::scope(|s| {
        for _ in 0..PROCESSES {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= jobs {
                        break;
                    }
                    let job = format!("bench-{k:05}");
                    let out = host
                        .qci(&[
                            "run",
                            "--qubes",
                            "4.2",
                            "--repo",
                            repo.url(),
                            "--commit",
                            &repo.sha,
                            "--job",
                            &job,
                        ])
                        .output()
                        .expect("run qci");
                    if out.status.code() != Some(0) {
                        let err = pool_support::stderr(&out);
                        failures.lock().unwrap().push(format!(
                            "{job}: {:?} {}",
                            out.status.code(),
                            err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("")
                        ));
                    }
                    if k % 50 == 49 {
                        eprintln!("bench leases ({kind}): {} jobs done", k + 1);
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let load_after = common::loadavg();

    let log = host.lease_log();
    let overlaps = overlaps(&log);
    let mut marker_problems = markers(&log);
    if kind == "local" {
        for i in 1..=MACHINES {
            marker_problems.extend(marker_history(host, &format!("emu-{i}")));
        }
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&ran).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    let missing = (0..jobs)
        .filter(|k| !counts.contains_key(&format!("bench-{k:05}")))
        .count();
    let twice = counts.values().filter(|&&n| n > 1).count();
    let handovers = handovers(&log);
    let failures = failures.into_inner().unwrap();

    println!(
        "leases ({kind}): {jobs} jobs over {MACHINES} machines from {PROCESSES} concurrent qci run processes in {:.1} s ({:.2} jobs/s)",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  double leases: {} (lease-interval log: {} overlaps; hypervisor markers: {} problems)",
        overlaps.len() + marker_problems.len(),
        overlaps.len(),
        marker_problems.len()
    );
    for p in overlaps.iter().chain(&marker_problems).take(5) {
        println!("    {p}");
    }
    println!(
        "  jobs run exactly once: {}/{jobs} ({missing} never ran, {twice} ran twice); failed: {}",
        jobs - missing - twice,
        failures.len()
    );
    for f in failures.iter().take(5) {
        println!("    {f}");
    }
    if handovers.is_empty() {
        println!("  hand-over: no job was waiting when a machine freed");
    } else {
        let p99 = percentile(&handovers, 0.99);
        println!(
            "  hand-over (a machine frees -> the next waiting job holds it): n={}, median {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: p99 < 1000 ms: {})",
            handovers.len(),
            common::ms(common::median(&handovers)),
            common::ms(p99),
            common::ms(*handovers.iter().max().unwrap()),
            if p99 < Duration::from_secs(1) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    println!(
        "  load average (1 min): {load_before} before, {load_after} after; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

/// Pairs of leases of one machine whose intervals overlap.
fn overlaps(log: &[LeaseInterval]) -> Vec<String> {
    let mut by_machine: BTreeMap<&str, Vec<&LeaseInterval>> = BTreeMap::new();
    for l in log {
        by_machine.entry(&l.machine).or_default().push(l);
    }
    let mut out = Vec::new();
    for (machine, mut leases) in by_machine {
        leases.sort_by(|a, b| a.acquired_at.total_cmp(&b.acquired_at));
        for w in leases.windows(2) {
            let end = w[0].released_at.unwrap_or(f64::INFINITY);
            if end > w[1].acquired_at {
                out.push(format!("{machine}: {} and {} overlap", w[0].job, w[1].job));
            }
        }
    }
    out
}

/// A local machine's marker history: between one job's `set` and `clear`,
/// no other job's marker may be set.
fn marker_history(host: &Host, machine: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(host.machine_dir(machine).join("markers.log")).unwrap_or_default();
    let mut holder: Option<String> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace().skip(1);
        match (words.next(), words.nth(1)) {
            (Some("set"), Some(job)) => {
                if let Some(h) = &holder
                    && h != job
                {
                    out.push(format!("{machine}: {job} set its marker over {h}'s"));
                }
                holder = Some(job.to_owned());
            }
            (Some("clear"), _) => holder = None,
            _ => {}
        }
    }
    out
}

/// For each lease taken by a job that was already waiting when the
/// previous lease of that machine ended: the gap between the two.
fn handovers(log: &[LeaseInterval]) -> Vec<Duration> {
    let mut by_machine: BTreeMap<&str, Vec<&LeaseInterval>> = BTreeMap::new();
    for l in log {
        by_machine.entry(&l.machine).or_default().push(l);
    }
    let mut out = Vec::new();
    for leases in by_machine.values_mut() {
        leases.sort_by(|a, b| a.acquired_at.total_cmp(&b.acquired_at));
        for w in leases.windows(2) {
            if let Some(freed) = w[0].released_at
                && w[1].waited_since < freed
            {
                out.push(Duration::from_secs_f64((w[1].acquired_at - freed).max(0.0)));
            }
        }
    }
    out
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}
