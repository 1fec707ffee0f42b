//! `qci gitlab-executor config|prepare|run|cleanup` over `local` machines,
//! each stage run by a driver that does what gitlab-runner's custom
//! executor does: config first, its `job_env` into the environment of
//! every later stage, the job's variables as `CUSTOM_ENV_*`,
//! `BUILD_FAILURE_EXIT_CODE` and `SYSTEM_FAILURE_EXIT_CODE` set (to unusual
//! values, so an exit with them proves they were read), each stage in its
//! own process group, `run SCRIPT STAGE` per stage in order, cleanup
//! always, and a cancel as SIGTERM to the process group, then SIGKILL
//! after a grace period.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod pool_support;
mod support;

use pool_support::{Host, stderr, stdout};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{processes, wait_for};

const BUILD_FAILURE: i32 = 71;
const SYSTEM_FAILURE: i32 = 72;

/// The stages gitlab-runner runs for a job with a script and an
/// after_script and no cache or artifacts, in its order.
const STAGES: [&str; 5] = [
    "prepare_script",
    "get_sources",
    "step_script",
    "after_script",
    "cleanup_file_variables",
];

/// Open to the machines' domains, which run as another user under root.
fn shared_dir(path: PathBuf) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    path
}

/// One GitLab job as gitlab-runner drives it.
struct Job<'h> {
    host: &'h Host,
    id: u32,
    /// The job's variables, without their `CUSTOM_ENV_` prefix.
    vars: Vec<(String, String)>,
    /// What `config` said to carry into the later stages.
    job_env: Vec<(String, String)>,
    /// Where gitlab-runner writes each stage's script.
    scripts: PathBuf,
}

