//! The NATS JetStream backend: many gateways and workers, on many machines, share one queue.
//!
//! Layout on the server (names derive from the stream name, `faas-request` by default):
//!
//! - stream `faas-request` (work queue, file storage), subjects `faas-request.<function>`: one
//!   message per call, published with `Nats-Msg-Id` = call id and a tag of its status record
//!   (`<id>#<tag>`), so the server drops a repeat inside its duplicate window, and a call id
//!   used again after its first enqueue failed and was undone is not taken for a repeat of
//!   the undone message (which the workers drop). One durable pull consumer, `faas-workers`,
//!   is shared by every worker: explicit acks, `ack_wait` = the lease.
//! - key-value bucket `faas-request-calls`: one status record per call (`c.<id>`, or
//!   `x.<hex id>` for ids with characters keys cannot hold) and one entry per idempotency key
//!   (`i.<sha256>`), kept for the retention period. Every change to a record is a
//!   compare-and-set on its revision, and every ack or nak of a message follows a successful
//!   one: JetStream acks are not tied to one delivery, so a worker that lost its lease must
//!   not be able to ack the call away from its new owner.
//! - stream `faas-request-dlq`: a copy of each dead-lettered request (subject per call), kept
//!   until it is redriven or purged.
//! - stream `faas-request-callback` (work queue) with consumer `faas-callbacks`: one message
//!   per pending callback that its first delivery did not settle, carrying the call's outcome;
//!   bodies too large for one message go to the object store `faas-request-results`.
//!
//! Callbacks: a finished call's callback is first delivered by the worker that ran it. While
//! it does, the callback rides on the call's request message, which that worker keeps unacked:
//! the one record write that stores the outcome (the whole of it: status, headers, body) also
//! marks the callback pending, and the ack after the delivery is recorded is not waited for.
//! Should that worker die, the request message comes back after its lease and whoever takes
//! it, once the worker's claim on the delivery has lapsed, publishes a callback message from
//! the record; so does the worker itself when its own delivery failed and is to be retried,
//! or is still unsettled when the claim lapses. Dead letters, and outcomes larger than the
//! status size cap, get their callback message before the record write, as they always did.
//! Either way the callback message is published before the record names it: a dispatcher that
//! fetches it in between hands it back (for the claim while the call is still running, for a
//! second while a carried callback is being moved), and drops only a message the record no
//! longer wants.
//!
//! Leases: a fetched message is the worker's until the consumer's `ack_wait`; `in_progress`
//! acks extend it while the call runs. A caller asking for another lease length gets it with
//! a delayed nak, which the server treats the same way (redelivery when it runs out). Retries
//! are delayed naks (the delay the worker chose, `Retry-After` included); attempts are counted
//! in the status record, and the worker dead-letters a call itself (term + a copy in the
//! dead-letter stream) when its retries are exhausted, so the consumer has no `max_deliver`
//! (hand-backs and lease take-overs count as deliveries too) and no server-side backoff (on
//! NATS 2.9 it would replace `ack_wait`, the lease, with its first step).
//!
//! A request message also names the revision at which enqueue stored its record (header
//! `Fgateway-Record-Revision`): the worker taking it on its first delivery rebuilds that record
//! from the message and writes it with a compare-and-set at that revision, reading the record
//! only when the write finds it changed (a duplicate enqueue, a cancel, an undone enqueue). A
//! message delivered again (handed back, a lease run out, a callback it carries) is read first.
//!
//! A record also names its call's live message (its stream sequence, once a worker has seen
//! it): a second message for the same call (republished by a retried enqueue after the
//! duplicate window, or a redrive published twice) is dropped, never run beside the first.
//! Calls fetched for a function at its concurrency limit are handed back for
//! 100 ms, and a lease whose whole fetch was handed back fetches again, in growing batches (up
//! to 1024 messages), so that a backlog of one function cannot fill every fetch and
//! starve the others. The hand-back is short because other workers, with room for that
//! function, do not see those calls meanwhile.
//!
//! Round trips to the server per operation (a request and its answer; "one-way" is a message
//! no answer is waited for), for a call with a callback that its first delivery settles:
//!
//! | operation | round trips | one-way |
//! |---|---|---|
//! | enqueue | 2: record create, request publish (+1 with an idempotency key) | |
//! | lease, per call | 1: record write (first delivery; +1 read otherwise); the fetch is 1 per batch | |
//! | while running, every third of the lease | 1: record read | progress ack |
//! | finish | 1: record write | |
//! | callback delivered | 1: record write | ack of the request message |
//! | status read | 1: record read | |
//!
//! That is 5 round trips and one ack per call, where the design before this layout took 9 and
//! three (a record read before each lease write, a callback message published at finish and
//! deleted after delivery, and a dispatcher meeting each new callback message: a read and a
//! delayed nak). `benches/async_fast.sh` counts nats-server's messages in and out per call.
//!
//! The code, by concern: `setup` (names, streams and consumer created or checked, connecting),
//! `record` (status records, their keys, compare-and-set), `enqueue` (request messages,
//! idempotency, undoing a failed enqueue), `lease` (fetching, taking and handing back calls),
//! `finish` (final outcomes with their callback, retries), `callbacks` (pending callbacks,
//! their results and stored bodies), `dead_letters` (the dead-letter stream, purge and
//! redrive), `listing` (the call listing and queue stats); this file holds the queue itself and
//! the [`Queue`] implementation that ties them together (the longer operations are methods in
//! the module of their concern).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, Message,
    consumer::{self, PullConsumer},
    kv,
    message::PublishMessage as Publish,
    object_store::ObjectStore,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{
    BoxFuture, CallFilter, CallPage, CallState, CallStatus, CallbackJob, CallbackState, Cancelled,
    Enqueued, Leased, Outcome, PageQuery, Queue, QueueError, QueueRequest, QueueStats, ms, rfc3339,
    shown_result, unix_ms,
};

