//! The end-to-end harness of `tests/actions.rs`, shared with
//! `benches/actions.rs` (both include it with `#[path]`, beside `support`
//! and `fake_github` as crate modules): a fake GitHub in App (or token)
//! mode, a host.toml with `[server.actions]` over `local` machines, the
//! machines made once by `qci pool`, and `qci serve` started
//! socket-activated with GitHub's hook pointing at it.

use crate::fake_github::{self, FakeGithub};
use crate::support::{self, wait_for};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "webhook secret for the actions tests";
pub const REPO: &str = "freedomofpress/securedrop-workstation";
pub const GROUP: u64 = 3;
pub const TOKEN: &str = "ghp_actionsTestsToken0123456789abcdef";

/// `act`, from `scripts/setup-act` (which installs it once, cached).
pub fn act() -> PathBuf {
    if let Ok(p) = std::env::var("QCI_ACT") {
        return PathBuf::from(p);
    }
    let out =
        std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-act"))
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "setup-act: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub struct Host {
    _area: support::Scratch,
    pub dir: PathBuf,
    pub base: String,
    pub github: FakeGithub,
    pub child: Option<Child>,
    /// App mode, else token mode.
    app: bool,
    /// Kept to start `qci serve` again after [`Host::kill9`].
    qci: Box<dyn Fn() -> Command>,
}

/// What a [`Host`] is made of beyond its machines: the tests take
/// [`Setup::tests`]; the bench swaps in the release binary and a runner that
/// only exits, so it needs neither `act` nor Python.
pub struct Setup {
    /// App mode, else token mode (`qci serve`'s stderr piped, for the test
    /// to read).
    pub app: bool,
    /// The `pickup_timeout` of `[server.actions]`.
    pub pickup: String,
    /// The runner command qci starts in the dev VM, as the contents of a TOML
    /// basic string; `None`: the stand-in runner (`runner.py`) with `act`.
    pub runner: Option<String>,
    /// A new `qci` command (the binary under test, its environment set),
    /// for `qci pool` and `qci serve`.
    pub qci: Box<dyn Fn() -> Command>,
    /// More lines of `[server.actions]` (`organization`, `min_idle`).
    pub actions: String,
}

impl Setup {
    /// What the tests run: the debug `qci`, the stand-in runner with `act`.
    pub fn tests(pickup: &str, app: bool) -> Self {
        Self {
            app,
            pickup: pickup.to_owned(),
            runner: None,
            qci: Box::new(support::qci),
            actions: String::new(),
        }
    }
}

impl Host {
    /// `qci serve` in App mode with one machine per `(name, qubes)`.
    pub fn start(machines: &[(&str, &str)], pickup: &str) -> Self {
        Self::start_as(machines, pickup, true)
    }

    /// The same in App mode or, with `app` false, token mode (its stderr piped).
    pub fn start_as(machines: &[(&str, &str)], pickup: &str, app: bool) -> Self {
        Self::start_with(machines, Setup::tests(pickup, app))
    }

