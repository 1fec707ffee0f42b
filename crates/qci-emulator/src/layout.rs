//! The machine directory: which qubes exist, where each domain's files are,
//! who its processes run as, and the environment they start with.

use crate::policy::{Qube, System};
use nix::unistd::{Gid, Uid, User};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{DOM0, ENV_DOMAIN, ENV_MACHINE};

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

/// The unprivileged user every process of every domain runs as, dom0's
/// included: no qube runs its services as root in Qubes, and dom0's
/// `qrexec-daemon` runs as dom0's login user. Recorded in `machine.toml`
/// (`[user]`) when the machine is made, so other tools (the Salt tests)
/// can give that user what it must own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl DomainUser {
    /// Run as root, the machine's processes switch to the user who called
    /// sudo (`SUDO_UID`, `SUDO_GID`), or else to `nobody`; run as anyone
    /// else, they stay that user.
    fn choose() -> Self {
        // The account's name, else what the environment says, else the uid.
        let name = |uid: Uid, var: &str| {
            User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .or_else(|| std::env::var(var).ok())
                .unwrap_or_else(|| uid.to_string())
        };
        let euid = Uid::effective();
        if !euid.is_root() {
            return Self {
                name: name(euid, "USER"),
                uid: euid.as_raw(),
                gid: Gid::effective().as_raw(),
            };
        }
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        if let (Some(uid), Some(gid)) = (var("SUDO_UID"), var("SUDO_GID"))
            && uid != 0
        {
            let name = name(Uid::from_raw(uid), "SUDO_USER");
            return Self { name, uid, gid };
        }
        match User::from_name("nobody").ok().flatten() {
            Some(u) => Self {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            },
            None => Self {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
            },
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<DomainUser>,
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
    #[error(
        "{user} (uid {uid}), who runs this machine's qubes, cannot reach {path}: \
         {blocked} is mode {mode:04o} and owned by uid {owner}. Let them through \
         (chmod o+x {blocked}), or run qci as a normal user or through sudo \
         (the qubes then run as you)"
    )]
    Unreachable {
        user: String,
        uid: u32,
        path: PathBuf,
        blocked: PathBuf,
        mode: u32,
        owner: u32,
    },
    #[error(
        "this machine's qubes run as {user} (uid {uid}, in machine.toml), not as uid {current}: \
         run qci as that user or as root, or use another state directory"
    )]
    WrongUser {
        user: String,
        uid: u32,
        current: u32,
    },
    #[error("cannot become {user}: {source}")]
    Privileges { user: String, source: nix::Error },
    #[error("a qrexec call must not be made as root: Machine::enter first")]
    AsRoot,
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
        if machine.manifest.user.is_none() {
            machine.manifest.user = Some(DomainUser::choose());
            changed = true;
        }
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

    /// Who the machine's processes run as.
    pub fn user(&self) -> DomainUser {
        self.manifest
            .user
            .clone()
            .unwrap_or_else(DomainUser::choose)
    }

    /// Makes this process one of the machine's: run as root, it becomes
    /// the machine's user for good (groups, gid, uid); otherwise it must be
    /// that user already. Then the machine must be reachable. Every entry
    /// into the machine (a local run, a call made by hand, an emulated tool)
    /// comes through here, so nothing in a domain runs as root and every
    /// file it makes belongs to the domain's user.
    pub fn enter(&self) -> Result<(), MachineError> {
        let user = self.user();
        let euid = Uid::effective();
        if euid.is_root() {
            let gid = Gid::from_raw(user.gid);
            let uid = Uid::from_raw(user.uid);
            nix::unistd::setgroups(&[gid])
                .and_then(|()| nix::unistd::setresgid(gid, gid, gid))
                .and_then(|()| nix::unistd::setresuid(uid, uid, uid))
                .map_err(|source| MachineError::Privileges {
                    user: user.name.clone(),
                    source,
                })?;
        } else if euid.as_raw() != user.uid {
            return Err(MachineError::WrongUser {
                user: user.name,
                uid: user.uid,
                current: euid.as_raw(),
            });
        }
        user.reaches(&self.root.join(MANIFEST))
    }

    /// Creates `path` (and its parents) for the domains' user: owned by
    /// them, with `mode`. Run as root, a tree that belongs to someone else
    /// (a machine made by an older qci) is handed over whole.
    pub fn user_dir(&self, path: &Path, mode: u32) -> Result<(), MachineError> {
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        if Uid::effective().is_root() {
            let user = self.user();
            let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
            if meta.uid() != user.uid || meta.gid() != user.gid {
                chown_tree(path, &user)?;
            }
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
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

    /// The domain's tree: system directories (root's when made as root,
    /// readable by all), and those its user writes: `$HOME`, and the logs
    /// the emulated qrexec writes for the caller (`var/log` in a VM,
    /// `var/log/qubes` in dom0), and dom0's `/run/qubes`.
    fn make_domain_dirs(&self, name: &str) -> Result<(), MachineError> {
        let root = self.domain_root(name)?;
        let (system, users): (&[&str], &[(&str, u32)]) = if name == DOM0 {
            (
                &[
                    "etc/qubes-rpc",
                    "etc/qubes/policy.d",
                    "usr/bin",
                    "var/log",
                    "var/lib",
                ],
                &[
                    ("home/user", 0o700),
                    ("var/log/qubes", 0o755),
                    ("run/qubes", 0o755),
                ],
            )
        } else {
            (
                &["etc/qubes-rpc", "usr/bin"],
                &[("home/user", 0o700), ("var/log", 0o755)],
            )
        };
        for d in system {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        for (d, mode) in users {
            self.user_dir(&root.join(d), *mode)?;
        }
        Ok(())
    }

    /// The environment a process of `domain` starts with: a clean login-like
    /// set (as PAM gives a VM service), the domain's `etc/environment`, and
    /// the variables that tell the emulated tools where they are. Nothing of
    /// the caller's environment leaks across, as nothing does in Qubes.
    ///
    /// PATH in a VM is what a login shell gives a service (`/bin/sh -lc`
    /// under the agent, Debian's `/etc/profile`), with the domain's own
    /// programs first, standing in for the VM's `/usr/bin` (the host's
    /// `/usr/local/bin` must not shadow them). In dom0 it is the domain's
    /// programs, then systemd's default, as qrexec-daemon has; the installer
    /// may extend it in `etc/environment`.
    pub fn domain_env(&self, domain: &str) -> Result<Vec<(OsString, OsString)>, MachineError> {
        let root = self.domain_root(domain)?;
        let home = self.home(domain)?;
        let mut path = OsString::from(self.bin_dir(domain)?);
        path.push(if domain == DOM0 {
            DOM0_PATH
        } else {
            LOGIN_PATH
        });
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

/// After the domain's own programs: Debian's login PATH for a user.
const LOGIN_PATH: &str = ":/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games";
/// After dom0's own programs: systemd's default PATH.
const DOM0_PATH: &str = ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";

impl DomainUser {
    /// Checks that this process (now this user) can reach `path`, and says
    /// which directory stops it when it cannot.
    pub fn reaches(&self, path: &Path) -> Result<(), MachineError> {
        let denied = |p: &Path| matches!(std::fs::metadata(p), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
        if !denied(path) {
            return Ok(());
        }
        // The last directory that can be reached on the way is the one
        // that does not let this user through.
        let mut blocked = PathBuf::from("/");
        for step in path
            .ancestors()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .skip(1)
        {
            if denied(step) {
                break;
            }
            blocked = step.to_owned();
        }
        let meta = std::fs::metadata(&blocked).map_err(io_err(&blocked))?;
        Err(MachineError::Unreachable {
            user: self.name.clone(),
            uid: self.uid,
            path: path.to_owned(),
            blocked,
            mode: meta.permissions().mode() & 0o7777,
            owner: meta.uid(),
        })
    }
}

/// Gives `top` and everything under it to `user`, without following links.
fn chown_tree(top: &Path, user: &DomainUser) -> Result<(), MachineError> {
    let (uid, gid) = (Some(user.uid), Some(user.gid));
    let mut pending = vec![top.to_owned()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::lchown(&path, uid, gid).map_err(io_err(&path))?;
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io_err(&path))? {
                pending.push(entry.map_err(io_err(&path))?.path());
            }
        }
    }
    Ok(())
}