#[cfg(test)]
mod callback_tests;
mod callbacks;
mod dead_letters;
mod elections;
mod enqueue;
mod finish;
mod lease;
mod listing;
mod record;
mod setup;
#[cfg(test)]
mod tests;

use elections::{ATTEMPT, within, within_each};
use lease::*;
use listing::entry;
use record::*;
use setup::*;
pub use setup::{SetupError, servers};

/// Settings of the JetStream queue.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Server URL(s), comma-separated: `nats://host:4222`.
    pub url: String,
    /// Name of the request stream; the other names derive from it.
    pub stream: String,
    /// Stream replicas (1 for a single server, 3 or 5 in a cluster).
    pub replicas: usize,
    /// How long status records and idempotency keys are kept.
    pub retention: Duration,
    /// Most result bytes a status record shows.
    pub result_cap: usize,
    /// The consumer's `ack_wait` when this process creates it: the workers' lease.
    pub lease: Duration,
    /// How long start-up waits for the server and for its JetStream to take the streams.
    pub connect_timeout: Duration,
    /// Longest an enqueue keeps trying while the cluster has no leader for the bucket or the
    /// stream (an election); then the caller is told the queue is unavailable.
    pub enqueue_within: Duration,
}

/// Longest delay handed to the server (its durations are signed 64-bit nanoseconds).
const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Compare-and-set attempts before an update gives up.
const CAS_ATTEMPTS: usize = 32;

/// How long a call for a function at its limit is handed back for, so the next fetch reaches
/// other functions' calls first.
const HAND_BACK: Duration = Duration::from_millis(100);

/// Largest batch a lease fetches while looking past handed-back calls.
const SCAN_BATCH: usize = 128;

/// Most messages one lease looks at while looking past handed-back calls.
const SCAN_LIMIT: usize = 1024;

/// Longest a fetch of waiting messages may take (it normally ends within milliseconds: the
/// server answers a no-wait pull at once).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the clean-up of a failed enqueue may wait for the server.
const FORGET_WITHIN: Duration = Duration::from_secs(60);

/// Header of a request message: the revision at which enqueue stored the call's record.
const RECORD_REVISION: &str = "Fgateway-Record-Revision";

/// Room left in a message for headers and JSON framing.
const FRAMING: usize = 4096;

/// The server failed or cannot be reached.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Unavailable(Box::new(e))
}

/// An error from the client's boxed error type.
fn boxed(e: async_nats::Error) -> QueueError {
    QueueError::Unavailable(e)
}

/// The JetStream queue.
pub struct JetStreamQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    requests: stream::Stream,
    workers: PullConsumer,
    dlq: stream::Stream,
    callbacks: stream::Stream,
    dispatchers: PullConsumer,
    kv: kv::Store,
    results: ObjectStore,
    config: JetStreamConfig,
    /// The consumer's `ack_wait`.
    ack_wait: Duration,
    /// Request messages leased by this process, by call id.
    held: Mutex<HashMap<String, Held>>,
    /// Callback messages claimed by this process, by call id.
    claimed: Mutex<HashMap<String, Message>>,
    /// Calls this process finished whose first callback it is delivering.
    settled: Mutex<HashMap<String, Settled>>,
}

