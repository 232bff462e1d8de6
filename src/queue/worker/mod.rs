//! The worker: leases calls, runs them through an [`Invoker`] (the gateway's own call path, in
//! process or over HTTP), retries what may succeed later, records outcomes, and delivers
//! callbacks on their own schedule.
//!
//! - Concurrency: at most `max_inflight` calls at once, and at most `per_function` per function
//!   (a function at its limit is skipped when leasing), so one slow function cannot starve the
//!   others.
//! - Leases are extended every third of the lease while a call runs: a call longer than the lease
//!   is never given to a second worker.
//! - Retried: 408, 429, 500, 502, 503, 504, timeouts and connection errors, with exponential
//!   backoff and jitter, or after `Retry-After` when the function sends it; until
//!   `max_retry_attempts` or `max_retry_age`, after which the call is dead-lettered. Other
//!   statuses are final.
//! - Callbacks: POST of the function's body and headers plus `X-Call-Id`, `X-Function-Status`
//!   (503 when the call itself failed), `X-Function-Name`, `X-Duration-Seconds`, `X-Retry` (the
//!   attempt that produced the result, from 1), `X-Retry-Max`, `User-Agent`, and
//!   `X-Fgateway-Signature: sha256=HEX` (HMAC-SHA256 of the body) when a secret is set. A failed
//!   delivery is retried on its own backoff; it never runs the function again. The worker that
//!   ran a call sends its first callback itself; later attempts, and callbacks whose worker
//!   died, go through the callback dispatcher, which polls for due callbacks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, CallbackJob, Leased, Outcome, Queue};
use crate::http::proxy;

mod callbacks;

pub use callbacks::sign;

/// Runs one queued call and reports what happened.
pub trait Invoker: Send + Sync {
    /// Invokes `request`'s function, taking at most `timeout`.
    fn invoke<'a>(
        &'a self,
        request: &'a super::QueueRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Outcome>;
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's lease owner name (unique per process).
    pub owner: String,
    /// Calls in flight at most.
    pub max_inflight: usize,
    /// Calls in flight per function at most.
    pub per_function: usize,
    /// Lease length; extended while a call runs.
    pub lease: Duration,
    /// Attempts at most (the first included).
    pub max_retry_attempts: u32,
    /// No retry once a call is this old.
    pub max_retry_age: Duration,
    /// First retry delay (doubles each attempt, with jitter).
    pub retry_backoff: Duration,
    /// Longest retry delay.
    pub retry_backoff_max: Duration,
    /// Longest a call may take.
    pub call_timeout: Duration,
    /// Longest a callback delivery may take.
    pub callback_timeout: Duration,
    /// Delivery attempts at most.
    pub callback_attempts: u32,
    /// First callback retry delay (doubles each attempt).
    pub callback_backoff: Duration,
    /// Longest callback retry delay.
    pub callback_backoff_max: Duration,
    /// Key for the callback signature header.
    pub signing_secret: Option<Vec<u8>>,
    /// Addresses callbacks may reach.
    pub egress: crate::http::egress::EgressPolicy,
    /// How long in-flight calls may finish on shutdown.
    pub drain: Duration,
}

/// Counters the worker keeps (registered by the gateway's metrics).
#[derive(Debug, Clone, Default)]
pub struct WorkerCounters {
    /// Attempts that will be retried.
    pub retries: Counter,
    /// Calls moved to the dead-letter set.
    pub dead_lettered: Counter,
    /// Callback deliveries that failed (each attempt).
    pub callback_failures: Counter,
}

