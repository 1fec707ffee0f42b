//! Makes emulated Qubes machines and puts qci onto them exactly as it ships
//! to Qubes. [`bare_machine`] is Qubes itself (dom0, the VMs, the emulated
//! qrexec tools on their PATH, `qubes.VMShell`); [`install`] adds qci: the
//! service files from `qubes-rpc/`, the policy from `policy/`, the
//! binaries and dom0's settings. A bare machine can instead be installed
//! by Salt (`salt/`, with pillar `qci:root` set to a domain's directory).

use qci_emulator::{DOM0, Machine, MachineError, QubeSpec};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The files that ship to Qubes, compiled in so the installed copy is
/// always the one this qci was built with.
const DOM0_SERVICES: [(&str, &str); 1] = [(
    "qci.Run",
    include_str!("../../../../qubes-rpc/dom0/qci.Run"),
)];
const VM_SERVICES: [(&str, &str); 2] = [
    (
        "qci.Status",
        include_str!("../../../../qubes-rpc/dev-vm/qci.Status"),
    ),
    (
        "qci.Export",
        include_str!("../../../../qubes-rpc/dev-vm/qci.Export"),
    ),
];
const POLICY: (&str, &str) = (
    "30-qci.policy",
    include_str!("../../../../policy/30-qci.policy"),
);
/// dom0's log and work directories under its root, where a real dom0 has
/// them. Written into dom0's settings once; `qci run --local` looks there
/// for the log and the run lock.
pub const DOM0_LOG_DIR: &str = "var/log/qci";
pub const DOM0_WORK_DIR: &str = "var/lib/qci";
/// Where dom0 writes a job's artifacts, `JOB.tar`: its default, below the
/// work directory.
pub const DOM0_ARTIFACT_DIR: &str = "var/lib/qci/artifacts";
/// dom0's qci settings, under its root.
pub const DOM0_CONFIG: &str = "etc/qci/dom0.toml";
/// What Qubes's `qubes.VMShell` does: a shell reading commands from stdin.
const VMSHELL: &str = "#!/bin/sh\nexec /bin/bash\n";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find {name} in {dir} (build the whole workspace: cargo build)")]
    MissingBinary { name: String, dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates or refreshes the machine at `root` with dom0 and `dev_vm`, and
/// installs qci into it. Run as root, it gives the domains' user what
/// qci's installation gives dom0's user in Qubes: the directories qci
/// writes in dom0, owned by them.
pub fn install(root: &Path, dev_vm: &str, bin_dir: &Path) -> Result<Machine, InstallError> {
    let machine = bare_machine(root, &[dev_vm], bin_dir)?;
    let dom0 = machine.domain_root(DOM0)?;
    for (name, text) in DOM0_SERVICES {
        write_if_changed(
            &dom0.join("etc/qubes-rpc").join(name),
            text.as_bytes(),
            0o755,
        )?;
    }
    write_if_changed(
        &dom0.join("etc/qubes/policy.d").join(POLICY.0),
        POLICY.1.as_bytes(),
        0o644,
    )?;
    copy_if_changed(
        &binary(bin_dir, "qci-dom0")?,
        &machine.bin_dir(DOM0)?.join("qci-dom0"),
    )?;
    // Made at install time for dom0's user, as the README's steps (and
    // Salt) do in a real dom0: qci-dom0 refuses to run without them.
    for dir in [DOM0_LOG_DIR, DOM0_WORK_DIR] {
        machine.user_dir(&dom0.join(dir), 0o700)?;
    }
    let config = dom0.join(DOM0_CONFIG);
    if !config.exists() {
        // Written once: after that the file is the user's to edit (secrets,
        // limits, timeouts), as /etc/qci/dom0.toml is in a real dom0.
        let settings = format!(
            "# dom0's qci settings on this emulated machine. qci writes this file\n\
             # only when it is missing; edit the rest freely, but keep dev_vm,\n\
             # log_dir and work_dir: `qci run --local` looks for the job there.\n\
             dev_vm = {dev_vm:?}\nlog_dir = {:?}\nwork_dir = {:?}\n",
            dom0.join(DOM0_LOG_DIR),
            dom0.join(DOM0_WORK_DIR),
        );
        write_if_changed(&config, settings.as_bytes(), 0o644)?;
    }

    let vm = machine.domain_root(dev_vm)?;
    for (name, text) in VM_SERVICES {
        write_if_changed(&vm.join("etc/qubes-rpc").join(name), text.as_bytes(), 0o755)?;
    }
    copy_if_changed(
        &binary(bin_dir, "qci-vm")?,
        &machine.bin_dir(dev_vm)?.join("qci-vm"),
    )?;
    Ok(machine)
}

/// Creates or refreshes the machine at `root` as Qubes alone would have it,
/// with dom0 and `vms`: the emulated qrexec tools on each domain's PATH
/// (`qvm-run` and `qrexec-client` in dom0, `qrexec-client-vm` in the VMs)
/// and `qubes.VMShell` in each VM, for `qvm-run`. Nothing of qci is in it.
///
/// One thing stands in for a chroot: dom0's environment names
/// `QCI_DOM0_CONFIG` = `dom0/etc/qci/dom0.toml`, so that whatever installs
/// qci into dom0 (`install`, or Salt with `qci:root` set to `dom0/`) is
/// what `qci-dom0` reads, not the host's `/etc/qci/dom0.toml`.
pub fn bare_machine(root: &Path, vms: &[&str], bin_dir: &Path) -> Result<Machine, InstallError> {
    // The machine's programs and settings must be readable by its user,
    // whatever umask qci was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let qubes = vms
        .iter()
        .map(|name| {
            let spec = QubeSpec {
                klass: "AppVM".into(),
                tags: Vec::new(),
            };
            (name.to_string(), spec)
        })
        .collect();
    let machine = Machine::create_or_open(root, &qubes)?;

    let multicall = machine.root().join("bin/qci");
    copy_if_changed(&qci_binary(bin_dir)?, &multicall)?;

    link_tools(&machine, DOM0, &["qvm-run", "qrexec-client"], &multicall)?;
    let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let dom0_path = format!("{}:{host_path}", machine.bin_dir(DOM0)?.display());
    let config = machine.domain_root(DOM0)?.join(DOM0_CONFIG);
    write_environment(
        &machine,
        DOM0,
        &[
            ("PATH", dom0_path.as_str()),
            ("QCI_DOM0_CONFIG", config.to_string_lossy().as_ref()),
        ],
    )?;
    // Where a pool's host puts its files in an emulated dom0 for a moment.
    let tmp = machine.domain_root(DOM0)?.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    for vm in vms {
        let root = machine.domain_root(vm)?;
        write_if_changed(
            &root.join("etc/qubes-rpc/qubes.VMShell"),
            VMSHELL.as_bytes(),
            0o755,
        )?;
        link_tools(&machine, vm, &["qrexec-client-vm"], &multicall)?;
        // A VM reads the host's work trees, which its user (`nobody` when
        // qci runs as root) may not own: git refuses those as of dubious
        // ownership, even to clone them. Inside Qubes the user owns its
        // checkouts, so the VM's own /etc/gitconfig trusts them here.
        let gitconfig = root.join("etc/gitconfig");
        let trust = if machine.user().uid == nix::unistd::Uid::effective().as_raw() {
            ""
        } else {
            "[safe]\n\tdirectory = *\n"
        };
        let text = format!("# Written by qci: the VM's /etc/gitconfig.\n{trust}");
        write_if_changed(&gitconfig, text.as_bytes(), 0o644)?;
        write_environment(
            &machine,
            vm,
            &[("GIT_CONFIG_SYSTEM", gitconfig.to_string_lossy().as_ref())],
        )?;
    }
    Ok(machine)
}

/// The directory holding `qci-dom0` and `qci-vm`: `QCI_BIN_DIR`, or the one
/// this `qci` was started from (cargo puts them side by side).
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QCI_BIN_DIR") {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default()
}

