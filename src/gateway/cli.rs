//! The `fgateway` command line. Every option can also come from an environment variable with
//! the option's name in lower snake case (`--upstream-timeout` ↔ `upstream_timeout`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::parse;
use crate::gateway::provider::docker::{OnExit, PullPolicy};

/// fgateway: a lightweight function gateway.
#[derive(Debug, Parser)]
#[command(name = "fgateway", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written to standard error: text, or one JSON object per line. The
    /// lines of local replicas come through in the same format, naming their function and
    /// replica.
    #[arg(
        long,
        global = true,
        env = "log_format",
        value_enum,
        ignore_case = true,
        default_value_t = crate::logging::LogFormat::Text
    )]
    pub log_format: crate::logging::LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with its function provider and an asynchronous-call worker.
    Up(Box<UpArgs>),
    /// Run only a worker for asynchronous calls, calling functions through a gateway.
    Worker(Box<WorkerCmdArgs>),
    /// Run as fwatchdog (what the local provider starts when no fwatchdog executable is found).
    #[command(hide = true)]
    Watchdog(WatchdogCmdArgs),
}

/// Arguments of `fgateway watchdog`: fwatchdog's own (`-version`, `-run-healthcheck`).
#[derive(Debug, Clone, Args)]
pub struct WatchdogCmdArgs {
    /// Passed to fwatchdog unchanged.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Where functions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Each function runs as fwatchdog child processes of the gateway, on loopback ports.
    Local,
    /// Each function runs as containers of its image, through the Docker Engine API (Docker,
    /// or Podman's API service).
    Docker,
    /// Functions run elsewhere, at a fixed URL (stack file `upstream:`) or at the URL made from
    /// --upstream-template.
    Static,
    /// Each function is a Deployment and a Service on a Kubernetes cluster (in a pod: its
    /// service account; outside: KUBECONFIG or ~/.kube/config), which holds what is deployed;
    /// calls go straight to ready pods.
    Kubernetes,
}

