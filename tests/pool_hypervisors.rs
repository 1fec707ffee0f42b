//! Jobs on hypervisor machines: libvirt's test driver inside a real
//! libvirtd, and the govmomi vCenter simulator. Neither runs a guest, so
//! each machine is paired with an emulated Qubes machine as its dom0
//! (`dom0 = "emulated"`): control goes to the hypervisor for real, the
//! guest channel to the emulator. Under CI=true a missing daemon fails.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod pool_support;
mod support;

use pool_support::{Host, Libvirtd, Repo, Vcsim, job_of, stderr, stdout};

fn libvirt_machine(host: &Host, lv: &Libvirtd, name: &str, dom0: &str) -> String {
    let guest = match dom0 {
        "emulated" => format!(
            "dom0 = \"emulated\"\nemulated_path = {:?}\n",
            host.path(&format!("guests/{name}"))
        ),
        other => format!("dom0 = \"{other}\"\n"),
    };
    format!(
        "name = \"{name}\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\nuri = \"{}\"\n{guest}",
        lv.uri()
    )
}

#[test]
fn a_job_runs_on_a_libvirt_machine_reverted_before_and_off_after() {
    let Some(lv) = Libvirtd::start() else { return };
    lv.domain("q42-1");
    // Something the clean snapshot does not have: reverting removes it.
    lv.virsh(&["desc", "q42-1", "left by the last job"]);
    let mut host = Host::new();
    host.machine(&libvirt_machine(&host, &lv, "q42-1", "emulated"));
    let release = host.path("release");
    let repo = host.held_repo(&release);
    let child = host.start_held(&["--machine", "q42-1"], &repo, "lv-job");
    // While it runs: on, reverted, and the lease marked in libvirt.
    assert_eq!(lv.virsh(&["domstate", "q42-1"]), "running");
    assert_eq!(lv.virsh(&["desc", "q42-1"]), "", "not reverted");
    let marker = lv.virsh(&[
        "metadata",
        "q42-1",
        "--uri",
        qci_pool::backend::libvirt::MARKER_URI,
    ]);
    assert!(
        marker.contains("host=\"test-host\"") && marker.contains("job=\"lv-job\""),
        "{marker}"
    );
    std::fs::write(&release, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("reverting to snapshot clean"));

    assert_eq!(lv.virsh(&["domstate", "q42-1"]), "shut off");
    let gone = std::process::Command::new("virsh")
        .args([
            "-q",
            "-c",
            &lv.uri(),
            "metadata",
            "q42-1",
            "--uri",
            qci_pool::backend::libvirt::MARKER_URI,
        ])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the marker is cleared");
    assert!(host.host_log("lv-job").contains("[step] started"));
    assert_eq!(host.statuses("lv-job").last().unwrap().0, "success");
    let pool = stdout(&host.run(&["pool"]));
    assert!(
        pool.lines()
            .any(|l| l.starts_with("q42-1") && l.contains(" off ") && l.contains(" free ")),
        "{pool}"
    );
}

#[test]
fn a_libvirt_machine_whose_guest_agent_never_answers_hands_the_job_to_another() {
    let Some(lv) = Libvirtd::start() else { return };
    lv.domain("no-agent");
    lv.domain("q42-2");
    let mut host = Host::new();
    host.pool_keys = "boot_timeout = \"2s\"\ncall_timeout = \"5s\"\n".into();
    // The first machine is reached through the QEMU guest agent, which the
    // test driver does not have: the production channel, failing for real.
    host.machine(&libvirt_machine(&host, &lv, "no-agent", "agent"));
    host.machine(&libvirt_machine(&host, &lv, "q42-2", "emulated"));
    let repo = Repo::new(&host, "repo", "echo ran");
    let out = host.run_job(&["--qubes", "4.2"], &repo);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("no-agent failed (dom0 of no-agent did not answer within 2s"),
        "{err}"
    );
    assert!(stdout(&out).contains("on q42-2"), "{}", stdout(&out));
    assert_eq!(lv.virsh(&["domstate", "no-agent"]), "shut off");
    let job = job_of(&out);
    assert_eq!(host.statuses(&job).last().unwrap().0, "success");
}

/// A host whose one machine, `vm1`, is the simulator's VM with an
/// emulated dom0 as its guest channel, and whose nightly runs nothing.
fn vmware_host(vc: &Vcsim) -> Host {
    let mut host = Host::new();
    let creds = host.path("vcenter.cred");
    std::fs::write(&creds, &vc.credentials).unwrap();
    // A secret file as its owner keeps it (qci refuses others reading it).
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    host.pool_keys
        .push_str("[pool.nightly]\nupdate_commands = [[\"true\"]]\nsalt_commands = []\n");
    host.machine(&format!(
        "name = \"vm1\"\nqubes = \"4.2\"\nbackend = \"vmware\"\nurl = \"{}\"\nvm = \"DC0_H0_VM0\"\n\
         credentials_file = {creds:?}\ndom0 = \"emulated\"\nemulated_path = {:?}\n",
        vc.url,
        host.path("guests/vm1")
    ));
    host
}