impl std::fmt::Debug for JetStreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamQueue")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JetStreamQueue {
    /// Most bytes a message may carry, from the server.
    fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// Fails fast while the connection is down: publishing would only be buffered, and the
    /// caller must hear "unavailable" rather than wait for a timeout.
    fn connected(&self) -> Result<(), QueueError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(unavailable(NotConnected(format!("{state:?}")))),
        }
    }

    /// Takes (lease) or claims (callback) each fetched message side by side, each a few round
    /// trips to the server. The ones taken are returned even when others failed (their
    /// failures are logged; the messages come back after their ack wait); an error with
    /// nothing taken is returned.
    async fn each<T, F>(
        &self,
        messages: Vec<Message>,
        what: &str,
        f: impl Fn(Message) -> F,
    ) -> Result<Vec<T>, QueueError>
    where
        F: std::future::Future<Output = Result<Option<T>, QueueError>>,
    {
        let results = futures_util::future::join_all(messages.into_iter().map(f)).await;
        let mut out = Vec::new();
        let mut failed = None;
        for r in results {
            match r {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::http::proxy::error_chain(&e), "{what}");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

/// A nak that makes the message deliverable again after `delay` (at once when zero).
fn nak(delay: Duration) -> AckKind {
    if delay.is_zero() {
        AckKind::Nak(None)
    } else {
        AckKind::Nak(Some(delay.min(MAX_DELAY)))
    }
}

/// `bytes` cut at `cap`, and whether it was cut.
fn cap(bytes: &[u8], cap: usize) -> (&[u8], bool) {
    (&bytes[..bytes.len().min(cap)], bytes.len() > cap)
}

/// A function name as one subject token (names are DNS labels, possibly with a namespace).
fn subject_token(function: &str) -> String {
    function
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
            c => c,
        })
        .collect()
}

/// The connection is down.
#[derive(Debug, thiserror::Error)]
#[error("not connected to NATS (connection {0})")]
struct NotConnected(String);

/// A fetch did not end in time.
#[derive(Debug, thiserror::Error)]
#[error("fetching from the consumer timed out")]
struct FetchTimedOut;

/// A call id's record disappeared while it was being looked at.
#[derive(Debug, thiserror::Error)]
#[error("call {0} was being stored and is gone; try again")]
struct Vanished(String);

/// Too many writers at once on one record.
#[derive(Debug, thiserror::Error)]
#[error("call {0}: too many concurrent updates")]
struct Contended(String);

/// The request does not fit in one message.
#[derive(Debug, thiserror::Error)]
#[error("request of {size} bytes exceeds the NATS max_payload of {limit} bytes")]
struct TooLarge {
    size: usize,
    limit: usize,
}

