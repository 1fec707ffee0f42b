//! Cancellation: SIGTERM, SIGINT or SIGHUP ask the run to stop. The running
//! step is stopped with its whole process group, and the job still ends with
//! a final status (`canceled`) instead of dying mid-way.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the handler; read by the runner and the step executor.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn request_cancel(_: nix::libc::c_int) {
    // Only an atomic store: async-signal-safe.
    CANCEL.store(true, Ordering::SeqCst);
}

pub fn cancel_on_termination() {
    let action = SigAction::new(
        SigHandler::Handler(request_cancel),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe, and it replaces no handler anyone relies on.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::warn!("cannot handle {signal}: {e}");
        }
    }
}