#[test]
fn a_job_runs_on_a_simulated_vmware_machine() {
    let Some(vc) = Vcsim::start() else { return };
    let host = vmware_host(&vc);
    // A new machine has no snapshot: the first nightly takes it.
    let nightly = host.run(&["nightly"]);
    assert_eq!(
        nightly.status.code(),
        Some(0),
        "{}{}",
        stdout(&nightly),
        stderr(&nightly)
    );
    let snapshot = stdout(&nightly)
        .lines()
        .find_map(|l| l.strip_prefix("qci: nightly vm1: snapshot "))
        .unwrap()
        .to_owned();

    let repo = Repo::new(&host, "repo", "echo on vmware");
    let out = host.run_job(&["--machine", "vm1"], &repo);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("reverting to snapshot {snapshot}")),
        "{err}"
    );
    let job = job_of(&out);
    assert!(host.host_log(&job).contains("[step] on vmware"));
    assert_eq!(host.statuses(&job).last().unwrap().0, "success");
    // The marker was set (read back from extraConfig), and is cleared now.
    let lease = host.lease_log().into_iter().find(|l| l.job == job).unwrap();
    assert!(lease.marker.unwrap().contains(&format!("job={job}")));
    let pool = stdout(&host.run(&["pool"]));
    let line = pool.lines().find(|l| l.starts_with("vm1")).unwrap();
    assert!(
        line.contains(" off ") && line.contains(" free ") && line.contains(&snapshot),
        "{line}"
    );
}

#[test]
fn vmware_guest_operations_that_are_unavailable_are_a_machine_that_never_answers() {
    let Some(vc) = Vcsim::start() else { return };
    let mut host = Host::new();
    host.pool_keys = "boot_timeout = \"2s\"\ncall_timeout = \"5s\"\n[pool.nightly]\nupdate_commands = []\nsalt_commands = []\n".into();
    let creds = host.path("vcenter.cred");
    std::fs::write(&creds, &vc.credentials).unwrap();
    // A secret file as its owner keeps it (qci refuses others reading it).
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    host.machine(&format!(
        "name = \"vm1\"\nqubes = \"4.2\"\nbackend = \"vmware\"\nurl = \"{}\"\nvm = \"DC0/vm/DC0_H0_VM0\"\n\
         credentials_file = {creds:?}\nguest_credentials_file = {creds:?}\n",
        vc.url
    ));
    // Guest Operations, the production channel: the simulator has no
    // guest tools, so dom0 never answers.
    let out = host.run(&["nightly"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("no snapshot: dom0 of vm1 did not answer within 2s"),
        "{}",
        stdout(&out)
    );
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

#[test]
fn a_failed_job_on_libvirt_leaves_a_screenshot_and_a_passing_one_none() {
    let Some(lv) = Libvirtd::start() else { return };
    lv.domain("q42-1");
    let mut host = Host::new();
    host.machine(&libvirt_machine(&host, &lv, "q42-1", "emulated"));
    let failing = Repo::new(&host, "failing", "echo broken; exit 1");
    let out = host.run_job(&["--machine", "q42-1"], &failing);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let job = job_of(&out);
    assert_eq!(host.statuses(&job).last().unwrap().0, "failure");
    // Taken before the machine went off (the test driver's screen is a PNG).
    let shot = host
        .state()
        .join("artifacts")
        .join(&job)
        .join("screenshot.png");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(PNG_SIGNATURE), "not a PNG");
    // `qci run` names it at the end, as it names the log.
    assert!(
        stdout(&out).contains(&format!("qci: screenshot: {}", shot.display())),
        "{}",
        stdout(&out)
    );
    assert!(
        !host.host_log(&job).contains("[host]"),
        "{}",
        host.host_log(&job)
    );
    assert_eq!(lv.virsh(&["domstate", "q42-1"]), "shut off");

    let passing = Repo::new(&host, "passing", "echo fine");
    let out = host.run_job(&["--machine", "q42-1"], &passing);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let job = job_of(&out);
    assert!(!host.state().join("artifacts").join(&job).exists());
}

#[test]
fn a_failed_job_on_vmware_asks_for_a_screenshot_and_keeps_its_result() {
    let Some(vc) = Vcsim::start() else { return };
    let host = vmware_host(&vc);
    let nightly = host.run(&["nightly"]);
    assert_eq!(nightly.status.code(), Some(0), "{}", stdout(&nightly));
    let failing = Repo::new(&host, "failing", "exit 1");
    let out = host.run_job(&["--machine", "vm1"], &failing);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let job = job_of(&out);
    assert_eq!(host.statuses(&job).last().unwrap().0, "failure");
    // govmomi's simulator (0.24) has no CreateScreenshot_Task: the host
    // asked, was refused, and says so in one line.
    let log = host.host_log(&job);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" [host] ")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    // The VM's id (vm-57) is the simulator's choice.
    let (_, why) = lines[0]
        .split_once(" [host] screenshot: cannot take one: vSphere: MethodNotFound: VirtualMachine:")
        .expect(lines[0]);
    assert!(
        why.ends_with(" does not implement: CreateScreenshot_Task"),
        "{log}"
    );
    assert!(
        !host
            .state()
            .join("artifacts")
            .join(&job)
            .join("screenshot.png")
            .exists()
    );
}

