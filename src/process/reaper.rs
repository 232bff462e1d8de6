//! Reaping orphans when the watchdog runs as PID 1.
//!
//! Inside a container without an init process, every orphaned grandchild is re-parented to the
//! watchdog. Nobody else will wait for them, so they would pile up as zombies. The reaper waits
//! for them **by pid**, never with `waitpid(-1)`, and never for a pid in the [`ProcessTable`], so
//! the exit status of the watchdog's own children always reaches the code awaiting it.

use std::sync::{Arc, PoisonError};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::ProcessTable;

/// Starts the orphan reaper when this process is PID 1; returns whether it was started.
pub fn spawn_if_pid1(table: Arc<ProcessTable>, shutdown: CancellationToken) -> bool {
    if std::process::id() != 1 {
        return false;
    }
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "running as PID 1 but cannot watch SIGCHLD; orphans will not be reaped");
            return false;
        }
    };
    tracing::info!("running as PID 1: reaping orphaned processes");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                s = sigchld.recv() => if s.is_none() { break },
            }
            reap_orphans(&table);
        }
    });
    true
}

/// Reaps every zombie child of ours that is not in `table`. Returns how many were reaped.
pub fn reap_orphans(table: &ProcessTable) -> usize {
    let me = std::process::id() as i32;
    let candidates = zombie_children(me);
    if candidates.is_empty() {
        return 0;
    }
    // With the gate held exclusively no spawn is between fork and registration.
    let _gate = table.gate.write().unwrap_or_else(PoisonError::into_inner);
    let mut reaped = 0;
    for pid in candidates {
        if table.is_live(pid) {
            continue;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(_) => reaped += 1,
            Err(nix::errno::Errno::ECHILD) => {}
            Err(e) => tracing::debug!(pid, error = %e, "could not reap orphan"),
        }
    }
    reaped
}

/// The pids of zombie processes whose parent is `parent`, read from `/proc`.
fn zombie_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, ppid)| state == 'Z' && ppid == parent)
        })
        .collect()
}

/// The fields of a `/proc/PID/stat` line after the command name (which is in parentheses and
/// may itself contain spaces or parentheses): the state first, as field 3 of `proc(5)`.
pub fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Parses the state and parent pid out of a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let mut fields = stat_fields(stat)?;
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        assert_eq!(parse_stat("42 (sleep) Z 1 42 42 0"), Some(('Z', 1)));
        assert_eq!(parse_stat("42 (odd) name)) S 7 42 42 0"), Some(('S', 7)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
