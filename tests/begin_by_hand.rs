//! A job started by hand inside Qubes: `qci-vm begin JOB --source DIR` (or
//! `--repo URL --commit SHA`) typed in the dev VM of an emulated machine
//! writes its own job file and runs like a job the host placed.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::path::Path;
use std::process::Output;
use support::{Scratch, states};

/// Runs a shell command line in the dev VM, as a person at its terminal.
fn in_dev_vm(s: &Scratch, command: &str) -> Output {
    s.qrexec(
        "dom0",
        "sd-dev",
        "qubes.VMShell",
        format!("{command}; exit\n").as_bytes(),
    )
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn job_file(s: &Scratch, job: &str) -> serde_json::Value {
    let path = s
        .machine()
        .join("sd-dev/home/user/.qci/jobs")
        .join(format!("{job}.json"));
    serde_json::from_slice(&std::fs::read(path).expect("job file written")).unwrap()
}

#[test]
fn begin_with_source_writes_the_job_file_runs_it_and_refuses_the_same_id_again() {
    let s = Scratch::new();
    s.prepare_machine();
    let project = s.one_step("hello", "echo hello by hand", "");
    let begin = format!("qci-vm begin myjob --source {}", quoted(&project));

    let out = in_dev_vm(&s, &begin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[hello] hello by hand"),
        "live log: {stdout}"
    );

    let job = job_file(&s, "myjob");
    assert_eq!(job["reason"], "manual");
    assert_eq!(job["author"], "user");
    assert_eq!(job["context"], "qci/manual");
    let canonical = std::fs::canonicalize(&project).unwrap();
    assert_eq!(job["source"], canonical.to_str().unwrap());
    assert_eq!(job["repository"]["url"], canonical.to_str().unwrap());
    assert_eq!(
        job["sink"],
        serde_json::json!({"kind": "file", "path": ".qci/status/myjob.jsonl"})
    );

    let recorded = states(&s.status_file("myjob"));
    assert_eq!(recorded.first().map(|s| s.0.as_str()), Some("running"));
    assert_eq!(recorded.last().map(|s| s.0.as_str()), Some("success"));
    assert_eq!(
        recorded.iter().filter(|s| s.0 != "running").count(),
        1,
        "{recorded:?}"
    );
    let log = s.job_log("myjob");
    assert!(log.contains("[hello] hello by hand"), "{log}");

    // The same id again: refused before anything runs.
    let again = in_dev_vm(&s, &begin);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("qci-vm: job file") && stderr.contains("myjob.json already exists"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("qci-vm")).count(),
        1,
        "{stderr}"
    );
    assert!(again.stdout.is_empty(), "no second run");
    assert_eq!(states(&s.status_file("myjob")), recorded, "no new statuses");
    assert_eq!(s.job_log("myjob"), log, "no second run in dom0");
}

#[test]
fn begin_with_repo_and_commit_runs_the_commit_and_a_missing_job_file_says_how_to_start_one() {
    let s = Scratch::new();
    s.prepare_machine();
    let repo = s.project(
        "repo",
        &[
            (
                ".qci.toml",
                "[[steps]]\nname = \"show\"\ncommand = \"cat version.txt\"\n",
            ),
            ("version.txt", "committed\n"),
        ],
    );
    let git = |args: &[&str]| support::git(&repo, args);
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    let sha = git(&["rev-parse", "HEAD"]);
    std::fs::write(repo.join("version.txt"), "edited\n").unwrap();

    let out = in_dev_vm(
        &s,
        &format!(
            "qci-vm begin byrepo --repo {} --commit {sha} --ref refs/heads/main",
            quoted(&repo)
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[show] committed"), "{stdout}");
    let job = job_file(&s, "byrepo");
    assert_eq!(job["commit"], sha.as_str());
    assert_eq!(job["ref"], "refs/heads/main");
    assert!(job.get("source").is_none(), "{job}");
    let recorded = states(&s.status_file("byrepo"));
    assert_eq!(recorded.last().map(|s| s.0.as_str()), Some("success"));

    let out = in_dev_vm(&s, "qci-vm begin nosuchjob");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no job file") && stderr.contains("--source DIR"),
        "{stderr}"
    );
}
