//! A `qci serve` in the test process, with a fake GitHub and a scripted
//! pool that behaves as a machine would: it reports through the real relay
//! endpoint with the job's token, as the dev VM's `qci.Status` does.

pub mod fake_github;

use fake_github::FakeGithub;
use qci_core::job_file::{JobFile, Sink};
use qci_pool::{FinalStatus, JobEvents, JobOutcome, JobRequest, MachineReport, Phase, PoolError};
use qci_server::dispatch::NotStarted;
use qci_server::{Executor, HostConfig};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const SECRET: &str = "It's a Secret to Everybody";
pub const GITHUB_TOKEN: &str = "ghp_hostsecrettoken0123456789";
pub const ADMIN_TOKEN: &str = "operator-token-42";
pub const REPO: &str = "freedomofpress/securedrop-workstation";
pub use fake_github::APP_ID;

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A pool that runs nothing: each job reports `running`, prints `lines`
/// into its log, waits for the gate (or a cancel), then reports `last`.
/// Its first hand-overs can be made to fail without starting (`not_started`).
pub struct Scripted {
    /// Machines per version.
    pub capacity: usize,
    pub versions: Vec<String>,
    /// What the next hand-overs answer instead of starting, in order.
    pub not_started: Mutex<Vec<NotStarted>>,
    /// When each hand-over came, and for which job.
    pub handed: Mutex<Vec<(String, Instant)>>,
    pub lines: Vec<String>,
    pub last: &'static str,
    gate: Arc<(Mutex<bool>, Condvar)>,
    pub job_files: Mutex<Vec<JobFile>>,
    pub canceled: Mutex<Vec<String>>,
    /// What `/pool` shows: the machines as the pool would report them.
    pub machines: Mutex<Vec<Machine>>,
    /// What every job leaves: its tests and files, as the pool reads them.
    pub artifacts: Mutex<Option<qci_pool::artifacts::JobArtifacts>>,
    logs: tempfile::TempDir,
}

/// A machine of the scripted pool, as its report shows it.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub name: String,
    pub qubes: String,
    /// The job leasing it, and whether its holder is alive.
    pub lease: Option<(String, bool)>,
    pub snapshot: Option<String>,
    pub last_run: Option<(String, String)>,
}

/// The machine a scripted job runs on, and its snapshot.
pub const MACHINE: &str = "scripted-1";
pub const SNAPSHOT: &str = "qci-2026-12-01";

impl Scripted {
    pub fn new(open: bool) -> Arc<Self> {
        Self::on(open, &["4.2"])
    }

    /// A pool with a machine for each of `versions`.
    pub fn on(open: bool, versions: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            capacity: 1,
            versions: versions.iter().map(|v| v.to_string()).collect(),
            not_started: Mutex::default(),
            handed: Mutex::default(),
            lines: vec!["building\n".into(), "all tests passed\n".into()],
            last: "success",
            gate: Arc::new((Mutex::new(open), Condvar::new())),
            job_files: Mutex::default(),
            canceled: Mutex::default(),
            machines: Mutex::default(),
            artifacts: Mutex::default(),
            logs: tempfile::tempdir().unwrap(),
        })
    }

    pub fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    pub fn started(&self) -> usize {
        self.job_files.lock().unwrap().len()
    }

    /// When each hand-over of `job` to the pool came.
    pub fn handed(&self, job: &str) -> Vec<Instant> {
        self.handed
            .lock()
            .unwrap()
            .iter()
            .filter(|(j, _)| j == job)
            .map(|(_, at)| *at)
            .collect()
    }
}

/// Posts a status event to the relay as `qci.Status` would; returns the HTTP code.
pub fn relay_post(url: &str, token: &str, body: &str) -> u16 {
    relay_reply(url, token, body).0
}

/// The relay's whole answer: status and body (0 and empty when none came).
pub fn relay_reply(url: &str, token: &str, body: &str) -> (u16, String) {
    reqwest::blocking::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        .unwrap_or_default()
}

