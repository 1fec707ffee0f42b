//! `qci serve` end to end: the real binaries, an emulated machine from the
//! pool's `local` backend, a fake GitHub that checks what it gets, and
//! signed webhooks built from the checked-in GitHub payloads.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[path = "../crates/qci-server/tests/support/fake_github.rs"]
mod fake_github;
mod pool_support;
mod support;

use fake_github::FakeGithub;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{git, hold_until, qci, wait_for};

const SECRET: &str = "webhook secret for the tests";
const GITHUB_TOKEN: &str = "ghp_e2eHostOnlyToken0123456789abcdef";
const ADMIN_TOKEN: &str = "e2e-operator-token";
const REPO: &str = "freedomofpress/securedrop-workstation";

fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/qci-server/tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A push of `sha` to `branch` of `repo`, as GitHub sends it.
fn push(repo: &str, branch: &str, sha: &str) -> Vec<u8> {
    let mut v = fixture("push.json");
    v["after"] = json!(sha);
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["repository"]["full_name"] = json!(repo);
    v["head_commit"]["id"] = json!(sha);
    serde_json::to_vec(&v).unwrap()
}

/// A pull request `number` from a fork, at `sha`: it waits for a maintainer.
fn fork_pr(number: u64, sha: &str) -> Vec<u8> {
    let mut v = fixture("pull_request-fork.json");
    v["number"] = json!(number);
    v["pull_request"]["number"] = json!(number);
    v["pull_request"]["head"]["sha"] = json!(sha);
    serde_json::to_vec(&v).unwrap()
}

/// An emulated machine from the pool's `local` backend.
const LOCAL_MACHINE: &str =
    "name = \"emu-1\"\nqubes = \"4.2\"\nbackend = \"local\"\npath = \"{dir}/emu-1\"\n";

/// `qci serve` as a child process, with its config and state in `dir`.
struct Served {
    dir: PathBuf,
    /// The server's socket, open across its restarts unless closed.
    listener: Option<std::net::TcpListener>,
    base: String,
    child: Option<Child>,
    client: reqwest::blocking::Client,
}

impl Served {
    /// Writes HOST.toml (one emulated machine for Qubes 4.2) and starts.
    fn start(dir: &Path, github: &FakeGithub, project: &Path) -> Self {
        Self::start_with(dir, github, project, LOCAL_MACHINE, "")
    }

    /// The same with another `[[pool.machines]]` entry (`{dir}` stands for
    /// `dir`) and more `[server]` keys.
    fn start_with(
        dir: &Path,
        github: &FakeGithub,
        project: &Path,
        machine: &str,
        server: &str,
    ) -> Self {
        let token = format!(
            "github_token = {{ file = \"{}/github-token\" }}\n",
            dir.display()
        );
        Self::start_as(dir, github, project, machine, server, &token)
    }

    /// In App mode: the App `fake_github::APP_ID` with the private key
    /// `key`, instead of a personal token.
    fn start_app(dir: &Path, github: &FakeGithub, project: &Path, key: &Path) -> Self {
        let app = format!(
            "[server.github_app]\napp_id = {}\nprivate_key = {{ file = \"{}\" }}\n",
            fake_github::APP_ID,
            key.display()
        );
        Self::start_as(dir, github, project, LOCAL_MACHINE, &app, "")
    }

