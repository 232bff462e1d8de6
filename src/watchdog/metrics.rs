//! Prometheus metrics with the names OpenFaaS's watchdogs export, and the server that exposes
//! them on `metrics_port`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Prometheus's default histogram buckets, as the Go client library defines them.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Labels of the request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// Response status code.
    code: u16,
    /// Request method, lower case (as Go's promhttp writes it).
    method: String,
}

fn new_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The watchdog's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// The registry the server encodes.
    registry: Registry,
    /// `http_requests_total{code,method}`.
    requests: Family<RequestLabels, Counter>,
    /// `http_request_duration_seconds{code,method}`.
    duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// `http_requests_in_flight`.
    in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            new_histogram,
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests",
            "total HTTP requests processed",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Seconds spent serving HTTP requests",
            duration.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "The current number of requests being served",
            in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
        }
    }

    /// Starts measuring one request; the measurement is recorded when the guard drops.
    pub fn start(self: &Arc<Self>, method: &Method) -> RequestMeasure {
        self.in_flight.inc();
        RequestMeasure {
            metrics: Arc::clone(self),
            method: method.as_str().to_ascii_lowercase(),
            code: None,
            started: Instant::now(),
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// One request being measured; records itself on drop (when the response body is done).
#[derive(Debug)]
pub struct RequestMeasure {
    /// Where to record.
    metrics: Arc<Metrics>,
    /// The lower-case method.
    method: String,
    /// The status sent, once known.
    code: Option<StatusCode>,
    /// When the request started.
    started: Instant,
}

impl RequestMeasure {
    /// Sets the status code that will be recorded.
    pub fn set_code(&mut self, code: StatusCode) {
        self.code = Some(code);
    }
}

impl Drop for RequestMeasure {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        let labels = RequestLabels {
            // A request dropped before a status was chosen: the client went away.
            code: self.code.map_or(499, |c| c.as_u16()),
            method: std::mem::take(&mut self.method),
        };
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.requests.get_or_create(&labels).inc();
    }
}

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    crate::http::server::serve_simple(listener, shutdown, move |req: Request<Incoming>| {
        let metrics = Arc::clone(&metrics);
        async move { Ok::<_, Infallible>(metrics_response(&req, &metrics)) }
    })
    .await;
}

fn metrics_response(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "Not found\n".into());
    }
    match metrics.encode() {
        Ok(text) => {
            let mut resp = reply(StatusCode::OK, text);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}
