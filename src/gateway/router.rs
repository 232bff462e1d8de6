//! The routing of one request: which part of the gateway answers it (function calls, async
//! calls, the system API, the UI, health and metrics), after the cross-site check and the
//! credentials each part needs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::invoke::{self, text};
use super::{Gateway, access, asynchronous, system, ui};
use crate::http::body::ResponseBody;
use crate::http::pinned::Pinned;

impl Gateway {
    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        pinned: Arc<Pinned>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let path = req.uri().path().to_string();
        let system_write = path.starts_with("/system/")
            || (path.starts_with("/async-function/") && req.method() == http::Method::DELETE);
        let resp = if system_write && access::csrf::refused(req.method(), req.headers()) {
            text(
                StatusCode::FORBIDDEN,
                "Cross-site request refused: the system API changes state only for requests from the gateway's own pages or from non-browser clients.\n".into(),
            )
        } else if path == "/" && ui::wants_html(req.headers()) {
            ui::redirect("/ui/")
        } else if path == "/ui" || path.starts_with("/ui/") {
            match &self.auth {
                Some(auth) if !auth.allows(req.headers()) => unauthorized(),
                _ => ui::serve(&path),
            }
        } else if let Some(tail) = path.strip_prefix("/async-function/") {
            match (req.method(), tail.strip_prefix("status/")) {
                // Reading a result or cancelling a call needs the same credentials as the
                // system API: call ids can be chosen by callers, so they may be guessable.
                (&http::Method::GET, Some(_)) | (&http::Method::DELETE, _)
                    if self.auth.as_ref().is_some_and(|a| !a.allows(req.headers())) =>
                {
                    unauthorized()
                }
                (&http::Method::GET, Some(call_id)) => asynchronous::status(&self, call_id).await,
                (&http::Method::DELETE, _) if !tail.is_empty() && !tail.contains('/') => {
                    asynchronous::cancel(&self, tail).await
                }
                _ => match invoke::parse_path(tail) {
                    Some(target) => asynchronous::enqueue(&self, req, target).await,
                    None => text(
                        StatusCode::NOT_FOUND,
                        "No function named in the path.\n".into(),
                    ),
                },
            }
        } else if let Some(tail) = path.strip_prefix("/function/") {
            match invoke::parse_path(tail) {
                Some(target) => invoke::invoke(&self, req, peer, target, &pinned).await,
                None => text(
                    StatusCode::NOT_FOUND,
                    "No function named in the path.\n".into(),
                ),
            }
        } else if path.starts_with("/system/") {
            match &self.auth {
                Some(auth) if !auth.allows(req.headers()) => unauthorized(),
                _ if path.starts_with("/system/async/") => {
                    asynchronous::admin::handle(&self, req).await
                }
                _ => system::handle(&self, req).await,
            }
        } else if path == "/healthz" {
            text(StatusCode::OK, "OK\n".into())
        } else if path == "/metrics" {
            let stats = self.queue.stats().await.unwrap_or_default();
            self.metrics.upgrades_open(self.tunnels.open());
            match self.metrics.encode(&self.registry.list(None), &stats) {
                Ok(text_body) => {
                    let mut resp = text(StatusCode::OK, text_body);
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        } else {
            text(StatusCode::NOT_FOUND, "Not found.\n".into())
        };
        Ok(resp)
    }
}

/// 401 with the challenge.
fn unauthorized() -> Response<ResponseBody> {
    let mut resp = text(
        StatusCode::UNAUTHORIZED,
        "Authentication required.\n".into(),
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"fgateway\", charset=\"UTF-8\""),
    );
    resp
}
