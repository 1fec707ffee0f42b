//! Webhook intake of `qci serve`: signed GitHub pushes per second accepted
//! *and committed* (a 202 comes only after the SQLite commit), and the
//! latency of each, against a minimal reference-style Flask service (an
//! HMAC check and a file append) measured in the same run with the same
//! client. The target (issue 10): at least 2,000/s with p99 under 20 ms.
//!
//! Each run sends N distinct pushes (distinct branches, so every one
//! becomes a job) over C keep-alive connections; runs alternate
//! between the two servers and the medians are reported. QCI_BENCH_SCALE
//! shrinks N. The load average is printed, since the machine is shared.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "bench webhook secret";
const CONNECTIONS: usize = 8;
const RUNS: usize = 5;

fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/release")
        .to_owned();
    if !dir.join("qci").is_file() {
        eprintln!(
            "webhooks: qci is not built in {}: run scripts/bench",
            dir.display()
        );
        std::process::exit(2);
    }
    dir
}

fn scale() -> f64 {
    std::env::var("QCI_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A request ready to send: delivery id, body, signature.
struct Delivery {
    id: String,
    body: Vec<u8>,
    signature: String,
}

fn deliveries(run: usize, n: usize) -> Vec<Delivery> {
    let template: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crates/qci-server/tests/fixtures/push.json"
        ))
        .expect("the push fixture"),
    )
    .unwrap();
    (0..n)
        .map(|i| {
            let mut v = template.clone();
            v["ref"] = format!("refs/heads/bench-{run}-{i}").into();
            v["after"] = format!("{:040x}", run * 10_000_000 + i + 1).into();
            let body = serde_json::to_vec(&v).unwrap();
            Delivery {
                id: format!("bench-{run}-{i}"),
                signature: qci_server::webhook::sign(SECRET.as_bytes(), &body),
                body,
            }
        })
        .collect()
}

struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time the server spent per webhook (user + system): a figure the
    /// load of a shared machine changes far less than the rates.
    cpu: Duration,
}

/// User + system CPU time of a process so far, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// [`load`] while charging the server process `pid` for its CPU time.
fn measure(pid: u32, url: &str, batch: Vec<Delivery>) -> Figures {
    let n = batch.len() as u32;
    let before = cpu_time(pid);
    let mut f = load(url, batch);
    // Let the server finish what a request left it (its GitHub poster).
    std::thread::sleep(Duration::from_millis(500));
    f.cpu = (cpu_time(pid) - before) / n;
    f
}

/// Sends every delivery to `url` over `CONNECTIONS` connections; every
/// answer must be 202.
fn load(url: &str, batch: Vec<Delivery>) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CONNECTIONS)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let batch = Arc::new(batch);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (client, batch, next, url) =
                    (client.clone(), batch.clone(), next.clone(), url.to_owned());
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(d) = batch.get(i) else { break };
                        let t = Instant::now();
                        let reply = client
                            .post(&url)
                            .header("X-GitHub-Event", "push")
                            .header("X-GitHub-Delivery", &d.id)
                            .header("X-Hub-Signature-256", &d.signature)
                            .header("content-type", "application/json")
                            .body(d.body.clone())
                            .send()
                            .await
                            .expect("an answer");
                        assert_eq!(reply.status().as_u16(), 202, "{url}");
                        let _ = reply.bytes().await;
                        times.push(t.elapsed());
                    }
                    times
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.extend(t.await.unwrap());
        }
        let elapsed = start.elapsed();
        times.sort();
        let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        Figures {
            per_sec: times.len() as f64 / elapsed.as_secs_f64(),
            p50: pct(0.50),
            p99: pct(0.99),
            cpu: Duration::ZERO,
        }
    })
}

