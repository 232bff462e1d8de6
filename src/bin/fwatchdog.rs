//! `fwatchdog`: read the configuration, set up logging, bind, run.

use std::net::SocketAddr;
use std::process::ExitCode;

use fwatchdog::config::{HealthcheckConfig, ProcessEnv, WatchdogConfig};
use fwatchdog::watchdog::{self, Watchdog, health};
use tokio::net::TcpListener;

/// Exit code for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

const USAGE: &str = "usage: fwatchdog [-version] [-run-healthcheck]

Runs the command in env fprocess once per HTTP request on port 8080 (env port).
See the README for every environment variable.";

fn main() -> ExitCode {
    let mut healthcheck = false;
    for arg in std::env::args().skip(1) {
        match arg.trim_start_matches('-') {
            "version" => {
                println!(
                    "Version: {}\tSHA: {}",
                    fwatchdog::VERSION,
                    fwatchdog::GIT_SHA
                );
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

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
    #[error("cannot listen on port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on metrics_port {port}: {source}")]
    BindMetrics {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Watchdog(#[from] watchdog::WatchdogError),
}

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
    let signals = fwatchdog::shutdown::signals().map_err(ServeError::Signals)?;
    let shutdown = async {
        let name = signals.await;
        tracing::info!(signal = name, "shutdown requested");
    };
    watchdog::run(Watchdog::new(config)?, listener, metrics_listener, shutdown).await?;
    Ok(())
}