pub fn event(job: &str, state: &str, description: &str) -> String {
    serde_json::json!({"job": job, "state": state, "description": description, "log": format!("{job}.log")})
        .to_string()
}

impl Executor for Scripted {
    fn versions(&self) -> Vec<String> {
        self.versions.clone()
    }

    fn capacity(&self, _qubes: &str) -> usize {
        self.capacity
    }

    fn reconcile(&self, _status: &dyn FinalStatus) -> Vec<String> {
        Vec::new()
    }

    fn report(&self) -> Result<Vec<MachineReport>, PoolError> {
        let now = qci_pool::lease::now();
        Ok(self
            .machines
            .lock()
            .unwrap()
            .iter()
            .map(|m| MachineReport {
                name: m.name.clone(),
                qubes: m.qubes.clone(),
                backend: "local".into(),
                power: Ok(qci_pool::control::PowerState::Off),
                lease: m
                    .lease
                    .as_ref()
                    .map(|(job, alive)| qci_pool::lease::LeaseRow {
                        machine: m.name.clone(),
                        job: job.parse().unwrap(),
                        host: "test-host".into(),
                        // A process that is not there has a made-up owner.
                        owner: if *alive {
                            qci_pool::lease::me()
                        } else {
                            "no-boot:1:1".into()
                        },
                        pid: if *alive { std::process::id() as i64 } else { 1 },
                        acquired_at: now - 5.0,
                        expires_at: now + 3600.0,
                        log_id: 1,
                    }),
                marker: None,
                snapshot: m.snapshot.clone(),
                last_run: m
                    .last_run
                    .clone()
                    .map(|(job, state)| (job, state, String::new())),
            })
            .collect())
    }

    fn leased(&self, qubes: &str) -> Result<usize, PoolError> {
        Ok(self
            .machines
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.qubes == qubes && m.lease.is_some())
            .count())
    }

    fn run_job(
        &self,
        req: &JobRequest,
        events: &dyn JobEvents,
        _status: &dyn FinalStatus,
    ) -> Result<JobOutcome, NotStarted> {
        let job = req.job.as_str();
        self.handed
            .lock()
            .unwrap()
            .push((job.to_owned(), Instant::now()));
        {
            let mut failing = self.not_started.lock().unwrap();
            if !failing.is_empty() {
                return Err(failing.remove(0));
            }
        }
        let Sink::Relay { url, token, .. } = &req.job_file.sink else {
            return Err(NotStarted::Refused("not a relay sink".into()));
        };
        events.phase(
            &req.job,
            &Phase::Leased {
                machine: MACHINE.into(),
            },
        );
        events.phase(
            &req.job,
            &Phase::Reverting {
                snapshot: SNAPSHOT.into(),
            },
        );
        events.phase(&req.job, &Phase::Running);
        // 409 when the host ended the job meanwhile (superseded, canceled).
        let code = relay_post(url, token, &event(job, "running", "Running make test"));
        assert!(code == 204 || code == 409, "running status: HTTP {code}");
        // Counted as started once its `running` status is recorded.
        self.job_files.lock().unwrap().push(req.job_file.clone());
        let log = self.logs.path().join(format!("{job}.log"));
        for line in &self.lines {
            events.log(&req.job, line.as_bytes());
        }
        std::fs::write(&log, self.lines.concat()).unwrap();
        let outcome = |state, description: &str| JobOutcome {
            machine: "scripted".into(),
            state,
            description: description.into(),
            log: log.clone(),
            exit: qci_core::ExitCode::Success,
            artifacts: self.artifacts.lock().unwrap().clone(),
        };
        let (lock, cvar) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            if req.cancel.load(Ordering::SeqCst) {
                self.canceled.lock().unwrap().push(job.to_owned());
                return Ok(outcome(qci_core::State::Canceled, "canceled"));
            }
            open = cvar
                .wait_timeout(open, Duration::from_millis(10))
                .unwrap()
                .0;
        }
        drop(open);
        let code = relay_post(url, token, &event(job, self.last, "All steps passed"));
        assert!(code == 204 || code == 409, "final status: HTTP {code}");
        Ok(outcome(qci_core::State::Success, "All steps passed"))
    }
}

