//! Linux pidfds: learn that a child exited without reaping it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A pidfd registered with the runtime; readable once the process has exited.
#[derive(Debug)]
pub(super) struct PidFd(AsyncFd<OwnedFd>);

impl PidFd {
    /// Opens a pidfd for `pid` (Linux 5.3+).
    pub(super) fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
        // SAFETY: the kernel just handed us this fd and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `owned` is a valid open fd that the AsyncFd owns until it is dropped.
        let registered = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) };
        registered
            .map(PidFd)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Resolves once the process has exited (it stays a zombie until reaped). Cancel-safe.
    pub(super) async fn exited(&self) -> io::Result<()> {
        // A pidfd stays readable after exit; the readiness is never cleared.
        let _ready = self.0.readable().await?;
        Ok(())
    }
}
