//! `fgateway`: parse the command line, set up logging, bind, run.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fwatchdog::gateway::cli::{Cli, Command, UpArgs, WorkerCmdArgs};
use fwatchdog::gateway::{self, Gateway};
use fwatchdog::queue::worker::{Worker, WorkerCounters};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Exit code for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let command = match cli.command {
        Command::Watchdog(args) => {
            return fwatchdog::watchdog::command::main(args.args);
        }
        command => command,
    };
    fwatchdog::logging::init_gateway(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fgateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Up(args) => runtime.block_on(up(*args)),
        Command::Worker(args) => runtime.block_on(worker(*args)),
        Command::Watchdog(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = fwatchdog::http::proxy::error_chain(&*e);
            tracing::error!("{message}");
            eprintln!("fgateway: {message}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Why `up` stopped.
#[derive(Debug, thiserror::Error)]
enum UpError {
    #[error("cannot listen on port {port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayError),
}

impl UpError {
    fn exit_code(&self) -> u8 {
        match self {
            UpError::Gateway(
                gateway::GatewayError::Stack(_)
                | gateway::GatewayError::Deploy { .. }
                | gateway::GatewayError::Auth(_)
                | gateway::GatewayError::QueueKind(_)
                | gateway::GatewayError::JetStream(
                    fwatchdog::queue::jetstream::SetupError::Name(_)
                    | fwatchdog::queue::jetstream::SetupError::Url { .. }
                    | fwatchdog::queue::jetstream::SetupError::Conflict { .. }
                    | fwatchdog::queue::jetstream::SetupError::AckPolicy { .. },
                )
                | gateway::GatewayError::TriggersNats(
                    fwatchdog::gateway::triggers::subjects::ConnectError::Url(_),
                )
                | gateway::GatewayError::Secret { .. }
                | gateway::GatewayError::Provider(
                    fwatchdog::gateway::provider::docker::ConnectError::Host(_),
                ),
            ) => EXIT_CONFIG,
            _ => 1,
        }
    }
}

async fn up(args: UpArgs) -> Result<(), Box<UpError>> {
    let listener = TcpListener::bind(SocketAddr::from((args.bind_address, args.port)))
        .await
        .map_err(|source| UpError::Bind {
            port: args.port,
            source,
        })?;
    let signals = fwatchdog::shutdown::signals().map_err(UpError::Signals)?;
    let (gateway, worker) = Gateway::up(&args).await.map_err(UpError::from)?;
    let shutdown = async {
        let name = signals.await;
        tracing::info!(signal = name, "shutdown requested");
    };
    gateway::run(gateway, worker, listener, shutdown)
        .await
        .map_err(UpError::from)?;
    Ok(())
}

/// `fgateway worker`: runs asynchronous calls through a gateway's /function/ route.
async fn worker(args: WorkerCmdArgs) -> Result<(), Box<UpError>> {
    let signals = fwatchdog::shutdown::signals().map_err(UpError::Signals)?;
    let queue = gateway::open_queue(&args.data_dir, &args.queue, args.worker.lease)
        .await
        .map_err(UpError::from)?;
    let config =
        gateway::worker_config(&args.worker, args.upstream_timeout, Duration::from_secs(30))
            .map_err(UpError::from)?;
    let invoker = Arc::new(gateway::asynchronous::RemoteInvoker {
        gateway: args.gateway.clone(),
        client: fwatchdog::http::proxy::client(),
        max_result: args.worker.max_async_result,
    });
    let worker = Worker::new(
        Arc::clone(&queue),
        invoker,
        config,
        WorkerCounters::default(),
        Arc::new(tokio::sync::Notify::new()),
    );
    let stop = CancellationToken::new();
    let expiry = tokio::spawn(gateway::expire_calls(queue, stop.clone()));
    let run = tokio::spawn(worker.run(stop.clone()));
    tracing::info!(gateway = %args.gateway, "worker running");
    let name = signals.await;
    tracing::info!(signal = name, "shutdown requested");
    stop.cancel();
    let _ = run.await;
    let _ = expiry.await;
    Ok(())
}
