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

/// The marker as read, with the version of the machine's configuration it
/// was read at, when the hypervisor offers a compare-and-swap on it
/// (vSphere's `config.changeVersion`). libvirt has none: `version` is
/// `None` there, and a write is a plain write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MarkerRead {
    pub marker: Option<Marker>,
    pub version: Option<String>,
}

/// What became of a compare-and-swap of the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// Written: nothing changed the machine since the read.
    Done,
    /// Something changed the machine since the read (another host took it,
    /// most likely): nothing was written. Not a failure of the hypervisor.
    Lost,
}

/// The outcome of [`claim_marker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Our marker is on the machine, read back after the write.
    Ours(Marker),
    /// Another live host's marker is there (`None`: the machine kept
    /// changing under us, so someone else is at work on it).
    Foreign(Option<Marker>),
}

/// How many times a compare-and-swap that lost is tried again from a
/// fresh read: a loss to a change that is not a lease (a snapshot, a power
/// change on vSphere) deserves another go, a lease does not get one.
const SWAP_TRIES: usize = 3;

/// Puts `mine` on the machine unless another live host's marker is there,
/// as a compare-and-swap where the hypervisor has one: two hosts sharing a
/// vCenter that read the same free machine cannot both write, as the second
/// write is refused. Then reads it back: where there is no
/// compare-and-swap (libvirt), of two writers the one whose marker stuck
/// goes on.
pub fn claim_marker(
    control: &dyn MachineControl,
    mine: &Marker,
    now: u64,
) -> Result<Claim, ControlError> {
    for _ in 0..SWAP_TRIES {
        let read = control.read_marker()?;
        if let Some(m) = &read.marker
            && m.host != mine.host
            && m.is_live(now)
        {
            return Ok(Claim::Foreign(Some(m.clone())));
        }
        match control.swap_marker(&read, Some(mine))? {
            Swap::Lost => continue,
            Swap::Done => {}
        }
        return match control.marker()? {
            Some(b) if &b == mine => Ok(Claim::Ours(b)),
            Some(b) => Ok(Claim::Foreign(Some(b))),
            None => Err(ControlError::Refused(
                "the lease marker did not stick".into(),
            )),
        };
    }
    // Changed under us each time: whoever is changing it holds it for now.
    Ok(Claim::Foreign(
        control.marker()?.filter(|m| m.host != mine.host),
    ))
}

/// Clears the marker if it is still `host`'s for `job`, as a
/// compare-and-swap where the hypervisor has one, so that a marker another
/// host wrote after our read is never wiped.
pub fn release_marker(
    control: &dyn MachineControl,
    host: &str,
    job: &str,
) -> Result<(), ControlError> {
    for _ in 0..SWAP_TRIES {
        let read = control.read_marker()?;
        match &read.marker {
            Some(m) if m.host == host && m.job == job => {}
            _ => return Ok(()),
        }
        if control.swap_marker(&read, None)? == Swap::Done {
            return Ok(());
        }
    }
    Err(ControlError::Refused(format!(
        "the lease marker kept changing; {SWAP_TRIES} tries to clear it lost"
    )))
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
    /// The marker with the version to compare against in
    /// [`Self::swap_marker`]. Without a compare-and-swap: no version.
    fn read_marker(&self) -> Result<MarkerRead, ControlError> {
        Ok(MarkerRead {
            marker: self.marker()?,
            version: None,
        })
    }
    /// Writes `marker` (clears it with `None`) only if the machine is still
    /// as `read` saw it. Without a compare-and-swap, a plain write that is
    /// always [`Swap::Done`] (the read-back of [`claim_marker`] decides).
    /// The only way a marker is written, so that no write can skip the
    /// compare where the hypervisor has one.
    fn swap_marker(&self, read: &MarkerRead, marker: Option<&Marker>)
    -> Result<Swap, ControlError>;
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
