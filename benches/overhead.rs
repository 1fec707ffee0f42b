//! Fixed cost of a job: `qci run --local` (release binaries, emulated
//! machine in a temporary state directory) on a project whose three steps
//! are `true`, against running `sh -c true` three times directly.
//!
//! One warm-up run creates the machine; then 10 timed runs of each
//! (`QCI_BENCH_SCALE` scales the count, at least 3).

mod common;

use common::{median, ms, release_dir, scaled};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = r#"[[steps]]
name = "one"
command = "true"

[[steps]]
name = "two"
command = "true"

[[steps]]
name = "three"
command = "true"
"#;

fn main() {
    let bin = release_dir();
    let runs = scaled(10, 3) as usize;
    let scratch = tempfile::tempdir().expect("tempdir");
    // Run as root, the machine's qubes run as an unprivileged user, who
    // must reach the machine and read the project.
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("open the scratch area");
    let project = scratch.path().join("project");
    std::fs::create_dir(&project).expect("project dir");
    std::fs::write(project.join(".qci.toml"), PIPELINE).expect("write .qci.toml");
    let state = scratch.path().join("state");

    eprintln!("overhead: warm-up run (creates the machine)");
    qci_run(&bin, &project, &state);
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..runs {
        ours.push(qci_run(&bin, &project, &state));
        baseline.push(three_trues(&project));
    }

    let (m_ours, m_base) = (median(&ours), median(&baseline));
    let min = |t: &[Duration]| *t.iter().min().unwrap();
    println!("overhead: qci run --local, 3 steps `true`, {runs} runs after 1 warm-up");
    println!(
        "  qci run --local     median {:.1} ms, min {:.1} ms",
        ms(m_ours),
        ms(min(&ours))
    );
    println!(
        "  sh -c true x3       median {:.1} ms, min {:.1} ms (baseline)",
        ms(m_base),
        ms(min(&baseline))
    );
    println!(
        "  overhead            {:.1} ms (target < 300 ms)",
        ms(m_ours.saturating_sub(m_base))
    );
    println!(
        "  ratio               {:.0}x",
        m_ours.as_secs_f64() / m_base.as_secs_f64()
    );
}

/// One `qci run --local PROJECT --state-dir STATE`, which must succeed.
fn qci_run(bin: &Path, project: &Path, state: &Path) -> Duration {
    let start = Instant::now();
    let out = Command::new(bin.join("qci"))
        .args(["run", "--local"])
        .arg(project)
        .arg("--state-dir")
        .arg(state)
        .env("QCI_BIN_DIR", bin)
        .stdin(Stdio::null())
        .output()
        .expect("run qci");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "qci run --local failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// The steps alone: `sh -c true` three times, one after the other.
fn three_trues(dir: &Path) -> Duration {
    let start = Instant::now();
    for _ in 0..3 {
        let status = Command::new("sh")
            .args(["-c", "true"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .status()
            .expect("run sh");
        assert!(status.success());
    }
    start.elapsed()
}
