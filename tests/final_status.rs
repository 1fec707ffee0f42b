//! A final status that nothing in the dev VM can take away: whatever dom0
//! does (refuse, fail to report, be held by a `qci.Status` that never
//! reads), the job ends with a final status that says why, and dom0 is
//! free for the next job.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::time::{Duration, Instant};
use support::{Scratch, hold_until, job_id, states, wait_for};

#[test]
fn a_failing_step_with_a_long_command_ends_failure() {
    let s = Scratch::new();
    // 1.2 KB of command: statuses name the step instead (Step::label).
    let command = format!("false # {}", "x".repeat(1200));
    let out = s.run(&s.one_step("long", &command, ""), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let st = states(&s.status_file(&job_id(&stdout)));
    let (state, description) = st.last().unwrap();
    assert_eq!(state, "failure", "{st:?}");
    assert_eq!(description, "long failed (exit 1)");
    assert!(
        st[..st.len() - 1]
            .iter()
            .all(|(state, _)| state == "running")
            && st.len() == 3,
        "every status got through: {st:?}"
    );
}

#[test]
fn a_job_refused_because_dom0_is_busy_ends_in_error_saying_why() {
    let s = Scratch::new();
    let release = s.dir.path().join("release");
    let step = format!("echo started; {}; echo finished", hold_until(&release));
    let first = s.spawn_run(&s.one_step("wait", &step, ""));
    wait_for("the first job's step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] started")
    });

    let second = s.run(&s.noop_project(), &["--timeout", "60s"]);
    std::fs::write(&release, "").unwrap();
    let (job, _, _) = s.ended(&second, 3);
    let st = states(&s.status_file(&job));
    let (state, description) = st.last().unwrap();
    assert_eq!(state, "error");
    assert!(
        description.starts_with("dom0 refused the job: another job (local-")
            && description.contains(") is running in this dom0"),
        "{st:?}"
    );
    assert_eq!(st.len(), 1, "one final status, nothing else: {st:?}");

    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_status_service_that_never_reads_frees_dom0_within_its_timeout() {
    let s = Scratch::new();
    s.dom0_config("status_timeout = \"2s\"");
    s.prepare_machine();
    // Never reads its event, never ends.
    s.dev_vm_service("qci.Status", "exec sleep 1000");
    // A failing step with a long command (statuses name it by its name,
    // `big`, so the event is small: the service's never ending is what
    // must not hold dom0).
    let toml = format!(
        "[[steps]]\nname = \"big\"\ncommand = '''\nfalse{}# end'''\n",
        "\n".repeat(60_000)
    );
    let child = s.spawn_run(&s.project("big", &[(".qci.toml", &toml)]));

    // From the runner's closing line (just before the final report)...
    wait_for("the runner's closing line", Duration::from_secs(60), || {
        s.current_log().contains(": failure (big failed (exit 1))")
    });
    let closing = Instant::now();
    // ...dom0 is free within status_timeout plus a few seconds.
    wait_for("dom0 to be free", Duration::from_secs(60), || {
        s.dom0_is_free()
    });
    let took = closing.elapsed();
    assert!(took < Duration::from_secs(2 + 5), "dom0 was held {took:?}");

    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let job = job_id(&stdout);
    let st = states(&s.status_file(&job));
    assert_eq!(
        st,
        [(
            "error".to_owned(),
            "dom0 runner ended (exit 1) without a final status".to_owned()
        )]
    );
    let log = s.job_log(&job);
    assert!(
        log.contains("no more progress reports for this job")
            && log.contains("could not report failure (attempt 1 of 1)"),
        "{log}"
    );
}

#[test]
fn a_failed_export_is_reported_in_its_own_words() {
    let s = Scratch::new();
    s.prepare_machine();
    s.dev_vm_export("echo 'export exploded: disk on fire' >&2; exit 3");
    let (_, state, description) = s.ended(&s.run(&s.noop_project(), &[]), 3);
    assert_eq!(
        (state.as_str(), description.as_str()),
        (
            "error",
            "Code transfer failed: qci.Export failed: exit 3: export exploded: disk on fire"
        )
    );
}

#[test]
fn control_bytes_in_a_garbage_stream_reach_no_status_and_no_terminal() {
    let s = Scratch::new();
    s.prepare_machine();
    // A tar header whose name is terminal commands (clear the screen, set
    // its title) and whose checksum is not a number: the tar parser quotes
    // both in its error.
    let mut header = [0u8; 512];
    let name = b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x07";
    header[..name.len()].copy_from_slice(name);
    header[148..156].copy_from_slice(b"zz\x1b[1m\0\0");
    let mut stream = header.to_vec();
    stream.extend([0u8; 1024]);
    let path = s.machine().join("sd-dev/garbage.tar");
    std::fs::write(&path, stream).unwrap();
    s.dev_vm_export(&format!("exec cat {}", path.display()));

    let out = s.run(&s.noop_project(), &[]);
    let (_, state, description) = s.ended(&out, 3);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(state, "error");
    assert!(
        description.starts_with("Code transfer failed: tar stream is not valid")
            && description.contains("when getting cksum"),
        "{description:?}"
    );
    let control = |t: &str| t.chars().any(|c| c.is_control() && c != '\n');
    assert!(!control(&description), "{description:?}");
    assert!(!control(&stdout), "{stdout:?}");
    assert!(!control(&stderr), "{stderr:?}");
}

#[test]
fn the_local_watcher_waits_for_a_silent_status_service_only_its_timeout() {
    let s = Scratch::new();
    s.dom0_config("status_timeout = \"2s\"");
    s.prepare_machine();
    s.dev_vm_service("qci.Status", "exec sleep 1000");
    let release = s.dir.path().join("release");
    let step = format!("echo before; {}", hold_until(&release));
    let child = s.spawn_run(&s.one_step("wait", &step, ""));
    wait_for("the step", Duration::from_secs(30), || {
        s.current_log().contains("[wait] before")
    });
    // begin is gone: only the watcher can end the job now.
    let emu = format!("QCI_EMU_MACHINE={}", s.machine().display());
    let begin = support::processes(&emu, |cmd| {
        cmd.first().is_some_and(|c| c.ends_with("qci-vm"))
            && cmd.get(1).map(String::as_str) == Some("begin")
    });
    assert_eq!(begin.len(), 1, "{begin:?}");
    support::signal(begin[0], "KILL");
    std::fs::write(&release, "").unwrap();
    wait_for("dom0 to be free", Duration::from_secs(60), || {
        s.dom0_is_free()
    });

    let freed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = freed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot post the final status: qci.Status did not answer within 2s"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(2 + 8),
        "the watcher waited {took:?}"
    );
}
