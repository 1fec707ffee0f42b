//! Installing qci with Salt (`salt/`), through a real `salt-call --local`
//! over the release bundle unpacked as `/srv/salt`:
//!
//! - every state renders, the `qvm.*` one included, with the default and
//!   with a site's pillar, and the rendered paths, modes, owners and file
//!   contents are the ones a Qubes install needs;
//! - a bad pillar fails the render with a clear message and installs
//!   nothing;
//! - the bundle unpacks, its checksums verify, and its binaries need no
//!   newer glibc than Qubes 4.2's dom0 has;
//! - the dom0 and dev-VM states applied into a bare emulated machine make
//!   a machine that runs a job, with nothing installed by `qci run`.
//!
//! Salt comes from `scripts/setup-salt`; without it these tests are skipped,
//! except under `CI=true`, where they fail.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[path = "support/salt.rs"]
mod salt;
mod support;

use salt::{Minion, RenderedState, bundle, repo, run_ok, salt_call};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{Scratch, qci};

/// Every qci state, as `state.show_sls` renders it on `id`.
fn render_all(salt_call: &Path, id: &str, pillar: &Value) -> BTreeMap<String, RenderedState> {
    let minion = Minion::new(salt_call, &bundle().srv_salt, id, pillar);
    minion.show_sls("qci.dev-vm-qube,qci.dom0,qci.dev-vm")
}