    /// `qci serve` as `setup` says, with one machine per `(name, qubes)`.
    pub fn start_with(machines: &[(&str, &str)], setup: Setup) -> Self {
        let Setup {
            app,
            pickup,
            runner,
            qci,
            actions,
        } = setup;
        let area = support::Scratch::new();
        let dir = area.dir.path().to_owned();
        let (key, public) = fake_github::app_key(&dir);
        let github = if app {
            FakeGithub::start_app(fake_github::APP_ID, &public, Duration::from_secs(3600))
        } else {
            FakeGithub::start(TOKEN)
        };
        github.expect_runners(GROUP, &["qci-runner"]);
        let d = dir.display();
        let command = match runner {
            Some(command) => command,
            None => {
                // Where the dev VM's user can read them.
                let bin = dir.join("bin");
                std::fs::create_dir_all(&bin).unwrap();
                std::fs::copy(act(), bin.join("act")).unwrap();
                std::fs::copy(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/actions_support/runner.py"),
                    bin.join("runner.py"),
                )
                .unwrap();
                format!(
                    "exec /usr/bin/python3 {d}/bin/runner.py --jitconfig \\\"$QCI_JITCONFIG\\\" --act {d}/bin/act"
                )
            }
        };
        let listener = support::listener();
        let port = listener.local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        for (name, text) in [
            ("webhook-secret", SECRET),
            ("admin-token", "op-token"),
            ("github-token", TOKEN),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
            std::fs::set_permissions(
                dir.join(name),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
        }
        let auth = if app {
            format!(
                "[server.github_app]\napp_id = {}\nprivate_key = {{ file = \"{}\" }}\n",
                fake_github::APP_ID,
                key.display()
            )
        } else {
            format!("github_token = {{ file = \"{d}/github-token\" }}\n")
        };
        let mut pool = String::new();
        for (name, qubes) in machines {
            pool.push_str(&format!(
                "[[pool.machines]]\nname = \"{name}\"\nqubes = \"{qubes}\"\nbackend = \"local\"\npath = \"{d}/{name}\"\n"
            ));
        }
        let config = format!(
            "[pool]\nstate_dir = \"{d}/state\"\nhost_id = \"e2e\"\nboot_timeout = \"2m\"\n{pool}\
             [server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n\
             github_api_url = \"{}\"\n\
             webhook_secret = {{ file = \"{d}/webhook-secret\" }}\n\
             admin_token = {{ file = \"{d}/admin-token\" }}\njob_timeout = \"5m\"\n\
             {auth}\
             [server.actions]\nlabels = {{ \"qubes-4.2\" = \"4.2\", \"qubes-4.3\" = \"4.3\" }}\n\
             runner_group_id = {GROUP}\nextra_labels = [\"qci-runner\"]\npickup_timeout = \"{pickup}\"\n\
             command = \"{command}\"\n{actions}\
             [[server.repos]]\nslug = \"{REPO}\"\nclone_url = \"{d}/nowhere\"\n",
            github.base,
        );
        std::fs::write(dir.join("host.toml"), config).unwrap();
        // Each machine made once (qci installed, first snapshot) before
        // anything is timed: what a host's machines are before jobs come.
        let out = qci()
            .args(["pool", "--config"])
            .arg(dir.join("host.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut host = Self {
            _area: area,
            dir,
            base: String::new(),
            github,
            child: None,
            app,
            qci,
        };
        host.spawn();
        host
    }

    /// Starts `qci serve` on a new port, GitHub's hook pointing at it.
    pub fn spawn(&mut self) {
        let listener = support::listener();
        let port = listener.local_addr().unwrap().port();
        let config = std::fs::read_to_string(self.dir.join("host.toml")).unwrap();
        let config: String = config
            .lines()
            .map(|l| {
                if l.starts_with("listen = ") {
                    format!("listen = \"127.0.0.1:{port}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(self.dir.join("host.toml"), config).unwrap();
        self.base = format!("http://127.0.0.1:{port}");
        let mut serve = (self.qci)();
        serve
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("host.toml"));
        let mut child = support::socket_activated(&serve, &listener)
            .stdout(Stdio::piped())
            .stderr(if self.app {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("qci serve: listening on"), "{line:?}");
        self.github
            .hook_to(&format!("{}/webhook", self.base), SECRET);
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        support::signal(child.id() as i32, "KILL");
        child.wait().unwrap();
    }

    pub fn power(&self, machine: &str) -> String {
        std::fs::read_to_string(self.dir.join(machine).join("control.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["power"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The jobs waiting in the pool's FIFO.
    pub fn waiting(&self) -> Vec<String> {
        let db = rusqlite::Connection::open(self.dir.join("state/pool.sqlite")).unwrap();
        let mut q = db.prepare("SELECT job FROM waiters ORDER BY seq").unwrap();
        q.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    pub fn leases(&self) -> i64 {
        rusqlite::Connection::open(self.dir.join("state/pool.sqlite"))
            .unwrap()
            .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
            .unwrap()
    }

    /// The machine powered off and its lease gone.
    pub fn wait_off_and_free(&self, machine: &str, within: Duration) {
        wait_for(&format!("{machine} off and free"), within, || {
            self.power(machine) == "off" && self.leases() == 0
        });
    }

    /// Polls the machine's power until it is on: when it started.
    pub fn wait_on(&self, machine: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.power(machine) == "on" {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{machine} never started");
    }

    pub fn job(&self, id: u64) -> fake_github::ActionsJob {
        self.github
            .actions_jobs()
            .into_iter()
            .find(|j| j.id == id)
            .unwrap()
    }

    pub fn wait_result(&self, id: u64, within: Duration) -> (String, String) {
        wait_for(&format!("job {id}'s result"), within, || {
            self.job(id).result.is_some()
        });
        self.job(id).result.unwrap()
    }

    pub fn server_counts(&self) -> (i64, i64) {
        let db = rusqlite::Connection::open(self.dir.join("state/server.sqlite")).unwrap();
        let n = |t: &str| -> i64 {
            db.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        (n("deliveries"), n("triggers"))
    }

    pub fn outcome(&self, delivery: &str) -> String {
        let db = rusqlite::Connection::open(self.dir.join("state/server.sqlite")).unwrap();
        db.query_row(
            "SELECT outcome FROM deliveries WHERE id = ?1",
            [delivery],
            |r| r.get(0),
        )
        .unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            support::signal(child.id() as i32, "TERM");
            let _ = child.wait();
        }
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let machine = entry.path().join("machine");
            if machine.is_dir() {
                qci_core::process::kill_marked("QCI_EMU_MACHINE", &machine.to_string_lossy());
            }
        }
    }
}