/// The worker.
pub struct Worker {
    /// Where calls come from.
    queue: Arc<dyn Queue>,
    /// How calls are made.
    invoker: Arc<dyn Invoker>,
    /// Settings.
    config: WorkerConfig,
    /// Counters.
    counters: WorkerCounters,
    /// Woken by enqueues in the same process.
    wake: Arc<Notify>,
    /// Client for callbacks (http and https).
    client: proxy::TlsClient,
    /// First deliveries, sent right after a call finishes.
    inline_callbacks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How often the queue is polled when nothing woke the worker (retries coming due, leases
/// expiring, calls enqueued by other processes).
const POLL: Duration = Duration::from_millis(100);

impl Worker {
    /// A worker; `wake` is notified by enqueues in this process.
    pub fn new(
        queue: Arc<dyn Queue>,
        invoker: Arc<dyn Invoker>,
        config: WorkerConfig,
        counters: WorkerCounters,
        wake: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(Worker {
            queue,
            invoker,
            client: proxy::tls_client(config.egress),
            config,
            counters,
            wake,
            inline_callbacks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// A unique owner name for this process.
    pub fn owner_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{host}-{}-{}", std::process::id(), uuid::Uuid::new_v4())
    }

    /// Runs calls until `stop` is cancelled, then finishes in-flight calls (up to `drain`).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let callbacks = tokio::spawn(Arc::clone(&self).deliver_callbacks(stop.clone()));
        let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let mut tasks = JoinSet::new();
        // While busy, lease in batches rather than one call per completion: each lease is a
        // write every other queue operation waits behind.
        let batch = (self.config.max_inflight / 8).max(1);
        while !stop.is_cancelled() {
            let free = self.config.max_inflight.saturating_sub(tasks.len());
            let leased = if free == 0 || (free < batch && !tasks.is_empty()) {
                Vec::new()
            } else {
                let busy: Vec<String> = running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|(_, n)| **n >= self.config.per_function)
                    .map(|(f, _)| f.clone())
                    .collect();
                match self
                    .queue
                    .lease(&self.config.owner, free, self.config.lease, &busy)
                    .await
                {
                    Ok(leased) => leased,
                    Err(e) => {
                        tracing::error!(error = %proxy::error_chain(&e), "cannot lease calls");
                        Vec::new()
                    }
                }
            };
            if leased.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
                continue;
            }
            // One lease can return more calls of a function than it has slots left: give the
            // extra ones back at once (they stay first in line).
            let (leased, extra): (Vec<Leased>, Vec<Leased>) = {
                let mut counts = running.lock().unwrap_or_else(PoisonError::into_inner);
                leased.into_iter().partition(|call| {
                    let n = counts.entry(call.request.function.clone()).or_default();
                    if *n < self.config.per_function {
                        *n += 1;
                        true
                    } else {
                        false
                    }
                })
            };
            if !extra.is_empty() {
                let ids: Vec<String> = extra.iter().map(|c| c.request.call_id.clone()).collect();
                if let Err(e) = self.queue.release(&ids, &self.config.owner).await {
                    tracing::warn!(error = %proxy::error_chain(&e), "cannot give back extra leases; they expire instead");
                }
            }
            for call in leased {
                let function = call.request.function.clone();
                let worker = Arc::clone(&self);
                let running = Arc::clone(&running);
                tasks.spawn(async move {
                    worker.run_call(call).await;
                    let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(n) = running.get_mut(&function) {
                        *n -= 1;
                        if *n == 0 {
                            running.remove(&function);
                        }
                    }
                });
            }
            // Give a function at its limit a chance to free a slot before leasing again.
            while let Some(done) = tasks.try_join_next() {
                drop(done);
            }
        }
        tracing::info!(
            in_flight = tasks.len(),
            "worker stopping: finishing calls in flight"
        );
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.drain, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                "calls still running at the end of the drain; their leases will expire and they will run again"
            );
        }
        let _ = callbacks.await;
        self.inline_callbacks.close();
        let _ =
            tokio::time::timeout(self.config.callback_timeout, self.inline_callbacks.wait()).await;
    }

    /// Runs one leased call to a recorded outcome.
    async fn run_call(self: &Arc<Self>, call: Leased) {
        let request = &call.request;
        let call_id = request.call_id.as_str();
        let extend = async {
            let mut every = tokio::time::interval(self.config.lease / 3);
            every.tick().await;
            loop {
                every.tick().await;
                match self
                    .queue
                    .extend(call_id, &self.config.owner, self.config.lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(call_id, "lease lost while the call ran"),
                    Err(e) => tracing::warn!(call_id, error = %e, "cannot extend lease"),
                }
            }
        };
        let outcome = tokio::select! {
            outcome = self.invoker.invoke(request, self.config.call_timeout) => outcome,
            () = extend => unreachable_outcome(),
        };
        let claim = self.callback_claim();
        let callback = request.callback_url.as_ref().map(|url| CallbackJob {
            call_id: request.call_id.clone(),
            function: request.function.clone(),
            url: url.clone(),
            outcome: outcome.clone(),
            attempts: request.attempt,
            delivery_attempts: 0,
        });
        let (recorded, is_final) = if !retryable(&outcome) {
            (
                self.queue
                    .finish(call_id, &self.config.owner, outcome, claim)
                    .await,
                true,
            )
        } else if let Some(delay) = self.retry_delay(&call, &outcome) {
            self.counters.retries.inc();
            tracing::info!(
                call_id,
                function = %request.function,
                attempt = request.attempt,
                status = outcome.status,
                delay = %humantime::format_duration(delay),
                "call will be retried"
            );
            (
                self.queue
                    .retry_later(call_id, &self.config.owner, delay, outcome)
                    .await
                    .map(|()| true),
                false,
            )
        } else {
            self.counters.dead_lettered.inc();
            tracing::warn!(
                call_id,
                function = %request.function,
                attempts = request.attempt,
                status = outcome.status,
                "retries exhausted; call moved to the dead-letter set"
            );
            (
                self.queue
                    .dead_letter(call_id, &self.config.owner, outcome, claim)
                    .await,
                true,
            )
        };
        match recorded {
            // The callback is ours for `claim`: deliver it now rather than through the
            // dispatcher. Should this process die first, the dispatcher of any worker sends it
            // once the claim lapses.
            // In its own task: a slow receiver must not hold one of the function call slots.
            Ok(true) if is_final => {
                if let Some(job) = callback {
                    let worker = Arc::clone(self);
                    self.inline_callbacks
                        .spawn(async move { worker.deliver(job).await });
                }
            }
            // Lost lease (another worker has the call) or not final: nothing to deliver.
            Ok(_) => {}
            Err(e) => tracing::error!(
                call_id,
                error = %proxy::error_chain(&e),
                "cannot record the outcome; the call will run again when its lease expires"
            ),
        }
    }

    /// How long a callback stays with the worker that produced it before any dispatcher may
    /// send it.
    fn callback_claim(&self) -> Duration {
        self.config.callback_timeout * 2 + Duration::from_secs(1)
    }

    /// When to try again, or `None` when the call is out of attempts or age.
    fn retry_delay(&self, call: &Leased, outcome: &Outcome) -> Option<Duration> {
        let request = &call.request;
        if request.attempt >= self.config.max_retry_attempts {
            return None;
        }
        // Counted from the enqueue, or from the last redrive.
        let age = Duration::from_millis(super::unix_ms().saturating_sub(call.retry_since));
        let delay = retry_after(outcome).unwrap_or_else(|| {
            backoff(
                self.config.retry_backoff,
                self.config.retry_backoff_max,
                request.attempt,
            )
        });
        // A function may send any Retry-After; a huge one simply exhausts the retry age.
        (age.saturating_add(delay) < self.config.max_retry_age).then_some(delay)
    }
}