/// Options of `fgateway up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Stack file (OpenFaaS stack.yml format) whose functions are deployed at start-up, on top of
    /// those restored from the data directory.
    #[arg(
        short = 'f',
        long = "file",
        env = "stack_file",
        value_name = "STACK_YML"
    )]
    pub file: Option<PathBuf>,

    /// Port to serve on; 0 picks a free port (the chosen address is logged as `listening addr=`).
    #[arg(long, env = "port", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "bind_address", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Directory for the gateway's state (deployed functions, in fgateway.db) and the local
    /// provider's per-replica temp directories.
    #[arg(long, env = "data_dir", default_value = "fgateway-data")]
    pub data_dir: PathBuf,

    /// Where functions run.
    #[arg(long, env = "provider", value_enum, default_value_t = ProviderKind::Local)]
    pub provider: ProviderKind,

    /// Kubernetes provider: how function pods are probed for readiness and liveness.
    #[arg(long, env = "kube_probe", value_enum, default_value_t = crate::gateway::provider::kubernetes::ProbeKind::Http)]
    pub kube_probe: crate::gateway::provider::kubernetes::ProbeKind,

    /// Kubernetes provider: how calls reach function pods.
    #[arg(long, env = "kube_route", value_enum, default_value_t = crate::gateway::provider::kubernetes::RouteKind::Direct)]
    pub kube_route: crate::gateway::provider::kubernetes::RouteKind,

    /// Static provider: URL of functions without a fixed upstream, with {name} and {namespace}
    /// filled in, e.g. http://{name}.{namespace}.svc.cluster.local:8080.
    #[arg(long, env = "upstream_template", value_name = "URL")]
    pub upstream_template: Option<String>,

    /// Local provider: the fwatchdog executable [default: the one next to fgateway, else PATH,
    /// else fgateway itself, which can run as fwatchdog].
    #[arg(long, env = "fwatchdog", value_name = "PATH")]
    pub fwatchdog: Option<PathBuf>,

    /// Docker provider: the engine's API address, unix:///PATH or tcp://HOST:PORT (a Podman
    /// socket works the same way) [default: DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,

    /// Docker provider: when a function's image is pulled (checked at every deployment).
    #[arg(long, env = "image_pull", value_enum, default_value_t = PullPolicy::IfNotPresent)]
    pub image_pull: PullPolicy,

    /// Docker provider: what happens to the function containers when the gateway exits. `keep`
    /// leaves them serving, and the next gateway with the same data directory adopts them;
    /// `stop` stops and removes them.
    #[arg(long, env = "docker_on_exit", value_enum, default_value_t = OnExit::Keep)]
    pub docker_on_exit: OnExit,

    /// Longest a function call may take, response body included; past it the caller gets 504
    /// (or, once the response started, an aborted body). Seconds ("60") or a duration ("90s").
    #[arg(long, env = "upstream_timeout", default_value = "60s", value_parser = duration)]
    pub upstream_timeout: Duration,

    /// Longest a client may take to send a request: its headers, then its whole body (a stall
    /// gets 408). Seconds or a duration.
    #[arg(long, env = "read_timeout", default_value = "60s", value_parser = duration)]
    pub read_timeout: Duration,

    /// Longest a request body may pause between two pieces (a stall gets 408). Seconds or a
    /// duration.
    #[arg(long, env = "read_idle_timeout", default_value = "10s", value_parser = duration)]
    pub read_idle_timeout: Duration,

    /// Bytes of recent log lines kept per function for GET /system/logs (lines past
    /// 16 KiB are cut; the oldest lines go first): bytes, or with a unit (1MiB).
    #[arg(long, env = "function_log_buffer", default_value = "1MiB", value_parser = size)]
    pub function_log_buffer: usize,

    /// Longest life of an upgraded connection (websocket) through the gateway. Seconds or a
    /// duration.
    #[arg(long, env = "upgrade_timeout", default_value = "1h", value_parser = duration)]
    pub upgrade_timeout: Duration,

    /// Scale functions by their com.openfaas.scale.* labels (and to zero with
    /// com.openfaas.scale.zero=true).
    #[arg(
        long,
        env = "autoscale",
        default_value = "true",
        default_missing_value = "true",
        num_args = 0..=1,
        value_parser = boolean
    )]
    pub autoscale: bool,

    /// Time between two autoscaler rounds. Seconds or a duration.
    #[arg(long, env = "autoscale_interval", default_value = "2s", value_parser = duration)]
    pub autoscale_interval: Duration,

    /// How long load must stay low before the autoscaler removes replicas.
    #[arg(long, env = "scale_down_window", default_value = "60s", value_parser = duration)]
    pub scale_down_window: Duration,

    /// Most client connections open at once; more are answered 503 and closed. 0: no limit.
    #[arg(long, env = "max_connections", default_value_t = 0)]
    pub max_connections: usize,

    /// On SIGTERM/SIGINT, how long in-flight requests get to finish before functions are stopped.
    #[arg(long, env = "shutdown_timeout", default_value = "30s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// Require basic authentication on /system/* (credentials from --secret-mount-path).
    #[arg(
        long,
        env = "basic_auth",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        value_parser = boolean
    )]
    pub basic_auth: bool,

    /// Directory holding the files basic-auth-user and basic-auth-password.
    #[arg(
        long,
        env = "secret_mount_path",
        default_value = "/var/openfaas/secrets"
    )]
    pub secret_mount_path: PathBuf,

    /// Largest body an asynchronous call may have (413 past it): bytes, or with a unit (8MiB).
    #[arg(long, env = "max_async_body", default_value = "8MiB", value_parser = size)]
    pub max_async_body: usize,

    /// Hosts (or host:port) callbacks may go to, comma-separated; empty allows any http(s) URL.
    #[arg(
        long,
        env = "callback_allowlist",
        value_delimiter = ',',
        value_name = "HOSTS"
    )]
    pub callback_allowlist: Vec<String>,

    /// Do not run an asynchronous-call worker in this process (run `fgateway worker` instead).
    #[arg(
        long,
        env = "no_worker",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        value_parser = boolean
    )]
    pub no_worker: bool,

    /// NATS server(s) whose subjects trigger functions (their `topic` annotation), comma-
    /// separated nats:// URLs [default: the queue's servers when the queue is on NATS; else
    /// none, and subjects trigger nothing].
    #[arg(long, env = "triggers_nats", value_name = "URLS")]
    pub triggers_nats: Option<String>,

    /// Queue settings.
    #[command(flatten)]
    pub queue: QueueArgs,

    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// Options of `fgateway worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerCmdArgs {
    /// The gateway whose /function/ route runs the calls, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "gateway", value_name = "URL")]
    pub gateway: http::Uri,

    /// The data directory shared with the gateway (holds the embedded queue).
    #[arg(long, env = "data_dir", default_value = "fgateway-data")]
    pub data_dir: PathBuf,

    /// Longest a function call may take. Seconds or a duration.
    #[arg(long, env = "upstream_timeout", default_value = "60s", value_parser = duration)]
    pub upstream_timeout: Duration,

    /// Queue settings.
    #[command(flatten)]
    pub queue: QueueArgs,

    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// Where asynchronous calls are stored.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Queue backend: `embedded` (SQLite in the data directory), or a NATS JetStream server,
    /// `nats://HOST:4222` (several, comma-separated, for a cluster), shared by any number of
    /// gateways and workers.
    #[arg(long, env = "queue", default_value = "embedded")]
    pub queue: String,

    /// JetStream: the request stream's name (the dead-letter and callback streams, the
    /// consumers and the status bucket are named after it).
    #[arg(long, env = "nats_stream", default_value = "faas-request")]
    pub nats_stream: String,

    /// JetStream: replicas of the streams and the bucket (1 for one server; 3 or 5 in a
    /// cluster).
    #[arg(long, env = "nats_replicas", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,

    /// JetStream: how long start-up waits for the server, and for its JetStream to take the
    /// streams.
    #[arg(long, env = "nats_connect_timeout", default_value = "30s", value_parser = duration)]
    pub nats_connect_timeout: Duration,

    /// JetStream: longest an enqueue keeps trying while the cluster cannot take it (a leader
    /// election after a node loss); then the caller gets 503 with Retry-After and the call id.
    #[arg(long, env = "nats_enqueue_timeout", default_value = "5s", value_parser = duration)]
    pub nats_enqueue_timeout: Duration,

    /// How long finished calls, their results and their idempotency keys are kept.
    #[arg(long, env = "retention", default_value = "24h", value_parser = duration)]
    pub retention: Duration,

    /// Most result bytes `GET /async-function/status/ID` shows.
    #[arg(long, env = "status_result_cap", default_value = "64KiB", value_parser = size)]
    pub status_result_cap: usize,
}

