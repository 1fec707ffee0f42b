//! The qrexec boundary as seen by a service and a caller: what a service
//! receives from qrexec ([`service`]), and how qci calls other services
//! ([`call`]).
//!
//! dom0 (`qci-dom0`) and the dev VM (`qci-vm`) link this crate, so it is kept
//! to those two small modules and depends on nothing but `thiserror`. The
//! emulated Qubes machine and its policy engine, which never run in dom0 or
//! the dev VM, are in `qci-emulator`.

#![forbid(unsafe_code)]

pub mod call;
pub mod service;
