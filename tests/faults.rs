//! Fault tests: timeouts that must kill whole process trees, and processes
//! killed mid-run (the step, dom0's runner, the dev VM's `begin`). Each time
//! the job must end with a final status and keep its log, and the machine
//! must run the next job normally.

mod support;

use std::time::Duration;
use support::{Scratch, is_dead, job_id, processes, sigkill, states, wait_for};

/// One step that prints, waits, prints: long enough to be hit mid-run.
fn waiting_project(s: &Scratch, secs: u32) -> std::path::PathBuf {
    s.one_step(
        "wait",
        &format!("echo before; sleep {secs}; echo after"),
        "",
    )
}

fn finish(child: std::process::Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_timeout_kills_a_grandchild_that_traps_sigterm_and_backgrounds_itself() {
    let s = Scratch::new();
    s.dom0_config("kill_grace = \"1s\"");
    let step = "echo started; sh -c 'trap \\\"\\\" TERM; echo $$ > grandchild.pid; echo grandchild up; exec sleep 60' & sleep 60";
    let dir = s.one_step("hang", step, "timeout = \"2s\"");
    let out = s.run(&dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let job = job_id(&stdout);

    let ws = s.work_dir().join("jobs").join(&job);
    let grandchild: i32 = std::fs::read_to_string(ws.join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        is_dead(grandchild),
        "the grandchild that trapped SIGTERM survived"
    );
    let marker = format!("QCI_RUNNER={}", s.work_dir().display());
    assert_eq!(
        processes(&marker, |_| true),
        Vec::<i32>::new(),
        "a process of the step survived"
    );

    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(state, "error");
    assert!(
        description.contains("timed out after 2s (its timeout)"),
        "{description}"
    );
    let log = std::fs::read_to_string(s.dom0_log_dir().join(format!("{job}.log"))).unwrap();
    assert!(
        log.contains("[hang] started") && log.contains("[hang] grandchild up"),
        "{log}"
    );
    assert!(log.contains("[qci] step hang timed out after 2s"), "{log}");
}

#[test]
fn killing_the_step_fails_the_job_and_keeps_the_log() {
    let s = Scratch::new();
    let child = s.spawn_run(&waiting_project(&s, 30));
    let marker = format!("QCI_RUNNER={}", s.work_dir().display());
    wait_for("the step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] before")
    });
    let sleeps = processes(&marker, |cmd| {
        cmd.first().map(String::as_str) == Some("sh")
            && cmd.get(1).map(String::as_str) == Some("-c")
    });
    assert_eq!(sleeps.len(), 1);
    sigkill(sleeps[0]);

    let (code, stdout) = finish(child);
    assert_eq!(code, Some(1), "{stdout}");
    let job = job_id(&stdout);
    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(
        (state.as_str(), description.as_str()),
        (
            "failure",
            "echo before; sleep 30; echo after failed (signal 9)"
        )
    );
    let log = std::fs::read_to_string(s.dom0_log_dir().join(format!("{job}.log"))).unwrap();
    assert!(
        log.contains("[wait] before") && !log.contains("[wait] after"),
        "{log}"
    );
    s.prepare_machine();
}

#[test]
fn killing_the_dom0_runner_still_ends_the_job_and_the_next_one_cleans_up() {
    let s = Scratch::new();
    let child = s.spawn_run(&waiting_project(&s, 30));
    wait_for("the step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] before")
    });
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    let runners = processes(&emu, |cmd| {
        cmd.first().is_some_and(|c| c.ends_with("qci-dom0"))
    });
    assert_eq!(runners.len(), 1, "one qci-dom0 expected");
    sigkill(runners[0]);

    let (code, stdout) = finish(child);
    assert_eq!(code, Some(3), "{stdout}");
    let job = job_id(&stdout);
    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(state, "error");
    assert!(
        description.contains("dom0 runner ended abnormally"),
        "{description}"
    );
    let log = std::fs::read_to_string(s.dom0_log_dir().join(format!("{job}.log"))).unwrap();
    assert!(
        log.contains("[wait] before"),
        "the log written so far is kept: {log}"
    );

    // The killed runner's step outlived it; the next run stops it and succeeds.
    let marker = format!("QCI_RUNNER={}", s.work_dir().display());
    let orphans = processes(&marker, |_| true);
    assert!(
        !orphans.is_empty(),
        "expected the orphaned step to be running"
    );
    let next = s.prepare_machine();
    let next_log =
        std::fs::read_to_string(s.dom0_log_dir().join(format!("{}.log", job_id(&next)))).unwrap();
    assert!(
        next_log.contains("leftover process(es) of a previous run"),
        "{next_log}"
    );
    assert!(
        orphans.iter().all(|&p| is_dead(p)),
        "orphans survived the next run"
    );
}

