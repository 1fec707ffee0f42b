//! `qci run --local` end to end: the real `qci`, `qci-vm` and `qci-dom0`
//! binaries, the real service files and policy, on an emulated machine.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::time::Duration;
use support::{Scratch, hold_until, job_id, parse_log, states, wait_for};

#[test]
fn sample_succeeds_with_a_live_log_and_running_then_success() {
    let s = Scratch::new();
    let (code, lines, ended) = s.run_watched(&s.example("sample"));
    let stdout: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert_eq!(code, 0, "stdout:\n{stdout}");

    // Live: the first line of `make test` reached us while it still ran
    // (it prints for 2 s), not all at the end.
    let first = lines
        .iter()
        .find(|(_, l)| l.ends_with("[test] test: boots_sd_log ok"))
        .expect("the first test on stdout");
    assert!(
        ended.duration_since(first.0) >= Duration::from_millis(1000),
        "the first test's line arrived only at the end"
    );

    // The dom0 log: every line of the three steps, in order, each stamped on arrival.
    let job = job_id(&stdout);
    let log_path = s.dom0_log_dir().join(format!("{job}.log"));
    assert!(stdout.contains(&format!("qci: log: {}", log_path.display())));
    let log = parse_log(&std::fs::read_to_string(&log_path).unwrap());
    let steps: Vec<(&str, &str)> = log
        .iter()
        .filter(|l| l.step != "qci")
        .map(|l| (l.step.as_str(), l.text.as_str()))
        .collect();
    assert_eq!(steps[0].0, "clone");
    assert!(steps[0].1.starts_with("clone: code is in "));
    assert_eq!(
        steps[1..],
        [
            ("dev", "dev: provisioning (CI=true)"),
            // Its colours stay in the log (SGR only), for the job page.
            ("dev", "\x1b[32mdev: ready\x1b[0m"),
            ("test", "test: boots_sd_log ok"),
            ("test", "test: opens_a_document ok"),
            ("test", "test: reaches_the_proxy ok"),
            ("test", "test: prints_a_page ok"),
            ("test", "test: 4 passed, 0 failed, 1 skipped"),
        ]
    );
    let case = |name: &str| {
        log.iter()
            .find(|l| l.text == format!("test: {name} ok"))
            .unwrap()
            .millis
    };
    assert!(
        case("reaches_the_proxy") - case("boots_sd_log") >= 800,
        "lines were not stamped as they arrived"
    );
    assert!(log.windows(2).all(|w| w[0].millis <= w[1].millis));

    let st = states(&s.status_file(&job));
    assert_eq!(st.first().map(|s| s.0.as_str()), Some("running"));
    assert_eq!(
        st.last().unwrap(),
        &("success".to_owned(), "All 3 steps passed".to_owned())
    );
    assert_eq!(st.iter().filter(|s| s.0 != "running").count(), 1, "{st:?}");
}

