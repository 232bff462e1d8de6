//! Accepting connections and serving HTTP/1.1 on them, with graceful connection shutdown.
//!
//! Transient accept errors (for example running out of file descriptors) are logged and retried,
//! never fatal. Each connection runs in a task tracked by a [`TaskTracker`], so a shutdown can
//! ask every connection to finish its current request and then wait for them with a deadline.

use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body::BoxError;

/// How long to back off after an accept error such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections until `stop` is cancelled, serving each with a service from `make`
/// (given the peer's address).
///
/// When `stop` is cancelled, every open connection is asked to close after its current request
/// (idle keep-alive connections close at once); the connection tasks stay in `tracker`, so the
/// caller decides how long to wait for them.
pub async fn accept_loop<M, S, B>(
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
    header_read_timeout: Option<Duration>,
    make: M,
) where
    M: Fn(std::net::SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    if let Some(t) = header_read_timeout {
        builder.header_read_timeout(t);
    }
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let conn = builder
            .serve_connection(TokioIo::new(stream), make(peer))
            .with_upgrades();
        let stop = stop.clone();
        tracker.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serves a small auxiliary endpoint (such as metrics) until `shutdown` is cancelled.
pub async fn serve_simple<F, Fut, B, E>(listener: TcpListener, shutdown: CancellationToken, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tracker = TaskTracker::new();
    accept_loop(
        listener,
        shutdown,
        tracker.clone(),
        Some(Duration::from_secs(5)),
        move |_| hyper::service::service_fn(f.clone()),
    )
    .await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}
