//! The asynchronous call queue: the [`Queue`] trait every backend implements, the message and
//! status types, the embedded SQLite backend ([`embedded`]), the NATS JetStream backend shared
//! by many gateways and workers ([`jetstream`]), and the worker that runs calls and delivers
//! callbacks ([`worker`]).
//!
//! A call's life: `enqueue` (durable before it returns) → `lease` (a worker owns it until the
//! lease expires; `extend` keeps it) → `finish` (succeeded or failed: the result and the pending
//! callback are recorded in the same step), `retry_later`, or `dead_letter`. A lease that
//! expires (the worker died) makes the call leasable again: delivery is at-least-once.

pub mod embedded;
pub mod jetstream;
pub mod message;
mod status;
pub mod worker;

#[cfg(test)]
mod suite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

pub use message::QueueRequest;
pub use status::{CallState, CallStatus, CallbackState, ms, rfc3339, shown_result};

/// Milliseconds since the Unix epoch, the queue's clock (`EnqueuedAt`, leases, retry ages).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A boxed future, for the trait's async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store cannot take writes (disk full, I/O error, database locked, closed).
    #[error("the queue store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request is larger than the backend can store in one message.
    #[error("the request is too large for the queue (body limit {limit} bytes)")]
    TooLarge {
        /// The largest body that fits, bytes.
        limit: usize,
        /// The backend's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored message no longer parses.
    #[error("stored call {call_id} is unreadable")]
    Corrupt {
        /// The call.
        call_id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored as a new call.
    New(String),
    /// The call id or idempotency key was seen within the retention period: this is that call.
    Duplicate(String),
}

impl Enqueued {
    /// The call id either way.
    pub fn call_id(&self) -> &str {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// A call a worker now owns.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The request (with `attempt` counting this one).
    pub request: QueueRequest,
    /// Unix milliseconds the retry age is counted from: enqueue time, or the last redrive.
    pub retry_since: u64,
}

/// The result of one attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The function's status, or the gateway's (502/504) when the call itself failed.
    pub status: u16,
    /// Response headers worth passing to the callback.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Seconds the attempt took.
    pub duration: f64,
    /// Why the call itself failed (no response), if it did.
    pub error: Option<String>,
}

impl Outcome {
    /// Whether the function answered with a success (2xx or 3xx).
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && (200..400).contains(&self.status)
    }
}

/// What `cancel` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting and now will not run.
    Yes,
    /// It already ran or is running.
    TooLate(CallState),
    /// No such call.
    NotFound,
}

/// A callback waiting to be delivered.
#[derive(Debug, Clone)]
pub struct CallbackJob {
    /// The call.
    pub call_id: String,
    /// The function.
    pub function: String,
    /// Where to POST.
    pub url: String,
    /// The call's final outcome.
    pub outcome: Outcome,
    /// Attempts the call took.
    pub attempts: u32,
    /// Delivery attempts so far.
    pub delivery_attempts: u32,
}

/// Queue figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Calls waiting (queued or retrying).
    pub depth: u64,
    /// Age of the oldest waiting call, seconds.
    pub oldest_age: f64,
    /// Calls leased and running.
    pub in_flight: u64,
    /// Calls waiting for a retry (a subset of `depth`), when the backend counts them apart.
    pub retrying: Option<u64>,
    /// Calls in the dead-letter set.
    pub dead_letters: u64,
}

/// Which calls a listing returns.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    /// Only this function's calls (its queue name: `NAME`, or `NAME.NAMESPACE` outside the
    /// default namespace).
    pub function: Option<String>,
    /// Only calls in this state.
    pub state: Option<CallState>,
}

/// One page of a listing: at most `limit` entries after the position `after` (the `next` of
/// the previous page).
#[derive(Debug, Clone)]
pub struct PageQuery {
    /// Most entries to return (at least 1).
    pub limit: usize,
    /// Where the previous page ended.
    pub after: Option<Cursor>,
}

impl Default for PageQuery {
    fn default() -> Self {
        PageQuery {
            limit: DEFAULT_PAGE,
            after: None,
        }
    }
}

/// Entries per page unless asked otherwise.
pub const DEFAULT_PAGE: usize = 100;

/// Most entries one page may hold.
pub const MAX_PAGE: usize = 1000;

/// A position in a listing ordered by enqueue time, then call id: `MS:CALL_ID` in text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Enqueue time of the last entry shown, Unix milliseconds.
    pub enqueued_ms: u64,
    /// Its call id.
    pub call_id: String,
}

