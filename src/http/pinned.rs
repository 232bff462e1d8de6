//! Upstream connections pinned to one client connection.
//!
//! A keep-alive client connection sends its requests one after another, so the upstream
//! connection its previous request used is free when its next request arrives. Keeping that
//! connection with the client connection skips the shared pool for every request after the
//! first: no checkout under the pool's lock, no task spawned per request to hand the connection
//! back, and each client connection's traffic stays on one upstream connection.
//!
//! The rules:
//! - A client connection's first request goes through the pool (a client that sends one request
//!   per connection never opens an upstream connection of its own); from its second request on,
//!   it has a connection of its own for each upstream it calls, at most [`MAX_HELD`].
//! - A held connection is used again only when it is open, idle (its previous response was read
//!   to the end) and was last used less than [`POOL_IDLE`] ago; otherwise it is dropped and a
//!   new one is made.
//! - A request that a held connection could not send (it closed as the request was handed over)
//!   goes through the pool instead; one that was sent and then failed is reported as failed,
//!   as a pooled one is.
//! - Upgrade requests (websockets) always use the pool, which hands the upgraded connection to
//!   the tunnel.
//!
//! Held connections close when the client connection closes (its [`Pinned`] is dropped) or when
//! the upstream closes them.

use std::sync::Mutex;

use futures_util::FutureExt;
use http::uri::Authority;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use tokio::time::Instant;
use tower_service::Service;

use crate::http::body::ResponseBody;
use crate::http::proxy::{CONNECT_TIMEOUT, POOL_IDLE, SendError, error_chain};

/// Most upstreams a client connection holds a connection to at once.
pub const MAX_HELD: usize = 4;

/// The upstream connections held for one client connection.
#[derive(Debug, Default)]
pub struct Pinned {
    /// Requests seen and connections held, taken out while in use.
    state: Mutex<State>,
}

/// See [`Pinned`].
#[derive(Debug, Default)]
struct State {
    /// Requests this client connection has sent through [`Pinned::send`].
    requests: u64,
    /// Idle connections, by upstream.
    held: Vec<Held>,
}

/// An idle upstream connection.
#[derive(Debug)]
struct Held {
    /// The upstream's authority.
    authority: Authority,
    /// Sends requests on the connection.
    sender: SendRequest<ResponseBody>,
    /// When its last request was sent.
    last_used: Instant,
}

impl Pinned {
    /// Sends `req` on this client connection's own connection to its upstream (see the module
    /// docs), or through `pool`.
    pub async fn send<C>(
        &self,
        pool: &hyper_util::client::legacy::Client<C, ResponseBody>,
        req: http::Request<ResponseBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let authority = match req.uri().authority() {
            Some(a) if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) => a.clone(),
            _ => return pooled(pool, req).await,
        };
        if req.headers().contains_key(http::header::UPGRADE) {
            return pooled(pool, req).await;
        }
        let (first, held) = self.take(&authority);
        if first {
            return pooled(pool, req).await;
        }
        let mut sender = match held {
            Some(sender) => sender,
            None => match open(req.uri()).await {
                Ok(sender) => sender,
                Err(e) => return Err(e),
            },
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                self.put(authority, sender);
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                Some(req) => pooled(pool, req).await,
                None => Err(SendError::Failed(error_chain(e.error()))),
            },
        }
    }

    /// Counts a request and takes the held connection to `authority` if it can be used now;
    /// whether this is the client connection's first request.
    fn take(&self, authority: &Authority) -> (bool, Option<SendRequest<ResponseBody>>) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.requests += 1;
        let first = state.requests == 1;
        let position = state.held.iter().position(|h| &h.authority == authority);
        let held = position.map(|i| state.held.swap_remove(i));
        drop(state);
        let usable = held.and_then(|mut h| {
            let fresh = h.last_used.elapsed() < POOL_IDLE && !h.sender.is_closed();
            // The previous response was read to the end before this request could arrive, so
            // the connection is idle unless it failed; a connection that is not ready at once
            // is not waited for.
            let ready = fresh && matches!(h.sender.ready().now_or_never(), Some(Ok(())));
            ready.then_some(h.sender)
        });
        (first, usable)
    }

    /// Keeps `sender` for the next request to `authority`.
    fn put(&self, authority: Authority, sender: SendRequest<ResponseBody>) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.held.len() >= MAX_HELD {
            // The least recently used one goes.
            if let Some((i, _)) = state
                .held
                .iter()
                .enumerate()
                .min_by_key(|(_, h)| h.last_used)
            {
                state.held.swap_remove(i);
            }
        }
        state.held.push(Held {
            authority,
            sender,
            last_used: Instant::now(),
        });
    }
}

/// Sends `req` through the pool.
pub(crate) async fn pooled<C>(
    pool: &hyper_util::client::legacy::Client<C, ResponseBody>,
    req: http::Request<ResponseBody>,
) -> Result<http::Response<hyper::body::Incoming>, SendError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    pool.request(req).await.map_err(|e| {
        if e.is_connect() {
            SendError::Connect(
                std::error::Error::source(&e).map_or_else(|| e.to_string(), error_chain),
            )
        } else {
            SendError::Failed(error_chain(&e))
        }
    })
}

/// Opens a new HTTP/1.1 connection to `uri`'s authority, as the pool would (`TCP_NODELAY`,
/// bounded connect time), and drives it in a task of its own until it closes.
async fn open(uri: &http::Uri) -> Result<SendRequest<ResponseBody>, SendError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let io = connector
        .call(uri.clone())
        .await
        .map_err(|e| SendError::Connect(error_chain(&e)))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| SendError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "pinned upstream connection ended with an error");
        }
    });
    Ok(sender)
}