/// The `qci` multi-call binary behind the emulated tools: this process when
/// it is `qci`, else the one in `bin_dir` (a test or another host program).
fn qci_binary(bin_dir: &Path) -> Result<PathBuf, InstallError> {
    match std::env::current_exe() {
        Ok(exe) if exe.file_name().is_some_and(|n| n == "qci") => Ok(exe),
        _ => binary(bin_dir, "qci"),
    }
}

fn binary(dir: &Path, name: &str) -> Result<PathBuf, InstallError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(InstallError::MissingBinary {
            name: name.into(),
            dir: dir.into(),
        })
    }
}

/// The domain's `etc/environment`. dom0's PATH keeps its own programs
/// first, then the host's, so steps find the host's tools as they would
/// find dom0's; a VM keeps the login PATH the emulator gives it.
fn write_environment(
    machine: &Machine,
    domain: &str,
    vars: &[(&str, &str)],
) -> Result<(), InstallError> {
    let mut text = format!("# Written by qci: the environment of every process in {domain}.\n");
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    let path = machine.domain_root(domain)?.join("etc/environment");
    write_if_changed(&path, text.as_bytes(), 0o644)
}

fn link_tools(
    machine: &Machine,
    domain: &str,
    tools: &[&str],
    multicall: &Path,
) -> Result<(), InstallError> {
    let bin = machine.bin_dir(domain)?;
    for tool in tools {
        let link = bin.join(tool);
        if std::fs::read_link(&link).ok().as_deref() == Some(multicall) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(multicall, &link).map_err(io(&link))?;
    }
    Ok(())
}

/// Replaces `to` by renaming a fresh copy over it, so a binary that another
/// run is executing is never written in place.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), InstallError> {
    let src = std::fs::metadata(from).map_err(io(from))?;
    if let Ok(dst) = std::fs::metadata(to)
        && dst.len() == src.len()
        && dst.modified().ok() >= src.modified().ok()
    {
        return Ok(());
    }
    let tmp = to.with_extension("installing");
    std::fs::create_dir_all(to.parent().unwrap_or(Path::new("/"))).map_err(io(to))?;
    std::fs::copy(from, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io(to))
}

fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<(), InstallError> {
    if std::fs::read(path).ok().as_deref() != Some(content) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let tmp = path.with_extension("installing");
        std::fs::write(&tmp, content).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}
