//! The pool's part of the host config file (`[pool]` in HOST.toml): where
//! the host keeps its state, how long things may take, and the machines.
//!
//! Credentials are never values here: a machine names a file or an
//! environment variable that holds them.

use qci_core::toml_file::{self, TomlFileError};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// HOST.toml as the pool reads it: its own table, and the server's left
/// alone (it is qci-server's business).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub pool: PoolConfig,
    #[serde(default)]
    pub server: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Names this host in lease markers on the hypervisor.
    #[serde(default = "default_host_id")]
    pub host_id: String,
    /// SQLite (leases, queue, runs) and the copied logs.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// From power-on until dom0 and the dev VM answer.
    #[serde(default = "d_boot", deserialize_with = "duration")]
    pub boot_timeout: Duration,
    /// How long a job waits for a free machine.
    #[serde(default = "d_queue", deserialize_with = "duration")]
    pub queue_timeout: Duration,
    /// The whole job once it runs, unless the caller gives its own.
    #[serde(default = "d_job", deserialize_with = "duration")]
    pub job_timeout: Duration,
    /// Between a clean shutdown request and forcing the machine off.
    #[serde(default = "d_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Bound on one call to the hypervisor or the guest channel.
    #[serde(default = "d_call", deserialize_with = "duration")]
    pub call_timeout: Duration,
    /// The largest artifact archive taken in from a job (bytes, 1 GiB by
    /// default): a larger one is not copied past this, and is refused.
    #[serde(default = "d_max_artifact_bytes")]
    pub max_artifact_bytes: u64,
    #[serde(default)]
    pub nightly: NightlyConfig,
    #[serde(default)]
    pub machines: Vec<MachineConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyConfig {
    /// Nightly snapshots kept per machine (`qci-YYYY-MM-DD`), newest first.
    #[serde(default = "d_keep")]
    pub keep: usize,
    /// Run in dom0 in order; any failure means no snapshot.
    #[serde(default = "d_update")]
    pub update_commands: Vec<Vec<String>>,
    /// qci's Salt states, applied after the updates. In these commands and
    /// the updates, `{dev_vm}` stands for the machine's dev VM.
    #[serde(default = "d_salt")]
    pub salt_commands: Vec<Vec<String>>,
    #[serde(default = "d_command", deserialize_with = "duration")]
    pub command_timeout: Duration,
}

impl Default for NightlyConfig {
    fn default() -> Self {
        Self {
            keep: d_keep(),
            update_commands: d_update(),
            salt_commands: d_salt(),
            command_timeout: d_command(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Local,
    Libvirt,
    Vmware,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Libvirt => "libvirt",
            Self::Vmware => "vmware",
        })
    }
}

/// How the host reaches dom0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dom0Access {
    /// An emulated machine's dom0 (the local backend, or `emulated_path`
    /// beside a hypervisor machine in tests).
    Emulated,
    /// The QEMU guest agent in dom0, through libvirt.
    Agent,
    /// vSphere Guest Operations.
    GuestOperations,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub name: String,
    /// The Qubes release on the machine, e.g. `4.2`.
    pub qubes: String,
    pub backend: BackendKind,
    #[serde(default = "d_dev_vm")]
    pub dev_vm: String,
    /// The clean snapshot jobs start from when no nightly one exists.
    #[serde(default = "d_snapshot")]
    pub snapshot: String,
    /// local: the machine's directory.
    pub path: Option<PathBuf>,
    /// libvirt: the connection URI, e.g. `qemu:///system`.
    pub uri: Option<String>,
    /// libvirt: the domain (default: the machine's name).
    pub domain: Option<String>,
    /// vmware: the SDK endpoint, e.g. `https://vcenter.example/sdk`.
    pub url: Option<String>,
    /// vmware: the VM's name (default: the machine's name).
    pub vm: Option<String>,
    /// vmware: a PEM file of the CA to trust beside the system's.
    pub ca_file: Option<PathBuf>,
    /// A file holding `USER:PASSWORD` for the hypervisor.
    pub credentials_file: Option<PathBuf>,
    /// An environment variable holding `USER:PASSWORD` for the hypervisor.
    pub credentials_env: Option<String>,
    /// How dom0 is reached; the backend's own way by default.
    pub dom0: Option<Dom0Access>,
    /// With `dom0 = "emulated"` beside a hypervisor: the emulated machine.
    pub emulated_path: Option<PathBuf>,
    /// Guest Operations: `USER:PASSWORD` of dom0's user, in a file...
    pub guest_credentials_file: Option<PathBuf>,
    /// ... or in an environment variable.
    pub guest_credentials_env: Option<String>,
    /// Where dom0's qci.Run writes `JOB.log`.
    #[serde(default = "d_log_dir")]
    pub dom0_log_dir: String,
    /// Where the host puts its files in dom0 for a moment.
    #[serde(default = "d_tmp_dir")]
    pub dom0_tmp_dir: String,
}

