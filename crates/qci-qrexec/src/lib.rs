//! The qrexec boundary, on both sides of it: what a service receives from
//! qrexec, how qci calls other services, the Qubes 4.1+ policy engine, and the
//! emulated qrexec tools that let the production binaries run unchanged on a
//! laptop.

pub mod call;
pub mod emulator;
pub mod policy;
pub mod service;
