//! Health: the lock file, `/_/health`, `/_/ready`, and the `-run-healthcheck` probe.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{HealthcheckConfig, WatchdogConfig};

/// Whether the watchdog is accepting work, and where its lock file is.
#[derive(Debug)]
pub struct Health {
    /// False from the moment a shutdown starts.
    accepting: AtomicBool,
    /// The lock file, unless `suppress_lock` is set.
    lock_path: Option<PathBuf>,
}

/// The lock file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write lock file {path}; to run without one set suppress_lock=true")]
pub struct LockFileError {
    /// The lock file.
    path: PathBuf,
    /// Why.
    #[source]
    source: std::io::Error,
}

impl Health {
    /// Health for `config`; not accepting until [`Health::start`].
    pub fn new(config: &WatchdogConfig) -> Self {
        Health {
            accepting: AtomicBool::new(false),
            lock_path: (!config.suppress_lock).then(|| config.lock_path.clone()),
        }
    }

    /// Writes the lock file and starts reporting healthy.
    pub fn start(&self) -> Result<(), LockFileError> {
        if let Some(path) = &self.lock_path {
            write_lock(path).map_err(|source| LockFileError {
                path: path.clone(),
                source,
            })?;
        }
        self.accepting.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Starts reporting unhealthy and removes the lock file (a shutdown began).
    pub fn stop(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        if let Some(path) = &self.lock_path {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed lock file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove lock file")
                }
            }
        }
    }

    /// Whether `/_/health` answers 200: accepting, and the lock file (if any) still exists
    /// (operators may delete it to take the function out of rotation).
    pub fn healthy(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && self.lock_path.as_deref().is_none_or(Path::exists)
    }
}

fn write_lock(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o660)
        .open(path)
        .map(drop)
}

/// The `-run-healthcheck` probe: 0 when healthy, 1 otherwise.
///
/// With a lock file, its existence decides (as OpenFaaS's watchdogs do). With
/// `suppress_lock=true` there is none, so the probe asks the running watchdog's `/_/health`.
pub fn run_healthcheck(config: &HealthcheckConfig) -> i32 {
    if !config.suppress_lock {
        if config.lock_path.exists() {
            return 0;
        }
        eprintln!("unable to find lock file {}", config.lock_path.display());
        return 1;
    }
    if config.port == 0 {
        eprintln!("suppress_lock=true and port=0: nothing to probe; reporting healthy");
        return 0;
    }
    match probe_http(SocketAddr::from((Ipv4Addr::LOCALHOST, config.port))) {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("/_/health did not answer 200");
            1
        }
        Err(e) => {
            eprintln!("cannot reach /_/health on port {}: {e}", config.port);
            1
        }
    }
}

/// A minimal blocking `GET /_/health`; true on a 200 answer.
fn probe_http(addr: SocketAddr) -> std::io::Result<bool> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /_/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}
