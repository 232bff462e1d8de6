//! `mode=http`: `fprocess` is a long-running HTTP server (the upstream), started once; every
//! request is proxied to it.
//!
//! The upstream runs in its own process group with a parent-death signal, its stdout and stderr
//! forwarded to the log line by line. Until it accepts connections (or answers `ready_path` with
//! 2xx) the watchdog is not ready and requests wait for it, bounded by their own timeout. If it
//! exits, [`Upstream::exited`] resolves and the watchdog stops with an error so the container is
//! restarted. On shutdown it gets SIGTERM only after the drain, then SIGKILL after a grace period.

use std::io;
use std::net::IpAddr;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::describe_exit;
use crate::config::{WatchdogConfig, parse};
use crate::http::body::{self, BoxError};
use crate::http::pinned::Pinned;
use crate::http::proxy;
use crate::http::tunnels::Tunnels;
use crate::process::lines::{self, LineLog};
use crate::process::{HandlerProcess, Launcher};
use crate::watchdog::invocation::Reply;
use crate::watchdog::outcome;

/// The request header that lowers `exec_timeout` for one request.
const X_TIMEOUT: &str = "x-timeout";

/// First and longest pause between readiness probes.
const PROBE_DELAYS: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(100));

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstream server and the client that talks to it.
#[derive(Debug)]
pub struct Upstream {
    /// Base URL of the upstream.
    base: http::Uri,
    /// Path that answers 2xx when the upstream is ready.
    ready_path: Option<String>,
    /// Pooled keep-alive client.
    client: proxy::Client,
    /// True once the upstream accepted a connection (or answered `ready_path`).
    ready: watch::Receiver<bool>,
    /// The upstream's exit status, once it has exited.
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Asks the supervisor to stop the upstream (SIGTERM, then SIGKILL after the grace period).
    stop: std::sync::Mutex<Option<oneshot::Sender<Duration>>>,
    /// Upgraded connections (websockets) being tunnelled.
    tunnels: Tunnels,
}

impl Upstream {
    /// Starts `fprocess` and begins probing it for readiness. Must run inside the runtime, on a
    /// thread that lives as long as the watchdog (see [`HandlerProcess::spawn`]).
    pub fn start(config: &WatchdogConfig, launcher: &Launcher) -> io::Result<Arc<Upstream>> {
        let base = config
            .upstream_url
            .clone()
            .ok_or_else(|| io::Error::other("mode=http without upstream_url"))?;
        let mut process = launcher.launch(&[])?;
        tracing::info!(pid = process.pid(), upstream = %base, "started upstream");
        // The upstream reads nothing from us: its stdin is closed at once.
        drop(process.take_stdin());
        for (stream, pipe) in [
            ("stdout", process.take_stdout()),
            ("stderr", process.take_stderr()),
        ] {
            if let Some(pipe) = pipe {
                let log = LineLog {
                    stream,
                    prefix: config.prefix_logs,
                    call_id: None,
                    max_line: config.log_buffer_size.get(),
                };
                tokio::spawn(lines::forward(pipe, log));
            }
        }
        let (exit_tx, exit) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(supervise(process, stop_rx, exit_tx));

        let (ready_tx, ready) = watch::channel(false);
        let upstream = Arc::new(Upstream {
            base,
            ready_path: config.ready_path.clone(),
            client: proxy::client(),
            ready,
            exit,
            stop: std::sync::Mutex::new(Some(stop_tx)),
            tunnels: Tunnels::new(),
        });
        tokio::spawn(Arc::clone(&upstream).probe(ready_tx));
        Ok(upstream)
    }