fn wait_up(port: u16) {
    let end = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "server on {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// `qci serve` with a fresh state and no machines (each delivery's job is
/// worked out after its 202, and ends at once: no machine runs 4.2); its
/// GitHub client talks to a local responder.
fn start_qci(bin: &Path, dir: &Path, github_port: u16) -> (Child, u16) {
    let port = free_port();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::set_permissions(
        dir.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(dir.join("token"), "bench-token").unwrap();
    // A secret file as its owner keeps it (qci refuses others reading it).
    std::fs::set_permissions(
        dir.join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(dir.join("state"));
    let d = dir.display();
    let config = format!(
        "[pool]\nstate_dir = \"{d}/state\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         public_url = \"http://127.0.0.1:{port}\"\ngithub_api_url = \"http://127.0.0.1:{github_port}\"\n\
         webhook_secret = {{ file = \"{d}/secret\" }}\ngithub_token = {{ file = \"{d}/token\" }}\n\
         [[server.repos]]\nslug = \"freedomofpress/securedrop-workstation\"\nqubes = [\"4.2\"]\n"
    );
    std::fs::write(dir.join("host.toml"), config).unwrap();
    let child = Command::new(bin.join("qci"))
        .args(["serve", "--config"])
        .arg(dir.join("host.toml"))
        .env("QCI_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("start qci serve");
    wait_up(port);
    (child, port)
}

/// Flask from PyPI, in a virtualenv under target/ (made once).
fn flask_python(target: &Path) -> PathBuf {
    let venv = target.join("bench-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import flask"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        eprintln!("webhooks: installing Flask into {}", venv.display());
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&python)
                .args(["-m", "pip", "install", "-q", "flask"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("webhooks: cannot install Flask (python3 -m venv, pip install flask)");
            std::process::exit(2);
        }
    }
    python
}

fn start_flask(python: &Path, dir: &Path) -> (Child, u16) {
    let port = free_port();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let child = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/webhooks/flask_ref.py"
        ))
        .arg(port.to_string())
        .arg(dir.join("secret"))
        .arg(dir.join("flask-out.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Flask");
    wait_up(port);
    (child, port)
}

/// A stand-in for GitHub that accepts every status at once, and has no
/// `.qci.toml` for any commit (404 to every read).
fn start_github() -> qci_test_http::HttpServer {
    let app = axum::Router::new().fallback(|method: axum::http::Method| async move {
        if method == axum::http::Method::GET {
            (
                axum::http::StatusCode::NOT_FOUND,
                "{\"message\":\"Not Found\"}",
            )
        } else {
            (axum::http::StatusCode::CREATED, "{}")
        }
    });
    qci_test_http::HttpServer::start("fake-github", app)
}

/// A warm-up (connections, pages), then `n` measured webhooks; stops the server.
fn one_run(name: &str, child: Child, port: u16, seed: usize, n: usize) -> Figures {
    let url = format!("http://127.0.0.1:{port}/webhook");
    load(&url, deliveries(seed + 100, 200));
    let f = measure(child.id(), &url, deliveries(seed, n));
    stop(child);
    eprintln!(
        "webhooks: {name:<9} {:>5.0}/s p99 {:>5.1} ms, CPU {:>4.0} us/webhook",
        f.per_sec,
        f.p99.as_secs_f64() * 1e3,
        f.cpu.as_secs_f64() * 1e6
    );
    f
}

fn median<T: Copy + PartialOrd>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let bin = release_dir();
    let target = bin.parent().unwrap().to_owned();
    let n = ((4000.0 * scale()) as usize).max(200);
    let python = flask_python(&target);
    let github = start_github();
    let scratch = tempfile::tempdir().unwrap();
    let load_before = loadavg();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let (child, port) = start_qci(&bin, scratch.path(), github.addr().port());
        ours.push(one_run("qci serve", child, port, run * 2, n));
        let (child, port) = start_flask(&python, scratch.path());
        theirs.push(one_run("Flask", child, port, run * 2 + 1, n));
    }
    let summary = |figs: &[Figures]| {
        let mut rate: Vec<f64> = figs.iter().map(|f| f.per_sec).collect();
        let mut p50: Vec<Duration> = figs.iter().map(|f| f.p50).collect();
        let mut p99: Vec<Duration> = figs.iter().map(|f| f.p99).collect();
        let mut cpu: Vec<Duration> = figs.iter().map(|f| f.cpu).collect();
        (
            median(&mut rate),
            median(&mut p50),
            median(&mut p99),
            median(&mut cpu),
        )
    };
    let (our_rate, our_p50, our_p99, our_cpu) = summary(&ours);
    let (ref_rate, ref_p50, ref_p99, ref_cpu) = summary(&theirs);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "webhooks: {n} signed pushes per run over {CONNECTIONS} connections, median of {RUNS} paired runs \
         (load average {load_before} before, {} after, {} cores)",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  qci serve (committed to SQLite, fsync) {our_rate:>7.0}/s  p50 {:>5.1} ms  p99 {:>5.1} ms  CPU {:>5.0} us/webhook  (target >= 2000/s, p99 < 20 ms)",
        ms(our_p50),
        ms(our_p99),
        us(our_cpu)
    );
    println!(
        "  Flask reference (file append)          {ref_rate:>7.0}/s  p50 {:>5.1} ms  p99 {:>5.1} ms  CPU {:>5.0} us/webhook",
        ms(ref_p50),
        ms(ref_p99),
        us(ref_cpu)
    );
    println!(
        "  ratio: {:.2}x the throughput of the reference",
        our_rate / ref_rate
    );
}
