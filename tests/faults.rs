//! Fault tests: timeouts that must kill whole process trees, and processes
//! killed mid-run (the step, dom0's runner, the dev VM's `begin`). Each time
//! the job must end with a final status and keep its log, and the machine
//! must run the next job normally.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Scratch, hold_until, is_dead, job_id, processes, signal, states, wait_for};

/// One step that prints, waits, prints: long enough to be hit mid-run.
fn waiting_project(s: &Scratch, secs: u32) -> PathBuf {
    s.one_step(
        "wait",
        &format!("echo before; sleep {secs}; echo after"),
        "",
    )
}

/// Starts the job of `project` (one step named `wait` that first prints
/// `before`), and returns once the step has printed that line.
fn start_waiting(s: &Scratch, project: &Path) -> std::process::Child {
    let child = s.spawn_run(project);
    wait_for("the step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] before")
    });
    child
}

/// The one process of this machine whose command line satisfies `pick`.
/// A child it is starting shows the same command line until it execs
/// (the runner starts status calls at any time): such children are not
/// counted.
fn machine_process(s: &Scratch, what: &str, pick: impl Fn(&[String]) -> bool) -> i32 {
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    let mut found = processes(&emu, pick);
    let parent = |pid: &i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let all = found.clone();
    found.retain(|pid| parent(pid).is_none_or(|p| !all.contains(&p)));
    assert_eq!(found.len(), 1, "exactly one {what} expected: {found:?}");
    found[0]
}

fn is_runner(cmd: &[String]) -> bool {
    cmd.first().is_some_and(|c| c.ends_with("qci-dom0"))
}

/// Processes started by this machine's steps (they carry the runner's mark).
fn step_processes(s: &Scratch) -> Vec<i32> {
    processes(&format!("QCI_RUNNER={}", s.work_dir().display()), |_| true)
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
    assert_eq!(
        step_processes(&s),
        Vec::<i32>::new(),
        "a process of the step survived"
    );

    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(state, "error");
    assert!(
        description.contains("timed out after 2s (its timeout)"),
        "{description}"
    );
    let log = s.job_log(&job);
    assert!(
        log.contains("[hang] started") && log.contains("[hang] grandchild up"),
        "{log}"
    );
    assert!(log.contains("[qci] step hang timed out after 2s"), "{log}");
}

#[test]
fn killing_the_step_fails_the_job_and_keeps_the_log() {
    let s = Scratch::new();
    let child = start_waiting(&s, &waiting_project(&s, 30));
    // Until the child sh forks for `sleep` has exec'd, /proc shows it as a
    // second `sh -c` with the same environment: count once sleep runs.
    let step = format!("QCI_RUNNER={}", s.work_dir().display());
    wait_for("the step's sleep", Duration::from_secs(30), || {
        !processes(&step, |cmd| cmd.first().is_some_and(|c| c == "sleep")).is_empty()
    });
    let shells = processes(&step, |cmd| {
        cmd.first().map(String::as_str) == Some("sh")
            && cmd.get(1).map(String::as_str) == Some("-c")
    });
    assert_eq!(shells.len(), 1, "the step's sh: {shells:?}");
    signal(shells[0], "KILL");

    let (code, stdout) = finish(child);
    assert_eq!(code, Some(1), "{stdout}");
    let job = job_id(&stdout);
    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(
        (state.as_str(), description.as_str()),
        ("failure", "wait failed (signal 9)")
    );
    let log = s.job_log(&job);
    assert!(
        log.contains("[wait] before") && !log.contains("[wait] after"),
        "{log}"
    );
    s.prepare_machine();
}

#[test]
fn killing_the_dom0_runner_still_ends_the_job_and_the_next_one_cleans_up() {
    let s = Scratch::new();
    let child = start_waiting(&s, &waiting_project(&s, 30));
    signal(machine_process(&s, "qci-dom0", is_runner), "KILL");

    let (code, stdout) = finish(child);
    assert_eq!(code, Some(3), "{stdout}");
    let job = job_id(&stdout);
    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(state, "error");
    assert!(
        description.contains("dom0 runner ended abnormally"),
        "{description}"
    );
    let log = s.job_log(&job);
    assert!(
        log.contains("[wait] before"),
        "the log written so far is kept: {log}"
    );

    // The killed runner's step outlived it; the next run stops it and succeeds.
    let orphans = step_processes(&s);
    assert!(
        !orphans.is_empty(),
        "expected the orphaned step to be running"
    );
    let next = s.prepare_machine();
    let next_log = s.job_log(&job_id(&next));
    assert!(
        next_log.contains("leftover process(es) of a previous run"),
        "{next_log}"
    );
    assert!(
        orphans.iter().all(|&p| is_dead(p)),
        "orphans survived the next run"
    );
}

