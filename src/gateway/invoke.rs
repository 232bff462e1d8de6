//! Synchronous invocation: `/function/NAME[.NAMESPACE][/path]`, any method, proxied to a ready
//! replica with both bodies streamed.
//!
//! The request gets `X-Call-Id` (kept when the caller sent one, generated otherwise),
//! `X-Start-Time` (Unix nanoseconds), `X-Forwarded-For` and `X-Forwarded-Host`; hop-by-hop
//! headers are dropped both ways. The response carries the same `X-Call-Id` and
//! `X-Start-Time`, whoever answered it. Failures answer with a body that says which: 404 unknown
//! function, 503 no replica ready, 502 unreachable, 504 `upstream_timeout`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant as StdInstant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Gateway;
use super::metrics::GatewayMetrics;
use super::provider::Via;
use super::registry::Resolved;
use crate::http::body::{self, BoxError, ResponseBody};
use crate::http::pinned::Pinned;
use crate::http::proxy;
use crate::http::reclaim::{self, Reclaim};

/// `X-Call-Id`.
pub const X_CALL_ID: &str = "x-call-id";
/// `X-Start-Time`.
pub const X_START_TIME: &str = "x-start-time";

/// A parsed `/function/...` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionPath<'a> {
    /// The function.
    pub name: &'a str,
    /// The namespace, when the caller named one.
    pub namespace: Option<&'a str>,
    /// The rest of the path, starting with `/`.
    pub rest: &'a str,
}

/// Splits `NAME[.NS][/rest]` (the part after `/function/`).
pub fn parse_path(tail: &str) -> Option<FunctionPath<'_>> {
    let (target, rest) = match tail.find('/') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, "/"),
    };
    let (name, namespace) = match target.split_once('.') {
        Some((n, ns)) => (n, Some(ns)),
        None => (target, None),
    };
    (!name.is_empty()).then_some(FunctionPath {
        name,
        namespace,
        rest,
    })
}

/// Records a call's metrics when dropped (after the response body was sent, or abandoned).
pub struct CallRecord {
    /// Where to record.
    metrics: Arc<GatewayMetrics>,
    /// The function.
    function: String,
    /// The status returned.
    code: u16,
    /// When the call started.
    started: StdInstant,
}

impl CallRecord {
    /// Sets the status to record.
    pub fn set_code(&mut self, code: u16) {
        self.code = code;
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.metrics
            .call_finished(&self.function, self.code, self.started);
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut resp = Response::new(body::full(message));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The answer to a request whose body did not arrive as it should: 408 for a stall, 400 for a
/// malformed or cut-short body.
pub fn client_body_failed(
    failure: body::ClientBodyFailure,
    config: &super::GatewayConfig,
) -> Response<ResponseBody> {
    match failure {
        body::ClientBodyFailure::TimedOut => text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "Request body was not received in time (read_timeout {}, read_idle_timeout {}).\n",
                humantime::format_duration(config.read_timeout),
                humantime::format_duration(config.read_idle_timeout)
            ),
        ),
        body::ClientBodyFailure::Unreadable => text(
            StatusCode::BAD_REQUEST,
            "Request body is malformed or incomplete.\n".into(),
        ),
    }
}

/// Why a request body could not be read whole.
#[derive(Debug)]
pub enum ReadBodyError {
    /// Longer than the limit.
    TooLarge,
    /// The client's fault: the reply says which.
    Client(Response<ResponseBody>),
}

/// Reads a whole request body of at most `limit` bytes, bounded by the gateway's
/// `read_timeout` and `read_idle_timeout`.
pub async fn read_body(
    incoming: Incoming,
    limit: usize,
    config: &super::GatewayConfig,
) -> Result<bytes::Bytes, ReadBodyError> {
    let (mut incoming, watch) = body::read_bounded(
        incoming,
        body::ReadDeadline::After(config.read_timeout),
        Some(config.read_idle_timeout),
    );
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > limit {
                        return Err(ReadBodyError::TooLarge);
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Err(e) => {
                return Err(ReadBodyError::Client(match watch.failure() {
                    Some(failure) => client_body_failed(failure, config),
                    None => text(
                        StatusCode::BAD_REQUEST,
                        format!("Request body could not be read: {e}\n"),
                    ),
                }));
            }
        }
    }
    Ok(collected.freeze())
}

