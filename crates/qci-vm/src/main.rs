//! `qci-vm`: the dev VM side of qci.
//!
//! - `qci-vm begin JOB` prepares the job's workspace and calls dom0's
//!   `qci.Run+JOB`, passing the live log through.
//! - `qci-vm status [JOB]` is the `qci.Status` service: one status event on
//!   stdin, forwarded to the job's sink.
//! - `qci-vm export [JOB]` is the `qci.Export` service: the job's workspace
//!   as a tar stream on stdout.
//!
//! The services take the job id from their argument (`$1`, or
//! `QREXEC_SERVICE_ARGUMENT`), as qrexec passes it.

mod begin;
mod export;
mod paths;
mod sink;

fn main() -> std::process::ExitCode {
    todo!()
}
