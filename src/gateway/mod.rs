//! fgateway: routes, the function registry and its providers, the system API, auth and metrics.
//!
//! Routes (dispatched in `router`): `/function/NAME[.NS][/path]` ([`invoke`]),
//! `/async-function/...` ([`asynchronous`]), `/system/*` ([`system`], behind basic auth when
//! enabled, see [`access`]), `/ui/` ([`ui`]), `/healthz`, `/metrics`. The registry
//! ([`registry`], with its SQLite store; [`secrets`], [`types`]) holds what is deployed, a [`provider`]
//! runs it, and [`scaling`] sets replica counts. [`run`] takes a bound listener and a shutdown
//! future; on shutdown it stops accepting, drains in-flight calls (bounded), then stops the
//! provider's functions.

pub mod access;
pub mod asynchronous;
pub mod cli;
pub mod invoke;
pub mod logs;
pub mod metrics;
pub mod provider;
pub mod registry;
mod router;
pub mod scaling;
pub mod secrets;
pub mod stack;
pub mod system;
pub mod triggers;
pub mod types;
pub mod ui;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::parse;
use crate::http::egress::EgressPolicy;
use crate::http::pinned::Pinned;
use crate::http::proxy;
use crate::http::server;
use crate::queue::Queue;
use crate::queue::embedded::{EmbeddedConfig, EmbeddedQueue};
use crate::queue::jetstream::{JetStreamConfig, JetStreamQueue};
use crate::queue::worker::{Worker, WorkerConfig};
use access::auth::{self, BasicAuth};
use cli::{ProviderKind, QueueArgs, UpArgs, WorkerArgs};
use metrics::GatewayMetrics;
use provider::Provider;
use provider::local::LocalProvider;
use provider::upstreams::UpstreamsProvider;
use registry::Registry;
use registry::store::{self, Store};

/// How long function replicas get to stop after the gateway drained.
const PROVIDER_STOP_GRACE: Duration = Duration::from_secs(10);

