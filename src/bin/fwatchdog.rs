//! `fwatchdog`: read the configuration, set up logging, bind, run.

use std::process::ExitCode;

fn main() -> ExitCode {
    fwatchdog::watchdog::command::main(std::env::args().skip(1), init_logging)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
