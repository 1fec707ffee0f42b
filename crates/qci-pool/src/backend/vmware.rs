//! The `vmware` backend (in progress on branch i9-pool).

use crate::config::MachineConfig;
use crate::control::ControlError;
use std::time::Duration;

pub struct Vmware;

impl Vmware {
    pub fn new(_m: &MachineConfig, _t: Duration) -> Result<Self, ControlError> {
        Err(ControlError::Refused(
            "the vmware backend is not built yet".into(),
        ))
    }
}
