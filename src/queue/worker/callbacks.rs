//! Callback delivery: the dispatcher that sends due callbacks, one delivery attempt, and the
//! signature header.

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{POLL, Worker, backoff};
use crate::http::proxy;
use crate::queue::CallbackJob;

/// Most callback deliveries the dispatcher runs at once (a backlog after a receiver outage must
/// not open a connection per call).
const CALLBACK_CONCURRENCY: usize = 64;
impl Worker {
    /// Delivers due callbacks until `stop`, at most [`CALLBACK_CONCURRENCY`] at once.
    pub(super) async fn deliver_callbacks(self: Arc<Self>, stop: CancellationToken) {
        let mut deliveries = JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(CALLBACK_CONCURRENCY));
        let claim = self.callback_claim();
        loop {
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = deliveries.join_next() => {}
                }
                continue;
            }
            let due = match self.queue.due_callbacks(free, claim).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %proxy::error_chain(&e), "cannot read due callbacks");
                    Vec::new()
                }
            };
            let idle = due.is_empty();
            for job in due {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    break;
                };
                let worker = Arc::clone(&self);
                deliveries.spawn(async move {
                    worker.deliver(job).await;
                    drop(slot);
                });
            }
            while deliveries.try_join_next().is_some() {}
            if idle {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        let _ = tokio::time::timeout(self.config.callback_timeout, async {
            while deliveries.join_next().await.is_some() {}
        })
        .await;
    }

    /// One callback delivery attempt.
    pub(super) async fn deliver(&self, job: CallbackJob) {
        let result = self.post_callback(&job).await;
        let (delivered, retry_in) = match &result {
            Ok(()) => (true, None),
            Err(why) => {
                self.counters.callback_failures.inc();
                let next = job.delivery_attempts + 1;
                // An address the policy refuses stays refused: no retries.
                let refused = why.contains(crate::http::egress::REFUSED);
                let retry = (next < self.config.callback_attempts && !refused).then(|| {
                    backoff(
                        self.config.callback_backoff,
                        self.config.callback_backoff_max,
                        next,
                    )
                });
                match retry {
                    Some(d) => tracing::warn!(
                        call_id = %job.call_id,
                        url = %job.url,
                        attempt = next,
                        retry_in = %humantime::format_duration(d),
                        "callback failed: {why}"
                    ),
                    None => tracing::error!(
                        call_id = %job.call_id,
                        url = %job.url,
                        attempts = next,
                        "callback failed; giving up: {why}"
                    ),
                }
                (false, retry)
            }
        };
        if let Err(e) = self
            .queue
            .callback_result(
                &job.call_id,
                delivered,
                retry_in,
                result.as_ref().err().map(String::as_str),
            )
            .await
        {
            tracing::error!(call_id = %job.call_id, error = %e, "cannot record callback delivery");
        }
    }

    /// POSTs the callback; `Err` says why it did not get a 2xx.
    async fn post_callback(&self, job: &CallbackJob) -> Result<(), String> {
        let uri: http::Uri = job.url.parse().map_err(|e| format!("bad URL: {e}"))?;
        // Literal addresses never reach the resolver, which checks host names.
        if let Some(host) = uri.host() {
            self.config.egress.check_host(host)?;
        }
        let mut req = Request::post(uri);
        let headers = req.headers_mut().ok_or("bad request")?;
        for (name, value) in &job.outcome.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        }
        proxy::strip_hop_by_hop(headers);
        headers.remove(http::header::CONTENT_LENGTH);
        headers.remove(http::header::HOST);
        let status = if job.outcome.error.is_some() {
            503
        } else {
            job.outcome.status
        };
        let set = |headers: &mut http::HeaderMap, name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        set(headers, "x-call-id", job.call_id.clone());
        set(headers, "x-function-status", status.to_string());
        set(headers, "x-function-name", job.function.clone());
        set(
            headers,
            "x-duration-seconds",
            format!("{:.6}", job.outcome.duration),
        );
        set(headers, "x-retry", job.attempts.to_string());
        set(
            headers,
            "x-retry-max",
            self.config.max_retry_attempts.to_string(),
        );
        set(
            headers,
            "user-agent",
            format!("fgateway/{}", crate::VERSION),
        );
        if let Some(secret) = &self.config.signing_secret {
            set(
                headers,
                "x-fgateway-signature",
                format!("sha256={}", sign(secret, &job.outcome.body)),
            );
        }
        let body = Full::new(Bytes::from(job.outcome.body.clone()))
            .map_err(|e| match e {})
            .boxed_unsync();
        let req = req.body(body).map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + self.config.callback_timeout;
        match proxy::send(&self.client, req, Some(deadline)).await {
            Ok(resp) if resp.status().is_success() => {
                // Read the (small) reply so the connection can be reused.
                let _ = tokio::time::timeout_at(deadline, resp.into_body().collect()).await;
                Ok(())
            }
            Ok(resp) => Err(format!("receiver answered {}", resp.status())),
            Err(proxy::SendError::TimedOut) => Err("timed out".into()),
            Err(proxy::SendError::Connect(why) | proxy::SendError::Failed(why)) => Err(why),
        }
    }
}

/// HMAC-SHA256 of `body`, hex.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => String::new(),
    }
}
