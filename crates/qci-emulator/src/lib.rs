//! An emulated Qubes machine: the qrexec policy engine and the qrexec tools,
//! so the production binaries run unchanged on a laptop.
//!
//! dom0 and VMs are directories, and the qrexec tools (`qrexec-client-vm`,
//! `qvm-run`, `qrexec-client`) are re-implemented to follow Qubes's rules
//! (reference §3 to §9). The production binaries call the tools by name; on an
//! emulated machine those names lead here.
//!
//! Nothing here runs in a real dom0 or dev VM: only the host side (`qci`,
//! `qci-pool`'s local backend), the end-to-end tests and the fuzzers link it.
//! The policy engine ([`policy`]) exists for the emulator: it decides the
//! emulated machine's calls, and no real policy check uses it. What the
//! production binaries share with it is `qci-qrexec`, the qrexec boundary as
//! seen by a service and a caller (its exit codes included).
//!
//! Layout of a machine directory:
//!
//! ```text
//! MACHINE/machine.toml                the domains' user ([user]); qubes other than dom0: type and tags
//! MACHINE/bin/                        the multi-call binary behind the tools
//! MACHINE/DOMAIN/etc/qubes-rpc/       service files (also run/qubes-rpc, usr/local/etc/qubes-rpc)
//! MACHINE/DOMAIN/etc/environment      KEY=VALUE lines every process of the domain gets
//! MACHINE/DOMAIN/usr/bin/             the domain's programs, first on its PATH
//! MACHINE/DOMAIN/home/user/           $HOME (a VM service's working directory)
//! MACHINE/dom0/etc/qubes/policy.d/    qrexec policy (also run/qubes/policy.d)
//! MACHINE/dom0/run/qubes/             /run/qubes: a dom0 service's working directory
//! MACHINE/dom0/var/log/qubes/         qrexec.SOURCE.log: dom0 services' stderr
//! MACHINE/VM/var/log/qrexec.log       a VM service's stderr copy (Qubes sends it to syslog)
//! ```
//!
//! Which domain a process runs in is carried in `QCI_EMU_MACHINE` and
//! `QCI_EMU_DOMAIN`, which the emulator sets for every process it starts.
//!
//! Emulated as Qubes does it:
//! - policy, service lookup, arguments, environment, exit codes and where
//!   stderr goes (reference §3 to §9);
//! - who runs what: no domain's process runs as root. Run as root, the
//!   emulator becomes an unprivileged user ([`DomainUser`]: the sudo caller,
//!   else `nobody`) before anything runs in a domain; run as anyone else,
//!   everything runs as that user. What a domain's processes write (`$HOME`,
//!   the qrexec logs, dom0's `/run/qubes`, qci's directories in dom0) is
//!   made for that user at install time, and nothing else is theirs;
//! - dom0 services run with umask 0077 and cwd `/run/qubes`, as under
//!   `qrexec-daemon`; VM services with a login shell's umask 0022 and PATH
//!   (Debian's `/etc/profile`), cwd `$HOME`.
//!
//! Not emulated:
//! - isolation: domains share the host's file system, kernel and process
//!   table, and all run as the same user. A domain can read another's files
//!   and signal its processes; dom0's processes see the host's tools.
//! - a process of a call that its caller gave up on (a timeout) is the
//!   caller's descendant here, so dom0's end-of-job sweep stops a VM service
//!   dom0 abandoned; in Qubes it runs on in the VM.
//! - disposables, `ask`, GUI sessions, rpc-config, and the login shell
//!   itself (`sh -l` would read the host's `/etc/profile`, not the VM's:
//!   its PATH and umask are set directly instead).
//! - the caller leaving: a service whose caller exits is not stopped.

mod layout;
pub mod policy;
mod service;
pub mod tools;

pub use layout::{DomainUser, Machine, MachineError, QubeSpec};
pub use service::{CallOutcome, Caller};

/// Names of the environment variables that place a process in a domain.
pub const ENV_MACHINE: &str = "QCI_EMU_MACHINE";
pub const ENV_DOMAIN: &str = "QCI_EMU_DOMAIN";
/// The administrative domain's name.
pub const DOM0: &str = "dom0";