#[test]
fn a_failing_test_is_named_at_the_end_and_the_files_stay_in_the_artifacts() {
    let s = Scratch::new();
    let sample = s.example("sample");
    std::fs::write(sample.join("fail-a-test"), "").unwrap();
    let out = s.run(&sample, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}");
    let job = job_id(&stdout);
    let dir = s.state().join("artifacts").join(&job);
    // The run ends with its tests: the counts, then each failed test by name.
    let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
    assert_eq!(
        tail,
        [
            "qci:   failed tests.test_sample::test_prints_a_page: AssertionError: assert 'printer' in ['sd-devices']",
            "qci: tests: 1 of 5 tests failed (3 passed, 1 skipped)",
            &format!("qci: artifacts: {}/ (2 files)", dir.display()),
        ],
        "stdout:\n{stdout}"
    );
    // Both files, as the steps wrote them in dom0's workspace.
    let workspace = s.work_dir().join("jobs").join(&job);
    for file in ["test-results/report.xml", "dev.log"] {
        assert_eq!(
            std::fs::read(dir.join("files").join(file)).unwrap(),
            std::fs::read(workspace.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn failing_dev_stops_before_test_and_reports_failure() {
    let s = Scratch::new();
    let out = s.run(&s.example("failing-dev"), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}");
    let job = job_id(&stdout);
    let log = s.job_log(&job);
    assert!(
        log.contains("[dev] dev: error: template not found"),
        "{log}"
    );
    assert!(
        !log.contains("[test]") && !log.contains("must never run"),
        "{log}"
    );
    let st = states(&s.status_file(&job));
    assert_eq!(
        st.last().unwrap(),
        &("failure".to_owned(), "make dev failed (exit 2)".to_owned())
    );
    assert!(stdout.contains(&format!(
        "qci: job {job}: failure (make dev failed (exit 2))"
    )));
}

#[test]
fn ansi_colours_and_invalid_utf8_are_cleaned_without_harm() {
    let s = Scratch::new();
    let dir = s.one_step(
        "paint",
        "printf '\\\\033[1;31mred\\\\033[0m \\\\377\\\\376 \\\\033]0;title\\\\007done\\\\n'",
        "",
    );
    let out = s.run(&dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}");
    let log = std::fs::read(s.dom0_log_dir().join(format!("{}.log", job_id(&stdout)))).unwrap();
    let log = String::from_utf8(log).expect("the log is valid UTF-8");
    // The colours stay, as plain SGR (for the job page); the title and
    // every other escape go.
    assert!(
        log.contains("[paint] \x1b[1;31mred\x1b[0m \u{FFFD}\u{FFFD} done\n"),
        "{log:?}"
    );
    let without_colours = log.replace("\x1b[1;31m", "").replace("\x1b[0m", "");
    assert!(!without_colours.contains('\x1b') && !log.contains('\x07'));
    assert!(
        log.lines()
            .any(|l| l.contains("[paint] ") && !l.contains("title")),
        "{log:?}"
    );
}

#[test]
fn working_tree_runs_as_is_and_commit_runs_a_clean_checkout() {
    let s = Scratch::new();
    let dir = s.project(
        "repo",
        &[
            (
                ".qci.toml",
                "[[steps]]\nname = \"show\"\ncommand = \"cat version.txt; ls\"\n",
            ),
            ("version.txt", "committed\n"),
        ],
    );
    let git = |args: &[&str]| support::git(&dir, args);
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    std::fs::write(dir.join("version.txt"), "edited\n").unwrap();
    std::fs::write(dir.join("new-untracked.txt"), "x").unwrap();
    std::fs::write(dir.join(".gitignore"), "ignored.txt\n").unwrap();
    std::fs::write(dir.join("ignored.txt"), "x").unwrap();

    let log_of = |out: &std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}");
        s.job_log(&job_id(&stdout))
    };
    let tree = log_of(&s.run(&dir, &[]));
    assert!(tree.contains("[show] edited"), "{tree}");
    assert!(tree.contains("[show] new-untracked.txt"), "{tree}");
    assert!(
        !tree.contains("ignored.txt"),
        "ignored files must not be sent: {tree}"
    );

    let clean = log_of(&s.run(&dir, &["--commit", "HEAD"]));
    assert!(clean.contains("[show] committed"), "{clean}");
    assert!(!clean.contains("new-untracked.txt"), "{clean}");

    let bad = s.run(&dir, &["--commit", "no-such-rev"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such commit"));
}

#[test]
fn a_second_run_while_one_runs_is_refused_and_the_first_finishes() {
    let s = Scratch::new();
    // The first job's step runs until the second call is over.
    let release = s.dir.path().join("release");
    let step = format!("echo started; {}; echo finished", hold_until(&release));
    let first = s.spawn_run(&s.one_step("wait", &step, ""));
    wait_for("the first job's step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] started")
    });
    // The dev VM calls qci.Run for a second job while the first runs.
    let second = s.qrexec("sd-dev", "dom0", "qci.Run+second", b"");
    let said = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(3), "{said}");
    assert!(
        said.contains("refused: another job (local-") && said.contains(") is running in this dom0"),
        "{said}"
    );
    assert!(
        !s.dom0_log_dir().join("second.log").exists(),
        "the refused job must not get a log"
    );

    std::fs::write(&release, "").unwrap();
    let out = first.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("[wait] finished"));
    assert_eq!(
        states(&s.status_file(&job_id(&stdout))).last().unwrap().0,
        "success"
    );
}

