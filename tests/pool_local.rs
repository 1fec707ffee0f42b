//! `qci run --machine|--qubes`, `qci pool` and `qci nightly` over `local`
//! machines (emulated Qubes machines in directories), driven through the
//! real `qci` binary as a hypervisor script would.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod pool_support;
mod support;

use pool_support::{Host, Repo, job_of, stderr, stdout};
use std::time::Duration;
use support::wait_for;

#[test]
fn a_job_runs_on_a_reverted_machine_and_leaves_it_off_and_free_with_its_log_and_status() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    // The step fails if the machine still carries what a previous job left.
    let repo = Repo::new(
        &host,
        "repo",
        r#"test ! -e "$HOME/left-behind" && echo clean machine && touch "$HOME/left-behind""#,
    );
    let first = host.run_job(&["--machine", "emu-1"], &repo);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    let job = job_of(&first);
    let dom0_home = host.machine_dir("emu-1").join("machine/dom0/home/user");
    assert!(
        dom0_home.join("left-behind").exists(),
        "the step ran in dom0"
    );

    // Again: it passes only because the machine was reverted first.
    let second = host.run_job(&["--machine", "emu-1"], &repo);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}{}",
        stdout(&second),
        stderr(&second)
    );
    let err = stderr(&second);
    for phase in [
        "leased emu-1",
        "reverting to snapshot clean",
        "booting",
        "placing the job file",
        "running",
        "copying the log out of dom0",
        "powering off",
        "finished: success",
    ] {
        assert!(err.contains(phase), "no progress line {phase:?}:\n{err}");
    }

    // Off, free, marker cleared.
    let control = host.control("emu-1");
    assert_eq!(control["power"], "off");
    assert!(control["marker"].is_null(), "{control}");
    let pool = host.run(&["pool"]);
    let line = stdout(&pool)
        .lines()
        .find(|l| l.starts_with("emu-1"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains(" off ") && line.contains(" free ") && line.contains("clean"),
        "{line}"
    );

    // The log was followed live and copied out; the final status was posted.
    let log = host.host_log(&job);
    assert!(log.contains("[step] clean machine"), "{log}");
    assert!(stdout(&first).contains("[step] clean machine"));
    let states: Vec<String> = host.statuses(&job).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        states.first().map(String::as_str),
        Some("running"),
        "{states:?}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("success"),
        "{states:?}"
    );
    // The marker named the job while it ran.
    let leases = host.lease_log();
    assert_eq!(leases[0].job, job);
    assert!(
        leases[0]
            .marker
            .as_deref()
            .unwrap()
            .contains(&format!("job={job}"))
    );
    assert!(leases.iter().all(|l| l.released_at.is_some()));
}

#[test]
fn a_failing_step_exits_1_and_its_status_is_failure() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let repo = Repo::new(&host, "repo", "echo no; exit 4");
    let out = host.run_job(&["--qubes", "4.2"], &repo);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let job = job_of(&out);
    assert_eq!(host.statuses(&job).last().unwrap().0, "failure");
    assert_eq!(host.control("emu-1")["power"], "off");
}