/// A new call id.
pub fn new_call_id() -> String {
    // A version 4 UUID from the thread's generator (seeded from the OS), so a call id costs no
    // system call.
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// One call to a function, from a client or from the async worker.
pub struct CallRequest<'a> {
    /// The function.
    pub function: &'a str,
    /// Its namespace, when the caller named one.
    pub namespace: Option<&'a str>,
    /// Method.
    pub method: http::Method,
    /// Path below the function, with the query.
    pub path_and_query: String,
    /// Headers (the call id among them).
    pub headers: http::HeaderMap,
    /// Body.
    pub body: ResponseBody,
    /// The caller's address, for `X-Forwarded-For`.
    pub peer: Option<IpAddr>,
    /// When the whole call must be over.
    pub deadline: Instant,
    /// Whether an upgrade the request asks for (websocket) goes through to the function.
    pub upgrade: bool,
    /// The client connection's own upstream connections, for calls from a client.
    pub pinned: Option<&'a Pinned>,
    /// `X-Start-Time` for the function: when the call reached the gateway ([`start_time`]).
    pub start_time: HeaderValue,
}

/// Now as an `X-Start-Time` value: Unix nanoseconds.
pub fn start_time() -> HeaderValue {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    HeaderValue::from(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// Why a call got no response from its function.
#[derive(Debug)]
pub enum CallError {
    /// No such function.
    Unknown,
    /// No replica can take it.
    Unavailable(String),
    /// The path cannot be forwarded.
    BadPath(String),
    /// `upstream_timeout` passed before the response started.
    TimedOut(std::time::Duration),
    /// The function could not be reached.
    Connect(String),
    /// The exchange failed.
    Failed(String),
}

impl CallError {
    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            CallError::Unknown => StatusCode::NOT_FOUND,
            CallError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CallError::BadPath(_) => StatusCode::BAD_REQUEST,
            CallError::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            CallError::Connect(_) | CallError::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// What the caller is told.
    pub fn message(&self, function: &str) -> String {
        match self {
            CallError::Unknown => format!("Function {function} not found.\n"),
            CallError::Unavailable(why) => {
                format!("Function {function} is not available: {why}.\n")
            }
            CallError::BadPath(why) => format!("Cannot forward this path: {why}\n"),
            CallError::TimedOut(limit) => format!(
                "Function {function} did not answer within upstream_timeout ({}).\n",
                humantime::format_duration(*limit)
            ),
            CallError::Connect(why) => format!("Cannot reach function {function}: {why}\n"),
            CallError::Failed(why) => format!("Function {function} failed to answer: {why}\n"),
        }
    }

    /// Whether the call itself failed (no status from the function).
    pub fn is_call_failure(&self) -> bool {
        matches!(
            self,
            CallError::TimedOut(_) | CallError::Connect(_) | CallError::Failed(_)
        )
    }
}

/// How many replicas a call is sent to at most, when it cannot reach the first (see [`call`]).
pub const ATTEMPTS: u32 = 3;

/// Makes one call: resolves the function, forwards the request, and waits for the response
/// headers. The returned record counts the call in the metrics when dropped; keep it with the
/// response body.
///
/// A request that could not reach the replica it was given (refused, unreachable: a replica
/// that crashed or stopped) is sent to another, up to [`ATTEMPTS`] in all and before the
/// deadline, as long as nothing of its body was read; so is one whose exchange broke before
/// any answer, when its method is idempotent. The provider is told, so that it passes over
/// that replica for a while.
pub async fn call(
    gateway: &Gateway,
    req: CallRequest<'_>,
) -> Result<(Response<Incoming>, CallRecord), (CallError, Option<CallRecord>)> {
    let CallRequest {
        function,
        namespace,
        method,
        path_and_query,
        mut headers,
        mut body,
        peer,
        deadline,
        upgrade,
        pinned,
        start_time,
    } = req;
    let (mut upstream, mut via, label, mut key) = resolve(gateway, function, namespace, deadline)
        .await
        .map_err(|e| (e, None))?;
    let mut record = CallRecord {
        started: gateway.metrics.call_started(&label),
        metrics: Arc::clone(&gateway.metrics),
        function: label,
        code: 0,
    };
    let path_and_query = match path_and_query.parse::<http::uri::PathAndQuery>() {
        Ok(pq) => pq,
        Err(e) => {
            record.code = 400;
            return Err((CallError::BadPath(e.to_string()), Some(record)));
        }
    };
    if proxy::forward_request_headers(&mut headers, peer).is_some() && !upgrade {
        // This caller cannot tunnel: the request goes through as a plain one.
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.insert(X_START_TIME, start_time);
    let mut attempt = 1;
    loop {
        let uri = match proxy::upstream_uri(&upstream, Some(&path_and_query)) {
            Ok(uri) => uri,
            Err(e) => {
                record.code = 400;
                return Err((CallError::BadPath(e.to_string()), Some(record)));
            }
        };
        let last = attempt == ATTEMPTS || upgrade;
        let (sent, reclaim) = if last {
            (body, None)
        } else {
            let (sent, reclaim) = reclaim::reclaimable(body);
            (sent.boxed_unsync(), Some(reclaim))
        };
        let mut forwarded = Request::new(sent);
        *forwarded.method_mut() = method.clone();
        *forwarded.uri_mut() = uri;
        *forwarded.headers_mut() = if last {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };
        let sent = match &via {
            None => proxy::send_via(&gateway.client, forwarded, Some(deadline), pinned).await,
            Some(via) => tokio::time::timeout_at(deadline, (via.0)(forwarded))
                .await
                .unwrap_or(Err(proxy::SendError::TimedOut)),
        };
        let error = match sent {
            Ok(resp) => {
                record.code = resp.status().as_u16();
                return Ok((resp, record));
            }
            Err(proxy::SendError::TimedOut) => CallError::TimedOut(gateway.config.upstream_timeout),
            Err(proxy::SendError::Connect(why)) => CallError::Connect(format!("{upstream}: {why}")),
            Err(proxy::SendError::Failed(why)) => CallError::Failed(format!("{upstream}: {why}")),
        };
        let again = match &error {
            CallError::Connect(_) => true,
            CallError::Failed(_) => method.is_idempotent(),
            _ => false,
        };
        if matches!(error, CallError::Connect(_) | CallError::Failed(_)) {
            gateway.registry.unreachable(&key, &upstream);
        }
        let unread = reclaim
            .filter(|_| again && Instant::now() < deadline)
            .and_then(Reclaim::take);
        let Some(unread) = unread else {
            record.code = error.status().as_u16();
            tracing::warn!(
                function,
                status = record.code,
                "{}",
                error.message(function).trim_end()
            );
            return Err((error, Some(record)));
        };
        tracing::debug!(function, attempt, "{}", error.message(function).trim_end());
        body = unread;
        attempt += 1;
        (upstream, via, _, key) = match resolve(gateway, function, namespace, deadline).await {
            Ok(resolved) => resolved,
            Err(e) => {
                record.code = e.status().as_u16();
                return Err((e, Some(record)));
            }
        };
    }
}

/// Where a call to `function` goes (waiting for a ready replica until `deadline`): the
/// replica's URL, the provider's sender when the pool is not the way there, the function's
/// label for metrics and messages, and its registry key.
async fn resolve(
    gateway: &Gateway,
    function: &str,
    namespace: Option<&str>,
    deadline: Instant,
) -> Result<(http::Uri, Option<Via>, String, String), CallError> {
    let wait = deadline.saturating_duration_since(Instant::now());
    match gateway.registry.resolve(function, namespace, wait).await {
        Resolved::Unknown => Err(CallError::Unknown),
        Resolved::Unavailable(why) => Err(CallError::Unavailable(why)),
        Resolved::Ready {
            uri,
            via,
            label,
            key,
            cold_start,
        } => {
            if let Some(took) = cold_start {
                gateway.metrics.scaling.cold_start(&label, took);
            }
            Ok((uri, via, label, key))
        }
    }
}

/// The call id of a request: its `X-Call-Id`, or a new one.
pub fn call_id_of(headers: &http::HeaderMap) -> HeaderValue {
    headers
        .get(X_CALL_ID)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&new_call_id()).unwrap_or(HeaderValue::from_static("unknown"))
        })
}