impl MachineConfig {
    /// How dom0 is reached, filled in from the backend.
    pub fn dom0_access(&self) -> Dom0Access {
        self.dom0.unwrap_or(match self.backend {
            BackendKind::Local => Dom0Access::Emulated,
            BackendKind::Libvirt => Dom0Access::Agent,
            BackendKind::Vmware => Dom0Access::GuestOperations,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] TomlFileError),
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: Invalid },
}

/// What [`PoolConfig::validate`] refuses, naming the machine and the key:
/// a rule of ours broken, with no error beneath it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Why [`Credentials::load`] found no credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials: {0}")]
    File(#[from] qci_core::secret::SecretError),
    #[error("environment variable {var} (credentials) is not set")]
    Unset {
        var: String,
        source: std::env::VarError,
    },
    #[error("no credentials configured")]
    None,
    #[error("credentials must be one line `USER:PASSWORD`")]
    Malformed,
}

/// Reads and checks HOST.toml. TOML errors name the line and the key.
pub fn load_host_file(path: &Path) -> Result<HostFile, ConfigError> {
    let host: HostFile = toml_file::read(path)?;
    host.pool
        .validate()
        .map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    Ok(host)
}

impl PoolConfig {
    /// What TOML cannot say: unique names, the keys each backend needs,
    /// names safe to put in a shell command. Errors name the machine and key.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut seen = std::collections::HashSet::new();
        if !valid_word(&self.host_id) {
            return Err(Invalid(format!(
                "[pool] host_id {:?}: use letters, digits, `.`, `_`, `-`",
                self.host_id
            )));
        }
        for (i, m) in self.machines.iter().enumerate() {
            let at = format!("[[pool.machines]] #{} ({:?})", i + 1, m.name);
            if !valid_word(&m.name) {
                return Err(Invalid(format!(
                    "{at}: key `name`: use letters, digits, `.`, `_`, `-`"
                )));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(Invalid(format!(
                    "{at}: key `name`: a machine of that name exists"
                )));
            }
            if !valid_word(&m.qubes) {
                return Err(Invalid(format!(
                    "{at}: key `qubes`: a version such as \"4.2\""
                )));
            }
            if !valid_word(&m.dev_vm) || m.dev_vm == "dom0" {
                return Err(Invalid(format!("{at}: key `dev_vm`: not a qube name")));
            }
            if !valid_word(&m.snapshot) {
                return Err(Invalid(format!(
                    "{at}: key `snapshot`: use letters, digits, `.`, `_`, `-`"
                )));
            }
            for (key, dir) in [
                ("dom0_log_dir", &m.dom0_log_dir),
                ("dom0_tmp_dir", &m.dom0_tmp_dir),
            ] {
                if !dir.starts_with('/') || dir.contains(['\'', '\n']) {
                    return Err(Invalid(format!(
                        "{at}: key `{key}`: an absolute path without quotes"
                    )));
                }
            }
            let need = |key: &str, present: bool| {
                if present {
                    Ok(())
                } else {
                    Err(Invalid(format!(
                        "{at}: key `{key}` is required for backend {}",
                        m.backend
                    )))
                }
            };
            match m.backend {
                BackendKind::Local => need("path", m.path.is_some())?,
                BackendKind::Libvirt => need("uri", m.uri.is_some())?,
                BackendKind::Vmware => {
                    need("url", m.url.is_some())?;
                    need(
                        "credentials_file` or `credentials_env",
                        m.credentials_file.is_some() || m.credentials_env.is_some(),
                    )?;
                }
            }
            match m.dom0_access() {
                Dom0Access::Emulated if m.backend != BackendKind::Local => {
                    need("emulated_path", m.emulated_path.is_some())?
                }
                Dom0Access::Agent if m.backend != BackendKind::Libvirt => {
                    return Err(Invalid(format!(
                        "{at}: key `dom0`: \"agent\" needs backend libvirt"
                    )));
                }
                Dom0Access::GuestOperations if m.backend != BackendKind::Vmware => {
                    return Err(Invalid(format!(
                        "{at}: key `dom0`: \"guest-operations\" needs backend vmware"
                    )));
                }
                Dom0Access::GuestOperations => need(
                    "guest_credentials_file` or `guest_credentials_env",
                    m.guest_credentials_file.is_some() || m.guest_credentials_env.is_some(),
                )?,
                _ => {}
            }
        }
        Ok(())
    }

    pub fn machine(&self, name: &str) -> Option<&MachineConfig> {
        self.machines.iter().find(|m| m.name == name)
    }
}

/// Names that go into SQL rows, shell words and file names as they are.
fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A user name and password for a hypervisor or a guest, read from where
/// the config points (never from the config itself).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

impl Credentials {
    /// `USER:PASSWORD` from `file` or from the environment variable `env`.
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Self, CredentialsError> {
        let text = match (file, env) {
            (Some(f), _) => qci_core::secret::read_secret(f)?,
            (None, Some(var)) => std::env::var(var).map_err(|source| CredentialsError::Unset {
                var: var.to_owned(),
                source,
            })?,
            (None, None) => return Err(CredentialsError::None),
        };
        let line = text.lines().next().unwrap_or_default();
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Self {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err(CredentialsError::Malformed),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    qci_core::pipeline::parse_duration(&s)
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a duration like 90s, 10m, 6h")))
}

fn default_host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| valid_word(h))
        .unwrap_or_else(|| "qci-host".into())
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("qci"),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/var/lib".into()))
            .join(".local/state/qci"),
    }
}

