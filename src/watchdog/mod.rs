//! The watchdog: an HTTP server that runs the handler for each request.
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests bind port 0 and pass any
//! future. Routing: `/_/health` and `/_/ready` answer from the watchdog itself; every other path
//! and method invokes the function.

pub mod cgi;
pub mod command;
pub mod health;
pub mod invocation;
pub mod metrics;
pub mod mode;
pub mod outcome;
pub mod request_log;
pub mod sniff;
pub mod stdin;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DEFAULT_IO_TIMEOUT, Mode, UPSTREAM_STOP_GRACE, WatchdogConfig};
use crate::http::body::{self, ResponseBody};
use crate::http::pinned::Pinned;
use crate::http::server;
use crate::process::{Launcher, ProcessTable, reaper};
use health::Health;
use invocation::{Invocation, Reply};
use metrics::{Metrics, RequestMeasure};
use mode::http::Upstream;
use mode::static_files::StaticFiles;

/// Errors that stop the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The lock file could not be written.
    #[error(transparent)]
    LockFile(#[from] health::LockFileError),
    /// `fprocess` cannot be turned into a program to execute.
    #[error("invalid fprocess")]
    Program(#[source] std::io::Error),
    /// The listener has no local address.
    #[error("cannot read the listening address")]
    LocalAddr(#[source] std::io::Error),
    /// `static_path` cannot be served.
    #[error("cannot serve static_path")]
    StaticPath(#[source] std::io::Error),
    /// The http-mode upstream could not be started.
    #[error("cannot start the upstream server (fprocess)")]
    UpstreamStart(#[source] std::io::Error),
    /// The http-mode upstream exited; the container should be restarted.
    #[error("the upstream server (fprocess) exited with {0}; stopping so the container restarts")]
    UpstreamExited(String),
}

/// Shared state of a running watchdog.
#[derive(Debug)]
pub struct Watchdog {
    /// The configuration, shared with every invocation.
    config: Arc<WatchdogConfig>,
    /// Starts handlers (every mode but static).
    launcher: Option<Launcher>,
    /// Our children, for group kills at shutdown and the PID 1 reaper.
    table: Arc<ProcessTable>,
    /// The http-mode upstream, once started by [`run`].
    upstream: OnceLock<Arc<Upstream>>,
    /// The static-mode file server.
    static_files: Option<StaticFiles>,
    /// Request metrics.
    metrics: Arc<Metrics>,
    /// `max_inflight`, when set.
    limiter: Option<Arc<Semaphore>>,
    /// Health and lock file.
    health: Health,
}

/// Held for the whole life of a request, body included.
struct Ticket {
    /// The `max_inflight` slot.
    _permit: Option<OwnedSemaphorePermit>,
    /// Records the request's metrics when dropped.
    _measure: RequestMeasure,
    /// Logs the request's line when dropped (of-watchdog's modes, `log_requests`).
    _line: Option<request_log::RequestLine>,
}

impl Watchdog {
    /// A watchdog for `config`.
    pub fn new(config: WatchdogConfig) -> Result<Arc<Self>, WatchdogError> {
        let limiter = config
            .max_inflight
            .map(|n| Arc::new(Semaphore::new(n.get())));
        let launcher = if config.fprocess.is_empty() {
            None
        } else {
            let launcher = Launcher::new(&config.fprocess).map_err(WatchdogError::Program)?;
            if !launcher.program.is_resolved() {
                tracing::warn!(
                    fprocess = launcher.program.display(),
                    "fprocess not found on PATH; every request will fail until it exists"
                );
            }
            Some(launcher)
        };
        let table = launcher
            .as_ref()
            .map_or_else(ProcessTable::new, |l| Arc::clone(&l.table));
        let static_files = match config.mode {
            Mode::Static => {
                Some(StaticFiles::new(&config.static_path).map_err(WatchdogError::StaticPath)?)
            }
            _ => None,
        };
        Ok(Arc::new(Watchdog {
            health: Health::new(&config),
            config: Arc::new(config),
            launcher,
            table,
            upstream: OnceLock::new(),
            static_files,
            metrics: Arc::new(Metrics::new()),
            limiter,
        }))
    }

    /// The metrics, for the metrics server.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        pinned: Arc<Pinned>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let reply = match req.uri().path() {
            "/_/health" => self.health_reply(),
            "/_/ready" => self.ready_reply().await,
            _ => return Ok(self.invoke(req, peer, &pinned).await),
        };
        Ok(reply.into_response())
    }

    fn health_reply(&self) -> Reply {
        if self.health.healthy() {
            Reply::text((StatusCode::OK, b"OK".to_vec()))
        } else {
            Reply::new(StatusCode::SERVICE_UNAVAILABLE, body::empty())
        }
    }

    async fn ready_reply(&self) -> Reply {
        if !self.health.healthy() {
            return Reply::new(StatusCode::SERVICE_UNAVAILABLE, body::empty());
        }
        if self
            .limiter
            .as_ref()
            .is_some_and(|l| l.available_permits() == 0)
        {
            return Reply::new(StatusCode::TOO_MANY_REQUESTS, body::empty());
        }
        if let Some(upstream) = self.upstream.get() {
            return upstream.ready_reply().await;
        }
        Reply::text((StatusCode::OK, b"OK".to_vec()))
    }

    async fn invoke(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        pinned: &Pinned,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let mut measure = self.metrics.start(req.method());
        let permit = match &self.limiter {
            None => None,
            Some(limiter) => match Arc::clone(limiter).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let max = self.config.max_inflight.map_or(0, |n| n.get());
                    let reply = Reply::text(outcome::too_many(max));
                    measure.set_code(reply.status);
                    return reply.into_response();
                }
            },
        };
        let head = req.method() == Method::HEAD;
        let logged = (self.config.log_requests
            && matches!(
                self.config.mode,
                Mode::Serializing | Mode::Streaming | Mode::Http
            ))
        .then(|| (req.method().clone(), req.uri().clone()));
        let mut reply = match (self.config.mode, &self.launcher) {
            (Mode::Http, _) => match self.upstream.get() {
                Some(upstream) => {
                    upstream
                        .serve(&self.config, req, Some(peer.ip()), start, pinned)
                        .await
                }
                None => Reply::new(StatusCode::SERVICE_UNAVAILABLE, body::empty()),
            },
            (Mode::Static, _) => match &self.static_files {
                Some(files) => files.serve(&req).await,
                None => Reply::new(StatusCode::NOT_FOUND, body::empty()),
            },
            (Mode::Classic | Mode::Serializing | Mode::Streaming, Some(launcher)) => {
                let (parts, body) = req.into_parts();
                if self.config.log_requests && self.config.mode == Mode::Classic {
                    request_log::forking();
                }
                match Invocation::spawn(&self.config, launcher, &parts, start) {
                    Err(text) => Reply::text(text),
                    Ok(inv) if self.config.mode == Mode::Streaming => {
                        mode::streaming::serve(inv, &parts, body).await
                    }
                    Ok(inv) => mode::buffered::serve(inv, &parts, body).await,
                }
            }
            (_, None) => Reply::new(StatusCode::INTERNAL_SERVER_ERROR, body::empty()),
        };
        if head {
            tracing::debug!("HEAD request: body dropped by the server");
        }
        measure.set_code(reply.status);
        let line = logged.map(|(method, uri)| {
            let line = request_log::RequestLine::new(method, uri, reply.status, start);
            reply.body = line.count(std::mem::replace(&mut reply.body, body::empty()));
            line
        });
        let ticket = Ticket {
            _permit: permit,
            _measure: measure,
            _line: line,
        };
        let write_deadline = self
            .config
            .write_timeout
            .filter(|_| reply.write_bounded)
            .map(|t| start + t);
        let deadline = match (write_deadline, reply.abort_at) {
            (Some(w), Some(a)) => Some(w.min(a)),
            (w, a) => w.or(a),
        };
        Reply {
            body: body::guarded(reply.body, deadline, ticket),
            ..reply
        }
        .into_response()
    }
}