/// `/function/...`: proxies one client request.
pub async fn invoke(
    gateway: &Gateway,
    req: Request<Incoming>,
    peer: SocketAddr,
    target: FunctionPath<'_>,
    pinned: &Pinned,
) -> Response<ResponseBody> {
    let now = Instant::now();
    let deadline = now + gateway.config.upstream_timeout;
    let call_id = call_id_of(req.headers());
    let started = start_time();
    let mut req = req;
    let client_upgrade = proxy::requested_upgrade(req.headers())
        .is_some()
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let mut headers = parts.headers;
    headers.insert(X_CALL_ID, call_id.clone());
    proxy::set_empty_length(
        &parts.method,
        &mut headers,
        hyper::body::Body::is_end_stream(&incoming),
    );
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{}?{q}", target.rest),
        None => target.rest.to_string(),
    };
    let (body, watch) = body::read_bounded(
        incoming,
        body::ReadDeadline::After(gateway.config.read_timeout),
        Some(gateway.config.read_idle_timeout),
    );
    let request = CallRequest {
        function: target.name,
        namespace: target.namespace,
        method: parts.method,
        path_and_query,
        headers,
        body,
        peer: Some(peer.ip()),
        deadline,
        upgrade: client_upgrade.is_some(),
        pinned: Some(pinned),
        start_time: started.clone(),
    };
    match call(gateway, request).await {
        Ok((mut response, record)) => {
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            if switching {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let Some(client_upgrade) = client_upgrade else {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "Function {} switched protocols without being asked to.\n",
                            target.name
                        ),
                    );
                };
                // The call lasts as long as the tunnel: it counts as load for the autoscaler
                // (and keeps a function that scales to zero from idling) until it closes.
                gateway.tunnels.spawn(
                    client_upgrade,
                    upstream_upgrade,
                    Some(gateway.config.upgrade_timeout),
                    record,
                );
                gateway.metrics.upgrade_opened();
                let (mut parts, _) = response.into_parts();
                proxy::forward_response_headers(&mut parts.headers, true);
                parts.headers.insert(X_CALL_ID, call_id);
                parts.headers.insert(X_START_TIME, started);
                return Response::from_parts(parts, body::empty());
            }
            let (mut parts, incoming) = response.into_parts();
            proxy::forward_response_headers(&mut parts.headers, false);
            parts.headers.insert(X_CALL_ID, call_id);
            parts.headers.insert(X_START_TIME, started);
            let body = body::guarded(
                incoming.map_err(BoxError::from).boxed_unsync(),
                Some(deadline),
                record,
            );
            Response::from_parts(parts, body)
        }
        Err((error, mut record)) => {
            // A body the client failed to send is the client's fault, not the function's.
            let mut resp = match watch.failure() {
                Some(failure) => {
                    let resp = client_body_failed(failure, &gateway.config);
                    if let Some(record) = &mut record {
                        record.set_code(resp.status().as_u16());
                    }
                    resp
                }
                None => text(error.status(), error.message(target.name)),
            };
            resp.headers_mut().insert(X_CALL_ID, call_id);
            resp.headers_mut().insert(X_START_TIME, started);
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_distinct_version_4_uuids() {
        let a = new_call_id();
        let b = new_call_id();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn function_paths() {
        let p = |s| parse_path(s);
        assert_eq!(
            p("echo"),
            Some(FunctionPath {
                name: "echo",
                namespace: None,
                rest: "/"
            })
        );
        assert_eq!(
            p("echo.team-a/x/y"),
            Some(FunctionPath {
                name: "echo",
                namespace: Some("team-a"),
                rest: "/x/y"
            })
        );
        assert_eq!(
            p("echo/"),
            Some(FunctionPath {
                name: "echo",
                namespace: None,
                rest: "/"
            })
        );
        assert_eq!(p(""), None);
        assert_eq!(p("/x"), None);
    }
}
