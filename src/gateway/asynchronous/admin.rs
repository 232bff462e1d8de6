//! The queue's part of the system API (`/system/async/...`): listing calls, queue figures, and
//! the dead-letter set (list, redrive, purge).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::unavailable;
use crate::gateway::Gateway;
use crate::gateway::invoke::{self, text};
use crate::http::body::ResponseBody;
use crate::queue::{CallFilter, CallState, Cursor, MAX_PAGE, PageQuery};

/// Body of the redrive and purge endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Selection {
    /// One call; all dead letters when absent.
    call_id: Option<String>,
}

/// The listing parameters of a query string: `limit` (1 to 1000) and `after` (a page's
/// `next`), plus `function` and `state` for calls; an error names the bad parameter.
fn listing_query(query: Option<&str>) -> Result<(CallFilter, PageQuery), String> {
    let mut filter = CallFilter::default();
    let mut page = PageQuery::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "function" => filter.function = Some(value.into_owned()),
            "state" => {
                filter.state = Some(CallState::parse(&value).ok_or_else(|| {
                    format!("Invalid state {value:?}: expected queued, running, retrying, succeeded, failed or cancelled.\n")
                })?);
            }
            "limit" => {
                page.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        format!("Invalid limit {value:?}: expected 1 to {MAX_PAGE}.\n")
                    })?;
            }
            "after" => {
                page.after = Some(Cursor::parse(&value).ok_or_else(|| {
                    format!("Invalid after {value:?}: pass the next value of the previous page.\n")
                })?);
            }
            _ => {}
        }
    }
    Ok((filter, page))
}

/// `/system/async/dead-letters[...]`: list (GET), redrive (POST .../redrive), purge (DELETE);
/// `/system/async/calls` (GET, a listing) and `/system/async/stats` (GET, queue figures).
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_string();
    if req.method() == Method::GET
        && matches!(
            path.as_str(),
            "/system/async/calls" | "/system/async/dead-letters"
        )
    {
        let (filter, page) = match listing_query(req.uri().query()) {
            Ok(q) => q,
            Err(why) => return text(StatusCode::BAD_REQUEST, why),
        };
        if path == "/system/async/calls" {
            return match gateway.queue.list_calls(&filter, &page).await {
                Ok(list) => crate::gateway::system::json(StatusCode::OK, &list),
                Err(e) => unavailable(&e),
            };
        }
        return match gateway.queue.dead_letters(&page).await {
            Ok(list) => {
                // The body stays a plain array (as before paging); the next page's position
                // is a header.
                let mut resp = crate::gateway::system::json(StatusCode::OK, &list.calls);
                if let Some(next) = list.next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                    resp.headers_mut().insert("x-next-after", next);
                }
                resp
            }
            Err(e) => unavailable(&e),
        };
    }
    if req.method() == Method::GET && path == "/system/async/stats" {
        return match gateway.queue.stats().await {
            Ok(stats) => crate::gateway::system::json(
                StatusCode::OK,
                &serde_json::json!({
                    "depth": stats.depth,
                    "oldestAge": stats.oldest_age,
                    "inFlight": stats.in_flight,
                    "retrying": stats.retrying,
                    "deadLetters": stats.dead_letters,
                    "retriesTotal": gateway.metrics.worker.retries.get(),
                    "deadLetteredTotal": gateway.metrics.worker.dead_lettered.get(),
                }),
            ),
            Err(e) => unavailable(&e),
        };
    }
    let method = req.method().clone();
    let selection = |bytes: &Bytes| -> Result<Selection, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Selection::default());
        }
        serde_json::from_slice(bytes).map_err(|e| format!("Invalid JSON: {e}\n"))
    };
    let body = match invoke::read_body(req.into_body(), 64 * 1024, &gateway.config).await {
        Ok(body) => body,
        Err(invoke::ReadBodyError::TooLarge) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body is larger than 64 KiB.\n".into(),
            );
        }
        Err(invoke::ReadBodyError::Client(reply)) => return reply,
    };
    let call_id = || selection(&body).map(|s| s.call_id);
    match (path.as_str(), method) {
        ("/system/async/dead-letters/redrive", Method::POST) => {
            let id = match call_id() {
                Ok(id) => id,
                Err(why) => return text(StatusCode::BAD_REQUEST, why),
            };
            match gateway.queue.redrive(id.as_deref()).await {
                Ok(n) => {
                    gateway.wake.notify_one();
                    crate::gateway::system::json(
                        StatusCode::OK,
                        &serde_json::json!({ "redriven": n }),
                    )
                }
                Err(e) => unavailable(&e),
            }
        }
        ("/system/async/dead-letters", Method::DELETE) => {
            let id = match call_id() {
                Ok(id) => id,
                Err(why) => return text(StatusCode::BAD_REQUEST, why),
            };
            match gateway.queue.purge(id.as_deref()).await {
                Ok(n) => crate::gateway::system::json(
                    StatusCode::OK,
                    &serde_json::json!({ "purged": n }),
                ),
                Err(e) => unavailable(&e),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "No such system endpoint.\n".into()),
    }
}
