//! Asynchronous invocation: `POST /async-function/NAME[/path]` (enqueue, 202 + `X-Call-Id`),
//! `GET /async-function/status/CALL_ID`, `DELETE /async-function/CALL_ID` (cancel), the
//! dead-letter endpoints of the system API, and the invokers the worker calls functions with.
//! [`admin`] holds the rest of the asynchronous system API (`/system/async/*`).

pub mod admin;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Gateway;
use super::invoke::{self, CallRequest, FunctionPath, X_CALL_ID, text};
use super::types::display_name;
use crate::http::body::ResponseBody;
use crate::http::egress::EgressPolicy;
use crate::http::proxy;
use crate::queue::worker::Invoker;
use crate::queue::{BoxFuture, Cancelled, Enqueued, Outcome, QueueRequest};

/// `X-Callback-Url`.
const X_CALLBACK_URL: &str = "x-callback-url";
/// `Idempotency-Key`.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether a caller-chosen call id is acceptable: 1 to 128 visible characters from a safe set.
pub fn valid_call_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// `POST /async-function/NAME[.NS][/path]`.
pub async fn enqueue(
    gateway: &Gateway,
    req: Request<Incoming>,
    target: FunctionPath<'_>,
) -> Response<ResponseBody> {
    if req.method() != Method::POST {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Asynchronous calls are made with POST.\n".into(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Some(spec) = gateway.registry.spec(target.name, target.namespace) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("Function {} not found.\n", target.name),
        );
    };
    let callback_url = match req.headers().get(X_CALLBACK_URL) {
        None => None,
        Some(v) => match check_callback(
            v,
            &gateway.config.callback_allowlist,
            gateway.config.callback_egress,
        ) {
            Ok(url) => Some(url),
            Err(why) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid X-Callback-Url: {why}\n"),
                );
            }
        },
    };
    let call_id = match req.headers().get(X_CALL_ID).map(|v| v.to_str()) {
        None => invoke::new_call_id(),
        Some(Ok(id)) if valid_call_id(id) => id.to_string(),
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "Invalid X-Call-Id: use 1 to 128 characters from A-Z a-z 0-9 - _ . :\n".into(),
            );
        }
    };
    let idempotency_key = req
        .headers()
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let limit = gateway.config.max_async_body;
    let too_large = || {
        let mut resp = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than max_async_body ({limit} bytes).\n"),
        );
        // The rest of the body is not read: this connection cannot carry another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, incoming) = req.into_parts();
    let body = match invoke::read_body(incoming, limit, &gateway.config).await {
        Ok(body) => body,
        Err(invoke::ReadBodyError::TooLarge) => return too_large(),
        Err(invoke::ReadBodyError::Client(reply)) => return reply,
    };

    let mut header_map = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (name, value) in &parts.headers {
        if name == X_CALLBACK_URL || name == header::CONTENT_LENGTH {
            continue;
        }
        header_map
            .entry(canonical(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    header_map.insert("X-Call-Id".into(), vec![call_id.clone()]);
    let request = QueueRequest {
        header: header_map,
        host: parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: body.to_vec(),
        method: parts.method.to_string(),
        path: target.rest.to_string(),
        query_string: parts.uri.query().unwrap_or_default().to_string(),
        function: display_name(&spec.service, spec.namespace()),
        callback_url,
        call_id,
        enqueued_at: crate::queue::unix_ms(),
        attempt: 0,
    };
    let retry_id = request.call_id.clone();
    match gateway.queue.enqueue(request, idempotency_key).await {
        Ok(enqueued) => {
            if matches!(enqueued, Enqueued::New(_)) {
                gateway.wake.notify_one();
            }
            let mut resp = text(StatusCode::ACCEPTED, String::new());
            if let Ok(v) = HeaderValue::from_str(enqueued.call_id()) {
                resp.headers_mut().insert(X_CALL_ID, v);
            }
            resp
        }
        Err(crate::queue::QueueError::TooLarge { limit, source }) => {
            tracing::warn!(error = %source, "asynchronous request too large for the queue");
            text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Request body is larger than the queue can store: {source}; bodies up to about {limit} bytes fit.\n"
                ),
            )
        }
        Err(e) => {
            tracing::error!(error = %proxy::error_chain(&e), call_id = %retry_id, "cannot enqueue");
            let mut resp = retry_later(
                "The queue cannot store the request right now; try again after Retry-After seconds with the same X-Call-Id (the call runs once however many times it is sent).\n",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_id) {
                resp.headers_mut().insert(X_CALL_ID, v);
            }
            resp
        }
    }
}

/// `Retry-After` of a 503 from a queue that cannot store a call now: a leader election takes a
/// few seconds.
const QUEUE_RETRY_AFTER: &str = "2";

