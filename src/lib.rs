//! fwatchdog: a fast, lean function runtime compatible with OpenFaaS's watchdogs.
//!
//! Map of the modules:
//! - [`config`]: environment variables parsed once into typed values, with errors that name the
//!   variable, the value and the accepted form.
//! - [`process`]: handler processes in their own process group, group kills, parent-death
//!   signals, pipe output that spills to disk, log line forwarding, and the PID 1 orphan reaper.
//! - [`http`]: HTTP plumbing both binaries use: response body types, the accept loop and its
//!   connection guards (lingering close, framing checks, limits), and reverse proxying (pooled
//!   client, hop-by-hop headers, upstream URLs, upgrade tunnels).
//! - [`watchdog`]: the HTTP server: routing, health and lock file, concurrency limit, metrics,
//!   the fork-per-request modes (classic, serializing, streaming), the http-mode upstream proxy
//!   and static files.
//! - [`gateway`]: fgateway: `/function/*` proxying, the function registry and its providers
//!   (local fwatchdog processes, static upstreams), the system API, basic auth, metrics.
//! - [`queue`]: asynchronous calls: the `Queue` trait, the embedded SQLite backend, and the
//!   worker that runs calls, retries them and delivers callbacks.
//! - [`logging`]: the log formats (fwatchdog's Go-`log`-style text, fgateway's, JSON) and how
//!   the gateway reads its replicas' lines.
//! - [`shutdown`]: SIGTERM/SIGINT as a future.
//! - `fuzzing` (hidden): the fuzz targets' entry points, shared with the corpus replay test.
//!
//! The binaries in `src/bin/` only parse configuration, set up logging, bind and call
//! [`watchdog::run`] or [`gateway::run`].

pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod logging;
pub mod process;
pub mod queue;
pub mod shutdown;
pub mod watchdog;

/// The version printed by `-version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from, when the build environment provides it.
pub const GIT_SHA: &str = match option_env!("FWATCHDOG_GIT_SHA") {
    Some(sha) => sha,
    None => "unknown",
};
