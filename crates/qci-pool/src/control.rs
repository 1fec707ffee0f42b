//! Machine control: what the host asks of a hypervisor about one machine.
//! Every call is bounded by the backend's call timeout.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    /// Paused, suspended, crashed...: neither usable nor cleanly off.
    Other,
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Other => "other",
        })
    }
}

/// The lease as recorded on the hypervisor, so that two hosts sharing a
/// hypervisor never take the same machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub host: String,
    /// As the hypervisor holds it: another host's marker may name anything,
    /// and is only compared and shown, never used as a job id.
    pub job: String,
    /// Unix seconds after which the lease is void (its host died).
    pub expires: u64,
}

impl Marker {
    /// `host=H job=J expires=E`: one line, fit for a libvirt attribute set
    /// or a vSphere extraConfig value.
    pub fn encode(&self) -> String {
        format!(
            "host={} job={} expires={}",
            self.host, self.job, self.expires
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut host = None;
        let mut job = None;
        let mut expires = None;
        for word in s.split_whitespace() {
            match word.split_once('=')? {
                ("host", v) => host = Some(v.to_owned()),
                ("job", v) => job = Some(v.to_owned()),
                ("expires", v) => expires = v.parse().ok(),
                _ => {}
            }
        }
        Some(Self {
            host: host?,
            job: job?,
            expires: expires?,
        })
    }

    pub fn is_live(&self, now: u64) -> bool {
        self.expires > now
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The hypervisor could not be reached or did not answer in time.
    #[error("hypervisor unreachable: {0}")]
    Unreachable(String),
    /// The hypervisor answered, and said no.
    #[error("{0}")]
    Refused(String),
    #[error("no snapshot named {0:?}")]
    NoSuchSnapshot(String),
    /// The credentials of `whose` (a machine, or its dom0) are missing or
    /// malformed.
    #[error("{whose}: {source}")]
    Credentials {
        whose: String,
        source: crate::config::CredentialsError,
    },
    /// The vSphere client could not be made (a bad `ca_file`).
    #[error(transparent)]
    VsphereClient(#[from] crate::backend::vmware::soap::ClientError),
    /// The hypervisor's command-line client (virsh) gave no answer.
    #[error("hypervisor unreachable: {0}")]
    Client(#[source] crate::command::CommandError),
}

/// Power, snapshots and the lease marker of one machine.
pub trait MachineControl: Send + Sync {
    fn power_state(&self) -> Result<PowerState, ControlError>;
    fn start(&self) -> Result<(), ControlError>;
    /// Forces the machine off at once; off already is fine.
    fn power_off(&self) -> Result<(), ControlError>;
    /// Asks the guest to shut down; does not wait.
    fn request_shutdown(&self) -> Result<(), ControlError>;
    fn revert(&self, snapshot: &str) -> Result<(), ControlError>;
    fn snapshots(&self) -> Result<Vec<Snapshot>, ControlError>;
    fn create_snapshot(&self, name: &str) -> Result<(), ControlError>;
    fn delete_snapshot(&self, name: &str) -> Result<(), ControlError>;
    fn marker(&self) -> Result<Option<Marker>, ControlError>;
    /// Sets the marker, or clears it with `None`.
    fn set_marker(&self, marker: Option<&Marker>) -> Result<(), ControlError>;
    /// What the machine's screen shows, as PNG bytes (at most
    /// [`crate::artifacts::MAX_SCREENSHOT_BYTES`]); `None` for a machine
    /// with no screen. Taken of a machine whose job failed, before it is
    /// powered off.
    fn screenshot(&self) -> Result<Option<Vec<u8>>, ControlError>;

    /// Shuts down cleanly, waiting up to `grace`, then forces it off.
    /// Returns whether the stop was clean.
    fn shutdown(&self, grace: Duration) -> Result<bool, ControlError> {
        if self.power_state()? == PowerState::Off {
            return Ok(true);
        }
        self.request_shutdown()?;
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.power_state()? == PowerState::Off {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.power_off()?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_refuses_garbage() {
        let m = Marker {
            host: "rack-a".into(),
            job: "J1".into(),
            expires: 42,
        };
        assert_eq!(Marker::decode(&m.encode()), Some(m.clone()));
        assert!(m.is_live(41) && !m.is_live(42));
        assert_eq!(Marker::decode("host=a job=b"), None);
        assert_eq!(Marker::decode("garbage"), None);
    }
}