/// The top file rendered for `pillar`: which states each minion gets.
fn render_top(salt_call: &Path, pillar: &Value) -> Value {
    let minion = Minion::new(salt_call, &bundle().srv_salt, "dom0", pillar);
    let out = minion.call(&["slsutil.renderer", "salt://qci.top"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    out.data
}

/// The name of the primary group of `user`.
fn group_of(user: &str) -> String {
    let user = nix::unistd::User::from_name(user).unwrap().expect("user");
    let group = nix::unistd::Group::from_gid(user.gid)
        .unwrap()
        .expect("group");
    group.name
}

fn shipped(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

/// A file or directory the states install: its path, owner and mode.
fn assert_owned(
    s: &RenderedState,
    function: &str,
    name: &str,
    user: &str,
    group: &str,
    mode: &str,
) {
    let got = ["name", "user", "group", "mode"].map(|k| s.str(k));
    assert_eq!(
        (s.function.as_str(), got),
        (function, [name, user, group, mode]),
        "{s:#?}"
    );
}

fn assert_file(s: &RenderedState, name: &str, user: &str, group: &str, mode: &str) {
    assert_owned(s, "file.managed", name, user, group, mode);
}

fn assert_dir(s: &RenderedState, name: &str, user: &str, group: &str, mode: &str) {
    assert_owned(s, "file.directory", name, user, group, mode);
}

/// The lines of a rendered dom0.toml that are not comments.
fn settings_lines(s: &RenderedState) -> Vec<&str> {
    s.str("contents")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect()
}

fn requires(s: &RenderedState) -> Vec<String> {
    s.args["require"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn every_state_renders_with_the_default_pillar() {
    let Some(salt_call) = salt_call() else { return };
    // dom0's user defaults to the first member of group qubes, which this
    // host lacks: that is the one key given (bad_pillar... checks the rest).
    let states = render_all(&salt_call, "dom0", &json!({"qci": {"dom0_user": "nobody"}}));
    let nogroup = group_of("nobody");
    let ids: Vec<&str> = states.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "qci-dev-vm",
            "qci-dev-vm-is-standalone",
            "qci-dom0-artifact-dir",
            "qci-dom0-binary",
            "qci-dom0-log-dir",
            "qci-dom0-policy",
            "qci-dom0-service",
            "qci-dom0-settings",
            "qci-dom0-settings-dir",
            "qci-dom0-work-dir",
            "qci-vm-binary",
            "qci-vm-service-qci.Export",
            "qci-vm-service-qci.Status",
        ]
    );

    // dom0.
    let binary = &states["qci-dom0-binary"];
    assert_file(binary, "/usr/bin/qci-dom0", "root", "root", "0755");
    assert_eq!(binary.str("source"), "salt://qci/bin/qci-dom0");
    let service = &states["qci-dom0-service"];
    assert_file(service, "/etc/qubes-rpc/qci.Run", "root", "root", "0755");
    assert_eq!(service.str("source"), "salt://qci/qubes-rpc/dom0/qci.Run");
    assert_dir(
        &states["qci-dom0-settings-dir"],
        "/etc/qci",
        "root",
        "root",
        "0755",
    );
    let settings = &states["qci-dom0-settings"];
    assert_file(settings, "/etc/qci/dom0.toml", "root", &nogroup, "0640");
    assert_eq!(
        settings_lines(settings),
        [
            r#"dev_vm = "sd-dev""#,
            r#"log_dir = "/var/log/qci""#,
            r#"work_dir = "/var/lib/qci""#,
            "secrets = []",
        ]
    );
    let log_dir = &states["qci-dom0-log-dir"];
    assert_dir(log_dir, "/var/log/qci", "nobody", &nogroup, "0700");
    let work_dir = &states["qci-dom0-work-dir"];
    assert_dir(work_dir, "/var/lib/qci", "nobody", &nogroup, "0700");
    let artifact_dir = &states["qci-dom0-artifact-dir"];
    assert_dir(
        artifact_dir,
        "/var/lib/qci/artifacts",
        "nobody",
        &nogroup,
        "0700",
    );
    let policy = &states["qci-dom0-policy"];
    assert_file(
        policy,
        "/etc/qubes/policy.d/30-qci.policy",
        "root",
        "root",
        "0644",
    );
    assert_eq!(policy.str("contents"), shipped("policy/30-qci.policy"));
    // The policy lets the dev VM in only once everything else is in place.
    assert_eq!(
        requires(policy),
        [
            "qci-dom0-binary",
            "qci-dom0-service",
            "qci-dom0-settings",
            "qci-dom0-log-dir",
            "qci-dom0-work-dir",
            "qci-dom0-artifact-dir"
        ]
    );

    // The dev VM.
    let vm_binary = &states["qci-vm-binary"];
    assert_file(vm_binary, "/usr/bin/qci-vm", "root", "root", "0755");
    assert_eq!(vm_binary.str("source"), "salt://qci/bin/qci-vm");
    for service in ["qci.Status", "qci.Export"] {
        let s = &states[&format!("qci-vm-service-{service}")];
        assert_file(
            s,
            &format!("/etc/qubes-rpc/{service}"),
            "root",
            "root",
            "0755",
        );
        assert_eq!(
            s.str("source"),
            format!("salt://qci/qubes-rpc/dev-vm/{service}")
        );
    }

    // The dev VM as a qube: a StandaloneVM, so /usr/bin outlives a reboot.
    let qube = &states["qci-dev-vm"];
    assert_eq!(
        (qube.function.as_str(), qube.str("name")),
        ("qvm.vm", "sd-dev")
    );
    assert_eq!(
        qube.args["present"],
        json!([{"class": "StandaloneVM"}, {"template": "debian-12-xfce"}, {"label": "red"}])
    );
    assert!(!qube.args.contains_key("prefs"), "{qube:#?}");
    let check = &states["qci-dev-vm-is-standalone"];
    assert_eq!(check.function, "cmd.run");
    assert_eq!(
        check.str("unless"),
        r#"test "$(qvm-prefs -- sd-dev klass)" = StandaloneVM"#
    );

    assert_eq!(
        render_top(&salt_call, &json!({})),
        json!({"base": {"dom0": ["qci.dev-vm-qube", "qci.dom0"], "sd-dev": ["qci.dev-vm"]}})
    );
}

#[test]
fn every_state_renders_with_a_sites_pillar() {
    let Some(salt_call) = salt_call() else { return };
    let pillar = json!({"qci": {
        "root": "/opt/qubes/",
        "owner": "bin",
        "group": "daemon",
        "dom0_user": "nobody",
        "dev_vm": {"name": "ci-dev", "template": "fedora-40-xfce", "label": "purple",
                   "memory": 4000, "vcpus": 4},
        "dom0": {"log_dir": "/srv/ci/logs", "work_dir": "/srv/ci/work",
                 "artifact_dir": "/srv/ci/out", "keep_artifacts": 5,
                 "job_timeout": "2h 30m", "kill_grace": "5s", "max_entries": 1000,
                 "secrets": ["s3cr3t", "with \"quotes\" and \\"]},
    }});
    let states = render_all(&salt_call, "dom0", &pillar);
    let nogroup = group_of("nobody");

    // Every path is under the root, and so are the paths written in dom0.toml.
    assert_file(
        &states["qci-dom0-binary"],
        "/opt/qubes/usr/bin/qci-dom0",
        "bin",
        "daemon",
        "0755",
    );
    assert_file(
        &states["qci-dom0-service"],
        "/opt/qubes/etc/qubes-rpc/qci.Run",
        "bin",
        "daemon",
        "0755",
    );
    assert_dir(
        &states["qci-dom0-settings-dir"],
        "/opt/qubes/etc/qci",
        "bin",
        "daemon",
        "0755",
    );
    let settings = &states["qci-dom0-settings"];
    assert_file(
        settings,
        "/opt/qubes/etc/qci/dom0.toml",
        "bin",
        &nogroup,
        "0640",
    );
    assert_eq!(
        settings_lines(settings),
        [
            r#"dev_vm = "ci-dev""#,
            r#"log_dir = "/opt/qubes/srv/ci/logs""#,
            r#"work_dir = "/opt/qubes/srv/ci/work""#,
            r#"artifact_dir = "/opt/qubes/srv/ci/out""#,
            r#"job_timeout = "2h 30m""#,
            r#"kill_grace = "5s""#,
            "max_entries = 1000",
            "keep_artifacts = 5",
            r#"secrets = ["s3cr3t", "with \"quotes\" and \\"]"#,
        ]
    );
    assert_dir(
        &states["qci-dom0-log-dir"],
        "/opt/qubes/srv/ci/logs",
        "nobody",
        &nogroup,
        "0700",
    );
    assert_dir(
        &states["qci-dom0-work-dir"],
        "/opt/qubes/srv/ci/work",
        "nobody",
        &nogroup,
        "0700",
    );
    assert_dir(
        &states["qci-dom0-artifact-dir"],
        "/opt/qubes/srv/ci/out",
        "nobody",
        &nogroup,
        "0700",
    );

    // The policy lets the site's dev VM in, and only it.
    let policy = states["qci-dom0-policy"].str("contents");
    let rules: Vec<Vec<&str>> = policy
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rules[0], ["qci.Run", "*", "ci-dev", "@adminvm", "allow"]);
    assert!(!policy.contains("sd-dev"), "{policy}");
    assert_eq!(
        policy.replace(" ci-dev ", " sd-dev "),
        shipped("policy/30-qci.policy"),
        "only the dev VM's name changes"
    );

    assert_file(
        &states["qci-vm-binary"],
        "/opt/qubes/usr/bin/qci-vm",
        "bin",
        "daemon",
        "0755",
    );
    assert_file(
        &states["qci-vm-service-qci.Export"],
        "/opt/qubes/etc/qubes-rpc/qci.Export",
        "bin",
        "daemon",
        "0755",
    );

    let qube = &states["qci-dev-vm"];
    assert_eq!(qube.str("name"), "ci-dev");
    assert_eq!(
        qube.args["present"],
        json!([{"class": "StandaloneVM"}, {"template": "fedora-40-xfce"}, {"label": "purple"}])
    );
    assert_eq!(qube.args["prefs"], json!([{"memory": 4000}, {"vcpus": 4}]));
    assert!(
        states["qci-dev-vm-is-standalone"]
            .str("unless")
            .contains("-- ci-dev klass")
    );

    // The dev VM's minion gets the dev VM's state, under its own name.
    assert_eq!(
        render_top(&salt_call, &pillar),
        json!({"base": {"dom0": ["qci.dev-vm-qube", "qci.dom0"], "ci-dev": ["qci.dev-vm"]}})
    );
    let vm_states =
        Minion::new(&salt_call, &bundle().srv_salt, "ci-dev", &pillar).show_sls("qci.dev-vm");
    assert_eq!(vm_states.len(), 3);
}

#[test]
fn bad_pillar_fails_the_render_and_installs_nothing() {
    let Some(salt_call) = salt_call() else { return };
    let cases = [
        (
            json!({"dev_vm": {"name": "sd dev"}}),
            r#"qci:dev_vm:name is not a valid qube name (a letter, then letters, digits, _ or -; at most 31): "sd dev""#,
        ),
        (
            json!({"dev_vm": {"name": "a-name-that-is-longer-than-31-chars"}}),
            "qci:dev_vm:name is not a valid qube name",
        ),
        (
            json!({"dev_vm": {"name": "dom0"}}),
            r#"qci:dev_vm:name cannot be "dom0": Qubes reserves it"#,
        ),
        (
            json!({"dom0": {"log_dir": "var/log/qci"}}),
            r#"qci:dom0:log_dir must be an absolute path, not "var/log/qci""#,
        ),
        (
            json!({"dom0": {"work_dir": "/var/lib/../../etc"}}),
            "qci:dom0:work_dir must not contain . or .. components",
        ),
        (
            json!({"dom0": {"artifact_dir": "artifacts"}}),
            r#"qci:dom0:artifact_dir must be an absolute path, not "artifacts""#,
        ),
        (
            json!({"dom0": {"keep_artifacts": 0}}),
            "qci:dom0:keep_artifacts must be a positive whole number, not 0",
        ),
        (
            json!({"root": "machine"}),
            "qci:root must be an absolute path",
        ),
        (
            json!({"dom0": {"job_timeout": "forever"}}),
            r#"qci:dom0:job_timeout is not a duration like 90s, 30m or 6h: "forever""#,
        ),
        (
            json!({"dom0": {"max_entries": -1}}),
            "qci:dom0:max_entries must be a positive whole number, not -1",
        ),
        (
            json!({"dom0": {"secrets": "s3cr3t"}}),
            "qci:dom0:secrets must be a list of strings",
        ),
        (
            json!({"dev_vm": {"nmae": "x"}}),
            "unknown key qci:dev_vm:nmae (known: label, maxmem, memory, name, template, vcpus)",
        ),
        (
            json!({"dom0_user": "no-such-user-here"}),
            r#"qci:dom0_user "no-such-user-here" is not a user of this system"#,
        ),
    ];
    let scratch = tempfile::tempdir().unwrap();
    // One thread per case: a salt-call spends seconds starting up.
    std::thread::scope(|threads| {
        for (i, (bad, message)) in cases.iter().enumerate() {
            let root = scratch.path().join(format!("root{i}"));
            let salt_call = &salt_call;
            threads.spawn(move || {
                std::fs::create_dir_all(&root).unwrap();
                let mut qci = json!({"dom0_user": "nobody", "root": root});
                for (k, v) in bad.as_object().unwrap() {
                    qci[k] = v.clone();
                }
                let pillar = json!({ "qci": qci });
                let minion = Minion::new(salt_call, &bundle().srv_salt, "dom0", &pillar);
                let expected = format!("Jinja error: qci pillar: {message}");
                // Rendered, or applied: the same refusal, and nothing
                // installed (applied for a few cases only, to save time).
                let functions: &[&str] = if matches!(i, 0 | 3 | 10) {
                    &["state.show_sls", "state.apply"]
                } else {
                    &["state.show_sls"]
                };
                for &function in functions {
                    let out = minion.call(&[function, "qci.dom0,qci.dev-vm"]);
                    assert_ne!(out.code, Some(0), "{bad}: {out:#?}");
                    let errors = render_errors(&out.data);
                    assert!(
                        errors.contains(&expected),
                        "{bad}: expected {expected:?} in {errors}"
                    );
                    let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
                    assert!(left.is_empty(), "{bad}: {function} installed {left:?}");
                }
            });
        }
    });

    // The Qubes way, a highstate (here the dev VM's, which needs no qvm.*):
    // the top file itself refuses to render, Salt says why, and runs nothing.
    let root = scratch.path().join("highstate");
    std::fs::create_dir_all(&root).unwrap();
    let pillar = json!({"qci": {"root": root, "dev_vm": {"name": "sd dev"}}});
    let minion = Minion::new(&salt_call, &bundle().srv_salt, "sd-dev", &pillar);
    let out = minion.call(&["state.highstate"]);
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains(
            "Unable to render top file: Jinja error: qci pillar: qci:dev_vm:name is not a valid qube name"
        ),
        "{out:#?}"
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);

    // With no dom0_user and no group qubes to find it in, dom0's state
    // refuses too, rather than give the directories to a wrong user.
    let has_qubes_group = nix::unistd::Group::from_name("qubes").unwrap().is_some();
    if !has_qubes_group {
        let minion = Minion::new(&salt_call, &bundle().srv_salt, "dom0", &json!({}));
        let out = minion.call(&["state.show_sls", "qci.dom0"]);
        assert_ne!(out.code, Some(0));
        assert!(
            render_errors(&out.data).contains(
                "Jinja error: qci pillar: qci:dom0_user is not set and group qubes has no members to take it from"
            ),
            "{out:#?}"
        );
    }
}

/// What a failed render returns: a list of error texts.
fn render_errors(data: &Value) -> String {
    let errors = data
        .as_array()
        .unwrap_or_else(|| panic!("not a render failure: {data:#}"));
    errors
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn bundle_unpacks_verifies_and_its_states_render() {
    let Some(salt_call) = salt_call() else { return };
    let b = bundle();
    let srv = &b.srv_salt;

    // The layout under /srv/salt, with modes.
    let listing = run_ok(
        Command::new("find")
            .arg(".")
            .args(["-type", "f", "-printf", "%P %m\n"])
            .current_dir(srv),
    );
    let mut listing: Vec<&str> = listing.lines().collect();
    listing.sort();
    assert_eq!(
        listing,
        [
            "qci.top 644",
            "qci/SHA256SUMS 644",
            "qci/actions-runner.sls 644",
            "qci/bin/qci-dom0 755",
            "qci/bin/qci-vm 755",
            "qci/defaults.yaml 644",
            "qci/dev-vm-qube.sls 644",
            "qci/dev-vm.sls 644",
            "qci/dom0.sls 644",
            "qci/map.jinja 644",
            "qci/pillar.example 644",
            "qci/policy/30-qci.policy 644",
            "qci/qubes-rpc/dev-vm/qci.Export 755",
            "qci/qubes-rpc/dev-vm/qci.Status 755",
            "qci/qubes-rpc/dom0/qci.Run 755",
        ]
    );
    for (packed, source) in [
        ("qci.top", repo().join("salt/qci.top")),
        ("qci/dom0.sls", repo().join("salt/qci/dom0.sls")),
        (
            "qci/policy/30-qci.policy",
            repo().join("policy/30-qci.policy"),
        ),
        (
            "qci/qubes-rpc/dom0/qci.Run",
            repo().join("qubes-rpc/dom0/qci.Run"),
        ),
        ("qci/bin/qci-dom0", support::bin_dir().join("qci-dom0")),
        ("qci/bin/qci-vm", support::bin_dir().join("qci-vm")),
    ] {
        assert!(
            std::fs::read(srv.join(packed)).unwrap() == std::fs::read(&source).unwrap(),
            "{packed} differs from {}",
            source.display()
        );
    }

    // What a user runs in dom0: the archive's checksum, then every file's.
    let dir = b.archive.parent().unwrap();
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "qci.tar.gz.sha256"])
            .current_dir(dir),
    );
    let checked = run_ok(
        Command::new("sha256sum")
            .args(["-c", "qci/SHA256SUMS"])
            .current_dir(srv),
    );
    assert_eq!(checked.lines().count(), listing.len() - 1, "{checked}");
    assert!(checked.lines().all(|l| l.ends_with(": OK")), "{checked}");

    // A changed file fails the check.
    let tampered = tempfile::tempdir().unwrap();
    run_ok(Command::new("cp").arg("-a").arg(srv).arg(tampered.path()));
    let copy = tampered.path().join("salt");
    std::fs::write(
        copy.join("qci/policy/30-qci.policy"),
        "qci.Run * @anyvm @adminvm allow\n",
    )
    .unwrap();
    let out = Command::new("sha256sum")
        .args(["-c", "--quiet", "qci/SHA256SUMS"])
        .current_dir(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "qci/policy/30-qci.policy: FAILED\n"
    );

    // The binaries' glibc was checked against Qubes 4.2's dom0 (2.36)...
    for name in ["qci-dom0", "qci-vm"] {
        let line = b
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("bundle: {name} needs glibc ")))
            .unwrap_or_else(|| panic!("no glibc line for {name} in {}", b.stderr));
        let need = line.split_whitespace().nth(4).unwrap();
        assert!(version_le(need, "2.36"), "{line}");
        assert!(line.ends_with("(at most 2.36)"), "{line}");
    }
    // ...and a bundle for an older system is refused, with the reason.
    let old = run_bundle_expecting_failure(&["--max-glibc", "2.17"]);
    assert_eq!(old.0, Some(3));
    assert!(
        old.1.contains("needs glibc 2.") && old.1.contains(", newer than 2.17"),
        "{}",
        old.1
    );

    // The same inputs give the same archive, byte for byte.
    let again = tempfile::tempdir().unwrap();
    let out = salt::run_bundle(&again.path().join("qci.tar.gz"), &[]);
    assert!(out.status.success());
    assert!(
        std::fs::read(again.path().join("qci.tar.gz")).unwrap()
            == std::fs::read(&b.archive).unwrap()
    );

    // The states found there render (the other tests render them all).
    let states = Minion::new(
        &salt_call,
        srv,
        "dom0",
        &json!({"qci": {"dom0_user": "nobody"}}),
    )
    .show_sls("qci.dom0");
    assert_eq!(
        states["qci-dom0-binary"].str("source"),
        "salt://qci/bin/qci-dom0"
    );
}

