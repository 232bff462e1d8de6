//! Accepting connections and serving HTTP/1.1 on them, with graceful connection shutdown.
//!
//! Transient accept errors (for example running out of file descriptors) are logged and retried,
//! never fatal. Each connection runs in a task tracked by a [`TaskTracker`], so a shutdown can
//! ask every connection to finish its current request and then wait for them with a deadline.
//! Every socket is a [`GuardedIo`] (framing check, lingering close); request heads are bounded
//! to [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields (431 beyond); an optional connection limit
//! answers 503 to connections beyond it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use super::connection::{GuardedIo, MAX_HEAD, MAX_HEADERS, REFUSED_BUSY};

/// How long to back off after an accept error such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How connections are served.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Longest a client may take to send a request head.
    pub header_read_timeout: Option<Duration>,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: Option<usize>,
}

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
    options: ServeOptions,
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
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_header_size(MAX_HEAD);
    // hyper's default limit on the number of header fields is MAX_HEADERS already (setting it
    // would move the parser's header array to the heap).
    debug_assert_eq!(MAX_HEADERS, 100);
    if let Some(t) = options.header_read_timeout {
        builder.header_read_timeout(t);
    }
    let slots = options
        .max_connections
        .map(|n| std::sync::Arc::new(tokio::sync::Semaphore::new(n)));
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
        let slot = match &slots {
            None => None,
            Some(slots) => match std::sync::Arc::clone(slots).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    tracing::warn!(%peer, "connection limit reached; answering 503");
                    tracker.spawn(async move {
                        let mut refused = GuardedIo::refusing(stream, REFUSED_BUSY);
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut refused).await;
                    });
                    continue;
                }
            },
        };
        let switched = Arc::new(AtomicBool::new(false));
        let io = GuardedIo::new(stream)
            .with_slot(slot)
            .with_upgrade_flag(Arc::clone(&switched));
        let service = WatchUpgrades {
            inner: make(peer),
            switched,
        };
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
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

/// A service that tells the connection's socket when it answers an upgrade (101, or 2xx to
/// CONNECT), so the socket's framing check stops at the right byte.
struct WatchUpgrades<S> {
    /// The service.
    inner: S,
    /// Shared with the socket.
    switched: Arc<AtomicBool>,
}

impl<S, B> Service<Request<Incoming>> for WatchUpgrades<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let connect = req.method() == http::Method::CONNECT;
        let answer = self.inner.call(req);
        let switched = Arc::clone(&self.switched);
        Box::pin(async move {
            let resp = answer.await?;
            let status = resp.status();
            if status == http::StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success()) {
                switched.store(true, Ordering::Release);
            }
            Ok(resp)
        })
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
        ServeOptions {
            header_read_timeout: Some(Duration::from_secs(5)),
            max_connections: Some(64),
        },
        move |_| hyper::service::service_fn(f.clone()),
    )
    .await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}