#[test]
fn a_vmware_screenshot_is_fetched_from_its_datastore_with_the_session_and_bounded() {
    use qci_pool::backend::vmware::{Connection, Vmware};
    let Some(vc) = Vcsim::start() else { return };
    let (user, password) = vc.credentials.split_once(':').unwrap();
    let credentials = qci_pool::config::Credentials {
        user: user.into(),
        password: password.into(),
    };
    let timeout = std::time::Duration::from_secs(20);
    let conn = Connection::new(&vc.url, "DC0_H0_VM0", credentials, None, timeout).unwrap();
    let vm = Vmware(std::sync::Arc::new(conn));
    // The simulator has no CreateScreenshot_Task: the file is put where
    // vSphere leaves one (the VM's folder on its datastore), and fetched as
    // the task's answer would name it.
    let png = [PNG_SIGNATURE, b"pixels"].concat();
    let base = vc.url.strip_suffix("/sdk").unwrap();
    let put = reqwest::blocking::Client::new()
        .put(format!(
            "{base}/folder/DC0_H0_VM0/DC0_H0_VM0-1.png?dcPath=DC0&dsName=LocalDS_0"
        ))
        .body(png.clone())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let file = "[LocalDS_0] DC0_H0_VM0/DC0_H0_VM0-1.png";
    assert_eq!(vm.datastore_file(file, 1 << 20).unwrap(), png);
    assert_eq!(
        vm.datastore_file(file, 8).unwrap_err().to_string(),
        format!("vSphere: {file}: larger than 8 bytes")
    );
    assert_eq!(
        vm.datastore_file("[LocalDS_0] DC0_H0_VM0/none.png", 1 << 20)
            .unwrap_err()
            .to_string(),
        "vSphere: [LocalDS_0] DC0_H0_VM0/none.png: 404 Not Found"
    );
}

#[test]
fn a_libvirt_machine_that_stops_answering_is_photographed_before_it_is_powered_off() {
    let Some(lv) = Libvirtd::start() else { return };
    lv.domain("q42-1");
    let mut host = Host::new();
    host.pool_keys = "boot_timeout = \"30s\"\ncall_timeout = \"2s\"\n".into();
    host.machine(&libvirt_machine(&host, &lv, "q42-1", "emulated"));
    // The test driver photographs a domain that is off as well: a virsh
    // in front of the real one notes the domain's state at each screenshot.
    let wrappers = host.path("wrappers");
    std::fs::create_dir_all(&wrappers).unwrap();
    let seen = host.path("state-at-screenshot");
    std::fs::write(
        wrappers.join("virsh"),
        format!(
            "#!/bin/sh\ncase \"$*\" in *screenshot*) /usr/bin/virsh -q -c '{}' domstate q42-1 >> '{}';; esac\n\
             exec /usr/bin/virsh \"$@\"\n",
            lv.uri(),
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        wrappers.join("virsh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        wrappers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let release = host.path("release");
    let repo = host.held_repo(&release);
    let child = host
        .qci(&[
            "run",
            "--machine",
            "q42-1",
            "--repo",
            repo.url(),
            "--commit",
            &repo.sha,
            "--job",
            "hung",
        ])
        .env("PATH", path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_for("the job to run", std::time::Duration::from_secs(60), || {
        host.host_log("hung").contains("[step] started")
    });
    // Paused: dom0 stops answering, and the screen is still there.
    lv.virsh(&["suspend", "q42-1"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(host.statuses("hung").last().unwrap().0, "error");
    let shot = host.state().join("artifacts/hung/screenshot.png");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(PNG_SIGNATURE), "not a PNG");
    let log = host.host_log("hung");
    assert!(!log.contains("[host] screenshot"), "{log}");
    // Taken once, while the machine was still there, not yet powered off.
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "paused\n");
    assert_eq!(lv.virsh(&["domstate", "q42-1"]), "shut off");
}