pub struct Host {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub github: FakeGithub,
    client: reqwest::blocking::Client,
    _server: qci_test_http::HttpServer,
}

impl Host {
    pub fn start(extra: &str, executor: Arc<dyn Executor>) -> Self {
        Self::start_repo(extra, "", executor)
    }

    /// As [`Self::start`], with `repo` added to [`REPO`]'s `[[server.repos]]` table.
    pub fn start_repo(extra: &str, repo: &str, executor: Arc<dyn Executor>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let github = FakeGithub::start(GITHUB_TOKEN);
        Self::start_with(dir, github, None, extra, repo, executor)
    }

    /// A host in App mode (`[server.github_app]`, app [`APP_ID`]), with a
    /// fake GitHub whose installation tokens live `token_life`.
    pub fn start_app(extra: &str, token_life: Duration, executor: Arc<dyn Executor>) -> Self {
        Self::start_app_repo(extra, "", token_life, executor)
    }

    /// As [`Self::start_app`], with `repo` added to [`REPO`]'s `[[server.repos]]` table.
    pub fn start_app_repo(
        extra: &str,
        repo: &str,
        token_life: Duration,
        executor: Arc<dyn Executor>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = fake_github::app_key(dir.path());
        let github = FakeGithub::start_app(APP_ID, &public, token_life);
        let app = format!(
            "[server.github_app]\napp_id = {APP_ID}\nprivate_key = {{ file = \"{}\" }}\n",
            private.display()
        );
        Self::start_with(dir, github, Some(app), extra, repo, executor)
    }

