//! Cancellation: SIGTERM, SIGINT or SIGHUP ask the run to stop, and so does
//! the caller going away (see `caller`). The running step is stopped with
//! its whole process group, and the job still ends with a final status
//! (`canceled`) instead of dying mid-way.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Set by the handler; read by the runner and the step executor.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// Why [`CANCEL`] was set, for the job's final status.
static REASON: AtomicU8 = AtomicU8::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    Signal = 1,
    CallerGone = 2,
}

impl CancelReason {
    /// The reason the run was canceled, if it was.
    pub fn current() -> Option<Self> {
        match REASON.load(Ordering::SeqCst) {
            1 => Some(Self::Signal),
            2 => Some(Self::CallerGone),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Signal => "qci-dom0 was told to stop",
            Self::CallerGone => "the caller went away",
        }
    }
}

/// Asks the run to stop; the first reason given is kept.
pub fn cancel(reason: CancelReason) {
    // Only atomics: async-signal-safe.
    let _ = REASON.compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
    CANCEL.store(true, Ordering::SeqCst);
}

extern "C" fn request_cancel(_: nix::libc::c_int) {
    cancel(CancelReason::Signal);
}

#[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
pub fn cancel_on_termination() {
    let action = SigAction::new(
        SigHandler::Handler(request_cancel),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to atomics, which is
        // async-signal-safe, and it replaces no handler anyone relies on.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::warn!("cannot handle {signal}: {e}");
        }
    }
}