/// The extend loop never ends; this keeps `select!` typed.
fn unreachable_outcome() -> Outcome {
    Outcome {
        status: 500,
        error: Some("lease keeper stopped".into()),
        ..Outcome::default()
    }
}

/// Whether an attempt may succeed later.
pub fn retryable(outcome: &Outcome) -> bool {
    outcome.error.is_some() || matches!(outcome.status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The delay a `Retry-After` header asks for (seconds, or an HTTP date).
pub fn retry_after(outcome: &Outcome) -> Option<Duration> {
    let value = outcome
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.trim())?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Exponential backoff for the given attempt (1 = first retry), capped, with jitter: a random
/// point between half and all of the step.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let step = base
        .saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(max);
    let jitter: f64 = rand::random::<f64>();
    step.mul_f64(0.5 + jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules() {
        let with = |status, error: Option<&str>| Outcome {
            status,
            error: error.map(str::to_string),
            ..Outcome::default()
        };
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(&with(s, None)), "{s}");
        }
        for s in [200, 202, 400, 401, 404, 409, 422, 501] {
            assert!(!retryable(&with(s, None)), "{s}");
        }
        assert!(retryable(&with(0, Some("connection refused"))));

        let mut o = with(429, None);
        o.headers.push(("Retry-After".into(), "7".into()));
        assert_eq!(retry_after(&o), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        o.headers[0].1 = httpdate::fmt_http_date(later);
        let d = retry_after(&o).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(10);
        for attempt in 1..=6 {
            let step = Duration::from_secs(1 << (attempt - 1)).min(max);
            let d = backoff(base, max, attempt);
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(base, max, 200) <= max);
    }

    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