    fn start_with(
        dir: tempfile::TempDir,
        github: FakeGithub,
        app: Option<String>,
        extra: &str,
        repo_extra: &str,
        executor: Arc<dyn Executor>,
    ) -> Self {
        std::fs::write(dir.path().join("webhook-secret"), SECRET).unwrap();
        // A secret file as its owner keeps it (qci refuses others reading it).
        std::fs::set_permissions(
            dir.path().join("webhook-secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.path().join("github-token"), GITHUB_TOKEN).unwrap();
        // A secret file as its owner keeps it (qci refuses others reading it).
        std::fs::set_permissions(
            dir.path().join("github-token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
        // A secret file as its owner keeps it (qci refuses others reading it).
        std::fs::set_permissions(
            dir.path().join("admin-token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let listener = qci_test_http::Listener::bind();
        let addr = listener.addr();
        let base = listener.url();
        let d = dir.path().display();
        let text = format!(
            "[pool]\nstate_dir = \"{d}/state\"\n[server]\nlisten = \"{addr}\"\n\
             public_url = \"{base}\"\ngithub_api_url = \"{}\"\n\
             webhook_secret = {{ file = \"{d}/webhook-secret\" }}\n\
             {token}\
             admin_token = {{ file = \"{d}/admin-token\" }}\n\
             max_body_bytes = 65536\ngithub_retry_budget = \"20s\"\n{redeliver}{extra}\n{app}\
             [[server.repos]]\nslug = \"{REPO}\"\nbranches = [\"main\", \"release/*\"]\n\
             tags = [\"v*\"]\n{repo_extra}\n",
            github.base,
            token = if app.is_some() {
                String::new()
            } else {
                format!("github_token = {{ file = \"{d}/github-token\" }}\n")
            },
            app = app.as_deref().unwrap_or(""),
            // No scan of missed deliveries at start (its requests would
            // count as the test's): tests/serve.rs tests it, through the
            // binary's restarts.
            redeliver = if extra.contains("redeliver_within") {
                ""
            } else {
                "redeliver_within = \"0s\"\n"
            },
        );
        let path = dir.path().join("host.toml");
        std::fs::write(&path, text).unwrap();
        let config = HostConfig::load(&path).unwrap();
        let lock = qci_server::StateLock::acquire(config.state_dir()).unwrap();
        let server = listener
            .multi_thread(2)
            .run("qci-serve", |listener| async move {
                qci_server::serve(config, executor, Some(listener), lock)
                    .await
                    .unwrap();
            });
        let host = Self {
            base,
            dir,
            github,
            _server: server,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        wait_for("the server", Duration::from_secs(30), || {
            host.get("/healthz").0 == 200
        });
        host
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("state/server.sqlite")).unwrap()
    }

    pub fn count(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Rows of the tables a refused request must leave alone.
    pub fn footprint(&self) -> [i64; 4] {
        ["deliveries", "jobs", "events", "outbox"].map(|t| self.count(t))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match self.client.get(format!("{}{path}", self.base)).send() {
            Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    pub fn post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.client.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// Delivers a webhook as GitHub does, signed with the shared secret.
    pub fn webhook(&self, event: &str, delivery: &str, body: &[u8]) -> (u16, String) {
        let sig = qci_server::webhook::sign(SECRET.as_bytes(), body);
        self.webhook_with(event, delivery, body, Some(&sig), "application/json")
    }

    pub fn webhook_with(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        signature: Option<&str>,
        content_type: &str,
    ) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}/webhook", self.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("User-Agent", "GitHub-Hookshot/abc123")
            .header("content-type", content_type)
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("X-Hub-Signature-256", s);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    pub fn job(&self, id: &str) -> serde_json::Value {
        let (code, body) = self.get(&format!("/api/jobs/{id}"));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["job"].clone()
    }

    /// What became of a delivery (`/api/deliveries/ID`), once its jobs are
    /// worked out.
    pub fn resolved(&self, delivery: &str) -> serde_json::Value {
        let mut found = serde_json::Value::Null;
        wait_for(
            &format!("delivery {delivery} to be resolved"),
            Duration::from_secs(30),
            || {
                let (code, body) = self.get(&format!("/api/deliveries/{delivery}"));
                assert_eq!(code, 200, "{body}");
                found = serde_json::from_str(&body).unwrap();
                found["resolved"] == true
            },
        );
        found
    }

    /// Delivers a webhook that asks for jobs (202), and returns them once
    /// they are worked out.
    pub fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> Vec<String> {
        let (code, reply) = self.webhook(event, delivery, body);
        assert_eq!(code, 202, "{reply}");
        let d = self.resolved(delivery);
        d["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j.as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until every message in the outbox has been sent.
    pub fn wait_outbox_sent(&self) {
        wait_for("the outbox to be sent", Duration::from_secs(30), || {
            self.db()
                .query_row(
                    "SELECT count(*) FROM outbox WHERE sent_at IS NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                == 0
        });
    }

    pub fn wait_state(&self, id: &str, state: &str) {
        wait_for(
            &format!("job {id} to be {state}"),
            Duration::from_secs(30),
            || self.job(id)["state"] == state,
        );
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A JSON fixture with some fields changed (`/`-separated paths).
pub fn edited(name: &str, edits: &[(&str, serde_json::Value)]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
    for (path, value) in edits {
        let mut at = &mut v;
        for key in path.split('/') {
            at = &mut at[key];
        }
        *at = value.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

/// A receiver for notifications: records each JSON body, answering `code`.
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    _server: qci_test_http::HttpServer,
}

impl Receiver {
    pub fn start(code: u16) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        let handler = move |body: String| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or_default());
                axum::http::StatusCode::from_u16(code).unwrap()
            }
        };
        let server =
            qci_test_http::HttpServer::start("receiver", axum::Router::new().fallback(handler));
        Self {
            url: format!("{}/hook", server.url()),
            got,
            _server: server,
        }
    }

    pub fn got(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().clone()
    }
}