    /// `auth` is the `github_token` line, or empty when `server` has
    /// `[server.github_app]` (which comes last in `[server]`).
    fn start_as(
        dir: &Path,
        github: &FakeGithub,
        project: &Path,
        machine: &str,
        server: &str,
        auth: &str,
    ) -> Self {
        // Held here for the test's whole life and handed to each `qci
        // serve` it starts, restarts included.
        let listener = support::listener();
        let port = listener.local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        std::fs::write(dir.join("webhook-secret"), SECRET).unwrap();
        // A secret file as its owner keeps it (qci refuses others reading it).
        std::fs::set_permissions(
            dir.join("webhook-secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.join("github-token"), GITHUB_TOKEN).unwrap();
        // A secret file as its owner keeps it (qci refuses others reading it).
        std::fs::set_permissions(
            dir.join("github-token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.join("admin-token"), ADMIN_TOKEN).unwrap();
        // A secret file as its owner keeps it (qci refuses others reading it).
        std::fs::set_permissions(
            dir.join("admin-token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let d = dir.display();
        let machine = machine.replace("{dir}", &d.to_string());
        let config = format!(
            "[pool]\nstate_dir = \"{d}/state\"\nhost_id = \"e2e\"\nboot_timeout = \"2m\"\n\
             [[pool.machines]]\n{machine}\n\
             [server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n\
             github_api_url = \"{}\"\n\
             webhook_secret = {{ file = \"{d}/webhook-secret\" }}\n{auth}\
             admin_token = {{ file = \"{d}/admin-token\" }}\njob_timeout = \"5m\"\n{server}\n\
             [[server.repos]]\nslug = \"{REPO}\"\nclone_url = \"{}\"\n",
            github.base,
            project.display()
        );
        std::fs::write(dir.join("host.toml"), config).unwrap();
        let mut served = Self {
            dir: dir.to_owned(),
            listener: Some(listener),
            base,
            child: None,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        served.spawn();
        served
    }

    fn config(&self) -> PathBuf {
        self.dir.join("host.toml")
    }

    fn spawn(&mut self) {
        let mut serve = qci();
        serve.arg("serve").arg("--config").arg(self.config());
        let listener = self.listener.as_ref().expect("a listening socket");
        let mut child = support::socket_activated(&serve, listener)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start qci serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.starts_with("qci serve: listening on"), "{line:?}");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        support::signal(child.id() as i32, "KILL");
        child.wait().unwrap();
    }

    /// Kills the server and closes its socket: connecting is refused, as
    /// to a host that is down.
    fn kill9_and_close(&mut self) {
        self.kill9();
        self.listener = None;
    }

    /// Listens on the same port again and starts the server.
    fn reopen(&mut self) {
        let port = self.base.rsplit(':').next().unwrap();
        self.listener = Some(std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap());
        self.spawn();
    }

    fn webhook(&self, event: &str, delivery: &str, body: &[u8]) -> Result<(u16, String), String> {
        let sig = qci_server::webhook::sign(SECRET.as_bytes(), body);
        let reply = self
            .client
            .post(format!("{}/webhook", self.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sig)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .map_err(|e| e.to_string())?;
        let code = reply.status().as_u16();
        Ok((code, reply.text().unwrap_or_default()))
    }

    /// Delivers a webhook that asks for jobs (202), and returns them once
    /// the host has worked them out.
    fn jobs(&self, event: &str, delivery: &str, body: &[u8]) -> Vec<String> {
        let (code, reply) = self.webhook(event, delivery, body).unwrap();
        assert_eq!(code, 202, "{reply}");
        self.jobs_of(delivery)
    }

    /// The jobs of a delivery, once the host has received it and worked
    /// them out.
    fn jobs_of(&self, delivery: &str) -> Vec<String> {
        let mut jobs = Vec::new();
        wait_for("the delivery's jobs", Duration::from_secs(60), || {
            let d: serde_json::Value =
                serde_json::from_str(&self.get(&format!("/api/deliveries/{delivery}")))
                    .unwrap_or_default();
            jobs = d["jobs"]
                .as_array()
                .map(|a| a.iter().map(|j| j.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            d["resolved"] == true
        });
        jobs
    }

    fn get(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.join("state/server.sqlite")).unwrap()
    }

    fn job_state(&self, job: &str) -> (String, String) {
        self.db()
            .query_row(
                "SELECT state, description FROM jobs WHERE id = ?1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            support::signal(child.id() as i32, "TERM");
            let _ = child.wait();
        }
        // Whatever still runs in the emulated machine is ours to stop.
        let machine = self.dir.join("emu-1/machine");
        qci_core::process::kill_marked("QCI_EMU_MACHINE", &machine.to_string_lossy());
    }
}

/// A git repository with a `.qci.toml` of one step, and its commit.
fn project(dir: &Path, command: &str) -> (PathBuf, String) {
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let toml = format!(
        "[[steps]]\nname = \"test\"\ncommand = {}\n",
        toml_string(command)
    );
    std::fs::write(project.join(".qci.toml"), toml).unwrap();
    git(&project, &["init", "-q", "-b", "main"]);
    git(&project, &["add", "."]);
    git(&project, &["commit", "-q", "-m", "a job"]);
    let sha = git(&project, &["rev-parse", "HEAD"]);
    (project, sha)
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && std::fs::read(&path).is_ok_and(|b| memchr::memmem::find(&b, needle).is_some())
            {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_push_runs_on_an_emulated_machine_and_reports_through_the_relay() {
    // Open to the machine's unprivileged user (run as root, as CI does).
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let (project, sha) = project(scratch.path(), "echo hello from the job; echo done");
    let github = FakeGithub::start(GITHUB_TOKEN);
    let served = Served::start(scratch.path(), &github, &project);
    // At the moment GitHub gets the final status, its link must show the log.
    let log_at_success = Arc::new(Mutex::new(None));
    let record = log_at_success.clone();
    github.on_post(move |p| {
        if p.state != "pending" {
            let log = reqwest::blocking::get(format!("{}/log", p.target_url))
                .and_then(|r| r.text())
                .unwrap_or_default();
            *record.lock().unwrap() = Some(log);
        }
    });

    // GitHub has the commit's .qci.toml, as the project does: it names no
    // versions, so the repository's configured one (4.2) runs.
    let toml = std::fs::read_to_string(project.join(".qci.toml")).unwrap();
    github.pipeline(REPO, &sha, &toml);
    let job = served.jobs("push", "e2e-1", &push(REPO, "main", &sha))[0].clone();
    assert_eq!(github.reads(), [(REPO.to_owned(), sha.clone())]);
    github.wait_for("the final status", Duration::from_secs(180), |p| {
        p.iter().any(|p| p.state != "pending")
    });

    // Queued, then what dom0 reports while running (each `pending`), then success.
    let states = github.states("qci/qubes-4.2");
    assert_eq!(
        states[0],
        ("pending".to_owned(), "Queued".to_owned()),
        "{states:?}"
    );
    let (last, running) = states[1..].split_last().unwrap();
    assert!(!running.is_empty(), "{states:?}");
    assert!(running.iter().all(|s| s.0 == "pending"), "{states:?}");
    assert!(
        running.iter().any(|s| s.1.starts_with("Running")),
        "{states:?}"
    );
    assert_eq!(last.0, "success", "{states:?}");
    for p in github.posted() {
        assert_eq!((p.repo.as_str(), p.sha.as_str()), (REPO, sha.as_str()));
        assert_eq!(p.target_url, format!("{}/jobs/{job}", served.base));
    }
    let log = log_at_success.lock().unwrap().clone().unwrap();
    assert!(
        log.contains("[test] hello from the job"),
        "log at success: {log:?}"
    );
    assert!(log.contains("[test] done"), "{log:?}");
    assert!(github.refused().is_empty(), "{:?}", github.refused());

    // No GitHub credential ever entered the machine; the relay token did.
    let machine = scratch.path().join("emu-1");
    assert_eq!(
        files_holding(&machine, GITHUB_TOKEN.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert_eq!(files_holding(&machine, b"ghp_"), Vec::<PathBuf>::new());
    let job_files = files_holding(&machine, b"\"kind\": \"relay\"");
    assert!(
        !job_files.is_empty(),
        "no job file with a relay sink in the machine"
    );
    let (state, _) = served.job_state(&job);
    assert_eq!(state, "success");

    // `qci jobs list` shows it.
    let out = qci()
        .args(["jobs", "--config"])
        .arg(served.config())
        .arg("list")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&job) && text.contains("success"), "{text}");
}

#[test]
fn kill_9_under_load_loses_no_accepted_webhook_and_ends_the_running_job() {
    // Open to the machine's unprivileged user (run as root, as CI does).
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let release = scratch.path().join("release");
    let command = format!(
        "echo the long step started; {}; echo released",
        hold_until(&release)
    );
    let (project, sha) = project(scratch.path(), &command);
    let github = FakeGithub::start(GITHUB_TOKEN);
    let served = Served::start(scratch.path(), &github, &project);

    let running = served.jobs("push", "crash-running", &push(REPO, "main", &sha))[0].clone();
    wait_for("the job to run", Duration::from_secs(120), || {
        served
            .get(&format!("/jobs/{running}/log"))
            .contains("the long step started")
    });

    // Load: four clients deliver pull requests from forks (which wait for a
    // maintainer, so their jobs stay queued) until the host dies. GitHub
    // holds the reads of their .qci.toml: the kill leaves triggers whose
    // jobs are not worked out yet.
    github.hold_reads(true);
    let served = Arc::new(Mutex::new(served));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (base, client) = {
        let s = served.lock().unwrap();
        (s.base.clone(), s.client.clone())
    };
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, answers, base, client) =
                (stop.clone(), answers.clone(), base.clone(), client.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let delivery = format!("load-{c}-{i}");
                    let n = c * 1_000_000 + i;
                    let body = fork_pr(n as u64, &format!("{n:040x}"));
                    // Short: after the kill a new connection waits in the
                    // socket's queue (the test holds it) for the restart.
                    let code = client
                        .post(format!("{base}/webhook"))
                        .timeout(Duration::from_secs(5))
                        .header("X-GitHub-Event", "pull_request")
                        .header("X-GitHub-Delivery", &delivery)
                        .header(
                            "X-Hub-Signature-256",
                            qci_server::webhook::sign(SECRET.as_bytes(), &body),
                        )
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    answers.lock().unwrap().push((delivery, code));
                    if code == 0 {
                        break;
                    }
                }
            })
        })
        .collect();
    wait_for("some load", Duration::from_secs(60), || {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.1 == 202)
            .count()
            >= 200
    });
    served.lock().unwrap().kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let accepted: Vec<&String> = answers
        .iter()
        .filter(|a| a.1 == 202)
        .map(|a| &a.0)
        .collect();
    assert!(
        answers.iter().all(|a| a.1 == 202 || a.1 == 0),
        "{answers:?}"
    );
    let mut served = Arc::into_inner(served).unwrap().into_inner().unwrap();
    let db_path = served.dir.join("state/server.sqlite");
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open(&db_path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    let unresolved = "SELECT count(*) FROM triggers WHERE resolved_at IS NULL";
    assert!(count(unresolved) > 0, "the kill left no trigger to resolve");

    // The restart resolves what the kill left.
    github.hold_reads(false);
    served.spawn();
    wait_for(
        "every trigger to be resolved",
        Duration::from_secs(120),
        || count(unresolved) == 0,
    );
    let db = served.db();
    for delivery in &accepted {
        let jobs: i64 = db
            .query_row(
                "SELECT count(*) FROM jobs WHERE delivery = ?1",
                [delivery],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(jobs, 1, "delivery {delivery} got a 2xx and has {jobs} jobs");
    }
    let (deliveries, jobs): (i64, i64) = db
        .query_row(
            "SELECT (SELECT count(*) FROM deliveries WHERE id LIKE 'load-%'), \
             (SELECT count(*) FROM jobs WHERE delivery LIKE 'load-%')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(jobs, deliveries, "a delivery became two jobs, or none");
    assert!(deliveries >= accepted.len() as i64);
    // Only the requests cut off by the kill may be there without a 2xx.
    assert!(
        deliveries - accepted.len() as i64 <= 4,
        "{deliveries} vs {}",
        accepted.len()
    );
    let waiting: i64 = db
        .query_row(
            "SELECT count(*) FROM jobs WHERE delivery LIKE 'load-%' AND state = 'queued' \
             AND needs_approval = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(waiting, jobs, "every load job is still queued");
    // A redelivery after the restart is still known.
    let (code, _) = served
        .webhook("pull_request", accepted[0], &fork_pr(1, &"e".repeat(40)))
        .unwrap();
    assert_eq!(code, 409);

    // The job that was running ends as error, on GitHub too.
    assert_eq!(
        served.job_state(&running),
        ("error".to_owned(), "host restarted".to_owned())
    );
    github.wait_for("the host restarted status", Duration::from_secs(60), |p| {
        p.iter()
            .any(|p| p.state == "error" && p.description == "host restarted")
    });
    // Its machine was freed: the next job runs on it.
    std::fs::write(&release, "").unwrap();
    let next = served.jobs("push", "after-restart", &push(REPO, "main", &sha))[0].clone();
    wait_for("the next job to succeed", Duration::from_secs(120), || {
        served.job_state(&next).0 == "success"
    });
}

#[test]
fn pushes_refused_while_the_host_is_down_are_redelivered_after_it_starts_and_run_once() {
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let (project, sha) = project(scratch.path(), "echo one push, one run");
    let (key, public) = fake_github::app_key(scratch.path());
    let github = FakeGithub::start_app(fake_github::APP_ID, &public, Duration::from_secs(3600));
    // Pages of 2: the listing follows GitHub's `Link` header.
    github.page_size(2);
    let mut served = Served::start_app(scratch.path(), &github, &project, &key);
    github.hook_to(&format!("{}/webhook", served.base), SECRET);

    // Taken while up: it must not run a second time.
    assert_eq!(
        github.send_webhook("push", "guid-up", &push(REPO, "b0", &sha)),
        202
    );
    let first = served.jobs_of("guid-up");
    assert_eq!(first.len(), 1);
    // Refused as malformed: asking for it again would be refused the same.
    let bad = github.send_webhook("push", "guid-malformed", br#"{"ref": 5}"#);
    assert!((400..500).contains(&bad), "a malformed push answered {bad}");

    served.kill9_and_close();
    let missed = ["guid-down-1", "guid-down-2", "guid-down-3"];
    for (i, guid) in missed.iter().enumerate() {
        let body = push(REPO, &format!("b{}", i + 1), &sha);
        assert_eq!(
            github.send_webhook("push", guid, &body),
            0,
            "{guid} reached a stopped host"
        );
    }

    served.reopen();
    for guid in missed {
        let jobs = served.jobs_of(guid);
        assert_eq!(jobs.len(), 1, "{guid}: {jobs:?}");
        wait_for(
            "the redelivered push's job",
            Duration::from_secs(120),
            || served.job_state(&jobs[0]).0 == "success",
        );
    }
    let mut asked = github.redelivered();
    asked.sort();
    assert_eq!(asked, missed, "only what the host missed is asked for");
    // One job per push, the first one's included: nothing ran twice.
    let jobs: i64 = served
        .db()
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 4);
    let ok = github
        .deliveries()
        .iter()
        .filter(|d| d.redelivery)
        .all(|d| d.status_code == 202);
    assert!(ok, "{:#?}", github.deliveries());
    assert!(github.refused().is_empty(), "{:?}", github.refused());
}

#[test]
fn a_job_waits_while_the_hypervisor_is_unreachable_and_runs_once_it_answers() {
    let Some(lv) = pool_support::Libvirtd::start() else {
        return;
    };
    lv.domain("lv");
    // Open to the machine's unprivileged user (run as root, as CI does).
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let (project, sha) = project(scratch.path(), "echo ran on libvirt");
    let github = FakeGithub::start(GITHUB_TOKEN);
    // The machine's libvirt socket is not there yet: libvirtd is unreachable.
    let machine = "name = \"lv\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\n\
                   uri = \"test+unix:///default?socket={dir}/lv-sock\"\n\
                   dom0 = \"emulated\"\nemulated_path = \"{dir}/guests/lv\"\n";
    let served = Served::start_with(
        scratch.path(),
        &github,
        &project,
        machine,
        "start_retry_delay = \"1s\"\nstart_attempts = 5",
    );
    let job = served.jobs("push", "lv-1", &push(REPO, "main", &sha))[0].clone();

    wait_for(
        "the job to wait for a retry",
        Duration::from_secs(60),
        || served.job_state(&job).1.starts_with("Queued: retrying in"),
    );
    let (state, why) = served.job_state(&job);
    assert_eq!(state, "queued", "{why}");
    assert!(
        why.contains("attempt 1 of 5 could not start: machine lv: hypervisor unreachable"),
        "{why}"
    );
    let started: Option<i64> = served
        .db()
        .query_row("SELECT started_at FROM jobs WHERE id = ?1", [&job], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(started, None, "marked as run");

    // The hypervisor answers again: the job runs, once, and succeeds.
    std::os::unix::fs::symlink(lv.socket(), scratch.path().join("lv-sock")).unwrap();
    wait_for("the job to succeed", Duration::from_secs(180), || {
        served.job_state(&job).0 == "success"
    });
    github.wait_for("the final status", Duration::from_secs(60), |p| {
        p.iter().any(|p| p.state == "success")
    });
    let states = github.states("qci/qubes-4.2");
    assert_eq!(states[0], ("pending".into(), "Queued".into()), "{states:?}");
    assert!(
        states[1]
            .1
            .starts_with("Queued: retrying in 1s (attempt 1 of 5"),
        "{states:?}"
    );
    assert_eq!(states.last().unwrap().0, "success", "{states:?}");
    let log = served.get(&format!("/jobs/{job}/log"));
    assert_eq!(log.matches("[test] ran on libvirt").count(), 1, "{log}");
    assert_eq!(lv.virsh(&["domstate", "lv"]), "shut off");
}

/// Debian's ChromeDriver, driving headless Chromium over WebDriver (plain
/// HTTP), in its own process group so the browser goes with it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (the test is skipped) when Chromium is not installed, except
    /// under CI=true, where that is a failure: scripts/setup-chromium installs it.
    fn start() -> Option<Self> {
        let (chromium, driver) = (
            Path::new("/usr/bin/chromium"),
            Path::new("/usr/bin/chromedriver"),
        );
        if !chromium.exists() || !driver.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "Chromium is missing: run scripts/setup-chromium (scripts/test-all does)"
            );
            eprintln!("SKIPPED: no chromium/chromedriver; run scripts/setup-chromium");
            return None;
        }
        use std::os::unix::process::CommandExt;
        // Port 0: chromedriver binds a free port itself, keeps it, and says
        // which, so no other process can take it between a probe and use.
        let mut child = std::process::Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut port = None;
        let mut announced = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in announced.by_ref() {
            let line = line.expect("chromedriver's output");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                port = rest.trim_end_matches('.').parse::<u16>().ok();
                break;
            }
        }
        let port = port.expect("chromedriver said no port");
        // What it writes later is read and dropped, so it never blocks.
        std::thread::spawn(move || announced.for_each(drop));
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(30), || {
            client
                .get(format!("{base}/status"))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let reply: serde_json::Value = client
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .expect("a WebDriver session");
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_owned();
        Some(Self {
            driver: child,
            base,
            session,
            client,
            _profile: profile,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.client.request(method.clone(), url);
        if method == reqwest::Method::POST {
            req = req.json(&body);
        }
        let reply: serde_json::Value = req
            .send()
            .and_then(|r| r.json())
            .expect("WebDriver answers");
        reply["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}));
    }

    fn eval(&self, script: &str) -> serde_json::Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Saves a PNG of the page under target/tmp/qci-screenshots/.
    fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", json!(null));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a screenshot"))
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qci-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .client
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

#[test]
fn the_monitor_page_shows_a_new_log_line_live_in_a_real_browser() {
    let Some(browser) = Browser::start() else {
        return;
    };
    // A libvirt machine (the test driver) with an emulated dom0, so that
    // the failed job leaves a screenshot of its screen.
    let Some(lv) = pool_support::Libvirtd::start() else {
        return;
    };
    lv.domain("lv");
    // Open to the machine's unprivileged user (run as root, as CI does).
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let release = scratch.path().join("release");
    let report = r#"<testsuite><testcase classname="tests.test_gui" name="test_opens_the_viewer"/><testcase classname="tests.test_gui" name="test_prints_a_page"><failure message="AssertionError: no printer in sd-devices">tests/test_gui.py:42: AssertionError</failure></testcase></testsuite>"#;
    let command = format!(
        // The printed line is not in the command, which the log also shows.
        "echo the first line; {}; echo LIVE-$((40 + 2)); sleep 1; \
         mkdir -p out; printf '%s' '{report}' > out/report.xml; exit 1",
        hold_until(&release)
    );
    let (project, _) = project(scratch.path(), &command);
    let mut toml = std::fs::read_to_string(project.join(".qci.toml")).unwrap();
    toml.push_str("[artifacts]\nreports = [\"out/*.xml\"]\n");
    std::fs::write(project.join(".qci.toml"), toml).unwrap();
    git(&project, &["commit", "-q", "-a", "--amend", "-m", "a job"]);
    let sha = git(&project, &["rev-parse", "HEAD"]).trim().to_owned();
    let github = FakeGithub::start(GITHUB_TOKEN);
    let machine = format!(
        "name = \"lv\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\n\
         uri = \"test+unix:///default?socket={}\"\n\
         dom0 = \"emulated\"\nemulated_path = \"{{dir}}/guests/lv\"\n",
        lv.socket().display()
    );
    let served = Served::start_with(scratch.path(), &github, &project, &machine, "");
    let job = served.jobs("push", "browser-1", &push(REPO, "main", &sha))[0].clone();
    wait_for("the job to run", Duration::from_secs(120), || {
        served
            .get(&format!("/jobs/{job}/log"))
            .contains("the first line")
    });

    browser.open(&format!("{}/", served.base));
    let monitor = browser.eval("return document.body.innerText").to_string();
    assert!(
        monitor.contains(&job) && monitor.contains("Running"),
        "{monitor}"
    );
    let shot = browser.screenshot("monitor.png");
    eprintln!("screenshot: {}", shot.display());

    browser.open(&format!("{}/jobs/{job}", served.base));
    let log_text = "return document.getElementById('log').textContent";
    wait_for(
        "the log so far on the page",
        Duration::from_secs(30),
        || {
            browser
                .eval(log_text)
                .as_str()
                .unwrap_or("")
                .contains("the first line")
        },
    );
    // A reload would lose this.
    browser.eval("window.qciNoReload = 42; return null");

    std::fs::write(&release, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen_at = loop {
        assert!(
            Instant::now() < deadline,
            "the line never showed on the page"
        );
        if browser
            .eval(log_text)
            .as_str()
            .unwrap_or("")
            .contains("[test] LIVE-42")
        {
            break std::time::SystemTime::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        browser.eval("return window.qciNoReload"),
        json!(42),
        "the page reloaded"
    );
    let published = served.get(&format!("/jobs/{job}/log"));
    let line = published
        .lines()
        .find(|l| l.ends_with("[test] LIVE-42"))
        .unwrap_or_else(|| panic!("{published}"));
    let printed = humantime::parse_rfc3339(line.split(' ').next().unwrap()).unwrap();
    let latency = seen_at.duration_since(printed).unwrap_or_default();
    eprintln!("printed in dom0 to shown in the browser: {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "the line took {latency:?} to show"
    );

    // The end of the job reaches the page too.
    wait_for(
        "the final state on the page",
        Duration::from_secs(60),
        || {
            browser
                .eval("return document.getElementById('state').textContent")
                .as_str()
                .unwrap_or("")
                .starts_with("failure")
        },
    );
    // ...and its status events, the final one included, still without a reload.
    let events = || {
        browser
            .eval("return document.getElementById('events').textContent")
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events().contains("failuretest failed (exit 1)") {
        assert!(
            Instant::now() < deadline,
            "no final status event on the page: {:?}\nserved: {}",
            events(),
            served.get(&format!("/jobs/{job}"))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...then the failed test's row and the machine's screenshot, shown.
    let failed = || {
        browser
            .eval("var t = document.getElementById('failed-tests'); return t ? t.innerText : ''")
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    wait_for(
        "the failed test on the page",
        Duration::from_secs(30),
        || failed().contains("tests.test_gui::test_prints_a_page"),
    );
    assert!(
        failed().contains("AssertionError: no printer in sd-devices")
            && failed().contains("new failure"),
        "{}",
        failed()
    );
    wait_for("the screenshot shown", Duration::from_secs(30), || {
        browser
            .eval(
                "var i = document.getElementById('screenshot'); \
             return i ? i.complete && i.naturalWidth : 0",
            )
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    assert_eq!(browser.eval("return window.qciNoReload"), json!(42));
    let shot = browser.screenshot("job.png");
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn a_second_serve_on_the_same_state_dir_names_the_holder_and_changes_nothing() {
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let (project, sha) = project(scratch.path(), "echo started; sleep 4; echo done");
    let github = FakeGithub::start(GITHUB_TOKEN);
    let served = Served::start(scratch.path(), &github, &project);
    let toml = std::fs::read_to_string(project.join(".qci.toml")).unwrap();
    github.pipeline(REPO, &sha, &toml);
    let job = served.jobs("push", "second-1", &push(REPO, "main", &sha))[0].clone();
    wait_for("the job to run", Duration::from_secs(120), || {
        served.job_state(&job).0 == "running"
    });

    // The same config again, while the job runs: it must stop at once.
    let started = Instant::now();
    let second = qci()
        .arg("serve")
        .arg("--config")
        .arg(served.config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    let first_pid = served.child.as_ref().unwrap().id();
    assert!(
        stderr.contains(&format!("another qci serve (pid {first_pid})")),
        "{stderr}"
    );
    assert_eq!(
        served.job_state(&job).0,
        "running",
        "the second host touched the job"
    );

    // The first host's job ends with its own outcome, reported once.
    github.wait_for("the final status", Duration::from_secs(120), |p| {
        p.iter().any(|p| p.state != "pending")
    });
    assert_eq!(served.job_state(&job).0, "success");
    let finals: Vec<_> = github
        .states("qci/qubes-4.2")
        .into_iter()
        .filter(|s| s.0 != "pending")
        .collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].0, "success", "{finals:?}");
    assert!(github.refused().is_empty(), "{:?}", github.refused());
}

#[test]
fn idle_connections_by_the_thousand_cannot_take_the_server_down() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let (project, _) = project(scratch.path(), "true");
    let github = FakeGithub::start(GITHUB_TOKEN);
    let served = Served::start(scratch.path(), &github, &project);
    let pid = served.child.as_ref().unwrap().id();

    // As many idle sockets as this process may open (20,000 wanted), less
    // a margin for the test's own files.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let want = 20_000.min(hard.saturating_sub(300) as usize);
    let addr: std::net::SocketAddr = served.base["http://".len()..].parse().unwrap();
    // From a loopback address of this run's own: the connections the server
    // closes stay in TIME_WAIT for a minute, and an earlier run's must not
    // collide with this one's ports.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let from = std::net::SocketAddr::from((
        [
            127,
            1 + (std::process::id() % 250) as u8,
            1 + (nanos % 250) as u8,
            1,
        ],
        0,
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Opened 200 at a time, so a slow (loaded) machine is not mistaken for
    // a server that stopped accepting; the budget is generous for that too.
    let started = Instant::now();
    let budget = Duration::from_secs(120);
    let mut idle = Vec::with_capacity(want);
    while idle.len() < want && started.elapsed() < budget {
        let batch = (want - idle.len()).min(200);
        let connected = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch {
                set.spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(from)?;
                    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
                        .await
                        .map_err(std::io::Error::other)?
                });
            }
            set.join_all().await
        });
        for c in connected {
            match c {
                Ok(s) => idle.push(s.into_std().unwrap()),
                Err(e) => panic!("connection {} failed: {e}", idle.len()),
            }
        }
    }
    assert_eq!(idle.len(), want, "opened only {} in {budget:?}", idle.len());
    eprintln!(
        "holding {want} idle connections after {:?}",
        started.elapsed()
    );

    // The server holds at most its cap of them, far below its limit.
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        open_fds < 4096 + 200,
        "the server holds {open_fds} descriptors"
    );

    // With all of them still open, signed webhooks and health checks are
    // answered at once.
    let asked = Instant::now();
    let (code, reply) = served
        .webhook("ping", "idle-1", br#"{"zen":"Keep it logically awesome."}"#)
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert!(code < 500, "{code} {reply}");
    let asked = Instant::now();
    assert_eq!(served.get("/healthz"), "ok\n");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    drop(idle);
}

/// A tmpfs of `size` mounted at `dir` for one test, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs at {}", dir.display());
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn a_disk_that_fills_mid_job_is_survived_and_everything_goes_on_once_space_is_back() {
    if !support::root_or_skip("it mounts a small disk") {
        return;
    }
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let disk = SmallDisk::mount(&scratch.path().join("state"), "48m");
    let (project, sha) = project(scratch.path(), "echo started; sleep 6; echo done");
    let github = FakeGithub::start(GITHUB_TOKEN);
    let served = Served::start(scratch.path(), &github, &project);
    let toml = std::fs::read_to_string(project.join(".qci.toml")).unwrap();
    github.pipeline(REPO, &sha, &toml);
    let job = served.jobs("push", "full-1", &push(REPO, "main", &sha))[0].clone();
    wait_for("the job to run", Duration::from_secs(120), || {
        served.job_state(&job).0 == "running"
    });

    // The disk fills while the job runs; its end cannot be written.
    let filler = disk.fill();
    let mut health = String::new();
    wait_for(
        "/healthz to say the disk fails",
        Duration::from_secs(60),
        || {
            let reply = served
                .client
                .get(format!("{}/healthz", served.base))
                .send()
                .unwrap();
            let code = reply.status().as_u16();
            health = reply.text().unwrap_or_default();
            code == 503
        },
    );
    assert!(health.contains("cannot be written"), "{health}");
    // A push GitHub delivers meanwhile is refused, not lost: it is asked
    // for again once the disk recovers (token mode: through the
    // repository's webhook).
    github.hook_to(&format!("{}/webhook", served.base), SECRET);
    let refused = github.send_webhook("push", "full-missed", &push(REPO, "other", &sha));
    assert_eq!(refused, 503, "a webhook taken while the disk is full");
    // Reading still works while the disk is full.
    let listed = qci()
        .args(["jobs", "--config"])
        .arg(served.config())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(
        listed.status.code(),
        Some(0),
        "qci jobs list while full: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let pool = qci()
        .args(["pool", "--config"])
        .arg(served.config())
        .output()
        .unwrap();
    assert_eq!(
        pool.status.code(),
        Some(0),
        "qci pool while full: {}",
        String::from_utf8_lossy(&pool.stderr)
    );

    // Space comes back: the job ends with its own outcome, once, the
    // machine is free and the next job runs, with no restart.
    std::fs::remove_file(filler).unwrap();
    wait_for("the job's end", Duration::from_secs(120), || {
        served.job_state(&job).0 != "running"
    });
    assert_eq!(
        served.job_state(&job).0,
        "success",
        "{:?}",
        served.job_state(&job)
    );
    wait_for("/healthz to recover", Duration::from_secs(60), || {
        served.get("/healthz") == "ok\n"
    });
    let missed = served.jobs_of("full-missed");
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(github.redelivered(), ["full-missed"]);
    wait_for(
        "the redelivered push's job",
        Duration::from_secs(120),
        || served.job_state(&missed[0]).0 == "success",
    );
    git(&project, &["commit", "-q", "--allow-empty", "-m", "second"]);
    let sha2 = git(&project, &["rev-parse", "HEAD"]).trim().to_owned();
    github.pipeline(REPO, &sha2, &toml);
    let second = served.jobs("push", "full-2", &push(REPO, "main", &sha2))[0].clone();
    wait_for("the next job's end", Duration::from_secs(120), || {
        let state = served.job_state(&second).0;
        state != "running" && state != "queued"
    });
    assert_eq!(served.job_state(&second).0, "success");
    github.wait_for("the three final statuses", Duration::from_secs(60), |p| {
        p.iter().filter(|p| p.state != "pending").count() >= 3
    });
    let finals: Vec<_> = github
        .states("qci/qubes-4.2")
        .into_iter()
        .filter(|s| s.0 != "pending")
        .collect();
    assert_eq!(finals.len(), 3, "{finals:?}");
    assert!(finals.iter().all(|s| s.0 == "success"), "{finals:?}");
}

#[test]
fn after_a_crash_the_status_that_ends_a_job_links_to_a_page_that_answers() {
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let release = scratch.path().join("release");
    let command = format!("echo started; {}", hold_until(&release));
    let (project, sha) = project(scratch.path(), &command);
    let github = FakeGithub::start(GITHUB_TOKEN);
    let mut served = Served::start(scratch.path(), &github, &project);
    let toml = std::fs::read_to_string(project.join(".qci.toml")).unwrap();
    github.pipeline(REPO, &sha, &toml);
    let job = served.jobs("push", "order-1", &push(REPO, "main", &sha))[0].clone();
    wait_for("the job to run", Duration::from_secs(120), || {
        served.job_state(&job).0 == "running"
    });
    served.kill9();

    // When GitHub gets the status that ends the job, its link must answer.
    let answered = Arc::new(Mutex::new(None));
    let record = answered.clone();
    github.on_post(move |p| {
        if p.state != "pending" {
            let code = reqwest::blocking::get(&p.target_url)
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            *record.lock().unwrap() = Some(code);
        }
    });
    served.spawn();
    github.wait_for("the final status", Duration::from_secs(120), |p| {
        p.iter().any(|p| p.state != "pending")
    });
    assert_eq!(
        served.job_state(&job),
        ("error".into(), "host restarted".into())
    );
    assert_eq!(*answered.lock().unwrap(), Some(200), "the link refused");
    std::fs::write(&release, "").unwrap();
}

/// A JUnit report of five tests, as pytest writes one: `t_bad` passes or
/// fails as `bad_passes` says.
fn junit_report(bad_passes: bool) -> String {
    let bad = if bad_passes {
        r#"<testcase classname="tests.test_vm" name="t_bad" time="0.2"/>"#.to_owned()
    } else {
        r#"<testcase classname="tests.test_vm" name="t_bad" file="tests/test_vm.py" line="7" time="0.2"><failure message="assert 1 == 2">tests/test_vm.py:7: AssertionError</failure><system-out>booted sd-log</system-out></testcase>"#.to_owned()
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites><testsuite name=\"pytest\">\
         <testcase classname=\"tests.test_vm\" name=\"t_ok1\" time=\"0.1\"/>\
         <testcase classname=\"tests.test_vm\" name=\"t_ok2\" time=\"0.1\"/>\
         <testcase classname=\"tests.test_vm\" name=\"t_ok3\" time=\"0.1\"/>{bad}\
         <testcase classname=\"tests.test_vm\" name=\"t_skip\"><skipped message=\"no printer\"/></testcase>\
         </testsuite></testsuites>\n"
    )
}

#[test]
fn a_failing_test_is_listed_with_its_history_and_the_files_download_as_written() {
    let area = support::Scratch::new();
    let scratch = &area.dir;
    // Whether `t_bad` fails is read from outside the machine, so the same
    // commit can fail once and pass once.
    let flip = scratch.path().join("t_bad-outcome");
    std::fs::write(&flip, "fail").unwrap();
    std::fs::set_permissions(&flip, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let script = format!(
        "mkdir -p out\ncp report-$(cat {}).xml out/report.xml\nprintf 'ran the tests\\n' > out/run.log\n\
         [ \"$(cat {})\" = pass ]\n",
        flip.display(),
        flip.display()
    );
    let (project, _) = project(scratch.path(), "sh ./run.sh");
    let toml = format!(
        "{}\n[artifacts]\npaths = [\"out/\"]\nreports = [\"out/*.xml\"]\n",
        std::fs::read_to_string(project.join(".qci.toml")).unwrap()
    );
    std::fs::write(project.join(".qci.toml"), &toml).unwrap();
    std::fs::write(project.join("run.sh"), script).unwrap();
    std::fs::write(project.join("report-fail.xml"), junit_report(false)).unwrap();
    std::fs::write(project.join("report-pass.xml"), junit_report(true)).unwrap();
    git(&project, &["add", "."]);
    git(&project, &["commit", "-q", "--amend", "-m", "tests"]);
    let commit = |message: &str| {
        git(&project, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&project, &["rev-parse", "HEAD"]).trim().to_owned()
    };
    let sha_a = git(&project, &["rev-parse", "HEAD"]).trim().to_owned();
    let github = FakeGithub::start(GITHUB_TOKEN);
    let served = Served::start(scratch.path(), &github, &project);
    // Ended on the host's side: its log published, its results stored.
    let ended = |job: &str| {
        wait_for("the job's end", Duration::from_secs(180), || {
            served
                .db()
                .query_row("SELECT log_published FROM jobs WHERE id = ?1", [job], |r| {
                    r.get::<_, bool>(0)
                })
                .unwrap()
        });
        served.job_state(job).0
    };
    let run = |sha: &str, delivery: &str| {
        github.pipeline(REPO, sha, &toml);
        let job = served.jobs("push", delivery, &push(REPO, "main", sha))[0].clone();
        let state = ended(&job);
        (job, state)
    };

    // The first failure: listed with its message, new; the files as written.
    let (first, state) = run(&sha_a, "t-1");
    assert_eq!(state, "failure", "{:?}", served.job_state(&first));
    let page = served.get(&format!("/jobs/{first}"));
    assert!(
        page.contains("1 of 5 tests failed (3 passed, 1 skipped)"),
        "{page}"
    );
    assert!(page.contains("tests.test_vm::t_bad"), "{page}");
    assert!(page.contains("assert 1 == 2"), "{page}");
    assert!(page.contains("new failure"), "{page}");
    for (path, want) in [
        ("files/out/report.xml", junit_report(false).into_bytes()),
        ("files/out/run.log", b"ran the tests\n".to_vec()),
    ] {
        assert!(
            page.contains(&format!("/jobs/{first}/artifacts/{path}")),
            "{page}"
        );
        let reply = served
            .client
            .get(format!("{}/jobs/{first}/artifacts/{path}", served.base))
            .send()
            .unwrap();
        assert_eq!(reply.status().as_u16(), 200, "{path}");
        let header = |name: &str| reply.headers()[name].to_str().unwrap().to_owned();
        assert!(
            header("content-disposition").starts_with("attachment"),
            "{path}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("content-type"), "application/octet-stream");
        assert_eq!(reply.bytes().unwrap().to_vec(), want, "{path}");
    }
    let out = qci()
        .args(["jobs", "--config"])
        .arg(served.config())
        .args(["tests", &first])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("1 of 5 tests failed"), "{text}");
    assert!(
        text.contains("tests.test_vm::t_bad") && text.contains("new failure"),
        "{text}"
    );

    // Still failing on a later commit: since the first.
    let (second, state) = run(&commit("second"), "t-2");
    assert_eq!(state, "failure");
    let page = served.get(&format!("/jobs/{second}"));
    assert!(
        page.contains(&format!("failing since {} (2 runs)", &sha_a[..12])),
        "{page}"
    );

    // Fixed: nothing failing, and the test no longer fails on /tests.
    std::fs::write(&flip, "pass").unwrap();
    let sha_c = commit("third");
    let (third, state) = run(&sha_c, "t-3");
    assert_eq!(state, "success");
    let page = served.get(&format!("/jobs/{third}"));
    assert!(page.contains("4 of 5 tests passed (1 skipped)"), "{page}");
    assert!(!page.contains("failed-tests"), "{page}");
    assert!(!served.get("/tests").contains("tests.test_vm::t_bad"));

    // The same commit again, and t_bad fails: flaky.
    std::fs::write(&flip, "fail").unwrap();
    let out = qci()
        .args(["jobs", "--config"])
        .arg(served.config())
        .args(["retry", &third])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let fourth = text.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(ended(&fourth), "failure");
    let page = served.get(&format!("/jobs/{fourth}"));
    assert!(
        page.contains(&format!("new failure, last passed at {}", &sha_c[..12])),
        "{page}"
    );
    assert!(page.contains("flaky: 2 flips in its last 4 runs"), "{page}");
    let tests = served.get("/tests");
    assert!(tests.contains("tests.test_vm::t_bad"), "{tests}");
}

#[test]
fn a_bad_socket_hand_over_is_refused_with_a_clear_line_not_an_abort() {
    let area = support::Scratch::new();
    let scratch = &area.dir;
    let (project, _) = project(scratch.path(), "true");
    let github = FakeGithub::start(GITHUB_TOKEN);
    let served = Served::start(scratch.path(), &github, &project);
    let qci_bin = support::bin_dir().join("qci");
    for (fds, shell_redirect, said) in [
        (
            "1",
            "3<&-",
            "qci: LISTEN_FDS=1, but file descriptor 3 is not open in this process",
        ),
        (
            "2",
            "3</dev/null",
            "qci: LISTEN_FDS=\"2\": qci serve takes exactly one socket",
        ),
    ] {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "export LISTEN_PID=$$ LISTEN_FDS={fds}; exec \"$0\" serve --config \"$1\" {shell_redirect}"
            ))
            .arg(&qci_bin)
            .arg(served.config())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{stderr}");
        assert!(
            matches!(out.status.code(), Some(2 | 3)),
            "{:?}: {stderr}",
            out.status
        );
    }
    // The running host was not disturbed.
    assert_eq!(served.get("/healthz"), "ok\n");
}
