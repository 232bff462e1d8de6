//! Handler processes: spawned in a process group of their own, killed as a group, watched without
//! losing track of which pids are ours.
//!
//! Rules this module keeps:
//! - every handler is the leader of a new process group, so one `killpg` reaches everything it
//!   forked (unless a descendant deliberately left the group);
//! - every handler gets a parent-death signal, so a SIGKILLed watchdog leaves nothing running;
//! - a group is signalled only while its leader is unreaped (a zombie still pins the pgid), so a
//!   signal can never reach a reused pid;
//! - a [`HandlerProcess`] that is dropped (the request went away) kills its group and is reaped in
//!   the background: nothing outlives its request.

pub mod lines;
#[cfg(target_os = "linux")]
mod pidfd;
pub mod reaper;
pub mod spill;

use std::collections::HashSet;
use std::io;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// The pids of the watchdog's own children, so the PID 1 orphan reaper never reaps one of them
/// (which would steal its exit status from the code waiting on it).
#[derive(Debug, Default)]
pub struct ProcessTable {
    /// Held shared while spawning and registering a child, exclusively by the reaper while it
    /// decides which zombies are orphans: a child can never be seen unregistered.
    gate: RwLock<()>,
    /// Pids spawned by us and not yet reaped by us.
    live: Mutex<HashSet<i32>>,
}

impl ProcessTable {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether `pid` is one of our children that we have not reaped yet.
    pub fn is_live(&self, pid: i32) -> bool {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&pid)
    }

    /// The live process groups (their leaders' pids).
    pub fn live_groups(&self) -> Vec<i32> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Sends SIGKILL to every live group: the last step of a shutdown.
    pub fn kill_all(&self) {
        for pid in self.live_groups() {
            signal_group(pid, Signal::SIGKILL);
        }
    }

    fn insert(&self, pid: i32) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid);
    }

    fn remove(&self, pid: i32) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
    }
}

/// Sends `signal` to the process group led by `pid`; a group that is already gone is fine.
fn signal_group(pid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, error = %e, "could not signal process group"),
    }
}

/// A running handler: the leader of its own process group.
#[derive(Debug)]
pub struct HandlerProcess {
    /// The tokio child; `None` once handed to the background reaper on drop.
    child: Option<Child>,
    /// The leader's pid, which is also the group id.
    pid: i32,
    /// Becomes readable when the leader exits, without reaping it.
    #[cfg(target_os = "linux")]
    exit_fd: Option<pidfd::PidFd>,
    /// Set once the leader has been reaped: its pid may be reused from then on.
    reaped: bool,
    /// Where our children are registered.
    table: Arc<ProcessTable>,
}

impl HandlerProcess {
    /// Spawns `cmd` as the leader of a new process group with a parent-death signal.
    ///
    /// Must be called on a thread that lives as long as the watchdog (a runtime worker, not a
    /// blocking-pool thread): the parent-death signal fires when the spawning thread exits.
    pub fn spawn(table: &Arc<ProcessTable>, mut cmd: Command) -> io::Result<Self> {
        cmd.process_group(0).kill_on_drop(false);
        set_parent_death_signal(&mut cmd);
        let child = {
            let _gate = table.gate.read().unwrap_or_else(PoisonError::into_inner);
            let child = cmd.spawn()?;
            let pid = child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
            table.insert(pid);
            child
        };
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
        Ok(HandlerProcess {
            child: Some(child),
            pid,
            #[cfg(target_os = "linux")]
            exit_fd: pidfd::PidFd::open(pid).ok(),
            reaped: false,
            table: Arc::clone(table),
        })
    }

    /// The leader's pid (and group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Takes the child's stdin pipe.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    /// Takes the child's stdout pipe.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Takes the child's stderr pipe.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    /// Sends `signal` to the whole group, unless the leader was already reaped.
    pub fn signal_group(&self, signal: Signal) {
        if !self.reaped {
            signal_group(self.pid, signal);
        }
    }

    /// Kills the whole group with SIGKILL.
    pub fn kill_group(&self) {
        self.signal_group(Signal::SIGKILL);
    }

    /// Resolves when the leader has exited, without reaping it (so the group can still be
    /// signalled safely). Cancel-safe.
    pub async fn exited(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.exit_fd {
            return fd.exited().await;
        }
        // No pidfd (old kernel or sandbox): poll without reaping.
        let pid = Pid::from_raw(self.pid);
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            match waitid(Id::Pid(pid), flags) {
                Ok(WaitStatus::StillAlive) => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for the leader and reaps it, returning its exit status.
    pub async fn reap(&mut self) -> io::Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| io::Error::other("handler already handed off"))?;
        let status = child.wait().await?;
        if !self.reaped {
            self.reaped = true;
            self.table.remove(self.pid);
        }
        Ok(status)
    }

    /// The normal end of a handler: wait for the leader, kill whatever it left in its group, and
    /// reap it.
    pub async fn finish(&mut self) -> io::Result<ExitStatus> {
        self.exited().await?;
        self.kill_group();
        self.reap().await
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill_group();
        let Some(mut child) = self.child.take() else {
            return;
        };
        let table = Arc::clone(&self.table);
        let pid = self.pid;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = child.wait().await {
                        tracing::warn!(pid, error = %e, "could not reap killed handler");
                    }
                    table.remove(pid);
                });
            }
            Err(_) => {
                // No runtime left (process exit): reap synchronously; SIGKILL was sent.
                if let Err(e) = child.try_wait() {
                    tracing::warn!(pid, error = %e, "could not reap killed handler");
                }
                table.remove(pid);
            }
        }
    }
}

/// Arranges for the child to receive SIGKILL when the thread that spawned it dies.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid); it allocates nothing on success.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nothing would fire.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}
