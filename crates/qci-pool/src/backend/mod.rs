//! The backends, and how a machine's config becomes its control and its
//! guest channel.

pub mod install;
pub mod libvirt;
pub mod local;
pub mod qga;
pub mod vmware;

use crate::config::{BackendKind, Credentials, Dom0Access, MachineConfig};
use crate::control::{ControlError, MachineControl};
use crate::guest::{Dom0, GuestChannel};
use std::sync::Arc;
use std::time::Duration;

/// One machine, opened: how to control it and how to reach its dom0.
pub struct Backend {
    pub control: Arc<dyn MachineControl>,
    pub guest: Arc<dyn GuestChannel>,
    /// dom0's log directory and scratch directory, as the guest sees them.
    pub log_dir: String,
    pub tmp_dir: String,
    /// dom0's artifact directory (`JOB.tar`), as the guest sees it.
    pub artifact_dir: String,
}

impl Backend {
    /// Opens `m`'s backend. Cheap and local: nothing is asked of the
    /// hypervisor yet, except that a local machine is provisioned.
    pub fn open(m: &MachineConfig, call_timeout: Duration) -> Result<Self, ControlError> {
        let control: Arc<dyn MachineControl> = match m.backend {
            BackendKind::Local => {
                let path = m.path.as_deref().unwrap_or(std::path::Path::new("."));
                let machine = local::LocalMachine::new(path, &m.dev_vm);
                machine.provision(&m.snapshot)?;
                Arc::new(machine)
            }
            BackendKind::Libvirt => Arc::new(libvirt::Libvirt::new(
                m.uri.clone().unwrap_or_default(),
                m.domain.clone().unwrap_or_else(|| m.name.clone()),
                call_timeout,
            )),
            BackendKind::Vmware => Arc::new(vmware::Vmware(vmware_connection(m, call_timeout)?)),
        };
        let mut log_dir = m.dom0_log_dir.clone();
        let mut tmp_dir = m.dom0_tmp_dir.clone();
        let mut artifact_dir = format!("/{}", install::DOM0_ARTIFACT_DIR);
        let guest: Arc<dyn GuestChannel> = match m.dom0_access() {
            Dom0Access::Emulated => {
                let path = match m.backend {
                    BackendKind::Local => m.path.clone(),
                    _ => m.emulated_path.clone(),
                }
                .unwrap_or_default();
                let machine = local::LocalMachine::new(&path, &m.dev_vm);
                if m.backend != BackendKind::Local {
                    machine.provision(&m.snapshot)?;
                }
                // An emulated dom0 keeps its directories under its root.
                let dom0 = machine.root().join(qci_emulator::DOM0);
                log_dir = dom0
                    .join(install::DOM0_LOG_DIR)
                    .to_string_lossy()
                    .into_owned();
                tmp_dir = dom0.join("tmp").to_string_lossy().into_owned();
                artifact_dir = dom0
                    .join(install::DOM0_ARTIFACT_DIR)
                    .to_string_lossy()
                    .into_owned();
                Arc::new(local::LocalGuest::new(machine, control.clone()))
            }
            Dom0Access::Agent => Arc::new(qga::Agent::new(qga::Virsh::new(
                m.uri.clone().unwrap_or_default(),
                m.domain.clone().unwrap_or_else(|| m.name.clone()),
                call_timeout,
            ))),
            Dom0Access::GuestOperations => {
                let auth = Credentials::load(
                    m.guest_credentials_file.as_deref(),
                    m.guest_credentials_env.as_deref(),
                )
                .map_err(|source| ControlError::Credentials {
                    whose: format!("dom0 of {}", m.name),
                    source,
                })?;
                Arc::new(vmware::GuestOps::new(
                    vmware_connection(m, call_timeout)?,
                    auth,
                    &m.dom0_tmp_dir,
                ))
            }
        };
        Ok(Self {
            control,
            guest,
            log_dir,
            tmp_dir,
            artifact_dir,
        })
    }

    /// dom0 of `m`, the machine this backend was opened for: its directories
    /// are the backend's (an emulated dom0 moves them under its root), its
    /// dev VM the machine's, so no caller can pair them wrongly.
    pub fn dom0<'a>(&'a self, m: &'a MachineConfig, timeout: Duration) -> Dom0<'a> {
        Dom0 {
            guest: self.guest.as_ref(),
            dev_vm: &m.dev_vm,
            tmp_dir: &self.tmp_dir,
            log_dir: &self.log_dir,
            timeout,
        }
    }
}

fn vmware_connection(
    m: &MachineConfig,
    call_timeout: Duration,
) -> Result<Arc<vmware::Connection>, ControlError> {
    let creds = Credentials::load(m.credentials_file.as_deref(), m.credentials_env.as_deref())
        .map_err(|source| ControlError::Credentials {
            whose: format!("machine {}", m.name),
            source,
        })?;
    vmware::Connection::new(
        m.url.as_deref().unwrap_or_default(),
        m.vm.as_deref().unwrap_or(&m.name),
        creds,
        m.ca_file.as_deref(),
        call_timeout,
    )
    .map(Arc::new)
}
