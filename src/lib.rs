//! fwatchdog: a fast, lean function runtime compatible with OpenFaaS's watchdogs.
//!
//! Map of the modules:
//! - [`config`]: environment variables parsed once into typed values, with errors that name the
//!   variable, the value and the accepted form.
//! - [`process`]: handler processes in their own process group, group kills, parent-death
//!   signals, pipe output that spills to disk, log line forwarding, and the PID 1 orphan reaper.
//! - [`watchdog`]: the HTTP server: routing, health and lock file, concurrency limit, metrics,
//!   and the fork-per-request modes (classic, serializing, streaming).
//! - [`shutdown`]: SIGTERM/SIGINT as a future.
//!
//! The binaries in `src/bin/` only parse configuration, set up logging, bind and call
//! [`watchdog::run`].

pub mod config;
pub mod process;
pub mod proxy;
pub mod shutdown;
pub mod watchdog;

/// The version printed by `-version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from, when the build environment provides it.
pub const GIT_SHA: &str = match option_env!("FWATCHDOG_GIT_SHA") {
    Some(sha) => sha,
    None => "unknown",
};