#[test]
fn bad_input_exits_2_names_the_problem_and_touches_no_machine() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let repo = Repo::new(&host, "repo", "true");
    let sha = repo.sha.clone();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--machine", "nope", "--repo", repo.url(), "--commit", &sha],
            "no machine named \"nope\"",
        ),
        (
            vec!["--qubes", "9.9", "--repo", repo.url(), "--commit", &sha],
            "no machine runs Qubes \"9.9\"",
        ),
        (
            vec![
                "--machine",
                "emu-1",
                "--repo",
                repo.url(),
                "--commit",
                "abc123",
            ],
            "--commit: commit must be 40 hex digits",
        ),
        (
            vec![
                "--machine",
                "emu-1",
                "--repo=--upload-pack=x",
                "--commit",
                &sha,
            ],
            "cannot start with `-`",
        ),
        (
            vec![
                "--machine",
                "emu-1",
                "--repo",
                "ftp://example.org/x",
                "--commit",
                &sha,
            ],
            "use https://",
        ),
        (
            vec![
                "--machine",
                "emu-1",
                "--repo",
                repo.url(),
                "--commit",
                &sha,
                "--job",
                "../x",
            ],
            "--job",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["run"];
        all.extend(args.iter().copied());
        let out = host.run(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{all:?}: {}", stderr(&out));
    }
    assert!(!host.machine_dir("emu-1").exists(), "a machine was touched");

    // A malformed config: the line and the key are named.
    let bad = host.path("bad.toml");
    std::fs::write(&bad, "[pool]\nhost_id = \"h\"\nboot_timout = \"1m\"\n").unwrap();
    let out = support::qci()
        .args([
            "run",
            "--machine",
            "emu-1",
            "--repo",
            repo.url(),
            "--commit",
            &sha,
            "--config",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("line 3") && err.contains("boot_timout"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "[pool]\n[[pool.machines]]\nname = \"x\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\n",
    )
    .unwrap();
    let out = support::qci()
        .args(["pool", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("key `uri` is required for backend libvirt"),
        "{}",
        stderr(&out)
    );
    assert!(!host.machine_dir("emu-1").exists(), "a machine was touched");
}

#[test]
fn jobs_wait_in_line_and_each_takes_over_the_moment_the_machine_frees() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let release = host.path("release");
    let repo = host.held_repo(&release);
    let quick = Repo::new(&host, "quick", "echo quick");
    let first = host.start_held(&["--machine", "emu-1"], &repo, "first");
    let second = host.spawn_job(&["--qubes", "4.2"], &quick, "second");
    let store = qci_pool::lease::LeaseStore::open(&host.state(), "test-host").unwrap();
    wait_for("the second job to queue", Duration::from_secs(30), || {
        store.waiting().unwrap() == 1
    });
    let third = host.spawn_job(&["--machine", "emu-1"], &quick, "third");
    wait_for("the third job to queue", Duration::from_secs(30), || {
        store.waiting().unwrap() == 2
    });

    std::fs::write(&release, "").unwrap();
    for (child, job) in [(first, "first"), (second, "second"), (third, "third")] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{job}: {}", stderr(&out));
        if job != "first" {
            assert!(
                stderr(&out).contains("waiting for a free machine"),
                "{job}: {}",
                stderr(&out)
            );
        }
    }
    let log = host.lease_log();
    let order: Vec<&str> = log.iter().map(|l| l.job.as_str()).collect();
    assert_eq!(
        order,
        ["first", "second", "third"],
        "first come, first served"
    );
    for pair in log.windows(2) {
        assert!(
            pair[0].released_at.unwrap() <= pair[1].acquired_at,
            "leases overlap: {pair:?}"
        );
    }
}

#[test]
fn nightly_snapshots_after_a_clean_update_and_keeps_the_old_snapshot_when_an_update_fails() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    host.pool_keys.push_str(
        "shutdown_grace = \"20s\"\n[pool.nightly]\nkeep = 1\n\
         update_commands = [[\"sh\", \"-c\", \"echo updating dom0; touch $HOME/updated\"]]\n\
         salt_commands = [[\"sh\", \"-c\", \"echo salt states applied to $0\", \"{dev_vm}\"]]\n",
    );
    let out = host.run(&["nightly"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let today = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("qci: nightly emu-1: snapshot "))
        .expect("a snapshot line")
        .to_owned();
    assert!(today.starts_with("qci-20"), "{today}");
    let snapshot_home = host
        .machine_dir("emu-1")
        .join("snapshots")
        .join(&today)
        .join("dom0/home/user");
    assert!(
        snapshot_home.join("updated").exists(),
        "the snapshot holds the update"
    );
    let log = std::fs::read_to_string(
        host.state()
            .join("logs")
            .join(format!("nightly-{}-emu-1.log", &today[4..])),
    )
    .unwrap();
    assert!(
        log.contains("updating dom0") && log.contains("salt states applied to sd-dev"),
        "{log}"
    );

    // Jobs now start from the nightly snapshot.
    let repo = Repo::new(&host, "repo", r#"test -e "$HOME/updated""#);
    let job = host.run_job(&["--machine", "emu-1"], &repo);
    assert_eq!(job.status.code(), Some(0), "{}", stderr(&job));
    assert!(stderr(&job).contains(&format!("reverting to snapshot {today}")));

    // A failing update: no new snapshot, the old one stays in use.
    let before = std::fs::read_to_string(host.machine_dir("emu-1").join("control.json")).unwrap();
    host.pool_keys = host
        .pool_keys
        .replace("touch $HOME/updated", "echo mirror down; exit 7");
    let out = host.run(&["nightly", "--machine", "emu-1"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("exited with 7; no snapshot taken"),
        "{}",
        stdout(&out)
    );
    let after = host.control("emu-1");
    assert_eq!(host.snapshot_names("emu-1"), ["clean", today.as_str()]);
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(
        before["snapshots"], after["snapshots"],
        "the snapshots are unchanged"
    );
    assert_eq!(after["power"], "off");
}

#[test]
fn nightly_takes_no_snapshot_after_an_unclean_stop() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    // The update leaves a process behind that ignores the shutdown request.
    host.pool_keys.push_str(
        "shutdown_grace = \"2s\"\n[pool.nightly]\nsalt_commands = []\n\
         update_commands = [[\"sh\", \"-c\", \"(trap '' TERM; sleep 60) > /dev/null 2>&1 &\"]]\n",
    );
    let out = host.run(&["nightly"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("did not shut down within 2s; no snapshot taken"),
        "{}",
        stdout(&out)
    );
    assert_eq!(host.snapshot_names("emu-1"), ["clean"]);
    assert_eq!(
        host.control("emu-1")["power"],
        "off",
        "forced off after the grace period"
    );
}

#[test]
fn the_host_takes_in_a_jobs_archive_through_the_guest_channel_and_refuses_a_hostile_one() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let archives = host
        .machine_dir("emu-1")
        .join("machine/dom0/var/lib/qci/artifacts");
    // The steps run in dom0 and may write the archive themselves: as
    // dom0's collector would, then as an attacker would.
    let pack = |name: &str, extra: &str| {
        let command = format!(
            "mkdir -p out/files/results && echo built > out/files/build.log && \
             echo '<testsuites/>' > out/files/results/junit.xml && \
             echo files/results/junit.xml > out/reports && {extra} \
             mkdir -p {dir} && tar -C out -cf {dir}/$QCI_JOB.tar files reports",
            dir = archives.display()
        );
        Repo::new(&host, name, &command)
    };
    let out = host.run_job(&["--machine", "emu-1"], &pack("good", ""));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let job = job_of(&out);
    let dir = host.state().join("artifacts").join(&job);
    assert_eq!(
        std::fs::read_to_string(dir.join("files/results/junit.xml")).unwrap(),
        "<testsuites/>\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("reports")).unwrap(),
        "files/results/junit.xml\n"
    );
    assert!(
        !host
            .state()
            .join("artifacts")
            .join(format!("{job}.tar"))
            .exists()
    );
    // The host's line comes after dom0's, in the log's format.
    let log = host.host_log(&job);
    let last = log.lines().last().unwrap();
    assert!(
        last.ends_with(" [host] artifacts: 2 files (20 bytes), 1 reports"),
        "{log}"
    );

    let out = host.run_job(
        &["--machine", "emu-1"],
        &pack("hostile", "mkfifo out/files/pipe &&"),
    );
    assert_eq!(out.status.code(), Some(0), "the job keeps its own result");
    let job = job_of(&out);
    assert_eq!(host.statuses(&job).last().unwrap().0, "success");
    let log = host.host_log(&job);
    assert!(
        log.lines().last().unwrap().ends_with(
            " [host] artifacts: archive refused: tar entry \"files/pipe\" refused: fifos are not allowed"
        ),
        "{log}"
    );
    assert!(!host.state().join("artifacts").join(&job).exists());
}