fn run_bundle_expecting_failure(extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = salt::run_bundle(&dir.path().join("x.tar.gz"), extra);
    assert!(
        !dir.path().join("x.tar.gz").exists(),
        "a refused bundle was written"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `a <= b` for dotted version numbers.
fn version_le(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    parse(a) <= parse(b)
}

/// (mode, uid, gid, inode, mtime) of everything under `dir`, by path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, u64, i64)> {
    let out = run_ok(Command::new("find").arg(dir).arg("-print0"));
    out.split('\0')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (
                PathBuf::from(p),
                (m.mode(), m.uid(), m.gid(), m.ino(), m.mtime()),
            )
        })
        .collect()
}

fn mode_owner(path: &Path) -> (u32, String) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let user = nix::unistd::User::from_uid(m.uid().into())
        .unwrap()
        .unwrap()
        .name;
    (m.permissions().mode() & 0o7777, user)
}

/// `qci run --local examples/sample --machine-dir MACHINE`.
fn run_sample_on(s: &Scratch, machine: &Path) -> std::process::Output {
    let mut run = qci();
    run.args(["run", "--local"]).arg(s.example("sample"));
    run.arg("--machine-dir").arg(machine).output().unwrap()
}

#[test]
fn salt_installed_machine_runs_a_job() {
    let Some(salt_call) = salt_call() else { return };
    let s = Scratch::new();
    let machine = s.machine();

    // Qubes alone: dom0, the dev VM and another VM, no qci.
    run_ok(
        qci()
            .arg("bare-machine")
            .arg(&machine)
            .args(["--vm", "sd-dev", "--vm", "sys-other"]),
    );
    let out = run_sample_on(&s, &machine);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bare machine has no qci to run"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("qci is not installed (")
            && stderr.contains("dom0/etc/qubes-rpc/qci.Run is missing"),
        "{stderr}"
    );

    // Salt installs it: dom0 as dom0's minion, the dev VM as its own.
    // The machine runs its domains as an unprivileged user (`nobody` when
    // the tests run as root): on Qubes, dom0's login user.
    let (me, _, _) = s.machine_user();
    let (owner, group) = if nix::unistd::geteuid().is_root() {
        ("root".to_owned(), "root".to_owned())
    } else {
        (me.clone(), group_of(&me))
    };
    let minion = |id: &str, domain: &str, secret: &str| {
        let pillar = json!({"qci": {
            "root": machine.join(domain), "owner": owner, "group": group, "dom0_user": me,
            "dom0": {"secrets": [secret]},
        }});
        Minion::new(&salt_call, &bundle().srv_salt, id, &pillar)
    };
    let dom0 = minion("dom0", "dom0", "e2e-s3cr3t");
    let dev_vm = minion("sd-dev", "sd-dev", "e2e-s3cr3t");
    // dom0's highstate would also run qci.dev-vm-qube (qvm.*, Qubes only);
    // the dev VM's is what `qubesctl --targets=sd-dev` runs.
    let dom0_states = ["state.apply", "qci.dom0"];
    let first = [dom0.apply(&dom0_states), dev_vm.apply(&["state.highstate"])];
    for results in &first {
        for (id, result) in results {
            assert_ne!(
                result["changes"],
                json!({}),
                "{id} changed nothing the first time"
            );
        }
    }
    assert_eq!(first[0].len() + first[1].len(), 11);

    // Every file in place, with its mode and owner.
    let d0 = machine.join("dom0");
    let vm = machine.join("sd-dev");
    for (path, mode, user) in [
        (d0.join("usr/bin/qci-dom0"), 0o755, &owner),
        (d0.join("etc/qubes-rpc/qci.Run"), 0o755, &owner),
        (d0.join("etc/qubes/policy.d/30-qci.policy"), 0o644, &owner),
        (d0.join("etc/qci"), 0o755, &owner),
        (d0.join("etc/qci/dom0.toml"), 0o640, &owner),
        (d0.join("var/log/qci"), 0o700, &me),
        (d0.join("var/lib/qci"), 0o700, &me),
        (d0.join("var/lib/qci/artifacts"), 0o700, &me),
        (vm.join("usr/bin/qci-vm"), 0o755, &owner),
        (vm.join("etc/qubes-rpc/qci.Status"), 0o755, &owner),
        (vm.join("etc/qubes-rpc/qci.Export"), 0o755, &owner),
    ] {
        assert_eq!(
            mode_owner(&path),
            (mode, user.clone()),
            "{}",
            path.display()
        );
    }
    let gid = std::fs::metadata(d0.join("etc/qci/dom0.toml"))
        .unwrap()
        .gid();
    assert_eq!(
        nix::unistd::Group::from_gid(gid.into())
            .unwrap()
            .unwrap()
            .name,
        group_of(&me),
        "dom0.toml is readable by dom0's user"
    );
    for (installed, source) in [
        (
            d0.join("usr/bin/qci-dom0"),
            support::bin_dir().join("qci-dom0"),
        ),
        (vm.join("usr/bin/qci-vm"), support::bin_dir().join("qci-vm")),
        (
            d0.join("etc/qubes/policy.d/30-qci.policy"),
            repo().join("policy/30-qci.policy"),
        ),
        (
            vm.join("etc/qubes-rpc/qci.Export"),
            repo().join("qubes-rpc/dev-vm/qci.Export"),
        ),
    ] {
        assert!(
            std::fs::read(&installed).unwrap() == std::fs::read(&source).unwrap(),
            "{}",
            installed.display()
        );
    }
    // The paths in dom0.toml are the machine's: an emulated dom0 has no chroot.
    let settings = std::fs::read_to_string(d0.join("etc/qci/dom0.toml")).unwrap();
    assert!(
        settings.contains(&format!(
            "log_dir = \"{}\"\n",
            d0.join("var/log/qci").display()
        )),
        "{settings}"
    );
    assert!(
        settings.contains("secrets = [\"e2e-s3cr3t\"]\n"),
        "{settings}"
    );
    assert!(
        settings.contains(&format!(
            "work_dir = \"{}\"\n",
            d0.join("var/lib/qci").display()
        )),
        "{settings}"
    );

    // Applying again changes nothing.
    for results in [dom0.apply(&dom0_states), dev_vm.apply(&["state.highstate"])] {
        for (id, result) in results {
            assert_eq!(result["changes"], json!({}), "{id} changed the second time");
        }
    }

    // A new secret changes dom0.toml alone, and Salt's output shows no
    // diff of it: neither the old secret nor the new one.
    let changed = minion("dom0", "dom0", "e2e-n3w-s3cr3t").apply(&dom0_states);
    let changed_ids: Vec<&String> = changed
        .iter()
        .filter(|(_, r)| r["changes"] != json!({}))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(changed_ids, ["qci-dom0-settings"]);
    let output = serde_json::to_string(&changed).unwrap();
    assert!(!output.contains("s3cr3t"), "{output}");

    // A job runs on the machine as Salt left it: qci run installs nothing.
    let installed = [
        snapshot(&d0.join("usr")),
        snapshot(&d0.join("etc")),
        snapshot(&vm.join("usr")),
        snapshot(&vm.join("etc")),
    ];
    let log_dir_before = snapshot(&d0.join("var/log/qci"));
    let out = run_sample_on(&s, &machine);
    let (job, state, description) = s.ended(&out, 0);
    assert_eq!(
        (state.as_str(), description.as_str()),
        ("success", "All 3 steps passed")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = d0.join("var/log/qci").join(format!("{job}.log"));
    assert!(
        stdout.contains(&format!("qci: log: {}", log.display())),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("[test] test: 4 passed, 0 failed, 1 skipped"),
        "{text}"
    );
    // Written by qci.Run as dom0's user, under umask 0077.
    assert_eq!(mode_owner(&log), (0o600, me.clone()));
    assert_eq!(
        [
            snapshot(&d0.join("usr")),
            snapshot(&d0.join("etc")),
            snapshot(&vm.join("usr")),
            snapshot(&vm.join("etc"))
        ],
        installed,
        "qci run changed what Salt installed"
    );
    // The log is in the directory Salt made (same inode, owner and mode).
    assert_eq!(
        snapshot(&d0.join("var/log/qci"))
            .remove(&d0.join("var/log/qci"))
            .map(|m| (m.0, m.1, m.3)),
        log_dir_before
            .get(&d0.join("var/log/qci"))
            .map(|m| (m.0, m.1, m.3)),
    );

    // Another VM may not start a job: the installed policy refuses it.
    let out = s.qrexec("sys-other", "dom0", "qci.Run+intruder", b"");
    assert_eq!(out.status.code(), Some(126));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Request refused"
    );
    assert!(!d0.join("var/log/qci/intruder.log").exists());
}

