//! One replica's supervisor: start the `fwatchdog` child in its own process group, forward its
//! log (to the gateway's log and the function's log buffer), probe `/_/ready` until it answers
//! 200, restart it with exponential backoff when it exits, and stop it (SIGTERM to its group,
//! SIGKILL after a grace period).

use std::ffi::CString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::gateway::logs::FunctionLogs;
use crate::gateway::provider::replica_log::ReplicaLog;
use crate::gateway::provider::replicas::{self, Replica};
use crate::http::proxy;
use crate::process::spawn::{BaseEnv, Program};
use crate::process::{HandlerProcess, ProcessTable};

/// First and longest pause before restarting a replica that exited.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// A replica that ran this long before exiting restarts without delay growth.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Everything one replica's supervisor needs.
pub(super) struct Supervisor {
    /// The function's name.
    pub(super) name: String,
    /// Its namespace.
    pub(super) namespace: String,
    /// Where its log lines go.
    pub(super) logs: Arc<FunctionLogs>,
    /// The replica's extra environment.
    pub(super) env: Vec<(String, String)>,
    /// Its working directory.
    pub(super) cwd: Option<CString>,
    /// Its shared state.
    pub(super) replica: Arc<Replica>,
    /// The executable.
    pub(super) fwatchdog: Arc<Program>,
    /// The inherited environment.
    pub(super) base_env: Arc<BaseEnv>,
    /// Where children are registered.
    pub(super) table: Arc<ProcessTable>,
    /// Readiness probes.
    pub(super) client: proxy::Client,
    /// Its temp directory, removed when it stops for good.
    pub(super) dir: PathBuf,
    /// Replicas of the previous configuration, which must be gone before this one starts (they
    /// may hold the same fixed upstream port).
    pub(super) after: Vec<Arc<Replica>>,
    /// How long it may take to exit after SIGTERM.
    pub(super) stop_grace: Duration,
}

impl Supervisor {
    /// Runs the replica until it is stopped, restarting it when it exits.
    pub(super) async fn run(self) {
        for old in &self.after {
            tokio::select! {
                _ = old.gone.cancelled() => {}
                _ = self.replica.stop.cancelled() => {}
            }
        }
        self.run_until_stopped().await;
        self.replica.gone.cancel();
    }

    async fn run_until_stopped(&self) {
        let mut backoff = RESTART_BACKOFF.0;
        while !self.replica.stop.is_cancelled() {
            let started = Instant::now();
            match HandlerProcess::spawn_in(
                &self.table,
                &self.fwatchdog,
                &self.base_env,
                &self.env,
                self.cwd.as_deref(),
            ) {
                Ok(process) => {
                    self.replica.pid.store(process.pid(), Ordering::SeqCst);
                    let stopped = self.supervise(process).await;
                    self.replica.pid.store(0, Ordering::SeqCst);
                    if stopped {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(function = %self.name, error = %e, "cannot start replica");
                }
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = RESTART_BACKOFF.0;
            }
            tracing::warn!(
                function = %self.name,
                replica = self.replica.serial,
                delay = %humantime::format_duration(backoff),
                "replica exited; restarting"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.replica.stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(RESTART_BACKOFF.1);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "cannot remove replica directory");
        }
    }

    /// Supervises one child until it exits (false) or the replica is stopped (true).
    async fn supervise(&self, mut process: HandlerProcess) -> bool {
        drop(process.take_stdin());
        let (addr_tx, addr_rx) = oneshot::channel();
        let sink = ReplicaLog {
            logs: Arc::clone(&self.logs),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            instance: format!("{}-{}", self.name, self.replica.serial),
        };
        if let Some(stderr) = process.take_stderr() {
            tokio::spawn(forward_log(stderr, sink.clone(), Some(addr_tx)));
        }
        if let Some(stdout) = process.take_stdout() {
            tokio::spawn(forward_log(stdout, sink, None));
        }
        let stopped = tokio::select! {
            _ = process.exited() => false,
            _ = self.replica.stop.cancelled() => true,
            _ = self.watch_readiness(addr_rx) => false,
        };
        self.set_ready(false);
        if stopped {
            process.signal_group(Signal::SIGTERM);
            if tokio::time::timeout(self.stop_grace, process.exited())
                .await
                .is_err()
            {
                tracing::warn!(function = %self.name, "replica ignored SIGTERM; killing it");
            }
        }
        process.kill_group();
        match process.reap().await {
            Ok(status) if !stopped => {
                tracing::warn!(function = %self.name, replica = self.replica.serial, %status, "replica exited");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(function = %self.name, error = %e, "cannot reap replica"),
        }
        stopped
    }

    /// Learns the replica's address, then keeps its ready flag current. Never returns while
    /// the child can still become ready.
    async fn watch_readiness(&self, addr_rx: oneshot::Receiver<SocketAddr>) {
        let Ok(addr) = addr_rx.await else {
            return std::future::pending().await;
        };
        replicas::watch_readiness(
            &self.client,
            &self.name,
            &self.replica,
            addr,
            replicas::Probe::Ready,
        )
        .await;
    }

    fn set_ready(&self, ready: bool) {
        self.replica.set_ready(&self.name, ready);
    }
}

/// Passes a child's log lines on ([`ReplicaLog`]); fwatchdog's own `listening addr=` line
/// (from its JSON log, so not a line of an http-mode upstream sharing the pipe) reports its
/// address.
async fn forward_log(
    pipe: tokio::net::unix::pipe::Receiver,
    sink: ReplicaLog,
    mut addr_tx: Option<oneshot::Sender<SocketAddr>>,
) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parsed = sink.pass_on(&line);
        let listening = match &parsed {
            Some(parsed) => parsed.text.starts_with(LISTENING_LINE),
            // An fwatchdog older than log_format=json writes text, naming its module.
            None => line.contains(OLD_LISTENING_LINE),
        };
        if listening && let Some(tx) = addr_tx.take() {
            let text = parsed.as_ref().map_or(line.as_str(), |p| p.text.as_str());
            match listening_addr(text) {
                Some(addr) => {
                    let _ = tx.send(addr);
                }
                None => addr_tx = Some(tx),
            }
        }
    }
}

/// How the listening line of an fwatchdog that logs text looks.
const OLD_LISTENING_LINE: &str = "fwatchdog::watchdog: listening addr=";

/// How fwatchdog's listening line starts.
const LISTENING_LINE: &str = "listening addr=";

/// The address in a `listening addr=IP:PORT` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find(LISTENING_LINE)? + LISTENING_LINE.len();
    let token: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let line = "listening addr=127.0.0.1:40123 mode=\"classic\"";
        assert!(line.starts_with(LISTENING_LINE));
        let old = "2026-11-28T08:10:10Z  INFO fwatchdog::watchdog: listening addr=127.0.0.1:40124";
        assert!(old.contains(OLD_LISTENING_LINE));
        assert_eq!(
            listening_addr(old),
            Some(SocketAddr::from(([127, 0, 0, 1], 40124)))
        );
        assert_eq!(
            listening_addr(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(listening_addr("nothing here"), None);
    }
}
