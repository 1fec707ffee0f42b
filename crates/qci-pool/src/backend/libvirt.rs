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
//! `<lease host=".." job=".." expires=".."/>`. libvirt offers no
//! compare-and-swap on it (a write is a plain write, checked by reading
//! back), so one libvirt URI belongs to one host.

use crate::artifacts::PNG_SIGNATURE;
use crate::command::run_bounded;
use crate::control::{
    ControlError, MachineControl, Marker, MarkerRead, PowerState, Snapshot, Swap,
};
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

    /// No compare-and-swap in virsh: a plain write, which `claim_marker`
    /// reads back.
    fn swap_marker(&self, _: &MarkerRead, marker: Option<&Marker>) -> Result<Swap, ControlError> {
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
                Ok(Swap::Done)
            }
            other => other.map(|_| Swap::Done),
        }
    }

    /// `virsh screenshot` into a directory of our own (virsh writes the
    /// file itself). The test driver gives a PNG; QEMU gives a PPM, which
    /// is converted.
    fn screenshot(&self) -> Result<Option<Vec<u8>>, ControlError> {
        let template = std::env::temp_dir().join("qci-screenshot-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| ControlError::Refused(format!("cannot make a scratch directory: {e}")))?;
        let file = dir.join("screen");
        let taken = self
            .virsh(&["screenshot", &self.domain, &file.to_string_lossy()])
            .and_then(|_| read_bounded(&file));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
        let image = taken?;
        if image.starts_with(PNG_SIGNATURE) {
            return Ok(Some(image));
        }
        ppm_to_png(&image).map(Some)
    }
}

/// The screenshot virsh wrote, refused past the bound.
fn read_bounded(file: &std::path::Path) -> Result<Vec<u8>, ControlError> {
    use std::io::Read;
    let mut image = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PPM_BYTES + 1).read_to_end(&mut image))
        .map_err(|e| ControlError::Refused(format!("cannot read the screenshot: {e}")))?;
    if image.len() as u64 > MAX_PPM_BYTES {
        return Err(ControlError::Refused(format!(
            "the screenshot is larger than {MAX_PPM_BYTES} bytes"
        )));
    }
    Ok(image)
}

/// A PPM is raw pixels, three bytes each: room for a 4K screen.
const MAX_PPM_BYTES: u64 = 64 << 20;

/// A binary PPM (`P6`, 8 bits a sample, as QEMU writes it) as a PNG.
pub fn ppm_to_png(ppm: &[u8]) -> Result<Vec<u8>, ControlError> {
    let bad =
        |why: &str| ControlError::Refused(format!("the screenshot is not a PNG or PPM: {why}"));
    // The header: `P6`, width, height, maxval, separated by whitespace
    // (and `#` comments), then one whitespace byte and the pixels.
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while at < ppm.len() && (ppm[at].is_ascii_whitespace() || ppm[at] == b'#') {
            if ppm[at] == b'#' {
                while at < ppm.len() && ppm[at] != b'\n' {
                    at += 1;
                }
            } else {
                at += 1;
            }
        }
        let start = at;
        while at < ppm.len() && !ppm[at].is_ascii_whitespace() && at - start < 16 {
            at += 1;
        }
        if start == at {
            return Err(bad("its header ends early"));
        }
        fields.push(&ppm[start..at]);
    }
    if fields[0] != b"P6" {
        return Err(bad("no P6 header"));
    }
    let number = |f: &[u8]| {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| bad("a header field is not a number"))
    };
    let (width, height, maxval) = (number(fields[1])?, number(fields[2])?, number(fields[3])?);
    if maxval == 0 || maxval > 255 {
        return Err(bad("not 8 bits a sample"));
    }
    let pixels = ppm.get(at + 1..).unwrap_or_default();
    let needed = u64::from(width) * u64::from(height) * 3;
    if width == 0 || height == 0 || (pixels.len() as u64) < needed {
        return Err(bad("fewer pixels than its size"));
    }
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let encoded = encoder.write_header().and_then(|mut w| {
        w.write_image_data(&pixels[..needed as usize])?;
        w.finish()
    });
    encoded.map_err(|e| ControlError::Refused(format!("cannot encode the screenshot: {e}")))?;
    Ok(png)
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
    fn a_ppm_from_qemu_becomes_a_png() {
        let mut ppm = b"P6\n# made by qemu\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let png = ppm_to_png(&ppm).unwrap();
        assert!(png.starts_with(PNG_SIGNATURE));
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        assert_eq!(pixels, [255, 0, 0, 0, 0, 255]);
        let short = b"P6 4 4 255\n\0\0\0";
        assert_eq!(
            ppm_to_png(short).unwrap_err().to_string(),
            "the screenshot is not a PNG or PPM: fewer pixels than its size"
        );
        assert_eq!(
            ppm_to_png(b"GIF89a").unwrap_err().to_string(),
            "the screenshot is not a PNG or PPM: its header ends early"
        );
    }

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
