//! dom0's own check of who calls `qci.Run`, alone: the binary is run as
//! qrexec runs a service, with no policy in front of it, so nothing but this
//! check stands between another qube and a job.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// qci.Run as qrexec starts it, called by `caller` (`None`: no
/// `QREXEC_REMOTE_DOMAIN` at all).
fn call(config: &Path, caller: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qci-dom0"));
    cmd.arg("job-1")
        .env("QREXEC_SERVICE_ARGUMENT", "job-1")
        .env("QCI_DOM0_CONFIG", config)
        .env_remove("QREXEC_REMOTE_DOMAIN")
        .stdin(Stdio::null());
    if let Some(vm) = caller {
        cmd.env("QREXEC_REMOTE_DOMAIN", vm);
    }
    cmd.output().expect("run qci-dom0")
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_call_from_any_qube_but_the_dev_vm_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, work) = (dir.path().join("log"), dir.path().join("work"));
    std::fs::create_dir(&logs).unwrap();
    std::fs::create_dir(&work).unwrap();
    let config = dir.path().join("dom0.toml");
    std::fs::write(
        &config,
        format!(
            "dev_vm = \"sd-dev\"\nlog_dir = \"{}\"\nwork_dir = \"{}\"\n",
            logs.display(),
            work.display()
        ),
    )
    .unwrap();
    for (caller, named) in [
        (Some("sd-other"), "sd-other"),
        (Some("sd-dev-2"), "sd-dev-2"),
        (Some("dom0"), "dom0"),
        (None, "an unknown caller"),
    ] {
        let out = call(&config, caller);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{caller:?}: {stdout}");
        let line = stdout.trim_end();
        assert!(
            line.ends_with(&format!(
                " [qci] refused: qci.Run may only be called from sd-dev, not from {named}"
            )) && !line.contains('\n'),
            "{caller:?}: {stdout}"
        );
        assert!(entries(&logs).is_empty(), "{caller:?}: a log was written");
        assert!(entries(&work).is_empty(), "{caller:?}: work dir touched");
    }
}