#[test]
fn bad_job_ids_get_exit_2_and_a_clear_message_everywhere() {
    let s = Scratch::new();
    s.prepare_machine();

    // dom0's runner: the message reaches the caller on stdout (a dom0 service's stderr does not).
    for bad in [
        "qci.Run+.hidden",
        "qci.Run+-rf",
        "qci.Run+",
        &format!("qci.Run+{}", "x".repeat(65)),
    ] {
        let out = s.qrexec("sd-dev", "dom0", bad, b"");
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{bad}: {said}");
        assert!(
            said.contains("[qci] refused: invalid job id"),
            "{bad}: {said}"
        );
    }
    // The daemon turns bytes outside the RPC charset into '_': `a/b` arrives as `a_b`,
    // a valid id with no job file, so the runner must still not escape its directories.
    let out = s.qrexec("dom0", "sd-dev", "qci.Export+..", b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid job id"));
    let out = s.qrexec("dom0", "sd-dev", "qci.Status+-x", b"{}");
    assert_eq!(out.status.code(), Some(2));

    // The dev VM's begin.
    let vm_bin = s.machine().join("sd-dev/usr/bin/qci-vm");
    let out = std::process::Command::new(vm_bin)
        .args(["begin", "../etc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid job id"));
}

#[test]
fn qci_run_from_another_vm_is_refused_by_policy_and_never_starts() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.machine()).unwrap();
    std::fs::write(
        s.machine().join("machine.toml"),
        "[qubes.sys-net]\ntype = \"AppVM\"\n",
    )
    .unwrap();
    s.prepare_machine();

    for target in ["dom0", "@adminvm"] {
        let out = s.qrexec("sys-net", target, "qci.Run+J1", b"");
        assert_eq!(out.status.code(), Some(126));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Request refused"));
        assert!(out.stdout.is_empty(), "the runner must not start");
    }
    assert!(!s.dom0_log_dir().join("J1.log").exists());
    let denied =
        std::fs::read_to_string(s.machine().join("dom0/var/log/qubes/policy.log")).unwrap();
    // Refused by qci's own deny rule, not for some other reason.
    assert!(
        denied.contains("denied: sys-net -> dom0 qci.Run+J1: denied by")
            && denied.contains("30-qci.policy:"),
        "{denied}"
    );
}