/// A caller that goes away (begin killed: in Qubes its qrexec stream then
/// closes) has its job canceled by dom0, which still reports it: the steps
/// are stopped, the log kept, one final status, and dom0 is free.
#[test]
fn killing_begin_in_the_dev_vm_has_the_runner_cancel_and_report() {
    let s = Scratch::new();
    // The step waits for begin to be killed, however long that takes.
    let release = s.dir.path().join("release");
    let step = format!("echo before; {}; echo after", hold_until(&release));
    let child = start_waiting(&s, &s.one_step("wait", &step, ""));
    let begin = machine_process(&s, "qci-vm begin", |cmd| {
        cmd.first().is_some_and(|c| c.ends_with("qci-vm"))
            && cmd.get(1).map(String::as_str) == Some("begin")
    });
    signal(begin, "KILL");

    let (code, stdout) = finish(child);
    std::fs::write(&release, "").unwrap();
    let job = job_id(&stdout);
    let st = states(&s.status_file(&job));
    assert_eq!(st.last().unwrap().0, "canceled", "{st:?}");
    assert_eq!(
        st.iter().filter(|(state, _)| state != "running").count(),
        1,
        "exactly one final status: {st:?}"
    );
    assert_eq!(code, Some(3), "{stdout}");
    let log = s.job_log(&job);
    assert!(log.contains("[wait] before"), "{log}");
    assert!(!log.contains("[wait] after"), "{log}");
    assert!(s.dom0_is_free());
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
    let log = s.job_log(&job_id(&stdout));
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
    let child = start_waiting(&s, &waiting_project(&s, 30));
    signal(machine_process(&s, "qci-dom0", is_runner), "TERM");

    let (code, stdout) = finish(child);
    assert_eq!(code, Some(3), "{stdout}");
    let job = job_id(&stdout);
    let (state, description) = states(&s.status_file(&job)).pop().unwrap();
    assert_eq!(state, "canceled");
    assert!(
        description.starts_with("wait canceled after"),
        "{description}"
    );
    assert_eq!(
        step_processes(&s),
        Vec::<i32>::new(),
        "the step survived the cancel"
    );
}

/// A dev VM whose `qci.Export` never sends anything.
fn stalled_export(s: &Scratch, dom0_settings: &str) {
    s.dom0_config(dom0_settings);
    s.prepare_machine();
    s.dev_vm_export("exec sleep 30");
}

/// Stops the stalled exports a test left behind (the emulator, like
/// qrexec, does not kill a service whose caller went away).
fn stop_stalled_exports(s: &Scratch) {
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    for pid in processes(&emu, |cmd| cmd.first().is_some_and(|c| c == "sleep")) {
        signal(pid, "KILL");
    }
}

#[test]
fn a_stalled_code_transfer_times_out_in_error() {
    let s = Scratch::new();
    stalled_export(&s, "export_timeout = \"2s\"");

    let out = s.run(&s.noop_project(), &[]);
    stop_stalled_exports(&s);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let (state, description) = states(&s.status_file(&job_id(&stdout))).pop().unwrap();
    assert_eq!(state, "error");
    assert_eq!(
        description,
        "Code transfer failed: the code transfer took longer than 2s"
    );
}

#[test]
fn sigterm_during_the_code_transfer_cancels_at_once() {
    let s = Scratch::new();
    stalled_export(&s, "export_timeout = \"60s\"");
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    let child = s.spawn_run(&s.noop_project());
    wait_for("the stalled export", Duration::from_secs(30), || {
        !processes(&emu, |cmd| cmd.first().is_some_and(|c| c == "sleep")).is_empty()
    });

    let signalled = std::time::Instant::now();
    signal(machine_process(&s, "qci-dom0", is_runner), "TERM");
    let (code, stdout) = finish(child);
    let took = signalled.elapsed();
    stop_stalled_exports(&s);

    assert_eq!(code, Some(3), "{stdout}");
    assert!(took < Duration::from_secs(20), "the cancel waited {took:?}");
    let (state, description) = states(&s.status_file(&job_id(&stdout))).pop().unwrap();
    assert_eq!(state, "canceled");
    assert_eq!(description, "Canceled during the code transfer");
}