#[test]
fn the_actions_runner_is_unpacked_from_the_admins_archive_checked_by_its_sha256() {
    let Some(salt_call) = salt_call() else { return };
    let sha = "AB".repeat(32);
    let runner = |sha: &str| {
        json!({"qci": {"actions_runner": {
            "tarball": "salt://qci/actions-runner-linux-x64-2.321.0.tar.gz",
            "sha256": sha, "user": "nobody", "group": group_of("nobody"),
        }}})
    };
    let pillar = runner(&sha);
    let minion = Minion::new(&salt_call, &bundle().srv_salt, "sd-dev", &pillar);
    let states = minion.show_sls("qci.actions-runner");
    let ids: Vec<&str> = states.keys().map(String::as_str).collect();
    assert_eq!(ids, ["qci-actions-runner", "qci-actions-runner-dir"]);
    let unpack = &states["qci-actions-runner"];
    assert_eq!(unpack.function, "archive.extracted");
    assert_eq!(unpack.str("name"), "/home/user/actions-runner");
    assert_eq!(
        unpack.str("source"),
        "salt://qci/actions-runner-linux-x64-2.321.0.tar.gz"
    );
    assert_eq!(
        unpack.str("source_hash"),
        format!("sha256={}", sha.to_lowercase())
    );
    assert_eq!(unpack.str("user"), "nobody");
    // The dev VM gets it from the top file only when a tarball is set.
    assert_eq!(
        render_top(&salt_call, &pillar)["base"]["sd-dev"],
        json!(["qci.dev-vm", "qci.actions-runner"])
    );

    // No archive, or one without a checkable SHA-256: refused before
    // anything is installed.
    for (pillar, why) in [
        (runner(""), "qci:actions_runner:sha256 must be"),
        (runner("abc"), "qci:actions_runner:sha256 must be"),
        (
            json!({"qci": {"actions_runner": {"tarball": "https://example.org/r.tgz", "sha256": sha}}}),
            "salt:// path or an absolute path",
        ),
    ] {
        let minion = Minion::new(&salt_call, &bundle().srv_salt, "sd-dev", &pillar);
        let out = minion.call(&["state.show_sls", "qci.actions-runner"]);
        assert_ne!(out.code, Some(0), "{out:#?}");
        assert!(render_errors(&out.data).contains(why), "{out:#?}");
    }
}
