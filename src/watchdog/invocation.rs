//! One function invocation: the spawned handler with its deadlines, and the reply it produces.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::mode::{Limit, run_deadline};
use super::stdin::{self, BodyError};
use super::{cgi, outcome};
use crate::config::{Mode, WatchdogConfig};
use crate::http::body::{self, ResponseBody};
use crate::process::lines::LineLog;
use crate::process::{HandlerProcess, Launcher};

/// The `Content-Type` of a successful reply: `content_type` when set; otherwise classic mode
/// echoes the request's (as OpenFaaS's classic watchdog does) and the other modes say
/// `application/octet-stream` when there is a body to describe.
pub fn reply_content_type(
    config: &WatchdogConfig,
    request: &HeaderMap,
    has_body: bool,
) -> Option<HeaderValue> {
    if let Some(ct) = &config.content_type {
        return Some(ct.clone());
    }
    match config.mode {
        Mode::Classic => request.get(header::CONTENT_TYPE).cloned(),
        _ if has_body => Some(HeaderValue::from_static("application/octet-stream")),
        _ => None,
    }
}

/// A response under construction.
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: ResponseBody,
    /// Whether sending the body is bound by `write_timeout`. Messages the watchdog writes itself
    /// (a 504 that says the write_timeout passed, say) are small and must always arrive.
    pub write_bounded: bool,
    /// When the body must have been sent regardless of `write_timeout` (http mode's
    /// `exec_timeout`); past it the response is aborted.
    pub abort_at: Option<Instant>,
}

impl Reply {
    /// A reply with `status` and `body`.
    pub fn new(status: StatusCode, body: ResponseBody) -> Self {
        Reply {
            status,
            headers: HeaderMap::new(),
            body,
            write_bounded: true,
            abort_at: None,
        }
    }

    /// A plain-text reply from a status and message (as built in [`outcome`]).
    pub fn text((status, text): (StatusCode, Vec<u8>)) -> Self {
        let mut reply = Reply::new(status, body::full(text));
        reply.write_bounded = false;
        reply.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        reply
    }

    /// Sets `X-Duration-Seconds` (seconds with six decimals, as OpenFaaS writes it).
    pub fn set_duration(&mut self, d: Duration) {
        // Whole seconds and microseconds as integers: the same text as `{:.6}` of the seconds
        // (truncated, not rounded, in the last digit), without float formatting per request.
        let text = format!("{}.{:06}", d.as_secs(), d.subsec_micros());
        if let Ok(v) = HeaderValue::from_str(&text) {
            self.headers
                .insert(HeaderName::from_static("x-duration-seconds"), v);
        }
    }

    /// The finished response.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// A started handler and everything needed to supervise it. `F` is the stdin feed once the
/// request body is attached.
pub struct Invocation<F = ()> {
    /// The configuration.
    pub config: Arc<WatchdogConfig>,
    /// The running handler.
    pub process: HandlerProcess,
    /// When the request started.
    pub start: Instant,
    /// When the request body must have arrived.
    pub read_deadline: Option<Instant>,
    /// When the handler must have finished, and which limit that is.
    pub run_deadline: Option<(Instant, Limit)>,
    /// When the response must have been written.
    pub write_deadline: Option<Instant>,
    /// Where the handler's stderr lines go.
    pub stderr_log: LineLog,
    /// Copies the request body to the handler's stdin.
    pub feed: F,
}

impl Invocation {
    /// Spawns the handler for a request; a failure to start is already the reply's text.
    pub fn spawn(
        config: &Arc<WatchdogConfig>,
        launcher: &Launcher,
        parts: &Parts,
        start: Instant,
    ) -> Result<Self, outcome::Text> {
        let extra = if config.cgi_headers {
            cgi::request_env(parts)
        } else {
            Vec::new()
        };
        let process = launcher.launch(&extra).map_err(|e| {
            let command = launcher.program.display();
            tracing::error!(%command, error = %e, "cannot start fprocess");
            outcome::spawn_failed(command, &e)
        })?;
        let call_id = config
            .log_callid
            .then(|| parts.headers.get("x-call-id"))
            .flatten()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Ok(Invocation {
            process,
            start,
            read_deadline: config.read_timeout.map(|t| start + t),
            run_deadline: run_deadline(start, config.exec_timeout, config.write_timeout),
            write_deadline: config.write_timeout.map(|t| start + t),
            stderr_log: LineLog {
                stream: "stderr",
                prefix: config.prefix_logs,
                call_id,
                max_line: config.log_buffer_size.get(),
            },
            config: Arc::clone(config),
            feed: (),
        })
    }

    /// Attaches the request body: it will be streamed to the handler's stdin.
    pub fn with_body(
        mut self,
        body: Incoming,
        parts: &Parts,
    ) -> Invocation<impl Future<Output = Result<(), BodyError>> + Send + 'static> {
        let prefix = self
            .config
            .marshal_request
            .then(|| cgi::marshal_prefix(&parts.headers));
        let feed = stdin::feed(body, self.process.take_stdin(), self.read_deadline, prefix);
        Invocation {
            config: self.config,
            process: self.process,
            start: self.start,
            read_deadline: self.read_deadline,
            run_deadline: self.run_deadline,
            write_deadline: self.write_deadline,
            stderr_log: self.stderr_log,
            feed,
        }
    }
}
