//! Shared by the pool's end-to-end tests: a host (HOST.toml and its state
//! directory), a repository to run, and the hypervisors the tests start
//! themselves on temporary sockets and ports (libvirtd with its test
//! driver, the govmomi simulator), stopped by pid.

#![expect(dead_code, reason = "each test binary uses part of the shared support")]

use crate::support::{bin_dir, git, qci};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A host: its config file, state directory and machines under one
/// temporary directory.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub pool_keys: String,
    pub machines: Vec<String>,
}

impl Host {
    /// Open to everyone (0755), what is written in it readable (umask
    /// 0022): run as root, the machines' domains run as an unprivileged
    /// user who must read the repositories (see `support::Scratch`).
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the host's directory");
        Self {
            dir,
            pool_keys: "boot_timeout = \"30s\"\ncall_timeout = \"20s\"\n".into(),
            machines: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// A `local` machine's directory.
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.path("machines").join(name)
    }

    /// Adds a `local` machine.
    pub fn local(&mut self, name: &str, qubes: &str) -> &mut Self {
        let entry = format!(
            "name = \"{name}\"\nqubes = \"{qubes}\"\nbackend = \"local\"\npath = {:?}\n",
            self.machine_dir(name)
        );
        self.machines.push(entry);
        self
    }

    /// Adds a machine entry written out in full.
    pub fn machine(&mut self, toml: &str) -> &mut Self {
        self.machines.push(toml.to_owned());
        self
    }

