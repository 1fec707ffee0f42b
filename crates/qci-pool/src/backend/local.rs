//! The `local` backend: an emulated Qubes machine in a directory, for both
//! machine control and the guest channel. It is the default and the test
//! bed, so it behaves like a hypervisor where it counts: a machine that is
//! off does not answer, powering off stops every process that runs in it,
//! and reverting replaces its disk (the directory) by the snapshot's copy.
//!
//! ```text
//! PATH/machine/             the emulated machine (dom0 and the dev VM)
//! PATH/snapshots/NAME/      a snapshot: a copy of machine/
//! PATH/control.json         power state, lease marker, snapshot list
//! PATH/markers.log          every marker change, one line each (an audit
//!                           trail: the lease benchmark checks it)
//! ```

use super::install;
use crate::control::{
    ControlError, MachineControl, Marker, MarkerRead, PowerState, Snapshot, Swap,
};
use crate::guest::{GuestChannel, GuestError, GuestPid};
use qci_emulator::{DOM0, ENV_MACHINE, Machine};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Power {
    #[default]
    Off,
    On,
    /// Asked to shut down; off once no process of it is left.
    Stopping,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ControlFile {
    power: Power,
    marker: Option<Marker>,
    snapshots: Vec<SnapshotEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotEntry {
    name: String,
    created: u64,
}

/// One emulated machine under `dir`.
#[derive(Debug, Clone)]
pub struct LocalMachine {
    dir: PathBuf,
    dev_vm: String,
}

fn unreachable(what: impl std::fmt::Display, e: impl std::fmt::Display) -> ControlError {
    ControlError::Unreachable(format!("{what}: {e}"))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl LocalMachine {
    pub fn new(dir: &Path, dev_vm: &str) -> Self {
        Self {
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
            dev_vm: dev_vm.to_owned(),
        }
    }

    /// The emulated machine's root (what `QCI_EMU_MACHINE` names).
    pub fn root(&self) -> PathBuf {
        self.dir.join("machine")
    }

    fn control_path(&self) -> PathBuf {
        self.dir.join("control.json")
    }

    fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.dir.join("snapshots").join(name)
    }

    /// Makes sure the machine exists: qci installed into it, and a first
    /// snapshot named `snapshot` taken of that clean state. Serialized by a
    /// lock, so concurrent hosts provision once.
    pub fn provision(&self, snapshot: &str) -> Result<(), ControlError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| unreachable(self.dir.display(), e))?;
        let lock_path = self.dir.join(".provision.lock");
        let file =
            std::fs::File::create(&lock_path).map_err(|e| unreachable(lock_path.display(), e))?;
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| unreachable(lock_path.display(), e))?;
        if !self.read()?.snapshots.is_empty() {
            return Ok(());
        }
        self.install()?;
        self.create_snapshot(snapshot)
    }

    /// Installs (or refreshes) qci in the machine: what booting a real
    /// machine whose snapshot holds qci amounts to here.
    fn install(&self) -> Result<Machine, ControlError> {
        install::install(&self.root(), &self.dev_vm, &install::default_bin_dir()).map_err(|e| {
            ControlError::Refused(format!(
                "cannot install qci into {}: {e}",
                self.root().display()
            ))
        })
    }

    fn read(&self) -> Result<ControlFile, ControlError> {
        let path = self.control_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| unreachable(path.display(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ControlFile::default()),
            Err(e) => Err(unreachable(path.display(), e)),
        }
    }

    fn write(&self, state: &ControlFile) -> Result<(), ControlError> {
        let path = self.control_path();
        let tmp = self
            .dir
            .join(format!(".control.{}.tmp", std::process::id()));
        let text = serde_json::to_vec_pretty(state).map_err(|e| unreachable(path.display(), e))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| unreachable(path.display(), e))
    }

    fn update(&self, f: impl FnOnce(&mut ControlFile)) -> Result<(), ControlError> {
        let mut state = self.read()?;
        f(&mut state);
        self.write(&state)
    }

    /// Processes running in the machine (the emulator marks each one).
    fn processes(&self) -> Vec<i32> {
        qci_core::process::marked(ENV_MACHINE, &self.root().to_string_lossy())
    }

    fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    fn log_marker(&self, marker: Option<&Marker>) {
        let line = match marker {
            Some(m) => format!("{} set {}\n", now_millis(), m.encode()),
            None => format!("{} clear\n", now_millis()),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("markers.log"))
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// `cp -a`: keeps modes, links and times, so a reverted machine's files
/// look unchanged to the installer.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ControlError> {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| unreachable("cp", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ControlError::Refused(format!(
            "cannot copy {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn remove_tree(dir: &Path) -> Result<(), ControlError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(unreachable(dir.display(), e)),
        _ => Ok(()),
    }
}

