//! The emulated Qubes machine: dom0 and VMs as directories, and the qrexec
//! tools (`qrexec-client-vm`, `qvm-run`, `qrexec-client`) re-implemented to
//! follow Qubes's rules (reference §3 to §9). The production binaries call the
//! tools by name; on an emulated machine those names lead here.
//!
//! Layout of a machine directory:
//!
//! ```text
//! MACHINE/machine.toml                qubes other than dom0: type and tags
//! MACHINE/bin/                        the multi-call binary behind the tools
//! MACHINE/DOMAIN/etc/qubes-rpc/       service files (also run/qubes-rpc, usr/local/etc/qubes-rpc)
//! MACHINE/DOMAIN/etc/environment      KEY=VALUE lines every process of the domain gets
//! MACHINE/DOMAIN/usr/bin/             the domain's programs, first on its PATH
//! MACHINE/DOMAIN/home/user/           $HOME (a VM service's working directory)
//! MACHINE/dom0/etc/qubes/policy.d/    qrexec policy (also run/qubes/policy.d)
//! MACHINE/dom0/var/log/qubes/         qrexec.SOURCE.log: dom0 services' stderr
//! MACHINE/VM/var/log/qrexec.log       a VM service's stderr copy (Qubes sends it to syslog)
//! ```
//!
//! Which domain a process runs in is carried in `QCI_EMU_MACHINE` and
//! `QCI_EMU_DOMAIN`, which the emulator sets for every process it starts.
//! What is not emulated: isolation (domains share the host's file system and
//! user), disposables, `ask`, GUI sessions and a login shell (`sh -l` would
//! read the host's `/etc/profile`, not the VM's).

mod layout;
mod service;
pub mod tools;

pub use layout::{Machine, MachineError, QubeSpec};
pub use service::{CallOutcome, Caller};

/// Names of the environment variables that place a process in a domain.
pub const ENV_MACHINE: &str = "QCI_EMU_MACHINE";
pub const ENV_DOMAIN: &str = "QCI_EMU_DOMAIN";
/// The administrative domain's name.
pub const DOM0: &str = "dom0";
