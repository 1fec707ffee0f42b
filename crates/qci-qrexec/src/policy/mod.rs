//! TEMPORARY STUB for compiling; replaced by the policy engine branch.
use std::path::Path;
pub struct Qube { pub name: String, pub klass: String, pub tags: Vec<String>, pub default_dispvm: Option<String>, pub template_for_dispvms: bool }
pub struct System { pub qubes: Vec<Qube> }
pub struct Request<'a> { pub service: &'a str, pub argument: &'a str, pub source: &'a str, pub target: &'a str }
pub enum Resolution { Allow { target: String, user: Option<String>, autostart: bool, notify: bool } }
pub struct Denied { pub reason: String }
pub struct Policy;
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct PolicyError;
impl Policy {
    pub fn load_dirs(_dirs: &[&Path]) -> Result<Policy, PolicyError> { Ok(Policy) }
    pub fn evaluate(&self, req: &Request, _s: &System) -> Result<Resolution, Denied> {
        if req.source == "sd-dev" && req.service == "qci.Run" && (req.target == "dom0" || req.target == "@adminvm") { Ok(Resolution::Allow { target: "dom0".into(), user: None, autostart: true, notify: false }) } else { Err(Denied { reason: "stub".into() }) }
    }
}