/// Errors that stop the gateway at start-up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The NATS servers for triggers are not usable.
    #[error(transparent)]
    TriggersNats(#[from] triggers::subjects::ConnectError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The stack file is unusable.
    #[error(transparent)]
    Stack(#[from] stack::StackError),
    /// A stack file function could not be deployed.
    #[error("cannot deploy {function} from the stack file")]
    Deploy {
        /// The function.
        function: String,
        /// Why.
        #[source]
        source: registry::RegistryError,
    },
    /// The secret store cannot be set up.
    #[error(transparent)]
    Secrets(#[from] secrets::SecretError),
    /// Basic auth is on but the credentials cannot be read.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The data directory or the local provider's run directory could not be set up.
    #[error("cannot prepare the directory {dir}")]
    RunDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The container engine cannot be used.
    #[error("docker provider")]
    Provider(#[source] provider::docker::ConnectError),
    /// The Kubernetes cluster cannot be used.
    #[error("kubernetes provider")]
    Kubernetes(#[source] provider::kubernetes::KubernetesError),
    /// The listener has no address.
    #[error("cannot read the listening address")]
    LocalAddr(#[source] std::io::Error),
    /// The queue could not be opened.
    #[error("cannot open the queue")]
    Queue(#[source] crate::queue::QueueError),
    /// The queue option names a backend this build lacks.
    #[error("invalid --queue {0:?}: expected \"embedded\" or a NATS URL, nats://HOST:4222")]
    QueueKind(String),
    /// The JetStream queue could not be set up.
    #[error(transparent)]
    JetStream(#[from] crate::queue::jetstream::SetupError),
    /// The callback secret file cannot be read.
    #[error("cannot read callback_secret_file {path}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Settings the request path needs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Longest a function call may take.
    pub upstream_timeout: Duration,
    /// Longest a client may take to send a request, headers and body.
    pub read_timeout: Duration,
    /// Longest a request body may pause between two pieces.
    pub read_idle_timeout: Duration,
    /// Most client connections open at once (more are answered 503).
    pub max_connections: Option<usize>,
    /// Longest life of an upgraded connection (websocket) through the gateway.
    pub upgrade_timeout: Duration,
    /// The autoscaler's settings, when it runs.
    pub autoscale: Option<scaling::autoscaler::AutoscalerConfig>,
    /// How long in-flight calls get on shutdown.
    pub shutdown_timeout: Duration,
    /// Largest asynchronous request body.
    pub max_async_body: usize,
    /// Hosts callbacks may go to (empty: any).
    pub callback_allowlist: Vec<String>,
    /// Addresses callbacks may reach.
    pub callback_egress: EgressPolicy,
    /// How long the queue keeps call records (schedules look back this far for their last
    /// firing).
    pub retention: Duration,
}

/// A running gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    /// Settings.
    pub config: GatewayConfig,
    /// Deployed functions.
    pub registry: Registry,
    /// Metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// `/system/*` credentials, when basic auth is on.
    auth: Option<BasicAuth>,
    /// Client for function calls.
    client: proxy::Client,
    /// Asynchronous calls.
    pub queue: Arc<dyn Queue>,
    /// Wakes the in-process worker when a call is enqueued.
    pub wake: Arc<tokio::sync::Notify>,
    /// The functions' recent log lines.
    pub logs: Arc<logs::FunctionLogs>,
    /// Secrets.
    pub secrets: Arc<secrets::SecretStore>,
    /// Upgraded connections (websockets) tunnelled to functions.
    pub tunnels: crate::http::tunnels::Tunnels,
    /// What the triggers (schedules, NATS subjects) did and will do.
    pub triggers: triggers::board::Board,
    /// The NATS connection whose subjects trigger functions, when there is one.
    trigger_nats: Option<async_nats::Client>,
}

/// Opens the queue named by `args`: the embedded one in `data_dir`, or a JetStream server
/// (`nats://...`), whose shared consumer gets `lease` as its ack wait when this process creates
/// it.
pub async fn open_queue(
    data_dir: &std::path::Path,
    args: &QueueArgs,
    lease: Duration,
) -> Result<Arc<dyn Queue>, GatewayError> {
    if args.queue.starts_with("nats://") || args.queue.starts_with("tls://") {
        let queue = JetStreamQueue::connect(JetStreamConfig {
            url: args.queue.clone(),
            stream: args.nats_stream.clone(),
            replicas: usize::from(args.nats_replicas),
            retention: args.retention,
            result_cap: args.status_result_cap,
            lease,
            connect_timeout: args.nats_connect_timeout,
            enqueue_within: args.nats_enqueue_timeout,
        })
        .await?;
        return Ok(Arc::new(queue));
    }
    if args.queue != "embedded" {
        return Err(GatewayError::QueueKind(args.queue.clone()));
    }
    let queue = EmbeddedQueue::open(
        &data_dir.join(store::DB_FILE),
        EmbeddedConfig {
            retention: args.retention,
            result_cap: args.status_result_cap,
        },
    )
    .map_err(GatewayError::Queue)?;
    Ok(Arc::new(queue))
}

/// The worker settings from the command line.
pub fn worker_config(
    args: &WorkerArgs,
    call_timeout: Duration,
    drain: Duration,
) -> Result<WorkerConfig, GatewayError> {
    let signing_secret = match &args.callback_secret_file {
        None => None,
        Some(path) => Some(
            auth::read_secret(path).map_err(|source| GatewayError::Secret {
                path: path.clone(),
                source,
            })?,
        ),
    };
    Ok(WorkerConfig {
        owner: Worker::owner_name(),
        max_inflight: args.max_inflight.max(1),
        per_function: args.max_inflight_per_function.max(1),
        lease: args.lease,
        max_retry_attempts: args.max_retry_attempts.max(1),
        max_retry_age: args.max_retry_age,
        retry_backoff: args.retry_backoff,
        retry_backoff_max: args.retry_backoff_max,
        call_timeout,
        callback_timeout: args.callback_timeout,
        callback_attempts: args.callback_attempts.max(1),
        callback_backoff: args.callback_backoff,
        callback_backoff_max: args.callback_backoff_max,
        signing_secret,
        egress: EgressPolicy {
            deny_private: args.callback_deny_private,
        },
        drain,
    })
}

impl Gateway {
    /// Builds the gateway for `fgateway up`: opens the store, creates the provider, restores the
    /// deployed functions and deploys the stack file's. Must run inside the runtime.
    pub async fn up(args: &UpArgs) -> Result<(Arc<Gateway>, Option<Arc<Worker>>), GatewayError> {
        let auth = if args.basic_auth {
            Some(BasicAuth::load(&args.secret_mount_path)?)
        } else {
            None
        };
        // Resolved once: replicas run in other working directories, so no path handed to them
        // may be relative.
        let data_dir =
            std::path::absolute(&args.data_dir).map_err(|source| GatewayError::RunDir {
                dir: args.data_dir.clone(),
                source,
            })?;
        let store = Arc::new(Store::open(&data_dir)?);
        let queue = open_queue(&data_dir, &args.queue, args.worker.lease).await?;
        let trigger_urls = args.triggers_nats.clone().or_else(|| {
            let q = &args.queue.queue;
            (q.starts_with("nats://") || q.starts_with("tls://")).then(|| q.clone())
        });
        let trigger_nats = match trigger_urls {
            None => None,
            Some(urls) => Some(
                triggers::subjects::connect(&urls)
                    .await
                    .map_err(GatewayError::TriggersNats)?,
            ),
        };
        let worker_config =
            worker_config(&args.worker, args.upstream_timeout, args.shutdown_timeout)?;
        let function_logs = Arc::new(logs::FunctionLogs::new(args.function_log_buffer));
        let metrics = Arc::new(GatewayMetrics::new());
        let provider: Arc<dyn Provider> = match args.provider {
            ProviderKind::Local => {
                let fwatchdog = args
                    .fwatchdog
                    .as_ref()
                    .map_or_else(LocalProvider::find_fwatchdog, |p| {
                        vec![p.display().to_string()]
                    });
                tracing::info!(fwatchdog = %fwatchdog.join(" "), "local provider");
                let run_dir = data_dir.join("run");
                Arc::new(
                    LocalProvider::new(
                        &fwatchdog,
                        run_dir.clone(),
                        Arc::clone(&function_logs),
                        data_dir.join(secrets::MOUNTS_DIR),
                    )
                    .map_err(|source| GatewayError::RunDir {
                        dir: run_dir,
                        source,
                    })?,
                )
            }
            ProviderKind::Docker => Arc::new(
                provider::docker::DockerProvider::connect(
                    provider::docker::DockerConfig {
                        host: args.docker_host.clone(),
                        pull: args.image_pull,
                        on_exit: args.docker_on_exit,
                        data_dir: data_dir.clone(),
                        secrets_dir: data_dir.join(secrets::MOUNTS_DIR),
                    },
                    Arc::clone(&function_logs),
                )
                .await
                .map_err(GatewayError::Provider)?,
            ),
            ProviderKind::Static => {
                Arc::new(UpstreamsProvider::new(args.upstream_template.clone()))
            }
            ProviderKind::Kubernetes => Arc::new(
                provider::kubernetes::KubernetesProvider::connect(
                    provider::kubernetes::Shape {
                        pull: args.image_pull,
                        probe: args.kube_probe,
                    },
                    args.kube_route,
                    Arc::clone(&function_logs),
                    Arc::clone(&metrics),
                )
                .await
                .map_err(GatewayError::Kubernetes)?,
            ),
        };
        let secret_store = Arc::new(secrets::SecretStore::open(&data_dir)?);
        let observed = provider.observe();
        let registry = Registry::open(store, provider, Arc::clone(&secret_store))?;
        if let Some(observed) = &observed
            && let Some(seen) = observed.borrow().clone()
        {
            registry.observe(&seen);
        }
        let gateway = Arc::new(Gateway {
            config: GatewayConfig {
                upstream_timeout: args.upstream_timeout,
                read_timeout: args.read_timeout,
                read_idle_timeout: args.read_idle_timeout,
                max_connections: (args.max_connections > 0).then_some(args.max_connections),
                upgrade_timeout: args.upgrade_timeout,
                autoscale: args
                    .autoscale
                    .then_some(scaling::autoscaler::AutoscalerConfig {
                        interval: args.autoscale_interval,
                        scale_down_window: args.scale_down_window,
                    }),
                shutdown_timeout: args.shutdown_timeout,
                max_async_body: args.max_async_body,
                callback_allowlist: args.callback_allowlist.clone(),
                callback_egress: EgressPolicy {
                    deny_private: args.worker.callback_deny_private,
                },
                retention: args.queue.retention,
            },
            registry,
            metrics,
            auth,
            client: proxy::client(),
            queue,
            wake: Arc::new(tokio::sync::Notify::new()),
            logs: function_logs,
            secrets: secret_store,
            tunnels: crate::http::tunnels::Tunnels::new(),
            triggers: triggers::board::Board::default(),
            trigger_nats,
        });
        if let Some(file) = &args.file {
            for spec in stack::load(file)? {
                let name = spec.service.clone();
                if let Some(why) = triggers::subjects::refusal(&gateway, &spec) {
                    return Err(GatewayError::Deploy {
                        function: name,
                        source: registry::RegistryError::Invalid(why),
                    });
                }
                gateway
                    .registry
                    .deploy(spec, false)
                    .await
                    .map_err(|source| GatewayError::Deploy {
                        function: name,
                        source,
                    })?;
            }
        }
        // Replicas left running by a previous gateway and not adopted by now belong to
        // functions no longer deployed.
        gateway.registry.provider().restored().await;
        if let Some(mut observed) = observed {
            // The registry follows a provider that holds the deployed set.
            let weak = Arc::downgrade(&gateway);
            tokio::spawn(async move {
                while observed.changed().await.is_ok() {
                    let seen = observed.borrow_and_update().clone();
                    let Some(gateway) = weak.upgrade() else { break };
                    if let Some(seen) = seen {
                        gateway.registry.observe(&seen);
                    }
                }
            });
        }
        for spec in gateway.registry.specs() {
            gateway.warn_timeouts(&spec);
        }
        let worker = (!args.no_worker).then(|| {
            Worker::new(
                Arc::clone(&gateway.queue),
                Arc::new(asynchronous::GatewayInvoker {
                    gateway: Arc::clone(&gateway),
                    max_result: args.worker.max_async_result,
                }),
                worker_config,
                gateway.metrics.worker.clone(),
                Arc::clone(&gateway.wake),
            )
        });
        Ok((gateway, worker))
    }

    /// Warns when a function may run longer than the gateway waits for it.
    pub fn warn_timeouts(&self, spec: &types::FunctionDeployment) {
        let name = spec.key();
        // fwatchdog's default: no limit in classic mode, 30 s in the others.
        let exec = match spec.env_vars.get("exec_timeout") {
            Some(v) => parse::duration(v).ok().flatten(),
            None if spec
                .env_vars
                .get("mode")
                .is_some_and(|m| !m.trim().is_empty()) =>
            {
                Some(crate::config::DEFAULT_MODE_EXEC_TIMEOUT)
            }
            None => None,
        };
        if let Some(exec) = exec
            && exec > self.config.upstream_timeout
        {
            tracing::warn!(
                function = name,
                exec_timeout = %humantime::format_duration(exec),
                upstream_timeout = %humantime::format_duration(self.config.upstream_timeout),
                "upstream_timeout is shorter than the function's exec_timeout: long calls will get 504 from the gateway"
            );
        }
    }
}

/// Serves `gateway` on `listener` until `shutdown` resolves; then stops accepting, lets
/// in-flight calls finish for up to `shutdown_timeout`, and stops the provider's functions.
pub async fn run(
    gateway: Arc<Gateway>,
    worker: Option<Arc<Worker>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr().map_err(GatewayError::LocalAddr)?;
    let stop_worker = CancellationToken::new();
    let worker = worker.map(|w| tokio::spawn(w.run(stop_worker.clone())));
    let expiry = tokio::spawn(expire_calls(
        Arc::clone(&gateway.queue),
        stop_worker.clone(),
    ));
    let autoscaler = gateway.config.autoscale.map(|config| {
        tokio::spawn(scaling::autoscaler::run(
            Arc::clone(&gateway),
            config,
            stop_worker.clone(),
        ))
    });
    let deployed = triggers::follow(&gateway, stop_worker.clone());
    triggers::schedules::list(&gateway, &deployed.borrow());
    let schedules = tokio::spawn(triggers::schedules::run(
        Arc::clone(&gateway),
        deployed.clone(),
        gateway.config.retention,
        stop_worker.clone(),
    ));
    let subjects = gateway.trigger_nats.clone().map(|client| {
        tokio::spawn(triggers::subjects::run(
            Arc::clone(&gateway),
            client,
            deployed,
            stop_worker.clone(),
        ))
    });
    let stop_accepting = CancellationToken::new();
    let connections = TaskTracker::new();
    let accept = {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(server::accept_loop(
            listener,
            stop_accepting.clone(),
            connections.clone(),
            server::ServeOptions {
                header_read_timeout: Some(gateway.config.read_timeout),
                max_connections: gateway.config.max_connections,
            },
            move |peer| {
                let gateway = Arc::clone(&gateway);
                // The upstream connections this client connection's calls use.
                let pinned = Arc::new(Pinned::default());
                hyper::service::service_fn(move |req| {
                    Arc::clone(&gateway).handle(req, peer, Arc::clone(&pinned))
                })
            },
        ))
    };
    tracing::info!(
        provider = gateway.registry.provider().name(),
        functions = gateway.registry.list(None).len(),
        "listening addr={addr}"
    );
    shutdown.await;
    // Stop leasing at once; the worker finishes its calls while connections drain.
    stop_worker.cancel();
    stop_accepting.cancel();
    let _ = accept.await;
    connections.close();
    let drain_end = tokio::time::Instant::now() + gateway.config.shutdown_timeout;
    tracing::info!(
        connections = connections.len(),
        limit = %humantime::format_duration(gateway.config.shutdown_timeout),
        "shutting down: draining"
    );
    if tokio::time::timeout(gateway.config.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "drain deadline reached; stopping functions anyway"
        );
    }
    // Open websockets get what is left of the drain time, then are cut.
    gateway
        .tunnels
        .drain(drain_end.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    // The worker's calls need the functions: stop those last.
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    let _ = expiry.await;
    let _ = schedules.await;
    if let Some(subjects) = subjects {
        let _ = subjects.await;
    }
    if let Some(autoscaler) = autoscaler {
        let _ = autoscaler.await;
    }
    gateway
        .registry
        .provider()
        .shutdown(PROVIDER_STOP_GRACE)
        .await;
    tracing::info!("exiting");
    Ok(())
}

/// Drops finished calls past the retention period, every minute until `stop`.
pub async fn expire_calls(queue: Arc<dyn Queue>, stop: CancellationToken) {
    loop {
        match queue.expire().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                calls = n,
                "expired finished calls past the retention period"
            ),
            Err(e) => tracing::warn!(error = %proxy::error_chain(&e), "cannot expire old calls"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