#[test]
fn killing_begin_in_the_dev_vm_lets_the_runner_finish_and_report() {
    let s = Scratch::new();
    let child = s.spawn_run(&waiting_project(&s, 2));
    wait_for("the step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] before")
    });
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    let begins = processes(&emu, |cmd| {
        cmd.first().is_some_and(|c| c.ends_with("qci-vm"))
            && cmd.get(1).map(String::as_str) == Some("begin")
    });
    assert_eq!(begins.len(), 1);
    sigkill(begins[0]);

    let (code, stdout) = finish(child);
    let job = job_id(&stdout);
    let st = states(&s.status_file(&job));
    assert_eq!(st.last().unwrap().0, "success", "{st:?}");
    assert_eq!(
        st.iter().filter(|(state, _)| state != "running").count(),
        1,
        "exactly one final status: {st:?}"
    );
    assert_eq!(code, Some(0), "{stdout}");
    let log = std::fs::read_to_string(s.dom0_log_dir().join(format!("{job}.log"))).unwrap();
    assert!(log.contains("[wait] after"), "{log}");
    s.prepare_machine();
}

#[test]
fn a_secret_split_across_two_writes_is_masked_in_the_log_and_on_stdout() {
    let s = Scratch::new();
    s.dom0_config("secrets = [\"hunter2secret\"]");
    let step = "printf 'token=hunter2'; sleep 0.3; printf 'secret end\\\\n'";
    let dir = s.one_step("mask", step, "");
    let out = s.run(&dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("[mask] token=*** end"), "{stdout}");
    let log =
        std::fs::read_to_string(s.dom0_log_dir().join(format!("{}.log", job_id(&stdout)))).unwrap();
    assert!(log.contains("[mask] token=*** end"), "{log}");
    assert!(!log.contains("hunter2secret") && !stdout.contains("hunter2secret"));
}

#[test]
fn the_whole_job_timeout_bounds_the_steps() {
    let s = Scratch::new();
    s.dom0_config("job_timeout = \"2s\"\nkill_grace = \"1s\"");
    let out = s.run(&waiting_project(&s, 30), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let (state, description) = states(&s.status_file(&job_id(&stdout))).pop().unwrap();
    assert_eq!(state, "error");
    assert!(
        description.ends_with("timed out after 2s (the job timeout)"),
        "{description}"
    );
}

#[test]
fn sigterm_to_the_runner_cancels_the_step_and_reports_canceled() {
    let s = Scratch::new();
    s.dom0_config("kill_grace = \"1s\"");
    let child = s.spawn_run(&waiting_project(&s, 30));
    wait_for("the step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] before")
    });
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    let runners = processes(&emu, |cmd| {
        cmd.first().is_some_and(|c| c.ends_with("qci-dom0"))
    });
    assert_eq!(runners.len(), 1);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &runners[0].to_string()])
        .status()
        .unwrap();
    assert!(term.success());

    let (code, stdout) = finish(child);
    assert_eq!(code, Some(3), "{stdout}");
    let job = job_id(&stdout);
    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(state, "canceled");
    assert!(
        description.starts_with("echo before; sleep 30; echo after canceled after"),
        "{description}"
    );
    let marker = format!("QCI_RUNNER={}", s.work_dir().display());
    assert_eq!(
        processes(&marker, |_| true),
        Vec::<i32>::new(),
        "the step survived the cancel"
    );
}