/// Runs the watchdog on `listener` (and `metrics_listener`) until `shutdown` resolves, then
/// drains as the behaviour contract says:
///
/// 1. health turns 503 at once and the lock file is removed;
/// 2. requests are still served for `healthcheck_interval`, so load balancers can notice;
/// 3. the listener closes and in-flight requests get up to `write_timeout` to finish;
/// 4. whatever still runs is killed (process groups); in http mode the upstream gets SIGTERM
///    now, and SIGKILL after [`UPSTREAM_STOP_GRACE`]; `run` returns.
///
/// In http mode the upstream is started here; health (and the lock file) wait until it is
/// ready, and if it exits `run` returns [`WatchdogError::UpstreamExited`].
pub async fn run(
    watchdog: Arc<Watchdog>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WatchdogError> {
    let config = Arc::clone(&watchdog.config);
    let addr = listener.local_addr().map_err(WatchdogError::LocalAddr)?;
    let root = CancellationToken::new();
    reaper::spawn_if_pid1(Arc::clone(&watchdog.table), root.child_token());

    if let Some(metrics_listener) = metrics_listener {
        if let Ok(maddr) = metrics_listener.local_addr() {
            tracing::info!(addr = %maddr, "serving metrics");
        }
        tokio::spawn(metrics::serve(
            metrics_listener,
            watchdog.metrics(),
            root.child_token(),
        ));
    }

    let upstream = match (config.mode, &watchdog.launcher) {
        (Mode::Http, Some(launcher)) => {
            let upstream =
                Upstream::start(&config, launcher).map_err(WatchdogError::UpstreamStart)?;
            let _ = watchdog.upstream.set(Arc::clone(&upstream));
            Some(upstream)
        }
        _ => None,
    };

    let stop_accepting = root.child_token();
    let connections = TaskTracker::new();
    let accept = {
        let watchdog = Arc::clone(&watchdog);
        tokio::spawn(server::accept_loop(
            listener,
            stop_accepting.clone(),
            connections.clone(),
            server::ServeOptions {
                header_read_timeout: config.read_timeout,
                max_connections: None,
            },
            move |peer| {
                let watchdog = Arc::clone(&watchdog);
                // The upstream connections this client connection's requests use (http mode).
                let pinned = Arc::new(Pinned::default());
                hyper::service::service_fn(move |req| {
                    Arc::clone(&watchdog).handle(req, peer, Arc::clone(&pinned))
                })
            },
        ))
    };
    if upstream.is_none() {
        watchdog.health.start()?;
    }
    tracing::info!(
        mode = config.mode.name(),
        fprocess = %config.fprocess.join(" "),
        "listening addr={addr}"
    );

    // Until a shutdown signal: in http mode, turn healthy once the upstream is ready, and stop
    // if it exits.
    let mut shutdown = std::pin::pin!(shutdown);
    if let Some(upstream) = &upstream {
        let mut healthy = false;
        let exited = loop {
            tokio::select! {
                _ = &mut shutdown => break None,
                _ = upstream.wait_ready(), if !healthy => {
                    healthy = true;
                    watchdog.health.start()?;
                }
                status = upstream.exited() => break Some(status),
            }
        };
        if let Some(status) = exited {
            watchdog.health.stop();
            stop_accepting.cancel();
            let _ = accept.await;
            connections.close();
            // Requests in flight fail at once (their upstream is gone); let them say so.
            let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
            root.cancel();
            watchdog.table.kill_all();
            let status =
                status.map_or_else(|| "an unknown status".to_string(), mode::describe_exit);
            return Err(WatchdogError::UpstreamExited(status));
        }
    } else {
        shutdown.await;
    }

    watchdog.health.stop();
    tracing::info!(
        interval = %humantime::format_duration(config.healthcheck_interval),
        "shutting down: health reports 503; still serving for healthcheck_interval"
    );
    tokio::time::sleep(config.healthcheck_interval).await;

    stop_accepting.cancel();
    let _ = accept.await;
    connections.close();
    let drain = config
        .write_timeout
        .or(config.exec_timeout)
        .unwrap_or(DEFAULT_IO_TIMEOUT);
    let drain_end = Instant::now() + drain;
    tracing::info!(
        connections = connections.len(),
        limit = %humantime::format_duration(drain),
        "no new connections; draining"
    );
    if tokio::time::timeout_at(drain_end, connections.wait())
        .await
        .is_err()
    {
        let left = watchdog.table.live_groups().len();
        tracing::warn!(
            connections = connections.len(),
            handlers = left,
            "drain deadline reached; killing what is left"
        );
        if upstream.is_none() {
            watchdog.table.kill_all();
        }
        // Killed handlers answer at once; give their connections a moment to write that.
        let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
    }
    if let Some(upstream) = &upstream {
        upstream
            .drain_tunnels(drain_end.saturating_duration_since(Instant::now()))
            .await;
        // An upstream that died by itself during the shutdown is still a failure.
        let crashed = upstream.exit_status();
        upstream.stop(UPSTREAM_STOP_GRACE).await;
        if let Some(status) = crashed {
            root.cancel();
            watchdog.table.kill_all();
            watchdog.health.stop();
            return Err(WatchdogError::UpstreamExited(mode::describe_exit(status)));
        }
    }
    root.cancel();
    watchdog.table.kill_all();
    watchdog.health.stop();
    tracing::info!("exiting");
    Ok(())
}
