//! dom0 as Qubes runs it: `qci.Run` runs as dom0's login user (never root),
//! with umask 0077 and cwd `/run/qubes`, and writes only to the directories
//! installation made for that user. Run as root (as CI runs the suite), the
//! emulated machine's qubes run as an unprivileged user; run as anyone
//! else, as that user.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use support::{Scratch, job_id};

/// `(mode, owner uid)` of `path`.
fn mode_and_owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.permissions().mode() & 0o7777, meta.uid())
}

#[test]
fn the_job_runs_as_dom0s_user_with_umask_0077_and_keeps_its_files_private() {
    let s = Scratch::new();
    // What the step reports of itself and of the runner, its parent.
    let step = "id -u; umask; grep Umask /proc/$PPID/status; readlink /proc/$PPID/cwd; \
                touch made-by-step; stat -c %a made-by-step";
    let dir = s.one_step("modes", step, "");
    let out = s.run(&dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let job = job_id(&stdout);
    let (user, uid, _) = s.machine_user();
    assert_ne!(uid, 0, "dom0's user must not be root");
    if nix::unistd::Uid::effective().is_root() {
        let expected = std::env::var("SUDO_USER").unwrap_or_else(|_| "nobody".into());
        assert_eq!(user, expected, "run as root: the sudo caller, else nobody");
    } else {
        assert_eq!(uid, nix::unistd::Uid::effective().as_raw());
    }

    let log = s.job_log(&job);
    let said: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(" [modes] ").map(|(_, text)| text))
        .collect();
    let run_qubes = std::fs::canonicalize(s.machine().join("dom0/run/qubes")).unwrap();
    assert_eq!(
        said,
        [
            uid.to_string().as_str(),
            // Steps get 0022, as `make dev` has in a dom0 terminal...
            "0022",
            // ...while the runner keeps the 0077 qrexec-daemon gives it,
            "Umask:\t0077",
            // ...and its cwd, /run/qubes.
            run_qubes.to_str().unwrap(),
            "644",
        ],
        "{log}"
    );

    // What qci-dom0 makes is its user's and private.
    let log_file = s.dom0_log_dir().join(format!("{job}.log"));
    let jobs = s.work_dir().join("jobs");
    let workspace = jobs.join(&job);
    for (path, mode) in [
        (log_file.as_path(), 0o600),
        (s.dom0_log_dir().as_path(), 0o700),
        (s.work_dir().as_path(), 0o700),
        (jobs.as_path(), 0o700),
        (workspace.as_path(), 0o700),
        (&s.work_dir().join("run.lock"), 0o600),
    ] {
        assert_eq!(mode_and_owner(path), (mode, uid), "{}", path.display());
    }
    // The code keeps the modes it had in the dev VM.
    assert_eq!(
        mode_and_owner(&workspace.join(".qci.toml")),
        (0o644, uid),
        "an unpacked file"
    );
}

/// A dom0 whose settings put `dir` where qci-dom0 writes its logs.
fn log_dir_at(s: &Scratch, dir: &Path) {
    let dom0 = s.machine().join("dom0");
    let config = dom0.join("etc/qci/dom0.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let text = format!(
        "dev_vm = \"sd-dev\"\nlog_dir = {dir:?}\nwork_dir = {:?}\n",
        s.work_dir()
    );
    std::fs::write(config, text).unwrap();
}

#[test]
fn a_log_directory_install_did_not_make_is_refused_and_the_job_ends_in_error() {
    let s = Scratch::new();
    let (user, _, _) = {
        s.prepare_machine();
        s.machine_user()
    };

    // Missing: qci-dom0 does not make it (in Qubes it could not).
    let missing = s.dir.path().join("no-such-log-dir");
    log_dir_at(&s, &missing);
    let (_, state, description) = s.ended(&s.run(&s.noop_project(), &[]), 3);
    assert!(!missing.exists(), "qci-dom0 made its own log directory");
    assert_eq!(state, "error");
    assert_eq!(
        description,
        format!(
            "dom0 refused the job: {} does not exist: it is made at install time for dom0's user \
             (sudo install -d -o {user} -m 0700 {})",
            missing.display(),
            missing.display()
        )
    );

    // There, but not dom0's user's to write.
    let foreign = s.dir.path().join("read-only-log-dir");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o555)).unwrap();
    log_dir_at(&s, &foreign);
    let (_, state, description) = s.ended(&s.run(&s.noop_project(), &[]), 3);
    assert_eq!(state, "error");
    assert!(
        description.starts_with(&format!(
            "dom0 refused the job: {} is not writable by {user}, who runs qci.Run",
            foreign.display()
        )),
        "{description}"
    );
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);
}

#[test]
fn a_machine_its_user_cannot_reach_is_refused_with_the_directory_named() {
    // Only root can make a directory its own user can pass but the
    // machine's user cannot: run as anyone else, they are the same.
    if !support::root_or_skip("only root has a machine user other than itself") {
        return;
    }
    let s = Scratch::new();
    s.prepare_machine();
    let (user, uid, _) = s.machine_user();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = s.run(&s.noop_project(), &[]);
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let dir = s.dir.path().display();
    assert!(
        stderr.contains(&format!(
            "{user} (uid {uid}), who runs this machine's qubes, cannot reach"
        )) && stderr.contains(&format!("{dir} is mode 0700 and owned by uid 0"))
            && stderr.contains(&format!("chmod o+x {dir}")),
        "{stderr}"
    );
}
