//! Reverse proxying over HTTP/1.1: the pooled upstream client, which headers cross a proxy, the
//! upstream URL of a request, and the tunnel that joins two upgraded connections (websockets).
//!
//! Used by fwatchdog's http mode and by fgateway; nothing here knows about either one's
//! configuration.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::http::body::ResponseBody;
use crate::http::egress::{CheckedResolver, EgressPolicy};
use crate::http::pinned::Pinned;

/// A pooled keep-alive HTTP/1.1 client whose request bodies are [`ResponseBody`]s (any boxed
/// body, so a request body can stream straight through).
pub type Client = hyper_util::client::legacy::Client<HttpConnector, ResponseBody>;

/// How long an idle pooled connection is kept: shorter than the idle limits of common
/// upstream servers (Node closes after 5 s), so a request rarely meets a connection the server
/// is closing. A pool timer closes idle connections on time, not only when the pool is used.
pub const POOL_IDLE: Duration = Duration::from_secs(4);

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How upstream connections are made: `TCP_NODELAY`, bounded connect time.
pub fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector
}

/// A client for proxying to upstreams: keep-alive pool over [`connector`]'s connections.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector())
}

/// A pooled client for http and https URLs (callbacks), trusting the Mozilla root
/// certificates bundled by `webpki-roots`, connecting only to addresses its policy allows.
pub type TlsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>,
    ResponseBody,
>;

/// A client for callback URLs, http or https, that reaches only what `policy` allows.
pub fn tls_client(policy: EgressPolicy) -> TlsClient {
    let mut http = HttpConnector::new_with_resolver(CheckedResolver::new(policy));
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Headers that describe one connection and never cross a proxy (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`.
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a `Connection` header lists `token` (case-insensitive).
fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` with an `Upgrade` header).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if connection_lists(headers, "upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes the hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than hashing each one.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Rewrites a client request's headers for the upstream: hop-by-hop headers go (an upgrade
/// request keeps `Connection: upgrade` and its `Upgrade`), the peer is appended to
/// `X-Forwarded-For`, and `X-Forwarded-Host` records the original `Host` when not already set.
/// `Host` itself is kept, as most reverse proxies do. Returns the requested upgrade, if any.
pub fn forward_request_headers(
    headers: &mut HeaderMap,
    peer: Option<IpAddr>,
) -> Option<HeaderValue> {
    let upgrade = requested_upgrade(headers);
    strip_hop_by_hop(headers);
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    if let Some(ip) = peer {
        let value = if headers.contains_key(&X_FORWARDED_FOR) {
            let mut chain: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let ip = ip.to_string();
            chain.push(&ip);
            chain.join(", ")
        } else {
            ip.to_string()
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
    upgrade
}

/// Gives a `POST`, `PUT` or `PATCH` request whose body is empty and whose length the client did
/// not state an explicit `Content-Length: 0`, as OpenFaaS's of-watchdog does: without it,
/// frameworks such as Express parse the missing body differently (`{}` instead of `""`).
pub fn set_empty_length(method: &http::Method, headers: &mut HeaderMap, body_is_empty: bool) {
    let has_payload_semantics = matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    if has_payload_semantics
        && body_is_empty
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING)
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
}

/// Rewrites an upstream response's headers for the client. A `101 Switching Protocols` keeps
/// `Connection` and `Upgrade`, which are the point of it.
pub fn forward_response_headers(headers: &mut HeaderMap, switching_protocols: bool) {
    if switching_protocols {
        let connection = headers.get(header::CONNECTION).cloned();
        let upgrade = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(headers);
        if let (Some(c), Some(u)) = (connection, upgrade) {
            headers.insert(header::CONNECTION, c);
            headers.insert(header::UPGRADE, u);
        }
    } else {
        strip_hop_by_hop(headers);
    }
}

/// The upstream URL for a request: `base`'s scheme and authority, `base`'s path as a prefix,
/// then the request's own path and query.
pub fn upstream_uri(base: &Uri, request: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
    let prefix = base.path().trim_end_matches('/');
    let path_and_query = match request {
        // The request's own path, shared rather than copied and parsed again.
        Some(pq) if prefix.is_empty() => pq.clone(),
        None if prefix.is_empty() => PathAndQuery::from_static("/"),
        _ => {
            let tail = request.map_or("/", PathAndQuery::as_str);
            format!("{prefix}{tail}").parse()?
        }
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Ok(Uri::from_parts(parts)?)
}

/// Why a proxied request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The deadline passed before the response headers arrived.
    TimedOut,
    /// No connection to the upstream could be made (refused, unresolvable, connect timeout).
    Connect(String),
    /// The connection failed during the exchange.
    Failed(String),
}

/// Sends `req` through the pool and waits for the response headers until `deadline`.
pub async fn send<C>(
    client: &hyper_util::client::legacy::Client<C, ResponseBody>,
    req: http::Request<ResponseBody>,
    deadline: Option<tokio::time::Instant>,
) -> Result<http::Response<hyper::body::Incoming>, SendError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    within(deadline, pooled(client, req)).await
}

/// Sends `req` through the pool, without a deadline.
pub(crate) async fn pooled<C>(
    pool: &hyper_util::client::legacy::Client<C, ResponseBody>,
    req: http::Request<ResponseBody>,
) -> Result<http::Response<hyper::body::Incoming>, SendError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
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

/// Like [`send`], on the client connection's own upstream connection when `pinned` is given
/// (see [`super::pinned`]).
pub async fn send_via(
    client: &Client,
    req: http::Request<ResponseBody>,
    deadline: Option<tokio::time::Instant>,
    pinned: Option<&Pinned>,
) -> Result<http::Response<hyper::body::Incoming>, SendError> {
    match pinned {
        Some(pinned) => within(deadline, pinned.send(client, req)).await,
        None => send(client, req, deadline).await,
    }
}

/// Runs `sent` until `deadline`.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    sent: impl Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, sent)
            .await
            .map_err(|_| SendError::TimedOut)?,
        None => sent.await,
    }
}

