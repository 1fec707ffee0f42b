//! Driving a real `salt-call --local` over qci's Salt tree: the release
//! bundle built once per test binary and unpacked like `/srv/salt`, and a
//! minion of its own per call (configuration, pillar, cache), so nothing
//! reads or writes `/etc/salt` or `/var/cache/salt`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `salt-call` from `QCI_SALT_CALL` (set by `scripts/setup-salt` in
/// test-all), else the one `scripts/setup-salt --check` finds installed
/// completely (its own readiness check, so a half-finished install is never
/// used). `None` means skip the test, which a CI run (`CI=true`) never does:
/// it fails instead.
pub fn salt_call() -> Option<PathBuf> {
    let found = match std::env::var_os("QCI_SALT_CALL") {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => installed_salt_call(),
    };
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Salt is missing: run scripts/setup-salt (test-all does) or set QCI_SALT_CALL"
        );
        eprintln!("SKIPPED: no salt-call; run `export QCI_SALT_CALL=$(scripts/setup-salt)`");
    }
    found
}

fn installed_salt_call() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-salt");
    let out = Command::new(script).arg("--check").output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// What `scripts/bundle` printed and where the archive went.
pub struct Bundle {
    _dir: tempfile::TempDir,
    pub archive: PathBuf,
    pub stderr: String,
    /// The archive unpacked, as `/srv/salt` in dom0.
    pub srv_salt: PathBuf,
}

/// The bundle of the debug binaries (the release build is for users; it
/// packs the same way), built and unpacked once for all tests in a binary.
pub fn bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("qci.tar.gz");
        let out = run_bundle(&archive, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "scripts/bundle failed:\n{stderr}");
        let srv_salt = dir.path().join("srv/salt");
        std::fs::create_dir_all(&srv_salt).unwrap();
        run_ok(
            Command::new("tar")
                .arg("-xzf")
                .arg(&archive)
                .arg("-C")
                .arg(&srv_salt),
        );
        Bundle {
            _dir: dir,
            archive,
            stderr,
            srv_salt,
        }
    })
}

/// `scripts/bundle --bin-dir target/debug EXTRA OUT`.
pub fn run_bundle(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(repo().join("scripts/bundle"))
        .arg("--bin-dir")
        .arg(crate::support::bin_dir())
        .args(extra)
        .arg(out)
        .output()
        .expect("run scripts/bundle")
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` and fails the test unless it succeeds; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `salt-call --local` minion: its id, its pillar and its own
/// configuration directory and cache, over the files in `file_root`.
pub struct Minion {
    salt_call: PathBuf,
    dir: tempfile::TempDir,
}

/// What one `salt-call` returned.
#[derive(Debug)]
pub struct SaltOutput {
    pub code: Option<i32>,
    /// `local` of `--out json`.
    pub data: Value,
    /// Salt's log.
    pub stderr: String,
}

impl Minion {
    /// A minion named `id` (as qubesctl names them: `dom0`, or the VM's
    /// name) whose pillar is `pillar`, given the Qubes way: a pillar file
    /// `qci.sls` that the pillar top assigns to every minion.
    pub fn new(salt_call: &Path, file_root: &Path, id: &str, pillar: &Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pillar_root = dir.path().join("pillar");
        std::fs::create_dir_all(&pillar_root).unwrap();
        // Salt finds the pillar's top file by `state_top` too: qci.top, as
        // /srv/pillar/qci.top is on Qubes (`top.enable qci pillar=true`).
        std::fs::write(pillar_root.join("qci.top"), "base:\n  '*':\n    - qci\n").unwrap();
        // JSON is YAML.
        std::fs::write(pillar_root.join("qci.sls"), pillar.to_string()).unwrap();
        let config = serde_json::json!({
            "id": id,
            "file_client": "local",
            "root_dir": dir.path().join("root"),
            "file_roots": {"base": [file_root]},
            "pillar_roots": {"base": [pillar_root]},
            "state_top": "qci.top",
        });
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(config_dir.join("minion"), config.to_string()).unwrap();
        Self {
            salt_call: salt_call.to_owned(),
            dir,
        }
    }

    /// `salt-call --local FUNCTION ARGS`, bounded by a timeout.
    pub fn call(&self, args: &[&str]) -> SaltOutput {
        let out = Command::new("timeout")
            .arg("300")
            .arg(&self.salt_call)
            .args(["--local", "--config-dir"])
            .arg(self.dir.path().join("config"))
            .args(["--out=json", "--retcode-passthrough", "--log-level=warning"])
            .args(args)
            .output()
            .expect("run salt-call");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let data = serde_json::from_str::<Value>(&stdout)
            .map(|mut v| v["local"].take())
            .unwrap_or_else(|e| panic!("salt-call {args:?}: {e}: {stdout}\n{stderr}"));
        SaltOutput {
            code: out.status.code(),
            data,
            stderr,
        }
    }

    /// The states of `sls` as rendered (`state.show_sls`), which must succeed.
    pub fn show_sls(&self, sls: &str) -> BTreeMap<String, RenderedState> {
        let out = self.call(&["state.show_sls", sls]);
        assert_eq!(out.code, Some(0), "show_sls {sls}: {out:#?}");
        rendered_states(&out.data)
    }

    /// Runs states (`state.apply SLS`, `state.highstate`) and returns their
    /// results by state id, which must all succeed.
    pub fn apply(&self, args: &[&str]) -> BTreeMap<String, Value> {
        let out = self.call(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:#?}");
        let results = out.data.as_object().expect("state results");
        results
            .iter()
            .map(|(key, result)| {
                assert_eq!(result["result"], true, "{key}: {result:#}");
                // `MODULE_|-ID_|-NAME_|-FUNCTION`
                let id = key.split("_|-").nth(1).unwrap_or(key);
                (id.to_owned(), result.clone())
            })
            .collect()
    }
}

/// One state as `state.show_sls` renders it.
#[derive(Debug, Clone)]
pub struct RenderedState {
    /// `file.managed`, `qvm.vm`...
    pub function: String,
    pub args: serde_json::Map<String, Value>,
}

impl RenderedState {
    pub fn str(&self, key: &str) -> &str {
        self.args
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string {key} in {self:#?}"))
    }
}

fn rendered_states(data: &Value) -> BTreeMap<String, RenderedState> {
    let states = data.as_object().expect("show_sls returns states by id");
    states
        .iter()
        .map(|(id, body)| {
            let (module, items) = body
                .as_object()
                .and_then(|b| b.iter().find(|(k, _)| !k.starts_with("__")))
                .expect("a state module");
            let mut function = String::new();
            let mut args = serde_json::Map::new();
            for item in items.as_array().expect("state items") {
                match item {
                    Value::String(f) => function = format!("{module}.{f}"),
                    Value::Object(kv) => args.extend(kv.clone()),
                    other => panic!("unexpected {other}"),
                }
            }
            args.remove("order");
            (id.clone(), RenderedState { function, args })
        })
        .collect()
}
