//! GitHub Actions jobs on Qubes machines, end to end: the real `qci serve`
//! in App mode, emulated machines of the pool's `local` backend, a fake
//! GitHub that registers just-in-time runners and hands them jobs, and a
//! stand-in runner (`tests/actions_support/runner.py`) that qci starts in
//! the dev VM as it starts the real one; it runs its job's workflow with
//! `act` on the dev VM's shell.
//!
//! What the stand-in replaces: GitHub's runner binary and its protocol
//! with GitHub (registration by JIT config, job assignment, logs). What
//! runs for real: the webhook's signature and dedup, the pool's FIFO and
//! leases, revert and boot, `generate-jitconfig` with the installation
//! token, the runner started in the dev VM through the guest channel, and
//! the machine powered off and freed.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[path = "../crates/qci-server/tests/support/fake_github.rs"]
mod fake_github;
#[path = "actions_support/host.rs"]
mod host;
mod support;

use host::{GROUP, Host, REPO, Setup};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::wait_for;

/// One test at a time: each boots machines and times them on 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// A workflow whose one job runs in the dev VM: it prints where it runs
/// (the dev VM's home) inside a `::group::`, then has dom0 run `make
/// test` on its checkout through `qci-vm run`, as a Qubes project's
/// workflow does (the checkout is made by hand: `actions/checkout` needs
/// GitHub).
const WORKFLOW: &str = r#"on: push
jobs:
  test:
    runs-on: [self-hosted, qubes-4.2]
    steps:
      - run: |
          echo "::group::where"
          echo "step ran as $(id -un) in HOME=$HOME"
          echo "engine files: $(ls -A "$HOME/.qci/engine" | tr '\n' ' ')"
          echo "::endgroup::"
          touch "$HOME/step-ran"
      - run: |
          mkdir -p "$HOME/checkout" && cd "$HOME/checkout"
          printf 'test:\n\t@echo "make test ran in dom0 as $$(id -un)"\n' > Makefile
          qci-vm run -- make test
"#;

const MATRIX: &str = r#"on: push
jobs:
  test:
    strategy:
      matrix:
        qubes: ["4.2", "4.3"]
    runs-on: [self-hosted, "qubes-${{ matrix.qubes }}"]
    steps:
      - run: echo "matrix qubes=${{ matrix.qubes }} HOME=$HOME"
"#;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_queued_job_starts_a_machine_in_under_a_second_runs_there_and_frees_it() {
    let _one = serial();
    let host = Host::start(&[("emu-42", "4.2")], "60s");
    assert_eq!(host.power("emu-42"), "off");
    let sent = Instant::now();
    let code =
        host.github
            .queue_actions_job(1001, "test", &["self-hosted", "qubes-4.2"], WORKFLOW, &[]);
    assert_eq!(code, 202);
    let on = host.wait_on("emu-42", Duration::from_secs(10));
    let took = on - sent;
    println!("webhook to machine start: {:.3}s", took.as_secs_f64());
    assert!(took < Duration::from_secs(1), "{took:?}");

    let (conclusion, output) = host.wait_result(1001, Duration::from_secs(120));
    println!("the stand-in's act output:\n{output}");
    assert_eq!(conclusion, "success", "{output}");
    assert!(output.contains("::group::where"), "{output}");
    assert!(
        output.contains("| step ran as ") && output.contains("/emu-42/machine/sd-dev/home/user"),
        "the step ran in the dev VM: {output}"
    );
    // `qci-vm run` ran `make test` in dom0, its log in the job's output.
    assert!(
        output.contains("[command] make test ran in dom0"),
        "{output}"
    );
    assert!(output.contains("::group::command"), "{output}");
    host.wait_off_and_free("emu-42", Duration::from_secs(30));

    // What GitHub saw: one runner, in the configured group, with the job's
    // label, the extra one and self-hosted; it took job 1001; its one-time
    // token was used once.
    let runners = host.github.jit_runners();
    assert_eq!(runners.len(), 1, "{runners:?}");
    let r = &runners[0];
    assert_eq!(r.runner_group_id, GROUP);
    assert_eq!(r.labels, ["self-hosted", "qubes-4.2", "qci-runner"]);
    assert_eq!(r.work_folder, "_work");
    assert!(r.used);
    assert_eq!(host.job(1001).runner, Some((r.name.clone(), r.id)));
    assert_eq!(host.github.refused_runner_tokens(), 0);
    assert!(
        host.github.refused().is_empty(),
        "{:?}",
        host.github.refused()
    );
    // The in_progress and completed deliveries matched the runner.
    assert!(
        host.outcome("fake-in_progress-1001")
            .contains("picked up by runner"),
        "{}",
        host.outcome("fake-in_progress-1001")
    );
    // The single-use JIT config was in the dev VM only until the runner
    // read it: while the job ran, the engine's directory held the
    // runner's output and no secret.
    let files = output
        .lines()
        .find_map(|l| l.split_once("| engine files: ").map(|(_, f)| f.to_owned()))
        .unwrap_or_else(|| panic!("no engine files line: {output}"));
    assert!(files.contains(&format!("{}.out", r.name)), "{files}");
    assert!(!files.contains(".secret"), "{files}");
}

