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
mod pidfd;
pub mod reaper;
pub mod spawn;
pub mod spill;

use std::collections::HashSet;
use std::io;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::net::unix::pipe;

pub use spawn::{BaseEnv, Program};

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

/// Everything needed to start the configured handler: the resolved program, the inherited
/// environment, and the table the children are registered in.
#[derive(Debug)]
pub struct Launcher {
    /// Our children.
    pub table: Arc<ProcessTable>,
    /// The handler program.
    pub program: Program,
    /// The environment every handler inherits.
    pub base_env: BaseEnv,
}

impl Launcher {
    /// A launcher for `argv` with the current process environment.
    pub fn new(argv: &[String]) -> io::Result<Self> {
        Ok(Launcher {
            table: ProcessTable::new(),
            program: Program::new(argv, std::env::var_os("PATH").as_deref())?,
            base_env: BaseEnv::capture(),
        })
    }

    /// Starts one handler with `extra` added to its environment.
    pub fn launch(&self, extra: &[(String, String)]) -> io::Result<HandlerProcess> {
        HandlerProcess::spawn(&self.table, &self.program, &self.base_env, extra)
    }
}

/// A running handler: the leader of its own process group.
#[derive(Debug)]
pub struct HandlerProcess {
    /// The leader's pid, which is also the group id.
    pid: i32,
    /// Becomes readable when the leader exits, without reaping it.
    exit_fd: Option<pidfd::PidFd>,
    /// Set once the leader has been reaped: its pid may be reused from then on.
    reaped: bool,
    /// Where our children are registered.
    table: Arc<ProcessTable>,
    /// The handler's stdin, until taken.
    stdin: Option<pipe::Sender>,
    /// The handler's stdout, until taken.
    stdout: Option<pipe::Receiver>,
    /// The handler's stderr, until taken.
    stderr: Option<pipe::Receiver>,
}

impl HandlerProcess {
    /// Spawns `program` as the leader of a new process group with a parent-death signal (see
    /// [`spawn`]), with `base` plus `extra` as its environment.
    ///
    /// Must be called on a thread that lives as long as the watchdog (a runtime worker, not a
    /// blocking-pool thread): the parent-death signal fires when the spawning thread exits.
    pub fn spawn(
        table: &Arc<ProcessTable>,
        program: &Program,
        base: &BaseEnv,
        extra: &[(String, String)],
    ) -> io::Result<Self> {
        Self::spawn_in(table, program, base, extra, None)
    }

    /// Like [`HandlerProcess::spawn`], in the working directory `cwd` when given (see
    /// [`spawn::directory`]).
    pub fn spawn_in(
        table: &Arc<ProcessTable>,
        program: &Program,
        base: &BaseEnv,
        extra: &[(String, String)],
        cwd: Option<&std::ffi::CStr>,
    ) -> io::Result<Self> {
        let spawned = {
            let _gate = table.gate.read().unwrap_or_else(PoisonError::into_inner);
            let spawned = spawn::spawn_in(program, base, extra, cwd)?;
            table.insert(spawned.pid);
            spawned
        };
        let pid = spawned.pid;
        // From here on, dropping `process` kills and reaps the child.
        let mut process = HandlerProcess {
            pid,
            exit_fd: pidfd::PidFd::open(pid).ok(),
            reaped: false,
            table: Arc::clone(table),
            stdin: None,
            stdout: None,
            stderr: None,
        };
        process.stdin = Some(pipe::Sender::from_owned_fd(spawned.stdin)?);
        process.stdout = Some(pipe::Receiver::from_owned_fd(spawned.stdout)?);
        process.stderr = Some(pipe::Receiver::from_owned_fd(spawned.stderr)?);
        Ok(process)
    }

    /// The leader's pid (and group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Takes the child's stdin pipe.
    pub fn take_stdin(&mut self) -> Option<pipe::Sender> {
        self.stdin.take()
    }

    /// Takes the child's stdout pipe.
    pub fn take_stdout(&mut self) -> Option<pipe::Receiver> {
        self.stdout.take()
    }

    /// Takes the child's stderr pipe.
    pub fn take_stderr(&mut self) -> Option<pipe::Receiver> {
        self.stderr.take()
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
        wait_exited(self.pid, self.exit_fd.as_ref()).await
    }

    /// Waits for the leader and reaps it, returning its exit status.
    pub async fn reap(&mut self) -> io::Result<ExitStatus> {
        if self.reaped {
            return Err(io::Error::other("handler already reaped"));
        }
        self.exited().await?;
        let status = reap_exited(self.pid)?;
        self.reaped = true;
        self.table.remove(self.pid);
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

/// Resolves once `pid` (our child) has exited, leaving it unreaped.
async fn wait_exited(pid: i32, exit_fd: Option<&pidfd::PidFd>) -> io::Result<()> {
    if let Some(fd) = exit_fd {
        return fd.exited().await;
    }
    // No pidfd (old kernel or sandbox): poll without reaping.
    let pid = Pid::from_raw(pid);
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

/// Reaps `pid`, which has exited, and returns its status.
fn reap_exited(pid: i32) -> io::Result<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid on our own child's pid, which is a zombie by now.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill_group();
        let table = Arc::clone(&self.table);
        let pid = self.pid;
        let exit_fd = self.exit_fd.take();
        let reap = move || {
            if let Err(e) = reap_exited(pid) {
                tracing::warn!(pid, error = %e, "could not reap killed handler");
            }
            table.remove(pid);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if wait_exited(pid, exit_fd.as_ref()).await.is_ok() {
                        reap();
                    }
                });
            }
            // No runtime left (the process is exiting): SIGKILL was sent, reap in place.
            Err(_) => reap(),
        }
    }
}