/// An error and its sources, joined with `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Joins a client's upgraded connection with the upstream's, copying both ways until either
/// side closes or `limit` passes. Returns the bytes copied (client→upstream, upstream→client).
pub async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    limit: Option<Duration>,
) -> io::Result<(u64, u64)> {
    let (client, upstream) = tokio::try_join!(client, upstream).map_err(io::Error::other)?;
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    match limit {
        None => copy.await,
        Some(limit) => tokio::time::timeout(limit, copy)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upgrade_timeout reached"))?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
        ]);
        forward_response_headers(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn upgrades_keep_their_headers_and_forwarding_headers_are_added() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("host", "fn.example"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let up = forward_request_headers(&mut h, Some([127, 0, 0, 1].into()));
        assert_eq!(up, Some(HeaderValue::from_static("websocket")));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "fn.example");
        assert_eq!(h["host"], "fn.example");

        let mut plain = map(&[("upgrade", "websocket")]);
        assert_eq!(forward_request_headers(&mut plain, None), None);
        assert!(!plain.contains_key("upgrade"));
    }

    #[test]
    fn empty_bodies_of_posts_get_a_zero_length() {
        let mut h = HeaderMap::new();
        set_empty_length(&http::Method::POST, &mut h, true);
        assert_eq!(h["content-length"], "0");
        let mut h = HeaderMap::new();
        set_empty_length(&http::Method::GET, &mut h, true);
        assert!(h.is_empty());
        let mut h = map(&[("transfer-encoding", "chunked")]);
        set_empty_length(&http::Method::PUT, &mut h, false);
        assert!(!h.contains_key("content-length"));
    }

    #[test]
    fn upstream_uri_joins_base_path_and_request() {
        let base: Uri = "http://127.0.0.1:5000".parse().unwrap();
        let pq: PathAndQuery = "/a/b?x=1&y".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, Some(&pq)).unwrap(),
            "http://127.0.0.1:5000/a/b?x=1&y"
        );
        let prefixed: Uri = "http://up:8/api/".parse().unwrap();
        assert_eq!(
            upstream_uri(&prefixed, Some(&pq)).unwrap(),
            "http://up:8/api/a/b?x=1&y"
        );
        assert_eq!(upstream_uri(&base, None).unwrap(), "http://127.0.0.1:5000/");
    }
}