/// `Content-Type` style header names (`x-call-id` → `X-Call-Id`), as OpenFaaS stores them.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Checks an `X-Callback-Url`: http or https with a host, and in the allowlist when there is one.
fn check_callback(
    value: &HeaderValue,
    allowlist: &[String],
    egress: EgressPolicy,
) -> Result<String, String> {
    let text = value.to_str().map_err(|_| "not text".to_string())?.trim();
    let uri: http::Uri = text.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{text:?} is not an http or https URL")),
    }
    let host = uri.host().ok_or_else(|| format!("{text:?} has no host"))?;
    egress.check_host(host)?;
    if !allowlist.is_empty() {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let allowed = allowlist
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(authority));
        if !allowed {
            return Err(format!("host {host} is not in the callback allowlist"));
        }
    }
    Ok(text.to_string())
}

/// `GET /async-function/status/CALL_ID`.
pub async fn status(gateway: &Gateway, call_id: &str) -> Response<ResponseBody> {
    match gateway.queue.status(call_id).await {
        Ok(Some(status)) => super::system::json(StatusCode::OK, &status),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!("No call {call_id} (unknown, or older than the retention period).\n"),
        ),
        Err(e) => unavailable(&e),
    }
}

/// `DELETE /async-function/CALL_ID`.
pub async fn cancel(gateway: &Gateway, call_id: &str) -> Response<ResponseBody> {
    match gateway.queue.cancel(call_id).await {
        Ok(Cancelled::Yes) => text(StatusCode::OK, format!("Call {call_id} cancelled.\n")),
        Ok(Cancelled::TooLate(state)) => text(
            StatusCode::CONFLICT,
            format!(
                "Call {call_id} cannot be cancelled: it is {}.\n",
                state.as_str()
            ),
        ),
        Ok(Cancelled::NotFound) => text(StatusCode::NOT_FOUND, format!("No call {call_id}.\n")),
        Err(e) => unavailable(&e),
    }
}

pub(super) fn unavailable(e: &crate::queue::QueueError) -> Response<ResponseBody> {
    tracing::error!(error = %proxy::error_chain(e), "queue unavailable");
    retry_later("The queue is unavailable right now.\n")
}

/// 503 with `message` and [`QUEUE_RETRY_AFTER`].
fn retry_later(message: &str) -> Response<ResponseBody> {
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, message.to_string());
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(QUEUE_RETRY_AFTER),
    );
    resp
}

/// Builds the header map of a queued request.
fn headers_of(request: &QueueRequest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in &request.header {
        let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.append(name.clone(), v);
            }
        }
    }
    if !request.host.is_empty()
        && let Ok(v) = HeaderValue::from_str(&request.host)
    {
        headers.insert(header::HOST, v);
    }
    // The stored body is replayed whole: its original framing does not apply.
    proxy::strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    headers
}

fn path_and_query(request: &QueueRequest) -> String {
    let path = if request.path.is_empty() {
        "/"
    } else {
        &request.path
    };
    if request.query_string.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", request.query_string)
    }
}

/// Turns a response into an outcome, reading its whole body (at most `max` bytes).
async fn outcome_of(
    response: Response<Incoming>,
    started: Instant,
    deadline: Instant,
    max: usize,
) -> Outcome {
    let (parts, incoming) = response.into_parts();
    let mut headers = parts.headers;
    proxy::forward_response_headers(&mut headers, false);
    headers.remove(header::CONTENT_LENGTH);
    let pairs = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    match tokio::time::timeout_at(deadline, Limited::new(incoming, max).collect()).await {
        Ok(Ok(body)) => Outcome {
            status: parts.status.as_u16(),
            headers: pairs,
            body: body.to_bytes().to_vec(),
            duration: started.elapsed().as_secs_f64(),
            error: None,
        },
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Outcome {
            status: 502,
            duration: started.elapsed().as_secs_f64(),
            error: Some(format!(
                "the response is larger than max_async_result ({max} bytes)"
            )),
            ..Outcome::default()
        },
        Ok(Err(e)) => Outcome {
            status: 502,
            duration: started.elapsed().as_secs_f64(),
            error: Some(format!("the response body failed: {e}")),
            ..Outcome::default()
        },
        Err(_) => Outcome {
            status: 504,
            duration: started.elapsed().as_secs_f64(),
            error: Some("the response body did not finish within upstream_timeout".into()),
            ..Outcome::default()
        },
    }
}

/// Calls functions through this gateway's own call path (the same code as `/function/`).
#[derive(Debug)]
pub struct GatewayInvoker {
    /// The gateway.
    pub gateway: Arc<Gateway>,
    /// Largest response kept.
    pub max_result: usize,
}