    /// Whether the upstream has been seen ready.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the upstream is ready; never, if it exits first.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        if ready.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The upstream's exit status, if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Resolves with the upstream's exit status when it exits.
    pub async fn exited(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(status) => *status,
            Err(_) => None,
        }
    }

    /// Stops the upstream: SIGTERM to its group, SIGKILL after `grace`. Returns its status.
    pub async fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        let tx = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(grace);
        }
        self.exited().await
    }

    /// Waits for tunnelled upgraded connections to end, up to `limit`, then cuts them.
    pub async fn drain_tunnels(&self, limit: Duration) {
        self.tunnels.drain(limit).await;
    }

    /// Probes until the upstream is ready or has exited.
    async fn probe(self: Arc<Self>, ready: watch::Sender<bool>) {
        let started = Instant::now();
        let mut delay = PROBE_DELAYS.0;
        loop {
            if self.exit.borrow().is_some() {
                return;
            }
            let ok = match &self.ready_path {
                Some(path) => self
                    .get(path, PROBE_TIMEOUT)
                    .await
                    .is_ok_and(|s| s.is_success()),
                None => self.accepts_connections().await,
            };
            if ok {
                tracing::info!(
                    after = %humantime::format_duration(round_ms(started.elapsed())),
                    "upstream is ready"
                );
                let _ = ready.send(true);
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(PROBE_DELAYS.1);
        }
    }

    /// Whether a TCP connection to the upstream succeeds.
    async fn accepts_connections(&self) -> bool {
        let host = self.base.host().unwrap_or("127.0.0.1");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.base.port_u16().unwrap_or(80);
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
            Ok(Ok(_))
        )
    }

    /// `GET path` on the upstream; its status.
    async fn get(&self, path: &str, limit: Duration) -> Result<StatusCode, BoxError> {
        let pq: http::uri::PathAndQuery = path.parse()?;
        let uri = proxy::upstream_uri(&self.base, Some(&pq))?;
        let req = Request::get(uri).body(Empty::new().map_err(|e| match e {}).boxed_unsync())?;
        let resp = tokio::time::timeout(limit, self.client.request(req)).await??;
        Ok(resp.status())
    }

    /// `/_/ready` in http mode (the watchdog has already checked health and `max_inflight`):
    /// 503 until the upstream is ready; then the upstream's own answer for `ready_path` when
    /// set, else 200.
    pub async fn ready_reply(&self) -> Reply {
        if !self.is_ready() {
            return Reply::new(StatusCode::SERVICE_UNAVAILABLE, body::empty());
        }
        match &self.ready_path {
            None => Reply::text((StatusCode::OK, b"OK".to_vec())),
            Some(path) => match self.get(path, PROBE_TIMEOUT).await {
                Ok(status) => Reply::new(status, body::empty()),
                Err(e) => Reply::text((
                    StatusCode::BAD_GATEWAY,
                    format!("ready_path {path} failed: {e}\n").into_bytes(),
                )),
            },
        }
    }

    /// Proxies one request to the upstream. See the module docs for the timeout rules.
    pub async fn serve(
        &self,
        config: &WatchdogConfig,
        mut req: Request<Incoming>,
        peer: Option<IpAddr>,
        start: Instant,
        pinned: &Pinned,
    ) -> Reply {
        let limit = match request_limit(config.exec_timeout, req.headers().get(X_TIMEOUT)) {
            Ok(limit) => limit,
            Err(text) => return Reply::text(text),
        };
        let deadline = limit.map(|(d, _)| start + d);
        let read_deadline = config.read_timeout.map(|t| start + t);

        if !self.is_ready() {
            let wait_until = deadline.or(config.write_timeout.map(|t| start + t));
            if !wait_until_or(self.wait_ready(), wait_until).await {
                return Reply::text((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "The function is not ready: its server at {} is not accepting connections yet.\n",
                        self.base
                    )
                    .into_bytes(),
                ));
            }
        }

        let upgrade = proxy::forward_request_headers(req.headers_mut(), peer);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, incoming) = req.into_parts();
        parts.uri = match proxy::upstream_uri(&self.base, parts.uri.path_and_query()) {
            Ok(uri) => uri,
            Err(e) => {
                return Reply::text((
                    StatusCode::BAD_REQUEST,
                    format!("Cannot forward this path: {e}\n").into_bytes(),
                ));
            }
        };
        parts.version = http::Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        proxy::set_empty_length(
            &parts.method,
            &mut parts.headers,
            hyper::body::Body::is_end_stream(&incoming),
        );

        let (body, read_timed_out) = if config.buffer_body && upgrade.is_none() {
            match buffer(incoming, config.buffer_body_limit, read_deadline).await {
                Ok(bytes) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, bytes.len().into());
                    (body::full(bytes), None)
                }
                Err(text) => return Reply::text(text),
            }
        } else {
            let (body, flag) = body::read_bounded(
                incoming,
                read_deadline.map_or(body::ReadDeadline::None, body::ReadDeadline::At),
                None,
            );
            (body, Some(flag))
        };

        let sent = proxy::send_via(
            &self.client,
            Request::from_parts(parts, body),
            deadline,
            Some(pinned),
        )
        .await;
        let response = match sent {
            Ok(resp) => resp,
            Err(_) if let Some(failure) = read_timed_out.as_ref().and_then(|w| w.failure()) => {
                return Reply::text(match failure {
                    body::ClientBodyFailure::TimedOut => outcome::read_timed_out(),
                    body::ClientBodyFailure::Unreadable => outcome::body_unreadable(),
                });
            }
            Err(proxy::SendError::TimedOut) => return timed_out(limit),
            Err(proxy::SendError::Connect(why)) => {
                return Reply::text((
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Cannot reach the function's server at {}: {why}\n",
                        self.base
                    )
                    .into_bytes(),
                ));
            }
            Err(proxy::SendError::Failed(why)) => {
                return Reply::text((
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "The function's server at {} failed to answer: {why}\n",
                        self.base
                    )
                    .into_bytes(),
                ));
            }
        };
        let mut response = response;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
        let (mut parts, incoming) = response.into_parts();
        proxy::forward_response_headers(&mut parts.headers, switching);
        let mut reply = Reply::new(parts.status, body::empty());
        reply.headers = parts.headers;
        reply.set_duration(start.elapsed());

        if switching {
            match (client_upgrade, upstream_upgrade) {
                (Some(client_side), Some(upstream_side)) => {
                    self.tunnels
                        .spawn(client_side, upstream_side, config.upgrade_timeout, ());
                    reply.write_bounded = false;
                }
                _ => {
                    return Reply::text((
                        StatusCode::BAD_GATEWAY,
                        b"The function switched protocols without being asked to.\n".to_vec(),
                    ));
                }
            }
            return reply;
        }
        reply.body = incoming.map_err(BoxError::from).boxed_unsync();
        reply.abort_at = deadline;
        reply
    }
}

