//! Fault tests of the pool: the host killed mid-job, a machine whose dom0
//! never answers, and a hypervisor that cannot be reached (alone, or beside
//! a machine that works).

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod pool_support;
mod support;

use pool_support::{Host, Repo, job_of, stderr, stdout};
use support::{is_dead, processes, signal};

#[test]
fn kill_9_of_the_host_mid_job_is_reconciled_by_the_next_start() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let release = host.path("release");
    let repo = host.held_repo(&release);
    let mut child = host.start_held(&["--machine", "emu-1"], &repo, "doomed");
    let machine = host.machine_dir("emu-1").join("machine");
    let emu = format!("QCI_EMU_MACHINE={}", machine.display());
    let step_pids = processes(&emu, |_| true);
    assert!(!step_pids.is_empty(), "the job runs in the machine");
    signal(child.id() as i32, "KILL");
    let _ = child.wait();
    assert_eq!(
        host.control("emu-1")["power"],
        "on",
        "the machine outlives its host"
    );
    assert!(host.control("emu-1")["marker"]["job"] == "doomed");

    // The next start (any qci run, here one that needs the same machine)
    // reconciles before it queues.
    let quick = Repo::new(&host, "quick", "echo after the crash");
    let out = host.run_job(&["--machine", "emu-1"], &quick);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("reconciled job doomed on emu-1: error (The qci host process"),
        "{err}"
    );
    let doomed = host.statuses("doomed");
    let (state, why) = doomed.last().expect("a final status for the dead job");
    assert_eq!(state, "error");
    assert!(
        why.contains("died while the job held machine emu-1"),
        "{why}"
    );
    // Its processes are gone: the machine was powered off, then reverted.
    for pid in step_pids {
        assert!(is_dead(pid), "process {pid} of the dead job survived");
    }
    let leases = host.lease_log();
    let doomed_lease = leases.iter().find(|l| l.job == "doomed").unwrap();
    let next = leases.iter().find(|l| l.job != "doomed").unwrap();
    assert!(doomed_lease.released_at.unwrap() <= next.acquired_at);
    let control = host.control("emu-1");
    assert_eq!(control["power"], "off");
    assert!(control["marker"].is_null());
}

/// A local machine that boots but never answers: in its snapshot, the
/// dev VM's shell service hangs (one in `usr/local/etc/qubes-rpc` comes
/// before the installed one, as in Qubes), so dom0's `qvm-run` never ends.
fn break_dom0(host: &Host, name: &str) {
    let shell = host
        .machine_dir(name)
        .join("snapshots/clean/sd-dev/usr/local/etc/qubes-rpc/qubes.VMShell");
    std::fs::create_dir_all(shell.parent().unwrap()).unwrap();
    std::fs::write(&shell, "#!/bin/sh\nexec sleep 600\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shell, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_machine_that_never_answers_is_an_error_after_the_boot_timeout_and_the_job_goes_to_another() {
    let mut host = Host::new();
    host.pool_keys = "boot_timeout = \"3s\"\ncall_timeout = \"2s\"\n".into();
    host.local("mute", "4.2").local("emu-2", "4.2");
    let repo = Repo::new(&host, "repo", "echo ran here");
    // Create both machines (and their snapshots), then break the first.
    assert_eq!(host.run(&["pool"]).status.code(), Some(0));
    break_dom0(&host, "mute");

    let out = host.run_job(&["--qubes", "4.2"], &repo);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("mute failed (dom0 of mute did not answer within 3s"),
        "{err}"
    );
    assert!(err.contains("leased emu-2"), "{err}");
    assert!(stdout(&out).contains("success (All 1 steps passed) on emu-2"));
    // The mute machine is off again and free.
    assert_eq!(host.control("mute")["power"], "off");
    assert!(host.control("mute")["marker"].is_null());

    // Asked for by name, there is no other machine: the job ends in error.
    let out = host.run_job(&["--machine", "mute"], &repo);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let job = job_of(&out);
    let (state, why) = host.statuses(&job).last().cloned().unwrap();
    assert_eq!(state, "error");
    assert!(why.contains("did not answer within 3s"), "{why}");
}

#[test]
fn an_unreachable_hypervisor_is_a_clear_error_and_no_job_is_lost_or_marked_as_run() {
    let mut host = Host::new();
    let socket = host.path("no-libvirtd/libvirt-sock");
    host.machine(&format!(
        "name = \"lv\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\nuri = \"test+unix:///default?socket={}\"\n\
         dom0 = \"emulated\"\nemulated_path = {:?}\n",
        socket.display(),
        host.path("guest")
    ));
    let repo = Repo::new(&host, "repo", "echo must not run");
    let out = host.run_job(&["--machine", "lv", "--job", "kept"], &repo);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("job kept did not run: machine lv: hypervisor unreachable"),
        "{err}"
    );
    // Nothing ran and nothing says it did: no log, no status, no run record;
    // the lease is free for the next try.
    assert!(!stdout(&out).contains("must not run"));
    assert_eq!(host.host_log("kept"), "");
    assert!(host.statuses("kept").is_empty());
    let store = qci_pool::lease::LeaseStore::open(&host.state(), "test-host").unwrap();
    assert_eq!(
        store
            .run_state(&qci_core::JobId::parse("kept").unwrap())
            .unwrap(),
        None
    );
    assert!(store.leases().unwrap().is_empty());
    let pool = host.run(&["pool"]);
    assert!(
        stdout(&pool).contains("hypervisor unreachable"),
        "{}",
        stdout(&pool)
    );
}

#[test]
fn a_machine_whose_hypervisor_is_unreachable_sends_the_job_to_another_of_its_version() {
    let mut host = Host::new();
    // Listed first, so it is the first free machine of 4.2.
    host.machine(&format!(
        "name = \"lv\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\nuri = \"test+unix:///default?socket={}\"\n\
         dom0 = \"emulated\"\nemulated_path = {:?}\n",
        host.path("no-libvirtd/libvirt-sock").display(),
        host.path("guest")
    ));
    host.local("emu-1", "4.2");
    let repo = Repo::new(&host, "repo", "echo ran");
    let out = host.run_job(&["--qubes", "4.2"], &repo);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("lv failed (machine lv: hypervisor unreachable"),
        "{err}"
    );
    assert!(stdout(&out).contains("on emu-1"), "{}", stdout(&out));
    let job = job_of(&out);
    assert_eq!(host.statuses(&job).last().unwrap().0, "success");
    let store = qci_pool::lease::LeaseStore::open(&host.state(), "test-host").unwrap();
    assert!(store.leases().unwrap().is_empty());
}

#[test]
fn sigterm_to_the_host_mid_job_cancels_it_and_frees_the_machine() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let release = host.path("release");
    let repo = host.held_repo(&release);
    let child = host.start_held(&["--machine", "emu-1"], &repo, "stopped");
    signal(child.id() as i32, "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("qci: job stopped: canceled"),
        "{}",
        stdout(&out)
    );
    assert_eq!(host.statuses("stopped").last().unwrap().0, "canceled");
    let control = host.control("emu-1");
    assert_eq!(control["power"], "off");
    assert!(control["marker"].is_null());
    let machine = host.machine_dir("emu-1").join("machine");
    let left = processes(&format!("QCI_EMU_MACHINE={}", machine.display()), |_| true);
    assert!(
        left.is_empty(),
        "processes of the canceled job survived: {left:?}"
    );
}