#[test]
fn invalid_status_events_are_refused_by_the_dev_vm() {
    let s = Scratch::new();
    let job = job_id(&s.prepare_machine());
    let before = states(&s.status_file(&job)).len();
    let service = format!("qci.Status+{job}");
    for (event, why) in [
        (
            format!(
                r#"{{"job":"{job}","state":"success","description":"","log":"{job}.log","extra":1}}"#
            ),
            "unknown field",
        ),
        (
            format!(r#"{{"job":"{job}","state":"pending","description":"","log":"{job}.log"}}"#),
            "unknown variant",
        ),
        (
            r#"{"job":"other","state":"success","description":"","log":"other.log"}"#.to_owned(),
            "is for job other",
        ),
        (
            format!(r#"{{"job":"{job}","state":"success","description":"","log":"/etc/passwd"}}"#),
            "log must be",
        ),
        ("x".repeat(10_000), "larger than"),
    ] {
        let out = s.qrexec("dom0", "sd-dev", &service, event.as_bytes());
        assert_eq!(out.status.code(), Some(2), "{why}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{why}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        states(&s.status_file(&job)).len(),
        before,
        "nothing refused may reach the sink"
    );
}

#[test]
fn older_jobs_trees_are_gone_after_a_job_even_those_a_dead_run_left() {
    let s = Scratch::new();
    let first = job_id(&s.prepare_machine());
    let jobs = s.work_dir().join("jobs");
    assert!(jobs.join(&first).is_dir());
    // What a runner killed while it removed older trees leaves behind,
    // owned by dom0's user as the runner made it.
    let aside = s.work_dir().join("old-jobs.1.2");
    let left = aside.join("deep/er");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("file"), "x").unwrap();
    let (_, uid, gid) = s.machine_user();
    for made in [&aside, &aside.join("deep"), &left, &left.join("file")] {
        std::os::unix::fs::chown(made, Some(uid), Some(gid)).unwrap();
    }

    let second = job_id(&s.prepare_machine());
    let kept: Vec<String> = std::fs::read_dir(&jobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, [second], "only the last job's tree stays");
    let aside: Vec<_> = std::fs::read_dir(s.work_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("old-jobs."))
        .collect();
    assert!(aside.is_empty(), "{aside:?}");
}

#[test]
fn a_step_that_leaves_a_process_in_its_group_ends_and_the_process_is_stopped() {
    let s = Scratch::new();
    let project = s.one_step("bg", "sleep 60 & echo $! > bg.pid; echo done", "");
    let out = s.run(&project, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let job = job_id(&stdout);
    let log = s.job_log(&job);
    assert!(
        log.contains("[qci] step bg left processes running: stopping them"),
        "{log}"
    );
    let pid = std::fs::read_to_string(s.work_dir().join("jobs").join(&job).join("bg.pid")).unwrap();
    assert!(
        support::is_dead(pid.trim().parse().unwrap()),
        "the sleep still runs"
    );
}

#[test]
fn a_local_run_takes_in_the_archive_dom0_left_and_refuses_a_hostile_one() {
    let s = Scratch::new();
    s.prepare_machine();
    let archives = s.machine().join("dom0/var/lib/qci/artifacts");
    // The steps run in dom0 and may write the archive themselves: here
    // they do, as dom0's collector would, and then as an attacker would.
    let write = |name: &str, link: &str| {
        let script = format!(
            "mkdir -p out/files/results && echo built > out/files/build.log && \
             echo '<testsuites/>' > out/files/results/junit.xml && \
             echo files/results/junit.xml > out/reports && {link} \
             mkdir -p {dir} && tar -C out -cf {dir}/$QCI_JOB.tar files reports",
            dir = archives.display()
        );
        s.project(
            name,
            &[(
                ".qci.toml",
                &format!(
                    "[[steps]]\nname = \"pack\"\ncommand = {}\n",
                    toml_string(&script)
                ),
            )],
        )
    };
    let out = s.run(&write("good", ""), &[]);
    let (job, state, _) = s.ended(&out, 0);
    assert_eq!(state, "success");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = s.state().join("artifacts").join(&job);
    let line = format!("qci: artifacts: {}/ (2 files)", dir.display());
    let log_line = stdout
        .lines()
        .position(|l| l.starts_with("qci: log: "))
        .unwrap();
    assert_eq!(
        stdout.lines().nth(log_line + 1),
        Some(line.as_str()),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("files/results/junit.xml")).unwrap(),
        "<testsuites/>\n"
    );
    assert!(
        !s.state()
            .join("artifacts")
            .join(format!("{job}.tar"))
            .exists()
    );

    let out = s.run(
        &write("hostile", "ln -s /etc/passwd out/files/passwd &&"),
        &[],
    );
    let (job, state, _) = s.ended(&out, 0);
    assert_eq!(state, "success", "the job keeps its own result");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("qci: artifacts:"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "qci: artifacts: archive refused: tar entry \"files/passwd\" refused: symlink target is absolute"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.state().join("artifacts").join(&job).exists());

    // No archive: no line.
    let out = s.run(&s.noop_project(), &[]);
    s.ended(&out, 0);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("qci: artifacts"));
}

/// `text` as a TOML literal string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.into()).to_string()
}
