//! Synchronous invocation: `/function/NAME[.NAMESPACE][/path]`, any method, proxied to a ready
//! replica with both bodies streamed.
//!
//! The request gets `X-Call-Id` (kept when the caller sent one, generated otherwise),
//! `X-Start-Time` (Unix nanoseconds), `X-Forwarded-For` and `X-Forwarded-Host`; hop-by-hop
//! headers are dropped both ways. Failures answer with a body that says which: 404 unknown
//! function, 503 no replica ready, 502 unreachable, 504 `upstream_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant as StdInstant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Gateway;
use super::metrics::GatewayMetrics;
use super::registry::Resolved;
use crate::proxy;
use crate::watchdog::body::{self, BoxError, ResponseBody};

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
struct CallRecord {
    /// Where to record.
    metrics: Arc<GatewayMetrics>,
    /// The function.
    function: String,
    /// The status returned.
    code: u16,
    /// When the call started.
    started: StdInstant,
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

/// A new call id.
pub fn new_call_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Proxies one call to `target`'s function.
pub async fn invoke(
    gateway: &Gateway,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    target: FunctionPath<'_>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let deadline = start + gateway.config.upstream_timeout;
    let call_id = req
        .headers()
        .get(X_CALL_ID)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&new_call_id()).unwrap_or(HeaderValue::from_static("unknown"))
        });

    let upstream = match gateway
        .registry
        .resolve(
            target.name,
            target.namespace,
            gateway.config.upstream_timeout,
        )
        .await
    {
        Resolved::Unknown => {
            return text(
                StatusCode::NOT_FOUND,
                format!("Function {} not found.\n", target.name),
            );
        }
        Resolved::Unavailable(why) => {
            let mut resp = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Function {} is not available: {why}.\n", target.name),
            );
            resp.headers_mut().insert(X_CALL_ID, call_id);
            return resp;
        }
        Resolved::Ready(uri) => uri,
    };
    let mut record = CallRecord {
        started: gateway.metrics.call_started(target.name),
        metrics: Arc::clone(&gateway.metrics),
        function: target.name.to_string(),
        code: 0,
    };

    let headers = req.headers_mut();
    if proxy::forward_request_headers(headers, Some(peer.ip())).is_some() {
        // Upgrades are not proxied by the gateway: the request goes through as a plain one.
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.insert(X_CALL_ID, call_id.clone());
    let start_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    if let Ok(v) = HeaderValue::from_str(&start_ns.to_string()) {
        headers.insert(X_START_TIME, v);
    }
    let (mut parts, incoming) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{}?{q}", target.rest),
        None => target.rest.to_string(),
    };
    parts.uri = match path_and_query
        .parse()
        .map_err(http::Error::from)
        .and_then(|pq| proxy::upstream_uri(&upstream, Some(&pq)))
    {
        Ok(uri) => uri,
        Err(e) => {
            record.code = 400;
            return text(
                StatusCode::BAD_REQUEST,
                format!("Cannot forward this path: {e}\n"),
            );
        }
    };
    parts.version = http::Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    let body = incoming.map_err(BoxError::from).boxed_unsync();

    let response = match proxy::send(
        &gateway.client,
        Request::from_parts(parts, body),
        Some(deadline),
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            let (status, message) = match e {
                proxy::SendError::TimedOut => (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "Function {} did not answer within upstream_timeout ({}).\n",
                        target.name,
                        humantime::format_duration(gateway.config.upstream_timeout)
                    ),
                ),
                proxy::SendError::Connect(why) => (
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Cannot reach function {} at {upstream}: {why}\n",
                        target.name
                    ),
                ),
                proxy::SendError::Failed(why) => (
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Function {} at {upstream} failed to answer: {why}\n",
                        target.name
                    ),
                ),
            };
            tracing::warn!(
                function = target.name,
                status = status.as_u16(),
                "{}",
                message.trim_end()
            );
            record.code = status.as_u16();
            let mut resp = text(status, message);
            resp.headers_mut().insert(X_CALL_ID, call_id);
            return resp;
        }
    };

    let (mut parts, incoming) = response.into_parts();
    proxy::forward_response_headers(&mut parts.headers, false);
    parts.headers.insert(X_CALL_ID, call_id);
    record.code = parts.status.as_u16();
    let body = body::guarded(
        incoming.map_err(BoxError::from).boxed_unsync(),
        Some(deadline),
        record,
    );
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

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