impl<'h> Job<'h> {
    fn new(host: &'h Host, id: u32) -> Self {
        let builds = shared_dir(host.path("builds"));
        let project = builds.join(format!("{id}/group/project"));
        let vars = [
            ("CI_JOB_ID", id.to_string()),
            ("CI_RUNNER_ID", "9".into()),
            ("CI_JOB_NAME", "test".into()),
            ("CI_PIPELINE_ID", "1000".into()),
            ("CI_BUILDS_DIR", builds.display().to_string()),
            ("CI_PROJECT_DIR", project.display().to_string()),
            // Quotes, `$` and backquotes reach the script as they are.
            ("GREETING", "it's a $HOME `x`".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let scripts = host.path(&format!("runner/{id}"));
        std::fs::create_dir_all(&scripts).unwrap();
        Self {
            host,
            id,
            vars,
            job_env: Vec::new(),
            scripts,
        }
    }

    fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.into(), value.into()));
        self
    }

    fn project_dir(&self) -> PathBuf {
        PathBuf::from(
            &self
                .vars
                .iter()
                .find(|(k, _)| k == "CI_PROJECT_DIR")
                .unwrap()
                .1,
        )
    }

    /// `qci gitlab-executor ARGS` with the environment gitlab-runner gives,
    /// in its own process group.
    fn stage(&self, args: &[&str]) -> Command {
        let mut cmd = support::qci();
        cmd.arg("gitlab-executor")
            .args(args)
            .arg("--config")
            .arg(self.host.config())
            .env("BUILD_FAILURE_EXIT_CODE", BUILD_FAILURE.to_string())
            .env("SYSTEM_FAILURE_EXIT_CODE", SYSTEM_FAILURE.to_string())
            .process_group(0);
        for (k, v) in &self.vars {
            cmd.env(format!("CUSTOM_ENV_{k}"), v);
        }
        for (k, v) in &self.job_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// config_exec: its JSON read as gitlab-runner reads it.
    fn config(&mut self) -> serde_json::Value {
        let out = self.stage(&["config"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "config: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("config printed no JSON ({e}): {}", stdout(&out)));
        for key in ["builds_dir", "cache_dir", "hostname"] {
            assert!(json[key].is_string(), "{key} in {json}");
        }
        assert_eq!(json["builds_dir_is_shared"], false, "{json}");
        assert_eq!(json["driver"]["name"], "qci", "{json}");
        assert!(json["driver"]["version"].is_string(), "{json}");
        self.job_env = json["job_env"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        json
    }

    fn prepare(&self) -> Output {
        self.stage(&["prepare"]).output().unwrap()
    }

    /// Writes the stage's script as gitlab-runner does, then `run SCRIPT STAGE`.
    fn spawn_run(&self, stage: &str, body: &str) -> Child {
        let script = self.scripts.join(format!("script-{stage}"));
        std::fs::write(
            &script,
            format!("#!/usr/bin/env bash\nset -eo pipefail\n{body}\n"),
        )
        .unwrap();
        self.stage(&["run", script.to_str().unwrap(), stage])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run(&self, stage: &str, body: &str) -> Output {
        self.spawn_run(stage, body).wait_with_output().unwrap()
    }

    fn cleanup(&self) -> Output {
        self.stage(&["cleanup"]).output().unwrap()
    }

    /// The whole job, as gitlab-runner runs it: config, prepare, every
    /// stage (after a failed step_script, after_script and the rest still
    /// run), cleanup whatever happened. Each stage's output, by name.
    fn run_all(&mut self, step_script: &str) -> HashMap<&'static str, Output> {
        let mut outs = HashMap::new();
        self.config();
        let prepared = self.prepare();
        let ok = prepared.status.code() == Some(0);
        outs.insert("prepare", prepared);
        if ok {
            let mut failed = false;
            for stage in STAGES {
                let body = match stage {
                    "prepare_script" => "echo \"Running on qci for job $CI_JOB_ID\"".to_owned(),
                    "get_sources" => {
                        "mkdir -p \"$CI_PROJECT_DIR\" && echo fetched > \"$CI_PROJECT_DIR/source\" && echo got sources".to_owned()
                    }
                    "step_script" => step_script.to_owned(),
                    "after_script" => "echo after script".to_owned(),
                    _ => "echo cleaned file variables".to_owned(),
                };
                // After a failure only the stages that always run go on.
                if failed && !matches!(stage, "after_script" | "cleanup_file_variables") {
                    continue;
                }
                let out = self.run(stage, &body);
                failed |= out.status.code() != Some(0);
                outs.insert(stage, out);
            }
        }
        outs.insert("cleanup", self.cleanup());
        outs
    }
}

/// What gitlab-runner does to cancel a stage: SIGTERM to its process
/// group, SIGKILL after `grace` if it is still there.
fn cancel(child: Child, grace: Duration) -> (Output, bool) {
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let pid = child.id() as i32;
    let end = Instant::now() + grace;
    while !support::is_dead(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = !support::is_dead(pid);
    if killed {
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    }
    (child.wait_with_output().unwrap(), killed)
}

/// `qci pool`'s line for `machine`.
fn pool_line(host: &Host, machine: &str) -> String {
    let out = host.run(&["pool"]);
    stdout(&out)
        .lines()
        .find(|l| l.starts_with(machine))
        .unwrap_or_else(|| panic!("no {machine} in {}", stdout(&out)))
        .to_owned()
}

fn show(outs: &HashMap<&str, Output>) -> String {
    let mut text = String::new();
    for (stage, o) in outs {
        text.push_str(&format!(
            "--- {stage}: {:?}\n{}{}",
            o.status.code(),
            stdout(o),
            stderr(o)
        ));
    }
    text
}

#[test]
fn a_passing_job_runs_every_stage_in_the_dev_vm_with_its_variables_and_frees_the_machine() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let mut job = Job::new(&host, 101);
    let outs = job.run_all(
        r#"echo "step for job $CI_JOB_ID in $(pwd)"
echo "greeting: $GREETING"
echo "prefixed: ${CUSTOM_ENV_CI_JOB_ID:-none}"
cat "$CI_PROJECT_DIR/source"
echo "to stderr" >&2"#,
    );
    let all = show(&outs);
    for stage in ["prepare", "cleanup"].into_iter().chain(STAGES) {
        assert_eq!(outs[stage].status.code(), Some(0), "{stage}:\n{all}");
    }
    // config put the job id in job_env, and every stage found the lease by it.
    assert_eq!(
        job.job_env,
        vec![("QCI_GITLAB_JOB".to_owned(), "gitlab-9-101".to_owned())]
    );
    let prep = stderr(&outs["prepare"]);
    for line in [
        "waiting for a machine of Qubes 4.2",
        "leased emu-1",
        "reverting to snapshot clean",
        "booting",
        "machine emu-1 (Qubes 4.2) is up",
    ] {
        assert!(prep.contains(line), "no {line:?} in prepare:\n{prep}");
    }
    // Each stage's output reached stdout, the script ran in the dev VM from
    // its home, with the variables unprefixed and as they were.
    assert!(stdout(&outs["prepare_script"]).contains("Running on qci for job 101"));
    assert!(stdout(&outs["get_sources"]).contains("got sources"));
    let step = stdout(&outs["step_script"]);
    let dev_home = host.machine_dir("emu-1").join("machine/sd-dev/home/user");
    assert!(
        step.contains(&format!("step for job 101 in {}", dev_home.display())),
        "{step}"
    );
    assert!(step.contains("greeting: it's a $HOME `x`"), "{step}");
    assert!(step.contains("prefixed: none"), "{step}");
    assert!(
        step.contains("fetched"),
        "get_sources' files are there: {step}"
    );
    assert!(
        step.contains("to stderr"),
        "stderr goes to the job log: {step}"
    );
    assert!(stdout(&outs["after_script"]).contains("after script"));
    assert!(stdout(&outs["cleanup_file_variables"]).contains("cleaned file variables"));
    assert_eq!(
        std::fs::read_to_string(job.project_dir().join("source")).unwrap(),
        "fetched\n"
    );

    // After cleanup: off, free, no marker; the pool recorded the job.
    let line = pool_line(&host, "emu-1");
    assert!(line.contains(" off ") && line.contains(" free "), "{line}");
    assert!(line.contains("gitlab-9-101 success"), "{line}");
    assert!(host.control("emu-1")["marker"].is_null());
    // Cleanup again (gitlab-runner may) is a no-op.
    let again = job.cleanup();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(stderr(&again).contains("holds no machine, nothing to free"));
}

#[test]
fn a_failing_script_exits_with_the_build_failure_code_and_after_script_still_runs() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let mut job = Job::new(&host, 102);
    let outs = job.run_all("echo about to fail; exit 4");
    let all = show(&outs);
    assert_eq!(
        outs["step_script"].status.code(),
        Some(BUILD_FAILURE),
        "{all}"
    );
    assert!(
        stdout(&outs["step_script"]).contains("about to fail"),
        "{all}"
    );
    assert!(
        stderr(&outs["step_script"]).contains("stage step_script exited with 4"),
        "{all}"
    );
    for stage in [
        "prepare",
        "after_script",
        "cleanup_file_variables",
        "cleanup",
    ] {
        assert_eq!(outs[stage].status.code(), Some(0), "{stage}:\n{all}");
    }
    let line = pool_line(&host, "emu-1");
    assert!(line.contains(" off ") && line.contains(" free "), "{line}");
    assert!(line.contains("gitlab-9-102 failure"), "{line}");
}

#[test]
fn a_failing_hypervisor_is_a_system_failure_and_a_version_no_machine_runs_a_build_failure() {
    let mut host = Host::new();
    host.machine(&format!(
        "name = \"lv\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\nuri = \"test+unix:///default?socket={}\"\n\
         dom0 = \"emulated\"\nemulated_path = {:?}\n",
        host.path("no-libvirtd/libvirt-sock").display(),
        host.path("guest")
    ));
    let mut job = Job::new(&host, 103);
    let outs = job.run_all("echo must not run");
    let all = show(&outs);
    assert_eq!(outs["prepare"].status.code(), Some(SYSTEM_FAILURE), "{all}");
    assert!(
        stderr(&outs["prepare"]).contains("machine lv: hypervisor unreachable"),
        "{all}"
    );
    assert!(
        !outs.contains_key("step_script"),
        "no stage ran after a failed prepare"
    );
    // cleanup after a failed prepare: nothing held, nothing to do, success.
    assert_eq!(outs["cleanup"].status.code(), Some(0), "{all}");
    let store = qci_pool::lease::LeaseStore::open(&host.state(), "test-host").unwrap();
    assert!(store.leases().unwrap().is_empty());

    // The job asked for a version the pool lacks: the job's own fault.
    let mut job = Job::new(&host, 104).var("QCI_QUBES", "9.9");
    job.config();
    let out = job.prepare();
    assert_eq!(out.status.code(), Some(BUILD_FAILURE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no machine runs Qubes \"9.9\""),
        "{}",
        stderr(&out)
    );
    // A stage with no lease is a system failure, not a script's.
    let out = job.run("step_script", "echo must not run");
    assert_eq!(out.status.code(), Some(SYSTEM_FAILURE), "{}", stderr(&out));
    assert!(stderr(&out).contains("job gitlab-9-104 holds no machine"));
}

#[test]
fn sigterm_mid_script_stops_it_and_frees_the_machine_before_cleanup() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let mut job = Job::new(&host, 105);
    job.config();
    let out = job.prepare();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(pool_line(&host, "emu-1").contains(" on "));
    let release = host.path("release");
    let mut child = job.spawn_run(
        "step_script",
        &format!(
            "echo started; {}; echo not canceled",
            support::hold_until(&release)
        ),
    );
    // Read stdout until the script runs.
    let mut stdout_pipe = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        if seen.contains("started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the script never started: {seen}"
        );
    }
    let machine = host.machine_dir("emu-1").join("machine");
    let marker = format!("QCI_EMU_MACHINE={}", machine.display());
    // The stage's script, as `run` starts it in the dev VM.
    let script = || {
        processes(&marker, |argv| {
            argv.iter().any(|a| a.ends_with("step_script.sh"))
        })
    };
    assert!(!script().is_empty(), "the script runs in the machine");

    let (out, killed) = cancel(child, Duration::from_secs(10));
    assert!(!killed, "run did not stop within the grace period");
    assert_eq!(out.status.code(), Some(SYSTEM_FAILURE), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("stage step_script canceled; machine emu-1 was powered off and freed"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("not canceled"), "{}", stdout(&out));
    // Free and off before cleanup, and nothing of the script is left.
    let line = pool_line(&host, "emu-1");
    assert!(line.contains(" off ") && line.contains(" free "), "{line}");
    assert!(line.contains("gitlab-9-105 canceled"), "{line}");
    assert!(script().is_empty(), "the script survived");
    assert!(
        processes(&marker, |_| true).is_empty(),
        "the machine's processes survived"
    );
    let out = job.cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The next job gets the machine.
    let mut next = Job::new(&host, 106);
    let outs = next.run_all("echo next job");
    assert_eq!(
        outs["step_script"].status.code(),
        Some(0),
        "{}",
        show(&outs)
    );
}

#[test]
fn sigterm_while_waiting_in_the_queue_leaves_it_and_holds_nothing() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let mut first = Job::new(&host, 110);
    first.config();
    assert_eq!(first.prepare().status.code(), Some(0));
    let mut second = Job::new(&host, 111);
    second.config();
    let child = second
        .stage(&["prepare"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let store = qci_pool::lease::LeaseStore::open(&host.state(), "test-host").unwrap();
    wait_for("the second job to queue", Duration::from_secs(60), || {
        store.waiting().unwrap() == 1
    });
    let (out, killed) = cancel(child, Duration::from_secs(10));
    assert!(!killed, "prepare did not stop within the grace period");
    assert_eq!(out.status.code(), Some(SYSTEM_FAILURE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting for a free machine"),
        "{}",
        stderr(&out)
    );
    assert_eq!(store.waiting().unwrap(), 0, "it left the queue");
    let out = second.cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("holds no machine"));
    // The first job's machine was never touched.
    assert!(pool_line(&host, "emu-1").contains("gitlab-9-110 ("));
    assert_eq!(first.cleanup().status.code(), Some(0));
}

#[test]
fn a_dev_vm_that_stops_answering_mid_script_is_a_system_failure_and_cleanup_recovers_the_machine() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let mut job = Job::new(&host, 109);
    job.config();
    assert_eq!(job.prepare().status.code(), Some(0));
    let child = job.spawn_run("step_script", "echo started; sleep 61");
    let machine = host.machine_dir("emu-1").join("machine");
    let marker = format!("QCI_EMU_MACHINE={}", machine.display());
    let script = || processes(&marker, |argv| argv.iter().any(|a| a == "61"));
    wait_for("the script to start", Duration::from_secs(60), || {
        !script().is_empty()
    });
    // The dev VM dies: its processes are gone and it answers no call.
    std::fs::rename(machine.join("sd-dev"), machine.join("sd-dev.crashed")).unwrap();
    for pid in script() {
        support::signal(pid, "KILL");
    }
    let out = child.wait_with_output().unwrap();
    println!("run: {:?}\n{}", out.status.code(), stderr(&out));
    assert_eq!(out.status.code(), Some(SYSTEM_FAILURE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sd-dev no longer answers"),
        "{}",
        stderr(&out)
    );
    // Not the job's failure: cleanup powers the machine off and reverts it,
    // and the next job runs on a whole dev VM again.
    let out = job.cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = pool_line(&host, "emu-1");
    assert!(line.contains(" off ") && line.contains(" free "), "{line}");
    let mut next = Job::new(&host, 110);
    let outs = next.run_all("echo next job on $(hostname)");
    assert_eq!(
        outs["step_script"].status.code(),
        Some(0),
        "{}",
        show(&outs)
    );
}

#[test]
fn sigkill_leaves_the_lease_to_cleanup_and_a_dead_runner_is_reconciled_by_the_next_prepare() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    // SIGKILL of the run stage: gitlab-runner, alive, still calls cleanup.
    let mut job = Job::new(&host, 107);
    job.config();
    assert_eq!(job.prepare().status.code(), Some(0));
    let child = job.spawn_run("step_script", "echo started; sleep 60");
    let machine = host.machine_dir("emu-1").join("machine");
    let marker = format!("QCI_EMU_MACHINE={}", machine.display());
    wait_for("the script to start", Duration::from_secs(60), || {
        !processes(&marker, |argv| argv.iter().any(|a| a == "60")).is_empty()
    });
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait_with_output().unwrap();
    assert!(
        pool_line(&host, "emu-1").contains("gitlab-9-107 ("),
        "still leased"
    );
    let out = job.cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("machine emu-1 powered off and freed"));
    let line = pool_line(&host, "emu-1");
    assert!(line.contains(" off ") && line.contains(" free "), "{line}");

    // gitlab-runner itself killed after prepare: its lease goes stale, and
    // the next job's prepare reconciles it before it queues.
    let mut doomed = Job::new(&host, 108);
    doomed.config();
    let runner = doomed.stage(&["prepare"]);
    // A stand-in for gitlab-runner: the parent of prepare, killed after.
    let script = format!(
        "{} ; sleep 600",
        std::iter::once(runner.get_program())
            .chain(runner.get_args())
            .map(|a| format!("'{}'", a.to_str().unwrap()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(script).envs(
        runner
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
    );
    let mut fake_runner = sh
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_for(
        "prepare to hand the lease over",
        Duration::from_secs(60),
        || pool_line(&host, "emu-1").contains(&format!("pid {})", fake_runner.id())),
    );
    let group = nix::unistd::Pid::from_raw(-(fake_runner.id() as i32));
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = fake_runner.wait();
    assert!(pool_line(&host, "emu-1").contains("stale"));
    // A stage that finds its lease stale says why rather than run on it.
    let out = doomed.run("step_script", "echo must not run");
    assert_eq!(out.status.code(), Some(SYSTEM_FAILURE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the lease of job gitlab-9-108 is stale"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("must not run"));
    let mut next = Job::new(&host, 109);
    next.config();
    let out = next.prepare();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("reconciled job gitlab-9-108 on emu-1: error"),
        "{err}"
    );
    assert!(err.contains("leased emu-1"), "{err}");
    assert_eq!(next.cleanup().status.code(), Some(0));
    assert_eq!(doomed.cleanup().status.code(), Some(0));
}

#[test]
fn twenty_concurrent_jobs_on_four_machines_each_run_once_and_no_machine_holds_two() {
    let mut host = Host::new();
    for i in 1..=4 {
        host.local(&format!("emu-{i}"), "4.2");
    }
    // Create the machines first, as a host would before taking jobs.
    assert_eq!(host.run(&["pool"]).status.code(), Some(0));
    let ran = shared_dir(host.path("ran"));
    let started = Instant::now();
    let results: Vec<(u32, HashMap<&str, Output>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=20u32)
            .map(|id| {
                let host = &host;
                let ran = &ran;
                s.spawn(move || {
                    let mut job = Job::new(host, 200 + id);
                    let outs = job.run_all(&format!(
                        "echo ran >> {}/$CI_JOB_ID; echo job $CI_JOB_ID ran",
                        ran.display()
                    ));
                    (job.id, outs)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    eprintln!("20 GitLab jobs on 4 machines took {took:?}");
    // Those that found every machine busy waited in line, and said so.
    let waited = results
        .iter()
        .filter(|(_, outs)| stderr(&outs["prepare"]).contains("waiting for a free machine"))
        .count();
    assert!(waited > 0, "no job waited in the queue");
    for (id, outs) in &results {
        let all = show(outs);
        for stage in ["prepare", "cleanup"].into_iter().chain(STAGES) {
            assert_eq!(
                outs[stage].status.code(),
                Some(0),
                "job {id} {stage}:\n{all}"
            );
        }
        assert!(stdout(&outs["step_script"]).contains(&format!("job {id} ran")));
        // Exactly once.
        assert_eq!(
            std::fs::read_to_string(ran.join(id.to_string())).unwrap(),
            "ran\n",
            "job {id}"
        );
    }
    // The pool's lease log: one lease per job, and a machine's leases never
    // overlap.
    let leases = host.lease_log();
    assert_eq!(leases.len(), 20, "{leases:#?}");
    for id in 201..=220 {
        let job = format!("gitlab-9-{id}");
        assert_eq!(leases.iter().filter(|l| l.job == job).count(), 1, "{job}");
    }
    for m in 1..=4 {
        let name = format!("emu-{m}");
        let mut mine: Vec<_> = leases.iter().filter(|l| l.machine == name).collect();
        assert!(!mine.is_empty(), "{name} ran no job");
        mine.sort_by(|a, b| a.acquired_at.total_cmp(&b.acquired_at));
        for pair in mine.windows(2) {
            let first_end = pair[0].released_at.unwrap();
            assert!(
                first_end <= pair[1].acquired_at,
                "{name} held {} and {} at once",
                pair[0].job,
                pair[1].job
            );
        }
        let line = pool_line(&host, &name);
        assert!(line.contains(" off ") && line.contains(" free "), "{line}");
    }
    assert!(leases.iter().all(|l| l.released_at.is_some()));
}