impl Invoker for GatewayInvoker {
    fn invoke<'a>(
        &'a self,
        request: &'a QueueRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let started = Instant::now();
            let deadline = started + timeout;
            let method = Method::from_bytes(request.method.as_bytes()).unwrap_or(Method::POST);
            let target = invoke::parse_path(&request.function);
            let call = CallRequest {
                function: target
                    .as_ref()
                    .map_or(request.function.as_str(), |t| t.name),
                namespace: target.as_ref().and_then(|t| t.namespace),
                method,
                path_and_query: path_and_query(request),
                headers: headers_of(request),
                body: Full::new(Bytes::from(request.body.clone()))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
                peer: None,
                deadline,
                upgrade: false,
                pinned: None,
                start_time: invoke::start_time(),
            };
            match invoke::call(&self.gateway, call).await {
                Ok((response, _record)) => {
                    outcome_of(response, started, deadline, self.max_result).await
                }
                Err((error, _record)) => Outcome {
                    status: error.status().as_u16(),
                    headers: Vec::new(),
                    body: error.message(&request.function).into_bytes(),
                    duration: started.elapsed().as_secs_f64(),
                    error: error
                        .is_call_failure()
                        .then(|| error.message(&request.function).trim_end().to_string()),
                },
            }
        })
    }
}

/// Calls functions through a gateway's `/function/` route over HTTP (`fgateway worker`).
#[derive(Debug)]
pub struct RemoteInvoker {
    /// The gateway's base URL.
    pub gateway: http::Uri,
    /// Client.
    pub client: proxy::Client,
    /// Largest response kept.
    pub max_result: usize,
}

impl Invoker for RemoteInvoker {
    fn invoke<'a>(
        &'a self,
        request: &'a QueueRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let started = Instant::now();
            let deadline = started + timeout;
            let failed = |why: String, status: u16| Outcome {
                status,
                duration: started.elapsed().as_secs_f64(),
                error: Some(why),
                ..Outcome::default()
            };
            let final_failure = |why: String, status: u16| Outcome {
                status,
                body: why.into_bytes(),
                duration: started.elapsed().as_secs_f64(),
                ..Outcome::default()
            };
            let target = format!("/function/{}{}", request.function, path_and_query(request));
            let uri = match target
                .parse()
                .map_err(http::Error::from)
                .and_then(|pq| proxy::upstream_uri(&self.gateway, Some(&pq)))
            {
                Ok(uri) => uri,
                // Final: retrying cannot fix the path.
                Err(e) => return final_failure(format!("Cannot forward this path: {e}\n"), 400),
            };
            let mut req = Request::new(
                Full::new(Bytes::from(request.body.clone()))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            );
            *req.method_mut() =
                Method::from_bytes(request.method.as_bytes()).unwrap_or(Method::POST);
            *req.uri_mut() = uri;
            *req.headers_mut() = headers_of(request);
            req.headers_mut().remove(header::HOST);
            match proxy::send(&self.client, req, Some(deadline)).await {
                Ok(resp) => outcome_of(resp, started, deadline, self.max_result).await,
                Err(proxy::SendError::TimedOut) => failed("timed out".into(), 504),
                Err(proxy::SendError::Connect(why) | proxy::SendError::Failed(why)) => {
                    failed(why, 502)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls_are_checked() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(check_callback(&v("http://cb:9000/x"), &[], EgressPolicy::default()).is_ok());
        assert!(
            check_callback(
                &v("https://cb.example/hook?a=1"),
                &[],
                EgressPolicy::default()
            )
            .is_ok()
        );
        assert!(check_callback(&v("ftp://cb/x"), &[], EgressPolicy::default()).is_err());
        assert!(check_callback(&v("/relative"), &[], EgressPolicy::default()).is_err());
        let allow = vec!["cb.example".to_string(), "10.0.0.1:9000".to_string()];
        assert!(
            check_callback(&v("https://cb.example/x"), &allow, EgressPolicy::default()).is_ok()
        );
        assert!(
            check_callback(
                &v("http://10.0.0.1:9000/x"),
                &allow,
                EgressPolicy::default()
            )
            .is_ok()
        );
        assert!(
            check_callback(
                &v("http://10.0.0.1:9001/x"),
                &allow,
                EgressPolicy::default()
            )
            .is_err()
        );
        assert!(
            check_callback(&v("http://evil.example/x"), &allow, EgressPolicy::default()).is_err()
        );
    }

    #[test]
    fn call_ids_and_header_names() {
        assert!(valid_call_id("abc-123_x.y:z"));
        assert!(!valid_call_id(""));
        assert!(!valid_call_id("a b"));
        assert!(!valid_call_id(&"x".repeat(129)));
        assert_eq!(canonical("x-call-id"), "X-Call-Id");
        assert_eq!(canonical("content-type"), "Content-Type");
    }
}
