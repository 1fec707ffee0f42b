//! The machine directory: which qubes exist, where each domain's files are,
//! and the environment a process in a domain starts with.

use crate::policy::{Qube, System};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{DOM0, ENV_DOMAIN, ENV_MACHINE};

const MANIFEST: &str = "machine.toml";

/// An emulated Qubes machine rooted at a directory.
#[derive(Debug, Clone)]
pub struct Machine {
    root: PathBuf,
    manifest: Manifest,
}

/// A qube other than dom0, as recorded in `machine.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QubeSpec {
    #[serde(rename = "type", default = "default_type")]
    pub klass: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_type() -> String {
    "AppVM".to_owned()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    qubes: BTreeMap<String, QubeSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an emulated machine: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("invalid qube name {0:?}")]
    BadName(String),
    #[error("no qube named {0:?} on this machine")]
    NoSuchQube(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MachineError + '_ {
    move |source| MachineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Qube names as qvm-create accepts them: a letter, then letters, digits, `_-`.
fn valid_qube_name(name: &str) -> bool {
    let mut b = name.bytes();
    name.len() <= 31
        && matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        && name != DOM0
}

impl Machine {
    /// Opens the machine at `root`, or creates it when there is none, so that
    /// it has `qubes` as given: missing ones are added and changed ones
    /// rewritten (installing again refreshes a machine); other qubes stay.
    pub fn create_or_open(
        root: &Path,
        qubes: &BTreeMap<String, QubeSpec>,
    ) -> Result<Self, MachineError> {
        let mut machine = match Self::open(root) {
            Ok(m) => m,
            Err(MachineError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                std::fs::create_dir_all(root).map_err(io_err(root))?;
                Self {
                    root: std::path::absolute(root).map_err(io_err(root))?,
                    manifest: Manifest::default(),
                }
            }
            Err(e) => return Err(e),
        };
        let mut changed = false;
        for (name, spec) in qubes {
            if !valid_qube_name(name) {
                return Err(MachineError::BadName(name.clone()));
            }
            if machine.manifest.qubes.get(name) != Some(spec) {
                machine.manifest.qubes.insert(name.clone(), spec.clone());
                changed = true;
            }
        }
        if changed || !root.join(MANIFEST).exists() {
            let path = machine.root.join(MANIFEST);
            let text = toml::to_string(&machine.manifest).map_err(|e| MachineError::Manifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            std::fs::write(&path, text).map_err(io_err(&path))?;
        }
        for name in machine.domains() {
            machine.make_domain_dirs(&name)?;
        }
        Ok(machine)
    }

    pub fn open(root: &Path) -> Result<Self, MachineError> {
        let root = std::path::absolute(root).map_err(io_err(root))?;
        let path = root.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| MachineError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(bad) = manifest.qubes.keys().find(|n| !valid_qube_name(n)) {
            return Err(MachineError::BadName(bad.clone()));
        }
        Ok(Self { root, manifest })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// dom0 first, then the VMs by name.
    pub fn domains(&self) -> Vec<String> {
        std::iter::once(DOM0.to_owned())
            .chain(self.manifest.qubes.keys().cloned())
            .collect()
    }

    pub fn exists(&self, name: &str) -> bool {
        name == DOM0 || self.manifest.qubes.contains_key(name)
    }

    /// The directory standing for the domain's `/`.
    pub fn domain_root(&self, name: &str) -> Result<PathBuf, MachineError> {
        if !self.exists(name) {
            return Err(MachineError::NoSuchQube(name.to_owned()));
        }
        Ok(self.root.join(name))
    }

    /// `$HOME` of the domain's user.
    pub fn home(&self, name: &str) -> Result<PathBuf, MachineError> {
        Ok(self.domain_root(name)?.join("home/user"))
    }

    /// Where the domain's own programs go; first on its PATH.
    pub fn bin_dir(&self, name: &str) -> Result<PathBuf, MachineError> {
        Ok(self.domain_root(name)?.join("usr/bin"))
    }

    /// The qubes as the policy engine sees them.
    pub fn system(&self) -> System {
        let dom0 = Qube {
            name: DOM0.to_owned(),
            klass: "AdminVM".to_owned(),
            tags: Vec::new(),
            default_dispvm: None,
            template_for_dispvms: false,
        };
        let vms = self.manifest.qubes.iter().map(|(name, spec)| Qube {
            name: name.clone(),
            klass: spec.klass.clone(),
            tags: spec.tags.clone(),
            default_dispvm: None,
            template_for_dispvms: false,
        });
        System {
            qubes: std::iter::once(dom0).chain(vms).collect(),
        }
    }

    fn make_domain_dirs(&self, name: &str) -> Result<(), MachineError> {
        let root = self.domain_root(name)?;
        let mut dirs = vec![
            "etc/qubes-rpc",
            "usr/bin",
            "home/user",
            "var/log",
            "var/lib",
        ];
        if name == DOM0 {
            dirs.extend(["etc/qubes/policy.d", "var/log/qubes", "var/run/qubes"]);
        }
        for d in dirs {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(())
    }

    /// The environment a process of `domain` starts with: a clean login-like
    /// set (as PAM gives a VM service), the domain's `etc/environment`, and
    /// the variables that tell the emulated tools where they are. Nothing of
    /// the caller's environment leaks across, as nothing does in Qubes.
    pub fn domain_env(&self, domain: &str) -> Result<Vec<(OsString, OsString)>, MachineError> {
        let root = self.domain_root(domain)?;
        let home = self.home(domain)?;
        let mut path = OsString::from(self.bin_dir(domain)?);
        path.push(":/usr/local/bin:/usr/bin:/bin");
        let mut env: BTreeMap<OsString, OsString> = [
            ("HOME", home.into_os_string()),
            ("USER", "user".into()),
            ("LOGNAME", "user".into()),
            ("SHELL", "/bin/sh".into()),
            ("LANG", "C.UTF-8".into()),
            ("PATH", path),
            (ENV_MACHINE, self.root.clone().into_os_string()),
            (ENV_DOMAIN, domain.into()),
        ]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), v))
        .collect();
        let env_file = root.join("etc/environment");
        match std::fs::read_to_string(&env_file) {
            Ok(text) => {
                for line in text.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let Some((k, v)) = line.split_once('=') else {
                        return Err(MachineError::Manifest {
                            path: env_file.clone(),
                            reason: format!("not KEY=VALUE: {line:?}"),
                        });
                    };
                    if k == ENV_MACHINE || k == ENV_DOMAIN || k.starts_with("QREXEC") {
                        continue;
                    }
                    env.insert(k.into(), v.into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&env_file)(e)),
        }
        Ok(env.into_iter().collect())
    }

    /// Reads which machine and domain this process runs in, as the emulated
    /// tools must.
    pub fn from_process_env() -> Result<(Self, String), MachineError> {
        let root = std::env::var_os(ENV_MACHINE).ok_or_else(|| MachineError::Manifest {
            path: PathBuf::new(),
            reason: format!("{ENV_MACHINE} is not set: not running on an emulated machine"),
        })?;
        let machine = Self::open(Path::new(&root))?;
        let domain = std::env::var(ENV_DOMAIN).map_err(|_| MachineError::Manifest {
            path: machine.root.clone(),
            reason: format!("{ENV_DOMAIN} is not set"),
        })?;
        if !machine.exists(&domain) {
            return Err(MachineError::NoSuchQube(domain));
        }
        Ok((machine, domain))
    }
}