impl Cursor {
    /// Reads `MS:CALL_ID`.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (ms, id) = text.split_once(':')?;
        Some(Cursor {
            enqueued_ms: ms.parse().ok()?,
            call_id: id.to_string(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.enqueued_ms, self.call_id)
    }
}

/// A page of calls.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallPage {
    /// The calls.
    pub calls: Vec<CallStatus>,
    /// Where the next page starts (`after=`), when there may be one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Set when the backend looked at only part of what it holds (see its docs).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

impl CallPage {
    /// A page cut from `entries` (each with its cursor), already filtered: sorted newest
    /// first (`newest_first`) or oldest first, entries past `page.after` only, at most
    /// `page.limit`.
    pub fn cut(
        mut entries: Vec<(Cursor, CallStatus)>,
        page: &PageQuery,
        newest_first: bool,
    ) -> CallPage {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if newest_first {
            entries.reverse();
        }
        let limit = page.limit.clamp(1, MAX_PAGE);
        let mut calls = Vec::new();
        let mut last = None;
        let mut more = false;
        for (cursor, status) in entries {
            let past = match &page.after {
                None => true,
                Some(after) if newest_first => cursor < *after,
                Some(after) => cursor > *after,
            };
            if !past {
                continue;
            }
            if calls.len() == limit {
                more = true;
                break;
            }
            last = Some(cursor);
            calls.push(status);
        }
        CallPage {
            calls,
            next: more.then(|| last.map(|c| c.to_string())).flatten(),
            partial: false,
        }
    }
}

/// A durable queue of calls. Every method is safe to call from many workers at once.
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Stores a call. Returns only once it is durable. A call id or `idempotency_key` seen
    /// within the retention period returns that call instead.
    fn enqueue(
        &self,
        request: QueueRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, Result<Enqueued, QueueError>>;

    /// Leases up to `max` waiting calls (oldest first) for `lease`, skipping `busy` functions.
    fn lease<'a>(
        &'a self,
        owner: &'a str,
        max: usize,
        lease: Duration,
        busy: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Leased>, QueueError>>;

    /// Extends a lease this owner holds; false when the lease was lost.
    fn extend<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>>;

    /// Records the final outcome (succeeded, or failed for good) and queues its callback, due
    /// after `claim` (the caller may deliver it itself meanwhile; if it does not record the
    /// delivery in time, any dispatcher will). False when this owner had lost the lease: the
    /// outcome was not recorded and the caller must not deliver a callback.
    fn finish<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>>;

    /// Makes the call wait `delay` before its next attempt.
    fn retry_later<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        delay: Duration,
        outcome: Outcome,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Retries are exhausted: the call fails, joins the dead-letter set, and its callback is
    /// queued (due after `claim`, as for [`Queue::finish`]). False when the lease was lost.
    fn dead_letter<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>>;

    /// Gives leased calls back without running them (their attempt is not counted).
    fn release<'a>(
        &'a self,
        call_ids: &'a [String],
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Cancels a call that has not run.
    fn cancel<'a>(&'a self, call_id: &'a str) -> BoxFuture<'a, Result<Cancelled, QueueError>>;

    /// A call's status.
    fn status<'a>(
        &'a self,
        call_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CallStatus>, QueueError>>;

    /// Calls still within the retention period, newest first, filtered.
    fn list_calls<'a>(
        &'a self,
        filter: &'a CallFilter,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<CallPage, QueueError>>;

    /// The dead-letter set, oldest first.
    fn dead_letters<'a>(
        &'a self,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<CallPage, QueueError>>;

    /// Queues dead letters again (one, or all when `call_id` is `None`); how many.
    fn redrive<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>>;

    /// Drops dead letters (one, or all); how many.
    fn purge<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>>;

    /// Callbacks due for delivery now, up to `max`, each claimed for `claim` (so two
    /// dispatchers do not send the same one at once).
    fn due_callbacks(
        &self,
        max: usize,
        claim: Duration,
    ) -> BoxFuture<'_, Result<Vec<CallbackJob>, QueueError>>;

    /// Records a callback delivery: done, or to be tried again after `retry_in` (`None` = give
    /// up), with why it failed (`error`, shown in the status). Ignored unless the callback is
    /// still pending.
    fn callback_result<'a>(
        &'a self,
        call_id: &'a str,
        delivered: bool,
        retry_in: Option<Duration>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Figures for metrics.
    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>>;

    /// Drops finished calls older than the retention period.
    fn expire(&self) -> BoxFuture<'_, Result<u64, QueueError>>;

    /// The first tokens of the NATS subjects this queue publishes its own messages on (none
    /// for a queue that is not on NATS). NATS triggers leave those alone: a function
    /// subscribed to them would take every queued call for a message, and each call it made
    /// would be published there again.
    fn nats_subject_roots(&self) -> Vec<String> {
        Vec::new()
    }
}