/// Which limit bounds a request: `exec_timeout`, lowered by a shorter `X-Timeout`.
fn request_limit(
    exec_timeout: Option<Duration>,
    x_timeout: Option<&HeaderValue>,
) -> Result<Option<(Duration, &'static str)>, outcome::Text> {
    let requested = match x_timeout {
        None => None,
        Some(v) => {
            let parsed = v.to_str().ok().map(parse::duration);
            match parsed {
                Some(Ok(d)) => d,
                _ => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Invalid X-Timeout {v:?}: expected seconds (\"10\") or a duration (\"500ms\", \"10s\", \"1m30s\").\n"
                        )
                        .into_bytes(),
                    ));
                }
            }
        }
    };
    Ok(match (exec_timeout, requested) {
        (Some(exec), Some(x)) if x < exec => Some((x, "X-Timeout")),
        (None, Some(x)) => Some((x, "X-Timeout")),
        (Some(exec), _) => Some((exec, "exec_timeout")),
        (None, None) => None,
    })
}

/// The 504 for a request whose limit passed before the upstream answered.
fn timed_out(limit: Option<(Duration, &'static str)>) -> Reply {
    let text = match limit {
        Some((d, name)) => format!(
            "The function did not answer within {name} ({}).\n",
            humantime::format_duration(d)
        ),
        None => "The function did not answer in time.\n".to_string(),
    };
    Reply::text((StatusCode::GATEWAY_TIMEOUT, text.into_bytes()))
}

/// Reads a whole request body (for `http_buffer_req_body`), up to `limit` bytes and `deadline`.
async fn buffer(
    incoming: Incoming,
    limit: usize,
    deadline: Option<Instant>,
) -> Result<Bytes, outcome::Text> {
    let collect = Limited::new(incoming, limit).collect();
    let collected = match deadline {
        Some(d) => match tokio::time::timeout_at(d, collect).await {
            Ok(r) => r,
            Err(_) => {
                return Err(outcome::read_timed_out());
            }
        },
        None => collect.await,
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than http_buffer_req_body_limit ({limit} bytes).\n")
                .into_bytes(),
        )),
        Err(e) => Err((
            StatusCode::BAD_REQUEST,
            format!("Request body could not be read: {e}\n").into_bytes(),
        )),
    }
}

/// Runs `fut` until `deadline`; whether it finished.
async fn wait_until_or(fut: impl Future<Output = ()>, deadline: Option<Instant>) -> bool {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.is_ok(),
        None => {
            fut.await;
            true
        }
    }
}

/// A duration rounded to milliseconds, for logs.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Owns the upstream process: waits for it to exit or for a stop request, and publishes the
/// exit status.
async fn supervise(
    mut process: HandlerProcess,
    stop: oneshot::Receiver<Duration>,
    exit: watch::Sender<Option<ExitStatus>>,
) {
    let mut stop = std::pin::pin!(stop);
    let stopping = tokio::select! {
        _ = process.exited() => false,
        grace = &mut stop => {
            if let Ok(grace) = grace {
                tracing::info!(
                    pid = process.pid(),
                    grace = %humantime::format_duration(grace),
                    "stopping upstream (SIGTERM to its process group)"
                );
                process.signal_group(Signal::SIGTERM);
                if tokio::time::timeout(grace, process.exited()).await.is_err() {
                    tracing::warn!(pid = process.pid(), "upstream ignored SIGTERM; killing its group");
                }
            }
            true
        }
    };
    // Whatever is left of the group goes with the leader.
    process.kill_group();
    match process.reap().await {
        Ok(status) => {
            if stopping {
                tracing::info!(status = %describe_exit(status), "upstream stopped");
            } else {
                tracing::error!(status = %describe_exit(status), "upstream exited");
            }
            let _ = exit.send(Some(status));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reap the upstream");
            use std::os::unix::process::ExitStatusExt;
            let _ = exit.send(Some(ExitStatus::from_raw(1 << 8)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_timeout_only_lowers_exec_timeout() {
        let secs = Duration::from_secs;
        let h = |s: &'static str| HeaderValue::from_static(s);
        let limit = |exec, x: Option<&HeaderValue>| request_limit(exec, x).ok().flatten();
        assert_eq!(
            limit(Some(secs(10)), Some(&h("2s"))),
            Some((secs(2), "X-Timeout"))
        );
        assert_eq!(
            limit(Some(secs(10)), Some(&h("30"))),
            Some((secs(10), "exec_timeout"))
        );
        assert_eq!(limit(None, Some(&h("1"))), Some((secs(1), "X-Timeout")));
        assert_eq!(limit(Some(secs(5)), None), Some((secs(5), "exec_timeout")));
        assert_eq!(limit(None, None), None);
        assert!(request_limit(None, Some(&h("soon"))).is_err());
    }
}