impl Queue for JetStreamQueue {
    fn enqueue(
        &self,
        request: QueueRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, Result<Enqueued, QueueError>> {
        Box::pin(self.enqueue_call(request, idempotency_key))
    }

    fn lease<'a>(
        &'a self,
        owner: &'a str,
        max: usize,
        lease: Duration,
        busy: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Leased>, QueueError>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let slots = AtomicUsize::new(max);
            let started = tokio::time::Instant::now();
            let mut batch = max;
            let mut scanned = 0;
            loop {
                let messages = fetch(&self.workers, batch).await?;
                let fetched = messages.len();
                scanned += fetched;
                let mut leased = self
                    .each(messages, "cannot lease a call", |m| {
                        self.take(m, owner, lease, busy, &slots)
                    })
                    .await?;
                // A full batch with nothing taken was handed back (a busy function's backlog)
                // or left over; either is out of the way now, so look further at once, in
                // larger batches, rather than meet the same calls again at the next lease.
                if leased.is_empty()
                    && fetched == batch
                    && scanned < SCAN_LIMIT
                    && started.elapsed() < HAND_BACK / 2
                {
                    batch = (batch * 2).min(SCAN_BATCH.max(max));
                    continue;
                }
                leased.sort_by_key(|l| l.request.enqueued_at);
                return Ok(leased);
            }
        })
    }

    fn extend<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            let Some(message) = self.held_message(call_id, owner) else {
                return Ok(false);
            };
            // Extend first: a slow or failing read must not cost the lease.
            message.ack_with(self.renewal(lease)).await.map_err(boxed)?;
            let holds = self
                .read(call_id)
                .await?
                .is_some_and(|v| v.record.held_by(owner));
            if !holds {
                self.take_held(call_id, owner);
            }
            Ok(holds)
        })
    }

    fn finish<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(self.finalize(call_id, owner, outcome, claim, false))
    }

    fn retry_later<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        delay: Duration,
        outcome: Outcome,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.retry_call_later(call_id, owner, delay, outcome))
    }

    fn dead_letter<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(self.finalize(call_id, owner, outcome, claim, true))
    }

    fn release<'a>(
        &'a self,
        call_ids: &'a [String],
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.release_calls(call_ids, owner))
    }

    fn cancel<'a>(&'a self, call_id: &'a str) -> BoxFuture<'a, Result<Cancelled, QueueError>> {
        Box::pin(async move {
            self.connected()?;
            let now = unix_ms();
            let result = self
                .modify(call_id, |record| match record.state {
                    CallState::Queued | CallState::Retrying => {
                        record.state = CallState::Cancelled;
                        record.finished_at = Some(now);
                        Step::Write(Cancelled::Yes)
                    }
                    state => Step::Keep(Cancelled::TooLate(state)),
                })
                .await?;
            Ok(match result {
                None => Cancelled::NotFound,
                Some((Cancelled::Yes, record)) => {
                    // A call a worker has seen has a known message: remove it now rather than
                    // when its next delivery is dropped.
                    if let Some(seq) = record.record.seq {
                        let _ = self.requests.delete_message(seq).await;
                    }
                    Cancelled::Yes
                }
                Some((other, _)) => other,
            })
        })
    }

    fn status<'a>(
        &'a self,
        call_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CallStatus>, QueueError>> {
        Box::pin(async move { Ok(self.read(call_id).await?.map(|v| v.record.status())) })
    }

    fn list_calls<'a>(
        &'a self,
        filter: &'a CallFilter,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<CallPage, QueueError>> {
        Box::pin(self.list_records(filter, page))
    }

    fn dead_letters<'a>(
        &'a self,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<CallPage, QueueError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for call_id in self.dead_letter_ids().await? {
                match self.read(&call_id).await? {
                    Some(v) if v.record.dead => out.push(entry(&v.record)),
                    Some(_) => {
                        // Left over from a redrive whose clean-up failed (the copy is read
                        // first: a later copy, of a death after it, is kept).
                        if let Some((_, seq)) = self.dead_request(&call_id).await?
                            && let Some(v) = self.read(&call_id).await?
                        {
                            let _ = self.purge_left_over_copy(&v.record, seq).await;
                        }
                    }
                    None => {
                        // The record expired; the copy remains a dead letter.
                        if let Some((request, _)) = self.dead_request(&call_id).await? {
                            let mut record = Record::queued(&request);
                            record.state = CallState::Failed;
                            record.dead = true;
                            out.push(entry(&record));
                        }
                    }
                }
            }
            Ok(CallPage::cut(out, page, false))
        })
    }

    fn redrive<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(async move {
            self.connected()?;
            let ids = self.dead_letter_targets(call_id).await?;
            let mut n = 0;
            for id in ids {
                if self.redrive_one(&id).await? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn purge<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(self.purge_dead(call_id))
    }

    fn due_callbacks(
        &self,
        max: usize,
        claim: Duration,
    ) -> BoxFuture<'_, Result<Vec<CallbackJob>, QueueError>> {
        Box::pin(async move {
            self.move_overdue_callbacks().await;
            if max == 0 {
                return Ok(Vec::new());
            }
            let messages = fetch(&self.dispatchers, max).await?;
            self.each(messages, "cannot claim a callback", |m| {
                self.claim_callback(m, claim)
            })
            .await
        })
    }

    fn callback_result<'a>(
        &'a self,
        call_id: &'a str,
        delivered: bool,
        retry_in: Option<Duration>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.record_callback_result(call_id, delivered, retry_in, error))
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        Box::pin(self.queue_stats())
    }

    fn nats_subject_roots(&self) -> Vec<String> {
        vec![
            self.names.requests.clone(),
            self.names.dlq.clone(),
            self.names.callbacks.clone(),
        ]
    }

    fn expire(&self) -> BoxFuture<'_, Result<u64, QueueError>> {
        // The bucket's max_age drops records and idempotency keys after the retention
        // period, and the object store's drops stored bodies: nothing to do here.
        Box::pin(async { Ok(0) })
    }
}
