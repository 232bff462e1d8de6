//! The `fwatchdog` command: arguments, configuration from the environment, binding, running.
//!
//! Both binaries use it: `fwatchdog` itself, and `fgateway watchdog`, which lets the local
//! provider run replicas from the gateway's own executable when no `fwatchdog` is installed
//! beside it (for example after `cargo run --bin fgateway`).

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;

use super::{Watchdog, WatchdogError, health};
use crate::config::{HealthcheckConfig, ProcessEnv, WatchdogConfig};

/// Exit code for configuration errors (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// The usage text.
const USAGE: &str = "usage: fwatchdog [-version] [-run-healthcheck]

Runs the command in env fprocess once per HTTP request on port 8080 (env port).
See the README for every environment variable.";

/// Runs the watchdog with the command-line `args` (without the program name) and the process
/// environment. Logging is set up once the configuration is valid, before serving.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let mut healthcheck = false;
    for arg in args {
        match arg.trim_start_matches('-') {
            "version" => {
                println!("Version: {}\tSHA: {}", crate::VERSION, crate::GIT_SHA);
                return ExitCode::SUCCESS;
            }
            "run-healthcheck" => healthcheck = true,
            "h" | "help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("fwatchdog: unknown argument {arg:?}\n{USAGE}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if healthcheck {
        return match HealthcheckConfig::from_env(&ProcessEnv) {
            Ok(c) => ExitCode::from(u8::try_from(health::run_healthcheck(&c)).unwrap_or(1)),
            Err(e) => {
                eprintln!("fwatchdog: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let config = match WatchdogConfig::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fwatchdog: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init_watchdog(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fwatchdog: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fwatchdog: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors after configuration was accepted.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The HTTP port cannot be bound.
    #[error("cannot listen on port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metrics port cannot be bound.
    #[error("cannot listen on metrics_port {port}: {source}")]
    BindMetrics {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The watchdog failed.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
}

/// Binds the ports and runs the watchdog until SIGTERM/SIGINT.
async fn serve(config: WatchdogConfig) -> Result<(), ServeError> {
    let any = |port| SocketAddr::from((config.bind_address, port));
    let listener = TcpListener::bind(any(config.port))
        .await
        .map_err(|source| ServeError::Bind {
            port: config.port,
            source,
        })?;
    let metrics_listener = match config.metrics_port {
        None => None,
        Some(port) => Some(
            TcpListener::bind(any(port))
                .await
                .map_err(|source| ServeError::BindMetrics { port, source })?,
        ),
    };
    let signals = crate::shutdown::signals().map_err(ServeError::Signals)?;
    let shutdown = async {
        let name = signals.await;
        tracing::info!(signal = name, "shutdown requested");
    };
    super::run(Watchdog::new(config)?, listener, metrics_listener, shutdown).await?;
    Ok(())
}
