//! A listening socket handed over by systemd (`sd_listen_fds(3)`): with a
//! `.socket` unit, the socket outlives `qci serve`, so a webhook that comes
//! during a restart waits in the socket's queue for the next process instead
//! of being refused. (GitHub does not redeliver a refused webhook.)

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};

/// The first socket passed: file descriptor 3, by the protocol.
const SD_LISTEN_FDS_START: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?}: qci serve takes exactly one socket")]
    Count(String),
    #[error("the socket passed in LISTEN_FDS is not a TCP listener: {0}")]
    NotTcp(#[source] std::io::Error),
    #[error("LISTEN_FDS=1, but file descriptor 3 is not open in this process")]
    NotOpen,
}

/// The socket passed to this process, if one was: `LISTEN_PID` names this
/// process (a variable inherited by a child names its parent, and is
/// ignored) and `LISTEN_FDS` is 1.
pub fn inherited_listener() -> Result<Option<TcpListener>, ActivationError> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !for_us {
        return Ok(None);
    }
    match std::env::var("LISTEN_FDS").as_deref() {
        Ok("1") => {}
        other => return Err(ActivationError::Count(other.unwrap_or("").to_owned())),
    }
    // Owned only once known to be open: an OwnedFd of a closed descriptor
    // would abort the process when dropped.
    // SAFETY: F_GETFD reads a descriptor's flags and touches no memory.
    #[expect(unsafe_code, reason = "asking whether fd 3 is open")]
    let open = unsafe { nix::libc::fcntl(SD_LISTEN_FDS_START, nix::libc::F_GETFD) } >= 0;
    if !open {
        return Err(ActivationError::NotOpen);
    }
    // SAFETY: by the protocol, fd 3 was opened for this process and nothing
    // else in it owns that descriptor; it is taken once, here.
    #[expect(unsafe_code, reason = "taking ownership of the inherited fd 3")]
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    // Children (git, the guest channel) must not hold the socket open.
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| ActivationError::NotTcp(e.into()))?;
    let listener = TcpListener::from(fd);
    // A descriptor that is not an IPv4/IPv6 socket has no such address.
    listener.local_addr().map_err(ActivationError::NotTcp)?;
    listener
        .set_nonblocking(true)
        .map_err(ActivationError::NotTcp)?;
    Ok(Some(listener))
}