    pub fn config(&self) -> PathBuf {
        let path = self.path("host.toml");
        let mut text = format!(
            "[pool]\nhost_id = \"test-host\"\nstate_dir = {:?}\n{}\n",
            self.state(),
            self.pool_keys
        );
        for m in &self.machines {
            text.push_str("[[pool.machines]]\n");
            text.push_str(m);
            text.push('\n');
        }
        // Written only when it changed, and atomically: concurrent `qci`
        // processes read it.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = self.path(&format!("host.toml.{n}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    }

    /// `qci ARGS --config HOST.toml`, not started.
    pub fn qci(&self, args: &[&str]) -> Command {
        let mut cmd = qci();
        cmd.args(args).arg("--config").arg(self.config());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.qci(args).output().expect("run qci")
    }

    /// `qci run --machine|--qubes ... --repo REPO --commit SHA`, to its end.
    pub fn run_job(&self, target: &[&str], repo: &Repo) -> Output {
        let mut args = vec!["run"];
        args.extend_from_slice(target);
        args.extend(["--repo", repo.url(), "--commit", &repo.sha]);
        self.run(&args)
    }

    /// The same, in the background, output piped.
    pub fn spawn_job(&self, target: &[&str], repo: &Repo, job: &str) -> Child {
        let mut args = vec!["run"];
        args.extend_from_slice(target);
        args.extend(["--repo", repo.url(), "--commit", &repo.sha, "--job", job]);
        self.qci(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qci run")
    }

    pub fn host_log(&self, job: &str) -> String {
        std::fs::read_to_string(self.state().join("logs").join(format!("{job}.log")))
            .unwrap_or_default()
    }

    /// The statuses the host keeps for `job` (the dev VM's sink, copied out,
    /// and what the host recorded itself).
    pub fn statuses(&self, job: &str) -> Vec<(String, String)> {
        crate::support::states(
            &self
                .state()
                .join("logs")
                .join(format!("{job}.status.jsonl")),
        )
    }

    /// A local machine's control file, as JSON.
    pub fn control(&self, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.machine_dir(name).join("control.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A local machine's snapshot names, oldest first.
    pub fn snapshot_names(&self, name: &str) -> Vec<String> {
        self.control(name)["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A repository whose one step prints `started`, then waits until the
    /// file `release` exists (the test creates it to let the job end).
    pub fn held_repo(&self, release: &Path) -> Repo {
        Repo::new(
            self,
            "held",
            &format!("echo started; {}", crate::support::hold_until(release)),
        )
    }

    /// Starts `job` of a [`Host::held_repo`] on `target` and returns once
    /// its step runs.
    pub fn start_held(&self, target: &[&str], repo: &Repo, job: &str) -> Child {
        let child = self.spawn_job(target, repo, job);
        crate::support::wait_for("the job to run", Duration::from_secs(60), || {
            self.host_log(job).contains("[step] started")
        });
        child
    }

    /// The lease interval log, oldest first.
    pub fn lease_log(&self) -> Vec<qci_pool::lease::LeaseInterval> {
        qci_pool::lease::LeaseStore::open(&self.state(), "test-host")
            .and_then(|s| s.lease_log())
            .expect("the lease log")
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The job id from `qci run`'s closing line `qci: job JOB: STATE (...) on M`.
pub fn job_of(o: &Output) -> String {
    crate::support::job_id(&stdout(o))
}

/// A git repository whose `.qci.toml` has one step.
pub struct Repo {
    pub dir: PathBuf,
    pub sha: String,
    url: String,
}

impl Repo {
    pub fn new(host: &Host, name: &str, command: &str) -> Self {
        let dir = host.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let toml =
            format!("[[steps]]\nname = \"step\"\ncommand = '''{command}'''\ntimeout = \"5m\"\n");
        std::fs::write(dir.join(".qci.toml"), toml).unwrap();
        git(&dir, &["init", "-q"]);
        git(&dir, &["add", "."]);
        git(&dir, &["commit", "-qm", "ci"]);
        let sha = git(&dir, &["rev-parse", "HEAD"]);
        let url = dir.to_string_lossy().into_owned();
        Self { dir, sha, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Whether a heavy test dependency is there. Under `CI=true` a missing one
/// fails the test (CI must run everything); elsewhere the test is skipped
/// with a note.
pub fn available(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let how = "run ./scripts/setup-hypervisors (./scripts/test-all does)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing under CI=true: {how}");
    }
    eprintln!("SKIPPED: {what} is missing; {how}");
    false
}

/// libvirtd with only its test driver, on a socket in a temporary
/// directory, and one connection held open for the test's whole life: the
/// test driver's state lives only while a connection does, so without it
/// a domain defined by one `virsh` is gone for the next ("failed to get
/// domain"). [`Libvirtd::start`] returns only once that connection is open.
pub struct Libvirtd {
    dir: tempfile::TempDir,
    daemon: Child,
    holder: Holder,
}

/// An interactive `virsh` connected to the daemon, waiting for commands
/// on a pipe that stays open (its stdout too: it writes a prompt).
struct Holder {
    child: Child,
    _stdin: std::process::ChildStdin,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Holder {
    /// Starts it and waits until it has printed its connection's URI, which
    /// it can only do once connected. Keepalive is off on its side (`-k 0`)
    /// and on the daemon's, so a starved machine cannot drop it.
    fn connect(uri: &str) -> Result<Self, String> {
        use std::io::Write;
        let mut child = Command::new("virsh")
            .args(["-k", "0", "-c", uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the holding virsh");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"uri\n").expect("ask the holding virsh");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let connected = loop {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break false,
                    Ok(_) if line.contains("test+unix://") => break true,
                    Ok(_) => {}
                }
            };
            let _ = tx.send((connected, stdout));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((true, stdout)) => Ok(Self {
                child,
                _stdin: stdin,
                _stdout: stdout,
            }),
            answer => {
                drop(stdin);
                let _ = qci_core::process::wait_or_kill(&mut child, Duration::from_secs(5));
                Err(match answer {
                    Ok(_) => format!("the holding virsh could not connect to {uri}"),
                    Err(_) => format!("the holding virsh did not connect to {uri} within 60s"),
                })
            }
        }
    }
}

impl Libvirtd {
    pub fn start() -> Option<Self> {
        if !available(
            "libvirtd and virsh",
            Path::new("/usr/sbin/libvirtd").exists() && which("virsh"),
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let drivers = dir.path().join("drivers");
        std::fs::create_dir_all(&sock).unwrap();
        std::fs::create_dir_all(&drivers).unwrap();
        let conf = dir.path().join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = {:?}\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 keepalive_interval = -1\n",
                sock
            ),
        )
        .unwrap();
        let daemon = Command::new("/usr/sbin/libvirtd")
            .arg("-f")
            .arg(&conf)
            // Its own pid file: root's default one would stop a second daemon.
            .arg("-p")
            .arg(dir.path().join("libvirtd.pid"))
            .env("LIBVIRT_DRIVER_DIR", &drivers)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("libvirtd.log")).unwrap())
            .spawn()
            .expect("start libvirtd");
        let socket = sock.join("libvirt-sock");
        crate::support::wait_for("libvirtd's socket", Duration::from_secs(30), || {
            socket.exists()
        });
        let uri = format!("test+unix:///default?socket={}", socket.display());
        // The socket may exist a moment before the daemon accepts on it.
        let end = std::time::Instant::now() + Duration::from_secs(60);
        let holder = loop {
            match Holder::connect(&uri) {
                Ok(h) => break h,
                Err(e) if std::time::Instant::now() > end => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        Some(Self {
            dir,
            daemon,
            holder,
        })
    }

    pub fn uri(&self) -> String {
        format!("test+unix:///default?socket={}", self.socket().display())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock/libvirt-sock")
    }

    /// `virsh ARGS`; its trimmed stdout, failing the test on an error.
    pub fn virsh(&self, args: &[&str]) -> String {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri()])
            .args(args)
            .output()
            .expect("run virsh");
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Defines a test-driver domain, boots it, and snapshots it as `clean`.
    pub fn domain(&self, name: &str) {
        let xml = self.dir.path().join(format!("{name}.xml"));
        std::fs::write(
            &xml,
            format!("<domain type='test'><name>{name}</name><memory>1048576</memory><os><type>hvm</type></os></domain>"),
        )
        .unwrap();
        self.virsh(&["define", &xml.to_string_lossy()]);
        self.virsh(&["start", name]);
        self.virsh(&["snapshot-create-as", name, "clean"]);
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for child in [&mut self.holder.child, &mut self.daemon] {
            crate::support::signal(child.id() as i32, "TERM");
            let _ = qci_core::process::wait_or_kill(child, Duration::from_secs(10));
        }
    }
}

/// The govmomi vCenter simulator (our launcher, built by
/// scripts/setup-hypervisors), on a free loopback port.
pub struct Vcsim {
    child: Child,
    /// `http://127.0.0.1:PORT/sdk`
    pub url: String,
    pub credentials: String,
}

impl Vcsim {
    pub fn start() -> Option<Self> {
        // scripts/setup-hypervisors builds it into the target dir
        // (CARGO_TARGET_DIR), which holds this test's own binaries too.
        let launcher = crate::support::target_dir().join("vcsim/qci-vcsim");
        if !available(
            &format!("the govmomi simulator ({})", launcher.display()),
            launcher.is_file(),
        ) {
            return None;
        }
        let mut child = Command::new(&launcher)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the simulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the simulator's URL");
        // http://user:pass@127.0.0.1:PORT/sdk
        let (scheme, rest) = line.trim().split_once("://").expect("a URL");
        let (creds, hostpath) = rest.split_once('@').expect("credentials in the URL");
        Some(Self {
            child,
            url: format!("{scheme}://{hostpath}"),
            credentials: creds.to_owned(),
        })
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        crate::support::signal(self.child.id() as i32, "TERM");
        let _ = qci_core::process::wait_or_kill(&mut self.child, Duration::from_secs(10));
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Keeps `bin_dir` referenced for tests that only need the binaries built.
pub fn binaries() -> PathBuf {
    bin_dir()
}