impl MachineControl for LocalMachine {
    fn power_state(&self) -> Result<PowerState, ControlError> {
        let state = self.read()?;
        Ok(match state.power {
            Power::On => PowerState::On,
            Power::Off => PowerState::Off,
            Power::Stopping if self.processes().is_empty() => {
                self.update(|s| s.power = Power::Off)?;
                PowerState::Off
            }
            Power::Stopping => PowerState::On,
        })
    }

    fn start(&self) -> Result<(), ControlError> {
        if !self.root().join("machine.toml").exists() {
            return Err(ControlError::Refused(format!(
                "{} has no disk: revert it to a snapshot first",
                self.root().display()
            )));
        }
        self.install()?;
        self.update(|s| s.power = Power::On)
    }

    fn power_off(&self) -> Result<(), ControlError> {
        self.signal_all(nix::sys::signal::Signal::SIGKILL);
        // Killed processes may take a moment to go; a new one cannot start
        // once the state says off (the guest channel checks it).
        self.update(|s| s.power = Power::Off)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.processes().is_empty() && std::time::Instant::now() < deadline {
            self.signal_all(nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn request_shutdown(&self) -> Result<(), ControlError> {
        if self.read()?.power == Power::Off {
            return Ok(());
        }
        self.update(|s| s.power = Power::Stopping)?;
        self.signal_all(nix::sys::signal::Signal::SIGTERM);
        Ok(())
    }

    fn revert(&self, snapshot: &str) -> Result<(), ControlError> {
        let from = self.snapshot_dir(snapshot);
        if !self.read()?.snapshots.iter().any(|s| s.name == snapshot) || !from.is_dir() {
            return Err(ControlError::NoSuchSnapshot(snapshot.into()));
        }
        if self.power_state()? != PowerState::Off {
            self.power_off()?;
        }
        let root = self.root();
        remove_tree(&root)?;
        copy_tree(&from, &root)
    }

    fn snapshots(&self) -> Result<Vec<Snapshot>, ControlError> {
        Ok(self
            .read()?
            .snapshots
            .into_iter()
            .map(|s| Snapshot {
                name: s.name,
                created: s.created,
            })
            .collect())
    }

    fn create_snapshot(&self, name: &str) -> Result<(), ControlError> {
        let to = self.snapshot_dir(name);
        remove_tree(&to)?;
        std::fs::create_dir_all(to.parent().unwrap_or(&self.dir))
            .map_err(|e| unreachable(to.display(), e))?;
        copy_tree(&self.root(), &to)?;
        self.update(|s| {
            s.snapshots.retain(|e| e.name != name);
            s.snapshots.push(SnapshotEntry {
                name: name.into(),
                created: now_secs(),
            });
        })
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), ControlError> {
        self.update(|s| s.snapshots.retain(|e| e.name != name))?;
        remove_tree(&self.snapshot_dir(name))
    }

    fn marker(&self) -> Result<Option<Marker>, ControlError> {
        Ok(self.read()?.marker)
    }

    /// No compare-and-swap: a plain write.
    fn swap_marker(&self, _: &MarkerRead, marker: Option<&Marker>) -> Result<Swap, ControlError> {
        self.update(|s| s.marker = marker.cloned())?;
        self.log_marker(marker);
        Ok(Swap::Done)
    }

    /// An emulated machine has no screen.
    fn screenshot(&self) -> Result<Option<Vec<u8>>, ControlError> {
        Ok(None)
    }
}

/// The guest channel into an emulated dom0: commands run with dom0's
/// environment (its PATH finds the emulated `qvm-run`), files are dom0's.
/// It answers only while `power` says the machine is on.
pub struct LocalGuest {
    machine: LocalMachine,
    power: Arc<dyn MachineControl>,
    children: Mutex<HashMap<i64, Child>>,
}

impl LocalGuest {
    pub fn new(machine: LocalMachine, power: Arc<dyn MachineControl>) -> Self {
        Self {
            machine,
            power,
            children: Mutex::new(HashMap::new()),
        }
    }

    fn emulated(&self) -> Result<Machine, GuestError> {
        Machine::open(&self.machine.root()).map_err(|e| GuestError::NoAnswer(e.to_string()))
    }

    fn answering(&self) -> Result<(), GuestError> {
        match self.power.power_state() {
            Ok(PowerState::On) => Ok(()),
            Ok(state) => Err(GuestError::NoAnswer(format!("the machine is {state}"))),
            Err(e) => Err(GuestError::NoAnswer(e.to_string())),
        }
    }
}

impl GuestChannel for LocalGuest {
    fn start(&self, argv: &[String]) -> Result<GuestPid, GuestError> {
        self.answering()?;
        let machine = self.emulated()?;
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| GuestError::Failed("empty command".into()))?;
        let env = machine
            .domain_env(DOM0)
            .map_err(|e| GuestError::NoAnswer(e.to_string()))?;
        let home = machine
            .home(DOM0)
            .map_err(|e| GuestError::NoAnswer(e.to_string()))?;
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(env)
            .current_dir(home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| GuestError::Failed(format!("cannot start {program}: {e}")))?;
        let pid = i64::from(child.id());
        self.children
            .lock()
            .map_err(|_| GuestError::Failed("poisoned".into()))?
            .insert(pid, child);
        Ok(GuestPid(pid))
    }

    fn exit_code(&self, pid: GuestPid) -> Result<Option<i32>, GuestError> {
        let mut children = self
            .children
            .lock()
            .map_err(|_| GuestError::Failed("poisoned".into()))?;
        let child = children
            .get_mut(&pid.0)
            .ok_or_else(|| GuestError::Failed(format!("no process {}", pid.0)))?;
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(255);
                children.remove(&pid.0);
                Ok(Some(code))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(GuestError::Failed(e.to_string())),
        }
    }

    fn copy_in(&self, data: &[u8], path: &str) -> Result<(), GuestError> {
        self.answering()?;
        let path = Path::new(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| GuestError::Failed(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(path, data)
            .map_err(|e| GuestError::Failed(format!("{}: {e}", path.display())))
    }

    fn copy_out(&self, path: &str) -> Result<Vec<u8>, GuestError> {
        self.answering()?;
        std::fs::read(path).map_err(|e| GuestError::Failed(format!("{path}: {e}")))
    }

    fn read_at(&self, path: &str, offset: u64, max: usize) -> Result<Vec<u8>, GuestError> {
        self.answering()?;
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(GuestError::Failed(format!("{path}: {e}"))),
        };
        let mut buf = Vec::new();
        file.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| file.take(max as u64).read_to_end(&mut buf))
            .map_err(|e| GuestError::Failed(format!("{path}: {e}")))?;
        Ok(buf)
    }
}

impl Drop for LocalGuest {
    fn drop(&mut self) {
        // Reap what ended; what still runs belongs to the machine now.
        if let Ok(mut children) = self.children.lock() {
            for child in children.values_mut() {
                let _ = child.try_wait();
            }
        }
    }
}
