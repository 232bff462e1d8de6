//! Upstream connections pinned to one client connection.
//!
//! A keep-alive client connection sends its requests one after another, so the upstream
//! connection its previous request used is free when its next request arrives. Keeping that
//! connection with the client connection skips the shared pool for every request after the
//! first: no checkout under the pool's lock, no task spawned per request to hand the connection
//! back, and each client connection's traffic stays on one upstream connection.
//!
//! The rules:
//! - A client connection's first request to an upstream goes through the pool (a client that
//!   sends one request per connection never opens an upstream connection of its own); from its
//!   second request to that upstream on, it has a connection of its own to it. It holds at most
//!   [`MAX_HELD`]; when that many are held, requests to other upstreams use the pool (so a
//!   client that cycles through many replicas does not open and close a connection per
//!   request).
//! - A held connection is used again only when it is open, idle (its previous response was read
//!   to the end) and was last used less than [`POOL_IDLE`] ago; otherwise it is dropped (and
//!   held connections that closed or went idle are dropped at each request).
//! - Requests on a held connection are written as the pool writes them: the request line has
//!   the path and query only (origin form), and `Host` is set from the URL when missing.
//! - A request that a held connection could not send (it closed as the request was handed over)
//!   goes through the pool instead; one that was sent and then failed is reported as failed,
//!   as a pooled one is.
//! - Upgrade requests (websockets) always use the pool, which hands the upgraded connection to
//!   the tunnel.
//!
//! Held connections close when the client connection closes (its [`Pinned`] is dropped), when
//! the upstream closes them, or at the client connection's next request once idle for
//! [`POOL_IDLE`]; an idle client connection keeps its held connections until then.

use std::sync::Mutex;

use futures_util::FutureExt;
use http::uri::Authority;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;
use tower_service::Service;

use crate::http::body::ResponseBody;
use crate::http::proxy::{Client, POOL_IDLE, SendError, connector, error_chain, pooled};

/// Most upstreams a client connection holds a connection to at once.
pub const MAX_HELD: usize = 4;

/// The upstream connections held for one client connection.
#[derive(Debug, Default)]
pub struct Pinned {
    /// Upstreams called and connections held (a held one is taken out while in use).
    state: Mutex<State>,
}

/// See [`Pinned`].
#[derive(Debug, Default)]
struct State {
    /// Upstreams this client connection has called, most recent last (at most
    /// [`MAX_HELD`] twice over).
    seen: Vec<Authority>,
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
    pub async fn send(
        &self,
        pool: &Client,
        mut req: http::Request<ResponseBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let authority = match req.uri().authority() {
            Some(a) if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) => a.clone(),
            _ => return pooled(pool, req).await,
        };
        if req.headers().contains_key(http::header::UPGRADE) {
            return pooled(pool, req).await;
        }
        let mut sender = match self.take(&authority) {
            Take::Held(sender) => sender,
            Take::Open => open(req.uri()).await?,
            Take::Pool => return pooled(pool, req).await,
        };
        // The pool writes origin-form request lines and fills in Host; so does this path.
        let full = req.uri().clone();
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(http::header::HOST, host);
        }
        *req.uri_mut() = origin_form(&full);
        match sender.try_send_request(req).await {
            Ok(resp) => {
                self.put(authority, sender);
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                Some(mut req) => {
                    *req.uri_mut() = full;
                    pooled(pool, req).await
                }
                None => Err(SendError::Failed(error_chain(e.error()))),
            },
        }
    }

    /// Decides how a request to `authority` goes: on a held connection (taken out while in
    /// use), on a new one of its own, or through the pool.
    fn take(&self, authority: &Authority) -> Take {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state
            .held
            .retain(|h| !h.sender.is_closed() && now.duration_since(h.last_used) < POOL_IDLE);
        let seen_before = match state.seen.iter().position(|a| a == authority) {
            Some(i) => {
                let a = state.seen.remove(i);
                state.seen.push(a);
                true
            }
            None => {
                if state.seen.len() >= 2 * MAX_HELD {
                    state.seen.remove(0);
                }
                state.seen.push(authority.clone());
                false
            }
        };
        let held = state
            .held
            .iter()
            .position(|h| &h.authority == authority)
            .map(|i| state.held.swap_remove(i));
        let room = state.held.len() < MAX_HELD;
        drop(state);
        if let Some(mut h) = held {
            // The previous response was read to the end before this request could arrive, so
            // the connection is idle unless it failed; one that is not ready at once is not
            // waited for.
            if matches!(h.sender.ready().now_or_never(), Some(Ok(()))) {
                return Take::Held(h.sender);
            }
        }
        if seen_before && room {
            Take::Open
        } else {
            Take::Pool
        }
    }

    /// Keeps `sender` for the next request to `authority`.
    fn put(&self, authority: Authority, sender: SendRequest<ResponseBody>) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.held.len() >= MAX_HELD {
            // Another request opened one meanwhile (the client connection has one request at a
            // time, so this is rare): this one closes.
            return;
        }
        state.held.push(Held {
            authority,
            sender,
            last_used: Instant::now(),
        });
    }
}

/// How a request goes; see [`Pinned::take`].
enum Take {
    /// On this held connection.
    Held(SendRequest<ResponseBody>),
    /// On a new connection of its own.
    Open,
    /// Through the pool.
    Pool,
}

/// `uri`'s path and query alone, as an HTTP/1.1 request line carries them to an origin server.
fn origin_form(uri: &http::Uri) -> http::Uri {
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    http::Uri::from(path_and_query)
}

/// Opens a new HTTP/1.1 connection to `uri`'s authority with the pool's [`connector`], and
/// drives it in a task of its own until it closes.
async fn open(uri: &http::Uri) -> Result<SendRequest<ResponseBody>, SendError> {
    let io = connector()
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
