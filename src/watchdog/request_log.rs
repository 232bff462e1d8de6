//! The line (or two) logged per request, worded as OpenFaaS's watchdogs word them, so the tools
//! and habits built on their logs (`faas-cli logs`, the certifier's logs test, a `grep` for
//! `Wrote`) work unchanged. `log_requests=false` turns them off.
//!
//! - classic mode, as the classic watchdog: `Forking fprocess.` when the handler starts, then
//!   `Wrote 11 Bytes - Duration: 0.001234s` when it succeeded;
//! - the of-watchdog modes (`serializing`, `streaming`, `http`), as of-watchdog: once the
//!   response body is sent (or the client went away during it), `POST /path?q - 200 -
//!   ContentLength: 11B (0.0012s)`, counting the body bytes sent. `static` logs none, as
//!   of-watchdog's does not; neither does a request turned away by `max_inflight`.
//!
//! They are `INFO` events, where a per-request event would be `DEBUG` elsewhere in this crate:
//! the point is to write what OpenFaaS's watchdogs write by default.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::http::body::ResponseBody;

/// Classic mode: the handler is about to start.
pub fn forking() {
    tracing::info!("Forking fprocess.");
}

/// Classic mode: the handler succeeded and `bytes` of output are being sent.
pub fn wrote(bytes: u64, duration: Duration) {
    tracing::info!(
        "Wrote {bytes} Bytes - Duration: {:.6}s",
        duration.as_secs_f64()
    );
}

/// An of-watchdog mode's line for one request, logged when dropped: keep it with the response
/// body, which [`RequestLine::count`] makes count what it sends.
#[derive(Debug)]
pub struct RequestLine {
    /// The request's method.
    method: Method,
    /// The request's target, as the client sent it.
    uri: Uri,
    /// The status answered.
    status: StatusCode,
    /// When the request arrived.
    start: Instant,
    /// Body bytes sent so far.
    sent: Arc<AtomicU64>,
}

impl RequestLine {
    /// A line for a request, logged once the response is done.
    pub fn new(method: Method, uri: Uri, status: StatusCode, start: Instant) -> Self {
        RequestLine {
            method,
            uri,
            status,
            start,
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `body`, counting the bytes it yields into this line.
    pub fn count(&self, body: ResponseBody) -> ResponseBody {
        let sent = Arc::clone(&self.sent);
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                sent.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        })
        .boxed_unsync()
    }
}

impl Drop for RequestLine {
    fn drop(&mut self) {
        tracing::info!(
            "{} {} - {} - ContentLength: {} ({:.4}s)",
            self.method,
            self.uri,
            self.status.as_u16(),
            human_size(self.sent.load(Ordering::Relaxed)),
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// A byte count in decimal units with four significant digits, as of-watchdog shows sizes:
/// `11B`, `1.234kB`, `12.35MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    // Four significant digits, trailing zeros dropped (Go's %.4g for these magnitudes).
    let whole_digits = if size < 1.0 {
        1
    } else {
        size.log10().floor() as usize + 1
    };
    let mut text = format!("{size:.*}", 4usize.saturating_sub(whole_digits));
    if text.contains('.') {
        text.truncate(text.trim_end_matches('0').trim_end_matches('.').len());
    }
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_of_watchdog_shows_them() {
        for (bytes, shown) in [
            (0, "0B"),
            (11, "11B"),
            (999, "999B"),
            (1000, "1kB"),
            (1234, "1.234kB"),
            (12_345, "12.35kB"),
            (123_456, "123.5kB"),
            (10_000_000, "10MB"),
        ] {
            assert_eq!(human_size(bytes), shown, "{bytes}");
        }
    }
}
