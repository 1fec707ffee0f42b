//! How a local job ends when it does not run to its end: its timeout, a
//! Ctrl-C, a caller that goes away, a `.qci.toml` that is not valid. dom0
//! decides each end, says it in the job's final status, and is free for the
//! next job at once; `qci run` prints the end and the log, with the exit
//! code DESIGN gives it.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};
use support::{Scratch, job_id, states, wait_for};

/// A step that says it started, then would run for a minute.
const SLEEPY: &str = "echo started; sleep 60";

/// Waits for `child` at most `timeout`, collecting its output.
fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("qci run did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `qci run --local DIR` in a process group of its own, as a shell starts
/// a job in a terminal, so the test can send it what a terminal sends.
fn spawn_in_own_group(s: &Scratch, dir: &Path) -> Child {
    support::qci()
        .args(["run", "--local"])
        .arg(dir)
        .arg("--state-dir")
        .arg(s.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn qci")
}

fn assert_next_job_runs(s: &Scratch) {
    let next = s.run(&s.noop_project(), &[]);
    let (_, state, description) = s.ended(&next, 0);
    assert_eq!(state, "success", "{description}");
}

#[test]
fn the_local_timeout_is_dom0s_it_ends_the_job_in_error_and_frees_dom0() {
    let s = Scratch::new();
    s.prepare_machine();
    let started = Instant::now();
    let out = s.run(&s.one_step("sleepy", SLEEPY, ""), &["--timeout", "2s"]);
    let took = started.elapsed();
    let (job, state, description) = s.ended(&out, 3);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(state, "error", "{description}");
    // dom0 stopped the step at the job's deadline and said so itself.
    assert_eq!(
        description,
        format!("{SLEEPY} timed out after 2s (the job timeout)"),
        "{:?}",
        states(&s.status_file(&job))
    );
    assert!(s.job_log(&job).contains("timed out after 2s"));
    assert!(s.dom0_is_free());
    assert_next_job_runs(&s);
}

#[test]
fn ctrl_c_cancels_the_job_prints_its_end_and_log_and_exits_3() {
    let s = Scratch::new();
    s.prepare_machine();
    let child = spawn_in_own_group(&s, &s.one_step("sleepy", SLEEPY, ""));
    wait_for("the step to start", Duration::from_secs(30), || {
        s.current_log().contains("[sleepy] started")
    });
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    let job = job_id(&stdout);
    assert!(
        stdout.contains(&format!(
            "qci: job {job}: canceled ({SLEEPY} canceled after"
        )),
        "{stdout}"
    );
    let log = s.dom0_log_dir().join(format!("{job}.log"));
    assert!(
        stdout.contains(&format!("qci: log: {}", log.display())),
        "{stdout}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("[sleepy] started")
    );
    let st = states(&s.status_file(&job));
    assert_eq!(st.last().unwrap().0, "canceled", "{st:?}");
    assert_eq!(st.iter().filter(|s| s.0 != "running").count(), 1, "{st:?}");
    assert_next_job_runs(&s);
}

/// Kills the caller's process `which` (`begin`, or its `qrexec-client-vm`)
/// mid-step: dom0 sees its stream close and cancels the job.
fn caller_goes_away(which: &str) {
    let s = Scratch::new();
    s.prepare_machine();
    let child = s.spawn_run(&s.one_step("sleepy", SLEEPY, ""));
    wait_for("the step to start", Duration::from_secs(30), || {
        s.current_log().contains("[sleepy] started")
    });
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    let caller = support::processes(&emu, |cmd| match which {
        "begin" => {
            cmd.first().is_some_and(|c| c.ends_with("qci-vm"))
                && cmd.get(1).map(String::as_str) == Some("begin")
        }
        tool => cmd.first().is_some_and(|c| c.ends_with(tool)),
    });
    assert_eq!(caller.len(), 1, "{which}: {caller:?}");
    support::signal(caller[0], "KILL");
    // Well before the step's minute is up.
    wait_for("dom0 to cancel the job", Duration::from_secs(20), || {
        s.dom0_is_free()
    });
    let out = wait_output(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let log = s.job_log(&job_id(&stdout));
    assert!(
        log.contains(&format!("canceled ({SLEEPY} canceled after"))
            && log.contains("the caller went away"),
        "{which}: {log}"
    );
    assert_next_job_runs(&s);
}

#[test]
fn a_caller_whose_begin_dies_has_its_job_canceled_by_dom0() {
    caller_goes_away("begin");
}

#[test]
fn a_caller_whose_qrexec_client_dies_has_its_job_canceled_by_dom0() {
    caller_goes_away("qrexec-client-vm");
}

#[test]
fn a_qci_toml_with_an_unknown_key_is_bad_input_and_ends_in_error() {
    let s = Scratch::new();
    let out = s.run(&s.one_step("typo", "true", "shell = \"bash\""), &[]);
    let (job, state, description) = s.ended(&out, 2);
    assert_eq!(state, "error");
    assert!(
        description.starts_with(".qci.toml is not valid: unknown field `shell`")
            && description.ends_with("(line 4, column 1)"),
        "{description}"
    );
    // The TOML error in full, line by line: the line at fault, and a caret
    // under the key, each a line of its own in the log and on the terminal.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for text in [&s.job_log(&job), &stdout.into_owned()] {
        let lines: Vec<_> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.ends_with("[qci] 4 | shell = \"bash\""))
            .unwrap_or_else(|| panic!("the faulty line on a line of its own:\n{text}"));
        assert!(lines[at + 1].ends_with("[qci]   | ^^^^^"), "{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("[qci] unknown field `shell`")),
            "{text}"
        );
    }
}