/// How asynchronous calls are run.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Asynchronous calls running at once, at most.
    #[arg(long, env = "max_inflight", default_value_t = 64)]
    pub max_inflight: usize,

    /// Asynchronous calls running at once per function, at most.
    #[arg(long, env = "max_inflight_per_function", default_value_t = 16)]
    pub max_inflight_per_function: usize,

    /// Lease of a running call; extended while it runs, so a longer call never runs twice.
    #[arg(long, env = "lease", default_value = "30s", value_parser = duration)]
    pub lease: Duration,

    /// Attempts per call at most (the first included); then it is dead-lettered.
    #[arg(long, env = "max_retry_attempts", default_value_t = 5)]
    pub max_retry_attempts: u32,

    /// No retry once a call is this old.
    #[arg(long, env = "max_retry_age", default_value = "1h", value_parser = duration)]
    pub max_retry_age: Duration,

    /// First retry delay; doubles each attempt, with jitter (Retry-After wins when sent).
    #[arg(long, env = "retry_backoff", default_value = "1s", value_parser = duration)]
    pub retry_backoff: Duration,

    /// Longest retry delay.
    #[arg(long, env = "retry_backoff_max", default_value = "5m", value_parser = duration)]
    pub retry_backoff_max: Duration,

    /// Longest a callback delivery may take.
    #[arg(long, env = "callback_timeout", default_value = "10s", value_parser = duration)]
    pub callback_timeout: Duration,

    /// Callback delivery attempts at most.
    #[arg(long, env = "callback_attempts", default_value_t = 10)]
    pub callback_attempts: u32,

    /// First callback retry delay; doubles each attempt.
    #[arg(long, env = "callback_backoff", default_value = "1s", value_parser = duration)]
    pub callback_backoff: Duration,

    /// Longest callback retry delay.
    #[arg(long, env = "callback_backoff_max", default_value = "5m", value_parser = duration)]
    pub callback_backoff_max: Duration,

    /// Largest function response an asynchronous call keeps (for its callback and status);
    /// a larger one fails the attempt.
    #[arg(long, env = "max_async_result", default_value = "8MiB", value_parser = size)]
    pub max_async_result: usize,

    /// File holding the key for the callback signature header (X-Fgateway-Signature:
    /// sha256=HMAC of the body).
    #[arg(long, env = "callback_secret_file", value_name = "PATH")]
    pub callback_secret_file: Option<PathBuf>,

    /// Refuse callbacks to loopback, private, shared (CGNAT) and unique-local addresses too
    /// (link-local and cloud metadata addresses are always refused).
    #[arg(
        long,
        env = "callback_deny_private",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        value_parser = boolean
    )]
    pub callback_deny_private: bool,
}

/// A size option.
fn size(value: &str) -> Result<usize, String> {
    parse::size(value).map_err(|expected| format!("expected {expected}"))
}

/// A duration option: seconds or a humantime duration; zero is refused (it would fail every call).
fn duration(value: &str) -> Result<Duration, String> {
    match parse::duration(value) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err("must be more than 0".to_string()),
        Err(expected) => Err(format!("expected {expected}")),
    }
}

/// A boolean option, in the forms fwatchdog accepts.
fn boolean(value: &str) -> Result<bool, String> {
    parse::boolean(value).map_err(|expected| format!("expected {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_up_with_defaults_and_flags() {
        let cli =
            Cli::try_parse_from(["fgateway", "up", "-f", "stack.yml", "--port", "0"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.file, Some(PathBuf::from("stack.yml")));
        assert_eq!(up.port, 0);
        assert_eq!(up.upstream_timeout, Duration::from_secs(60));
        assert!(!up.basic_auth);
        assert_eq!(up.provider, ProviderKind::Local);

        let cli = Cli::try_parse_from([
            "fgateway",
            "up",
            "--basic-auth",
            "--upstream-timeout",
            "1m30s",
            "--provider",
            "static",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert!(up.basic_auth);
        assert_eq!(up.upstream_timeout, Duration::from_secs(90));
        assert_eq!(up.provider, ProviderKind::Static);

        assert!(Cli::try_parse_from(["fgateway", "up", "--upstream-timeout", "soon"]).is_err());
        assert!(Cli::try_parse_from(["fgateway", "up", "--upstream-timeout", "0"]).is_err());
    }
}