fn d_boot() -> Duration {
    Duration::from_secs(600)
}
fn d_queue() -> Duration {
    Duration::from_secs(3600)
}
fn d_job() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn d_grace() -> Duration {
    Duration::from_secs(120)
}
fn d_call() -> Duration {
    Duration::from_secs(60)
}
/// `max_artifact_bytes` unless the config says otherwise: 1 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;
fn d_max_artifact_bytes() -> u64 {
    DEFAULT_MAX_ARTIFACT_BYTES
}
fn d_command() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn d_keep() -> usize {
    3
}
fn d_dev_vm() -> String {
    "sd-dev".into()
}
fn d_snapshot() -> String {
    "clean".into()
}
fn d_log_dir() -> String {
    "/var/log/qci".into()
}
fn d_tmp_dir() -> String {
    "/tmp".into()
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| (*s).to_owned()).collect()
}

fn d_update() -> Vec<Vec<String>> {
    vec![
        words(&["sudo", "qubes-dom0-update", "-y"]),
        words(&[
            "sudo",
            "qubesctl",
            "--skip-dom0",
            "--templates",
            "state.sls",
            "update.qubes-vm",
        ]),
    ]
}

/// Stands for the machine's dev VM in nightly commands: one pool config
/// serves machines whose dev VMs have different names.
pub const DEV_VM: &str = "{dev_vm}";

/// qci's states (the `salt/` formula, enabled at install) in dom0, then in
/// the machine's dev VM.
fn d_salt() -> Vec<Vec<String>> {
    vec![
        words(&["sudo", "qubesctl", "--show-output", "state.highstate"]),
        words(&[
            "sudo",
            "qubesctl",
            "--skip-dom0",
            "--targets={dev_vm}",
            "--show-output",
            "state.highstate",
        ]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostFile, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("host.toml");
        std::fs::write(&p, text).unwrap();
        load_host_file(&p)
    }

    #[test]
    fn the_default_nightly_applies_qcis_states_in_dom0_and_then_in_the_dev_vm() {
        let salt = NightlyConfig::default().salt_commands;
        assert_eq!(
            salt[0].join(" "),
            "sudo qubesctl --show-output state.highstate"
        );
        assert_eq!(
            salt[1].join(" "),
            "sudo qubesctl --skip-dom0 --targets={dev_vm} --show-output state.highstate"
        );
    }

    #[test]
    fn a_full_pool_parses_with_defaults_and_the_server_table_is_left_alone() {
        let h = parse(
            "[pool]\nhost_id = \"rack-a\"\nboot_timeout = \"2m\"\n\
             [[pool.machines]]\nname = \"q42-1\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\nuri = \"qemu:///system\"\n\
             [[pool.machines]]\nname = \"emu\"\nqubes = \"4.2\"\nbackend = \"local\"\npath = \"/m\"\n\
             [server]\nlisten = \"127.0.0.1:8080\"\nanything = 1\n",
        )
        .unwrap();
        assert_eq!(h.pool.boot_timeout, Duration::from_secs(120));
        assert_eq!(h.pool.machines[0].dom0_access(), Dom0Access::Agent);
        assert_eq!(h.pool.machines[1].dev_vm, "sd-dev");
        assert_eq!(h.pool.nightly.keep, 3);
        assert!(h.server.is_some());
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = parse("[pool]\nhost_id = \"a\"\nboot_timeuot = \"2m\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("boot_timeuot"), "{e}");
        let e = parse("[pool]\nboot_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("soon"), "{e}");
        let e = parse(
            "[pool]\n[[pool.machines]]\nname = \"x\"\nqubes = \"4.2\"\nbackend = \"libvirt\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("key `uri`"), "{e}");
        let e = parse(
            "[pool]\n[[pool.machines]]\nname = \"x\"\nqubes = \"4.2\"\nbackend = \"vmware\"\nurl = \"https://v/sdk\"\npassword = \"p\"\n",
        )
        .unwrap_err().to_string();
        assert!(e.contains("unknown field `password`"), "{e}");
    }

    #[test]
    fn credentials_come_from_a_file_or_the_environment_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cred");
        std::fs::write(&f, "admin:pa:ss\n").unwrap();
        // Readable by others (the default umask's 0644): refused, with the fix.
        let e = Credentials::load(Some(&f), None).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 600 {}", f.display())), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::load(Some(&f), None).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("admin", "pa:ss"));
        assert!(!format!("{c:?}").contains("pa:ss"));
        let e = Credentials::load(None, Some("QCI_TEST_NO_SUCH_VAR"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("QCI_TEST_NO_SUCH_VAR"));
    }
}
