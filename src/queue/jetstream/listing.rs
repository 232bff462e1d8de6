//! Listing calls (the status records are read from the bucket's stream, not from an index), and
//! the queue's stats.
//!
//! Cost, and its bound: a listing reads the newest [`LIST_WINDOW`] entries of the bucket stream
//! (every change of a record is one entry; idempotency keys are skipped) through a short-lived
//! ephemeral consumer, keeps the latest entry of each call, then filters, sorts and pages in
//! memory. That is one consumer creation plus one fetch per 1,000 entries, whatever the page
//! size or filter, and bounded memory. Calls whose records last changed before that window are
//! not listed (the page says `partial`); `GET /async-function/status/ID` still finds them. The
//! embedded queue has no such bound (it lists from indexes).

use std::collections::HashMap;

use super::*;
use crate::queue::{CallFilter, CallPage, Cursor, PageQuery};

/// Most bucket-stream entries one listing reads (the newest).
pub(super) const LIST_WINDOW: u64 = 20_000;

/// Entries fetched per pull.
const FETCH_BATCH: usize = 1000;

impl JetStreamQueue {
    /// Calls, newest first, from the latest records in the bucket stream.
    pub(super) async fn list_records(
        &self,
        filter: &CallFilter,
        page: &PageQuery,
    ) -> Result<CallPage, QueueError> {
        self.connected()?;
        let info = self.kv.stream.get_info().await.map_err(unavailable)?;
        let last = info.state.last_sequence;
        if info.state.messages == 0 {
            return Ok(CallPage::default());
        }
        let start = last
            .saturating_sub(LIST_WINDOW - 1)
            .max(info.state.first_sequence)
            .max(1);
        let partial = start > info.state.first_sequence;
        let consumer: PullConsumer = self
            .kv
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: consumer::AckPolicy::None,
                filter_subject: format!("{}>", self.kv.prefix),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let name = consumer.cached_info().name.clone();
        let mut latest: HashMap<String, Option<Record>> = HashMap::new();
        let mut seen_to = start.saturating_sub(1);
        while seen_to < last {
            let batch = fetch(&consumer, FETCH_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for message in batch {
                if let Ok(info) = message.info() {
                    seen_to = seen_to.max(info.stream_sequence);
                }
                let Some(key) = message
                    .subject
                    .as_str()
                    .strip_prefix(self.kv.prefix.as_str())
                else {
                    continue;
                };
                if !(key.starts_with("c.") || key.starts_with("x.")) {
                    continue;
                }
                let removed = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                let record = if removed {
                    None
                } else {
                    serde_json::from_slice::<Record>(&message.payload).ok()
                };
                latest.insert(key.to_string(), record);
            }
        }
        // The consumer goes by itself after `inactive_threshold`; deleting it now is tidier.
        let _ = self.kv.stream.delete_consumer(&name).await;
        let entries = latest
            .into_values()
            .flatten()
            .filter(|r| filter.function.as_ref().is_none_or(|f| *f == r.function))
            .filter(|r| filter.state.is_none_or(|s| s == r.state))
            .map(|r| entry(&r))
            .collect();
        let mut out = CallPage::cut(entries, page, true);
        out.partial = partial;
        Ok(out)
    }
}

/// A record as a listing entry.
pub(super) fn entry(record: &Record) -> (Cursor, CallStatus) {
    (
        Cursor {
            enqueued_ms: record.enqueued_at,
            call_id: record.call_id.clone(),
        },
        record.status(),
    )
}

impl JetStreamQueue {
    /// [`Queue::stats`]: depth, age of the oldest call, in flight, retries and dead letters.
    pub(super) async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        let info = self
            .requests
            .consumer_info(&self.names.workers)
            .await
            .map_err(unavailable)?;
        let in_flight = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        // Finished calls whose request message carries their callback are not waiting.
        let carriers = self
            .settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| s.carrier.is_some())
            .count() as u64;
        let unfinished = (info.num_pending + info.num_ack_pending as u64).saturating_sub(carriers);
        // The oldest call not yet acknowledged: the first request message past the consumer's
        // ack floor (everything at or below it is done). Not the stream's first message: a
        // replica that was down while messages were removed keeps them, and when it leads the
        // stream its first message is one every other replica removed long ago.
        let oldest_age = if unfinished == 0 {
            0.0
        } else {
            let subject = format!("{}.>", self.names.requests);
            let from = info.ack_floor.stream_sequence + 1;
            match self
                .requests
                .get_first_raw_message_by_subject(subject, from)
                .await
            {
                Ok(message) => {
                    let first = message.time.unix_timestamp_nanos() / 1_000_000;
                    let now = i128::from(unix_ms());
                    (now - first).max(0) as f64 / 1000.0
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => 0.0,
                Err(e) => return Err(unavailable(e)),
            }
        };
        let dead = self.dlq.get_info().await.map_err(unavailable)?;
        Ok(QueueStats {
            depth: unfinished.saturating_sub(in_flight),
            oldest_age,
            in_flight,
            // Retries wait as delayed naks inside the consumer: not counted apart.
            retrying: None,
            dead_letters: dead.state.messages,
        })
    }
}
