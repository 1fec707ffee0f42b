//! The Qubes 4.1+ `policy.d` policy engine.
//!
//! The emulated machine must refuse exactly the calls a real dom0 refuses, so
//! this follows `qrexec/policy/parser.py` (qubes-core-qrexec 4.4) rule for
//! rule, error message for error message; see `qrexec-reference.md`,
//! sections 1 and 2. Deliberate differences, all because the emulator has no
//! running qubes:
//!
//! - `ask` always denies (there is no GUI agent to ask).
//! - `autostart=no` is not checked against the target's power state; it is
//!   returned in [`Resolution::Allow`] for the caller to act on.
//! - A `@dispvm` target is resolved to `@dispvm:TEMPLATE`; creating the
//!   disposable is the caller's job.
//! - `uuid:UUID` names dom0 only for the all-zero UUID: [`Qube`] carries no
//!   UUID, so a call to any other `uuid:` target is treated like a call to a
//!   qube that does not exist (it becomes `@default`).
//! - Missing policy directories, and a missing legacy directory for
//!   `!compat-4.0`, count as empty instead of denying everything.
//!
//! Only the emulator (and the fuzzers) use it. No real policy check does: on
//! a Qubes machine, dom0's own `qrexec-policy-daemon` decides every call.

mod eval;
mod parse;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use parse::SyntaxError;
pub(crate) use parse::rpc_char;

/// A qube the policy can talk about. Only what rules can match on is kept:
/// the name, the class for `@type:`, the tags for `@tag:`, and the disposable
/// settings for `@dispvm` targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qube {
    pub name: String,
    /// `AppVM`, `AdminVM`, `DispVM`, `TemplateVM` or `StandaloneVM`.
    pub klass: String,
    pub tags: Vec<String>,
    /// The template a `@dispvm` call from this qube is started from.
    pub default_dispvm: Option<String>,
    /// Whether `@dispvm:THIS` may be used to start a disposable.
    pub template_for_dispvms: bool,
}

/// The qubes of one machine. dom0 must be listed (class `AdminVM`) so that it
/// is recognised as a call source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct System {
    pub qubes: Vec<Qube>,
}

impl System {
    /// The qube called `name`, if the machine has one.
    pub fn qube(&self, name: &str) -> Option<&Qube> {
        self.qubes.iter().find(|q| q.name == name)
    }
}

/// One call to decide, as `qrexec-daemon` hands it to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub service: &'a str,
    /// The argument without its `+`; `""` when the call had none. It is
    /// matched as `+ARGUMENT`, as the daemon always appends the `+`.
    pub argument: &'a str,
    /// The calling qube's name.
    pub source: &'a str,
    /// The target as the caller typed it: a qube name, `dom0`, `@adminvm`,
    /// `""`, `@default`, `@dispvm`, `@dispvm:VM` or `uuid:...`.
    pub target: &'a str,
}

/// A call the policy lets through. (`ask` never gets here: without a GUI agent
/// it denies.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Allow {
        /// The qube to connect to: a name, `dom0` for the admin qube, or
        /// `@dispvm:TEMPLATE` when a new disposable must be started from
        /// TEMPLATE.
        target: String,
        /// `user=` of the rule. Always `None` for dom0, where qrexec ignores it.
        user: Option<String>,
        /// `autostart=` of the rule (default yes): whether a halted target may
        /// be started for this call.
        autostart: bool,
        /// `notify=` of the rule (default no).
        notify: bool,
    },
}

/// A refused call. The reason is qrexec's own wording, so that logs read the
/// same as on a real machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    pub reason: String,
}

impl Denied {
    fn new(reason: impl Into<String>) -> Self {
        Denied {
            reason: reason.into(),
        }
    }
}

/// A policy that could not be loaded. qrexec denies every call then, and so
/// should the caller.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A line qrexec would refuse to parse.
    #[error("{}:{}: {}", file.display(), line, error)]
    Syntax {
        file: PathBuf,
        line: usize,
        #[source]
        error: SyntaxError,
    },
    /// A policy file or directory that exists but cannot be read.
    #[error("failed to load {}: {}", path.display(), source)]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A parsed policy: the rules of all files, in evaluation order.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<parse::Rule>,
    /// Set when qrexec would deny every call whatever the rules say (a badly
    /// named policy file).
    denied: Option<String>,
}

impl Policy {
    /// Loads a policy the way qrexec does, with `dirs` in qrexec's order
    /// (`/run/qubes/policy.d` first, then `/etc/qubes/policy.d`): a file
    /// shadows any later file of the same name, and all files are then read
    /// in name order. A badly named `*.policy` file yields a policy that denies
    /// every call, as in qrexec.
    ///
    /// `!compat-4.0` reads the legacy directory `D/../../qubes-rpc/policy`,
    /// where D is the **last** of `dirs` (the `/etc` one): for
    /// `/X/etc/qubes/policy.d` that is `/X/etc/qubes-rpc/policy`. Includes are
    /// resolved against the directory of the top-level file, as in qrexec.
    pub fn load_dirs(dirs: &[&Path]) -> Result<Policy, PolicyError> {
        let compat = dirs.last().map_or_else(PathBuf::new, |d| legacy_dir(d));
        parse::load_dirs(dirs, &compat).map(Policy::from_load)
    }

    /// Parses one policy file's text, e.g. for tests or a lint. `file` names
    /// it in errors and in deny reasons, and its directory anchors relative
    /// `!include` paths and the `!compat-4.0` legacy directory (see
    /// [`Policy::load_dirs`]).
    pub fn parse_str(text: &str, file: &Path) -> Result<Policy, PolicyError> {
        let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
        parse::load_text(text, file, &base, &legacy_dir(&base)).map(Policy::from_load)
    }

    /// Decides a call: the first rule matching service, argument, source and
    /// target wins, and no match denies.
    pub fn evaluate(&self, req: &Request, system: &System) -> Result<Resolution, Denied> {
        if let Some(reason) = &self.denied {
            return Err(Denied::new(reason.clone()));
        }
        eval::evaluate(&self.rules, req, system)
    }

    fn from_load(loaded: parse::Loaded) -> Policy {
        match loaded {
            parse::Loaded::Rules(rules) => Policy {
                rules,
                denied: None,
            },
            parse::Loaded::DenyAll(reason) => Policy {
                rules: Vec::new(),
                denied: Some(reason),
            },
        }
    }
}

/// `/X/etc/qubes/policy.d` -> `/X/etc/qubes-rpc/policy`, where Qubes keeps
/// the 4.0 policy.
fn legacy_dir(policy_d: &Path) -> PathBuf {
    match policy_d.parent().and_then(Path::parent) {
        Some(etc) => etc.join("qubes-rpc/policy"),
        None => policy_d.join("../../qubes-rpc/policy"),
    }
}
