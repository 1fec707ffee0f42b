//! The `libvirt` backend's machine control, through `virsh`.
//!
//! Why `virsh` and not the `virt` crate's bindings: each call is a process
//! that can be killed when it hangs (libvirt's client calls block with no
//! timeout of their own), the `qci` binary links no C library and builds
//! on hosts without `libvirt-dev`, and virsh's error lines are already the
//! clear messages an operator wants to see. A call costs about 40 ms,
//! nothing beside a machine's boot.
//!
//! The lease marker is domain metadata in qci's own namespace:
//! `<lease host=".." job=".." expires=".."/>`.

use crate::command::run_bounded;
use crate::control::{ControlError, MachineControl, Marker, PowerState, Snapshot};
use std::process::Command;
use std::time::Duration;

/// qci's metadata namespace on a domain.
pub const MARKER_URI: &str = "https://qci.invalid/lease/1";

pub struct Libvirt {
    uri: String,
    domain: String,
    timeout: Duration,
}

impl Libvirt {
    pub fn new(uri: String, domain: String, timeout: Duration) -> Self {
        Self {
            uri,
            domain,
            timeout,
        }
    }

    /// `virsh -c URI ARGS`; its stdout, or the error it printed.
    fn virsh(&self, args: &[&str]) -> Result<String, ControlError> {
        let mut cmd = Command::new("virsh");
        cmd.args(["-q", "-c", &self.uri]).args(args);
        let done = run_bounded(cmd, self.timeout).map_err(ControlError::Client)?;
        if done.success {
            return Ok(done.stdout);
        }
        let err = done.stderr.trim().replace('\n', "; ");
        Err(if is_connection_error(&err) {
            ControlError::Unreachable(format!("libvirt at {}: {err}", self.uri))
        } else {
            ControlError::Refused(format!("libvirt domain {}: {err}", self.domain))
        })
    }
}

/// virsh's words when the daemon cannot be reached or went away.
pub(crate) fn is_connection_error(err: &str) -> bool {
    [
        "failed to connect",
        "Failed to connect",
        "Cannot recv data",
        "End of file while reading",
        "Connection reset",
        "no connection driver",
        "did not answer within",
    ]
    .iter()
    .any(|w| err.contains(w))
}

impl MachineControl for Libvirt {
    fn power_state(&self) -> Result<PowerState, ControlError> {
        let out = self.virsh(&["domstate", &self.domain])?;
        Ok(match out.trim() {
            "running" | "in shutdown" | "blocked" => PowerState::On,
            "shut off" => PowerState::Off,
            _ => PowerState::Other,
        })
    }

    fn start(&self) -> Result<(), ControlError> {
        if self.power_state()? == PowerState::On {
            return Ok(());
        }
        self.virsh(&["start", &self.domain]).map(drop)
    }

    fn power_off(&self) -> Result<(), ControlError> {
        if self.power_state()? == PowerState::Off {
            return Ok(());
        }
        self.virsh(&["destroy", &self.domain]).map(drop)
    }

    fn request_shutdown(&self) -> Result<(), ControlError> {
        self.virsh(&["shutdown", &self.domain]).map(drop)
    }

    fn revert(&self, snapshot: &str) -> Result<(), ControlError> {
        if !self.snapshots()?.iter().any(|s| s.name == snapshot) {
            return Err(ControlError::NoSuchSnapshot(snapshot.into()));
        }
        self.virsh(&["snapshot-revert", &self.domain, snapshot])
            .map(drop)
    }

    fn snapshots(&self) -> Result<Vec<Snapshot>, ControlError> {
        let names = self.virsh(&["snapshot-list", &self.domain, "--name"])?;
        names
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|name| {
                let xml = self.virsh(&["snapshot-dumpxml", &self.domain, name])?;
                let created = xml
                    .split("<creationTime>")
                    .nth(1)
                    .and_then(|r| r.split('<').next())
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                Ok(Snapshot {
                    name: name.to_owned(),
                    created,
                })
            })
            .collect()
    }

    fn create_snapshot(&self, name: &str) -> Result<(), ControlError> {
        self.virsh(&["snapshot-create-as", &self.domain, name])
            .map(drop)
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), ControlError> {
        self.virsh(&["snapshot-delete", &self.domain, name])
            .map(drop)
    }

    fn marker(&self) -> Result<Option<Marker>, ControlError> {
        match self.virsh(&["metadata", &self.domain, "--uri", MARKER_URI]) {
            Ok(xml) => Ok(parse_marker(&xml)),
            Err(ControlError::Refused(e)) if e.contains("metadata not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_marker(&self, marker: Option<&Marker>) -> Result<(), ControlError> {
        let mut args = vec![
            "metadata",
            &self.domain,
            "--uri",
            MARKER_URI,
            "--key",
            "qci",
        ];
        let xml;
        match marker {
            Some(m) => {
                xml = format!(
                    "<lease host=\"{}\" job=\"{}\" expires=\"{}\"/>",
                    m.host, m.job, m.expires
                );
                args.extend(["--set", &xml]);
            }
            None => args.push("--remove"),
        }
        match self.virsh(&args) {
            Err(ControlError::Refused(e))
                if marker.is_none() && e.contains("metadata not found") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }
}

/// Reads `<lease host=".." job=".." expires=".."/>` (our own writing; the
/// names are validated words, so no escaping is involved).
fn parse_marker(xml: &str) -> Option<Marker> {
    let attr = |name: &str| {
        let start = xml.find(&format!("{name}=\""))? + name.len() + 2;
        let len = xml[start..].find('"')?;
        Some(xml[start..start + len].to_owned())
    };
    Some(Marker {
        host: attr("host")?,
        job: attr("job")?,
        expires: attr("expires")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_marker_libvirt_gives_back() {
        let xml = "<lease xmlns=\"https://qci.invalid/lease/1\" host=\"rack-a\" job=\"J1\" expires=\"99\"/>\n";
        assert_eq!(
            parse_marker(xml),
            Some(Marker {
                host: "rack-a".into(),
                job: "J1".into(),
                expires: 99
            })
        );
        assert_eq!(parse_marker("<lease/>"), None);
    }
}