#[test]
fn a_matrix_job_runs_each_version_on_its_own_machine() {
    let _one = serial();
    let host = Host::start(&[("emu-42", "4.2"), ("emu-43", "4.3")], "60s");
    for (id, v) in [(2042, "4.2"), (2043, "4.3")] {
        let label = format!("qubes-{v}");
        let matrix = format!("qubes:{v}");
        let code =
            host.github
                .queue_actions_job(id, "test", &["self-hosted", &label], MATRIX, &[&matrix]);
        assert_eq!(code, 202);
    }
    for (id, v, machine) in [(2042, "4.2", "emu-42"), (2043, "4.3", "emu-43")] {
        let (conclusion, output) = host.wait_result(id, Duration::from_secs(120));
        assert_eq!(conclusion, "success", "{output}");
        assert!(output.contains(&format!("matrix qubes={v}")), "{output}");
        assert!(
            output.contains(&format!("/{machine}/machine/sd-dev/home/user")),
            "{v} ran on {machine}: {output}"
        );
        println!("job {id}: Qubes {v} ran on {machine}");
    }
    host.wait_off_and_free("emu-42", Duration::from_secs(30));
    host.wait_off_and_free("emu-43", Duration::from_secs(30));
}

#[test]
fn a_second_job_starts_within_a_second_of_the_first_freeing_the_machine() {
    let _one = serial();
    let host = Host::start(&[("emu-42", "4.2")], "60s");
    for id in [3001, 3002] {
        let code =
            host.github
                .queue_actions_job(id, "test", &["self-hosted", "qubes-4.2"], WORKFLOW, &[]);
        assert_eq!(code, 202);
    }
    host.wait_result(3001, Duration::from_secs(120));
    // Off (freed) after the first, then on again for the second.
    let deadline = Instant::now() + Duration::from_secs(60);
    let freed = loop {
        assert!(
            Instant::now() < deadline,
            "the first job's machine never freed"
        );
        if host.power("emu-42") == "off" {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let on = host.wait_on("emu-42", Duration::from_secs(10));
    let gap = on - freed;
    println!("first freed to second started: {:.3}s", gap.as_secs_f64());
    assert!(gap < Duration::from_secs(1), "{gap:?}");
    let (conclusion, output) = host.wait_result(3002, Duration::from_secs(120));
    assert_eq!(conclusion, "success", "{output}");
    host.wait_off_and_free("emu-42", Duration::from_secs(30));
    assert_eq!(host.github.jit_runners().len(), 2);
}

/// A job GitHub has but hands to no runner of the fake's.
fn lone_job() -> fake_github::ActionsJob {
    fake_github::ActionsJob {
        id: 4001,
        repo: REPO.into(),
        name: "test".into(),
        labels: vec!["self-hosted".into(), "qubes-4.2".into()],
        workflow: String::new(),
        matrix: vec![],
        runner: None,
        result: None,
        cancelled: false,
    }
}

#[test]
fn canceled_unpicked_killed_foreign_and_forged_jobs_end_without_holding_a_machine() {
    let _one = serial();
    let host = Host::start(&[("emu-42", "4.2")], "3s");

    // A runner no job reaches (GitHub gave the job elsewhere: here the
    // fake holds no job for it) frees its machine after pickup_timeout.
    let lone = fake_github::workflow_job_payload(&lone_job(), "queued", None);
    let started = Instant::now();
    assert_eq!(
        host.github.send_webhook("workflow_job", "lone-4001", &lone),
        202
    );
    host.wait_on("emu-42", Duration::from_secs(10));
    // While that machine is busy a second job waits in the pool's FIFO
    // (GitHub has it only in this delivery, so the lone runner cannot
    // take it); it is canceled there and never starts a machine.
    let waiting = fake_github::ActionsJob {
        id: 4002,
        ..lone_job()
    };
    let queued = fake_github::workflow_job_payload(&waiting, "queued", None);
    assert_eq!(
        host.github
            .send_webhook("workflow_job", "queued-4002", &queued),
        202
    );
    let cancelled = fake_github::workflow_job_payload(&waiting, "completed", Some("cancelled"));
    assert_eq!(
        host.github
            .send_webhook("workflow_job", "cancelled-4002", &cancelled),
        202
    );
    wait_for("the cancel's outcome", Duration::from_secs(10), || {
        host.outcome("cancelled-4002").contains("dropped")
    });
    // It leaves the pool's FIFO at its waiter's next look at the flag.
    wait_for("job 4002 to leave the FIFO", Duration::from_secs(5), || {
        host.waiting().is_empty()
    });
    host.wait_off_and_free("emu-42", Duration::from_secs(30));
    let freed_after = started.elapsed();
    println!(
        "unpicked runner freed its machine after {:.1}s (pickup_timeout 3s)",
        freed_after.as_secs_f64()
    );
    assert!(freed_after >= Duration::from_secs(3));
    // Give a dropped job time to have started a machine, were it to.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(host.power("emu-42"), "off");
    assert_eq!(
        host.github.jit_runners().len(),
        1,
        "only the lone job's runner"
    );
    assert_eq!(
        host.github.removed_runners(),
        [host.github.jit_runners()[0].id]
    );

    // A runner killed mid-job frees its machine.
    let slow = WORKFLOW.replace(
        "touch \"$HOME/step-ran\"",
        "touch \"$HOME/step-ran\"; sleep 600",
    );
    assert_eq!(
        host.github
            .queue_actions_job(4003, "test", &["self-hosted", "qubes-4.2"], &slow, &[]),
        202
    );
    let ran = host.dir.join("emu-42/machine/sd-dev/home/user/step-ran");
    wait_for("the slow step", Duration::from_secs(60), || ran.exists());
    let machine = host.dir.join("emu-42/machine");
    let runners = support::processes(&format!("QCI_EMU_MACHINE={}", machine.display()), |argv| {
        argv.iter().any(|a| a.ends_with("runner.py"))
    });
    assert!(!runners.is_empty());
    for pid in runners {
        support::signal(pid, "KILL");
    }
    host.wait_off_and_free("emu-42", Duration::from_secs(30));
    assert!(host.job(4003).result.is_none());

    // `completed` naming a runner that still runs (GitHub canceled the
    // job) powers its machine off and frees it.
    assert_eq!(
        host.github
            .queue_actions_job(4005, "test", &["self-hosted", "qubes-4.2"], &slow, &[]),
        202
    );
    wait_for("the slow step", Duration::from_secs(60), || {
        ran.exists() && host.job(4005).runner.is_some()
    });
    let done = fake_github::workflow_job_payload(&host.job(4005), "completed", Some("cancelled"));
    assert_eq!(
        host.github
            .send_webhook("workflow_job", "cancel-4005", &done),
        202
    );
    host.wait_off_and_free("emu-42", Duration::from_secs(30));
    assert!(
        host.outcome("cancel-4005")
            .contains("powered off and freed"),
        "{}",
        host.outcome("cancel-4005")
    );

    // Labels qci does not serve: ignored, no machine.
    let mut other = lone.clone();
    other = String::from_utf8(other)
        .unwrap()
        .replace("qubes-4.2", "ubuntu-latest")
        .replace("4001", "4004")
        .into_bytes();
    assert_eq!(
        host.github
            .send_webhook("workflow_job", "other-4004", &other),
        200
    );
    assert!(
        host.outcome("other-4004").starts_with("ignored:"),
        "{}",
        host.outcome("other-4004")
    );

    // A forged one: 401, nothing written.
    let before = host.server_counts();
    let forged = reqwest::blocking::Client::new()
        .post(format!("{}/webhook", host.base))
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", "forged-1")
        .header(
            "X-Hub-Signature-256",
            qci_server::webhook::sign(b"not the secret", &lone),
        )
        .header("content-type", "application/json")
        .body(lone.clone())
        .send()
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    assert_eq!(host.server_counts(), before);
    // A redelivery of the same GUID is refused as a duplicate.
    assert_eq!(
        host.github.send_webhook("workflow_job", "lone-4001", &lone),
        409
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(host.power("emu-42"), "off");
    assert_eq!(host.leases(), 0);
}

#[test]
fn in_token_mode_the_actions_table_is_said_to_be_ignored_at_start_and_jobs_are() {
    let _one = serial();
    let mut host = Host::start_as(&[("emu-42", "4.2")], "60s", false);
    let queued = fake_github::workflow_job_payload(&lone_job(), "queued", None);
    assert_eq!(
        host.github
            .send_webhook("workflow_job", "token-4001", &queued),
        200
    );
    let outcome = host.outcome("token-4001");
    assert!(outcome.contains("App mode"), "{outcome}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(host.power("emu-42"), "off");
    let child = host.child.take().unwrap();
    support::signal(child.id() as i32, "TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[server.actions] is ignored in token mode"),
        "{stderr}"
    );
}

#[test]
fn a_host_killed_while_a_runner_holds_a_machine_frees_it_and_queues_the_waiting_job_again() {
    let _one = serial();
    let mut host = Host::start(&[("emu-42", "4.2")], "60s");
    let slow = WORKFLOW.replace(
        "touch \"$HOME/step-ran\"",
        "touch \"$HOME/step-ran\"; sleep 600",
    );
    assert_eq!(
        host.github
            .queue_actions_job(5001, "test", &["self-hosted", "qubes-4.2"], &slow, &[]),
        202
    );
    let ran = host.dir.join("emu-42/machine/sd-dev/home/user/step-ran");
    wait_for("the slow step", Duration::from_secs(60), || ran.exists());
    // A second job waits in the pool's FIFO, and on disk.
    assert_eq!(
        host.github
            .queue_actions_job(5002, "test", &["self-hosted", "qubes-4.2"], WORKFLOW, &[]),
        202
    );
    // And a third, which GitHub cancels while the host is down, its
    // webhook lost for good: GitHub's word at restart keeps it out.
    assert_eq!(
        host.github
            .queue_actions_job(5003, "test", &["self-hosted", "qubes-4.2"], WORKFLOW, &[]),
        202
    );
    wait_for(
        "jobs 5002 and 5003 in the pool's FIFO",
        Duration::from_secs(10),
        || host.waiting() == ["actions-5002", "actions-5003"],
    );
    host.kill9();
    assert_eq!(host.power("emu-42"), "on");
    assert_eq!(host.leases(), 1);
    host.github.cancel_actions_job_unannounced(5003);
    host.spawn();
    // The dead host's runner machine is powered off and freed; the job
    // that waited is queued again and runs on it.
    let (conclusion, output) = host.wait_result(5002, Duration::from_secs(120));
    assert_eq!(conclusion, "success", "{output}");
    host.wait_off_and_free("emu-42", Duration::from_secs(30));
    assert!(host.job(5001).result.is_none());
    // Give job 5003 time to have started a machine, were it to.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(host.github.jit_runners().len(), 2, "none for job 5003");
    assert_eq!((host.power("emu-42"), host.leases()), ("off".into(), 0));
    assert!(host.waiting().is_empty());
    println!(
        "the restarted host freed the dead host's runner machine, ran the job that waited \
         and left out the one GitHub cancelled meanwhile"
    );
}

#[test]
fn an_organizations_idle_runner_takes_a_job_at_once_and_the_jobs_own_machine_waits_next() {
    let _one = serial();
    let mut setup = Setup::tests("3s", true);
    setup.actions = "organization = \"freedomofpress\"\nmin_idle = 1\n".into();
    let machines = [("emu-a", "4.2"), ("emu-b", "4.2"), ("emu-c", "4.3")];
    let host = Host::start_with(&machines, setup);
    let on_42 = || -> Vec<&str> {
        ["emu-a", "emu-b"]
            .into_iter()
            .filter(|m| host.power(m) == "on")
            .collect()
    };

    // One idle runner per label, registered with the organization, each
    // on a booted machine of its own, before any job is queued.
    wait_for("an idle runner per label", Duration::from_secs(60), || {
        host.github.jit_runners().len() == 2
    });
    let runners = host.github.jit_runners();
    let mut labels: Vec<_> = runners.iter().map(|r| r.labels.clone()).collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            ["self-hosted", "qubes-4.2", "qci-runner"],
            ["self-hosted", "qubes-4.3", "qci-runner"]
        ]
    );
    assert!(
        runners.iter().all(|r| r.repo == "freedomofpress"),
        "{runners:?}"
    );
    wait_for("both idle machines on", Duration::from_secs(30), || {
        on_42().len() == 1 && host.power("emu-c") == "on"
    });
    // Idle runners wait past pickup_timeout (3 s), and no more start.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(host.github.jit_runners().len(), 2);
    assert!(host.github.removed_runners().is_empty());
    assert_eq!(host.leases(), 2);
    let idle_machine = on_42()[0];
    let idle = runners
        .iter()
        .find(|r| r.labels.contains(&"qubes-4.2".to_owned()))
        .unwrap()
        .clone();

    // A job: the idle runner takes it at once, with no machine to boot.
    let sent = Instant::now();
    let code =
        host.github
            .queue_actions_job(6001, "test", &["self-hosted", "qubes-4.2"], WORKFLOW, &[]);
    assert_eq!(code, 202);
    wait_for("job 6001 taken", Duration::from_secs(10), || {
        host.job(6001).runner.is_some()
    });
    println!(
        "queued to taken by the idle runner: {:.3}s",
        sent.elapsed().as_secs_f64()
    );
    assert_eq!(host.job(6001).runner.unwrap().0, idle.name);
    let (conclusion, output) = host.wait_result(6001, Duration::from_secs(120));
    assert_eq!(conclusion, "success", "{output}");
    assert!(
        output.contains(&format!("/{idle_machine}/machine/sd-dev/home/user")),
        "it ran on the idle machine: {output}"
    );

    // The machine started for job 6001 holds the next idle runner; the
    // one that ran the job ends off and free. One idle runner per label
    // again: min_idle per label, plus no queued job.
    let next = if idle_machine == "emu-a" {
        "emu-b"
    } else {
        "emu-a"
    };
    wait_for(
        "the job's machine off, the next idle one on",
        Duration::from_secs(30),
        || {
            host.power(idle_machine) == "off"
                && host.power(next) == "on"
                && host.leases() == 2
                // Its runner registers once the machine has booted.
                && host.github.jit_runners().len() >= 3
        },
    );
    let runners = host.github.jit_runners();
    assert_eq!(runners.len(), 3, "{runners:?}");
    let third = &runners[2];
    assert_eq!(third.repo, "freedomofpress");
    assert_eq!(third.labels, ["self-hosted", "qubes-4.2", "qci-runner"]);
    assert!(!third.used, "it waits for the next job");
    assert!(
        host.github.refused().is_empty(),
        "{:?}",
        host.github.refused()
    );
}
