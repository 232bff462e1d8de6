//! The embedded queue backend: SQLite (WAL, `synchronous=FULL`) in the gateway's data file.
//!
//! All reads and writes run on one writer thread that owns the connection. It takes every job
//! waiting in its channel, runs them in one transaction and commits once, then answers each
//! job: concurrent enqueues share one fsync (group commit), and an enqueue's caller hears back
//! only after the commit that made it durable.
//!
//! A batch that holds an enqueue, a cancel, a redrive or a purge commits with
//! `synchronous=FULL` (the WAL is fsync'd before anyone hears back). Batches of worker
//! bookkeeping only (leases, outcomes, callback state) commit with `synchronous=NORMAL`: they
//! survive a crash of the process, and a power loss can at worst make a call or a callback
//! happen again, which at-least-once delivery allows. The WAL is sequential, so the next FULL
//! commit makes everything before it durable too.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};

mod listing;
mod records;
mod writer;

use records::{Final, STATUS_COLUMNS, record_final, status_row};
use writer::{Cached, Job};

use super::{
    BoxFuture, CallFilter, CallPage, CallState, CallStatus, CallbackJob, CallbackState, Cancelled,
    Enqueued, Leased, Outcome, PageQuery, Queue, QueueError, QueueRequest, QueueStats, rfc3339,
    shown_result,
};

/// Settings of the embedded queue.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// How long finished calls (status, result, idempotency keys) are kept.
    pub retention: Duration,
    /// Most result bytes a status record shows.
    pub result_cap: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            retention: Duration::from_secs(24 * 3600),
            result_cap: 64 * 1024,
        }
    }
}

/// The embedded queue.
#[derive(Debug)]
pub struct EmbeddedQueue {
    /// Jobs for the writer thread.
    jobs: std_mpsc::Sender<Job>,
    /// Settings.
    config: EmbeddedConfig,
}

/// The store failed.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Unavailable(Box::new(e))
}

/// The queue's clock as SQLite stores it.
fn now_ms() -> i64 {
    i64::try_from(super::unix_ms()).unwrap_or(i64::MAX)
}

/// A duration in milliseconds as SQLite stores it.
fn ms(d: Duration) -> i64 {
    i64::try_from(super::ms(d)).unwrap_or(i64::MAX)
}

/// `base` plus `d`, saturating (a huge `Retry-After` must not wrap into the past).
fn later(base: i64, d: Duration) -> i64 {
    base.saturating_add(ms(d))
}

/// Leases the oldest waiting calls: queued, retrying and expired-lease ones, each read in order
/// from `calls_waiting` or `calls_leases` (a test checks the plan).
const LEASE_SQL: &str = "UPDATE calls SET state = 'running', owner = ?1, lease_until = ?2,
             attempts = attempts + 1, started_at = ?3
         WHERE call_id IN (
             SELECT call_id FROM (
                 SELECT call_id, t FROM (
                     SELECT call_id, visible_at AS t FROM calls
                     WHERE state = 'queued' AND visible_at <= ?3
                       AND function NOT IN (SELECT value FROM json_each(?5))
                     ORDER BY visible_at LIMIT ?4)
                 UNION ALL
                 SELECT call_id, t FROM (
                     SELECT call_id, visible_at AS t FROM calls
                     WHERE state = 'retrying' AND visible_at <= ?3
                       AND function NOT IN (SELECT value FROM json_each(?5))
                     ORDER BY visible_at LIMIT ?4)
                 UNION ALL
                 SELECT call_id, t FROM (
                     SELECT call_id, lease_until AS t FROM calls
                     WHERE state = 'running' AND lease_until < ?3
                       AND function NOT IN (SELECT value FROM json_each(?5))
                     ORDER BY lease_until LIMIT ?4))
             ORDER BY t LIMIT ?4)
         RETURNING call_id, request, attempts, retry_since";

impl EmbeddedQueue {
    /// Records a final outcome: succeeded or failed, or dead-lettered.
    fn finalize(
        &self,
        call_id: &str,
        owner: &str,
        outcome: Outcome,
        claim: Duration,
        dead: bool,
    ) -> BoxFuture<'static, Result<bool, QueueError>> {
        let state = CallState::ended(&outcome, dead);
        let f = Final {
            call_id: call_id.to_string(),
            owner: owner.to_string(),
            headers: serde_json::to_string(&outcome.headers).unwrap_or_else(|_| "[]".into()),
            outcome,
            state,
            dead,
            callback_due: later(now_ms(), claim),
        };
        self.submit(move |txn| record_final(txn, &f))
    }
}

impl Queue for EmbeddedQueue {
    fn enqueue(
        &self,
        request: QueueRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, Result<Enqueued, QueueError>> {
        let json = match serde_json::to_string(&request) {
            Ok(j) => j,
            Err(source) => {
                let call_id = request.call_id.clone();
                return Box::pin(async move { Err(QueueError::Corrupt { call_id, source }) });
            }
        };
        self.submit_durable(move |txn| {
            let enqueued_at = i64::try_from(request.enqueued_at).unwrap_or(i64::MAX);
            let n = txn
                .exec_cached(
                    "INSERT INTO calls (call_id, function, request, idem_key, state, visible_at,
                         enqueued_at, retry_since, cb_url)
                     VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?5, ?5, ?6)
                     ON CONFLICT DO NOTHING",
                    params![
                        request.call_id,
                        request.function,
                        json,
                        idempotency_key,
                        enqueued_at,
                        request.callback_url
                    ],
                )
                .map_err(unavailable)?;
            if n == 1 {
                return Ok(Enqueued::New(request.call_id));
            }
            let existing: Option<String> = txn
                .query_row_cached(
                    "SELECT call_id FROM calls WHERE call_id = ?1 OR (?2 IS NOT NULL AND idem_key = ?2)",
                    params![request.call_id, idempotency_key],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            Ok(Enqueued::Duplicate(existing.unwrap_or(request.call_id)))
        })
    }

    fn lease<'a>(
        &'a self,
        owner: &'a str,
        max: usize,
        lease: Duration,
        busy: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Leased>, QueueError>> {
        let owner = owner.to_string();
        let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".into());
        let rows = self.submit(move |txn| {
            let now = now_ms();
            let mut stmt = txn.prepare_cached(LEASE_SQL).map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![owner, later(now, lease), now, max as i64, busy],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, u32>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    },
                )
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        });
        // Parse outside the writer thread, which every other queue operation waits for.
        Box::pin(async move {
            let mut out = Vec::new();
            for (call_id, json, attempts, retry_since) in rows.await? {
                let mut request: QueueRequest = serde_json::from_str(&json)
                    .map_err(|source| QueueError::Corrupt { call_id, source })?;
                request.attempt = attempts;
                out.push(Leased {
                    request,
                    retry_since: u64::try_from(retry_since).unwrap_or(0),
                });
            }
            out.sort_by_key(|l| l.request.enqueued_at);
            Ok(out)
        })
    }

    fn extend<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        let (call_id, owner) = (call_id.to_string(), owner.to_string());
        self.submit(move |txn| {
            let n = txn
                .exec_cached(
                    "UPDATE calls SET lease_until = ?3
                     WHERE call_id = ?1 AND owner = ?2 AND state = 'running'",
                    params![call_id, owner, later(now_ms(), lease)],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
    }

    fn finish<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        self.finalize(call_id, owner, outcome, claim, false)
    }

    fn retry_later<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        delay: Duration,
        outcome: Outcome,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let (call_id, owner) = (call_id.to_string(), owner.to_string());
        self.submit(move |txn| {
            txn.exec_cached(
                "UPDATE calls SET state = 'retrying', visible_at = ?3, status_code = ?4,
                     last_error = ?5, owner = NULL, lease_until = NULL
                 WHERE call_id = ?1 AND owner = ?2 AND state = 'running'",
                params![
                    call_id,
                    owner,
                    later(now_ms(), delay),
                    outcome.status,
                    outcome.error
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        self.finalize(call_id, owner, outcome, claim, true)
    }

    fn release<'a>(
        &'a self,
        call_ids: &'a [String],
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let ids = serde_json::to_string(call_ids).unwrap_or_else(|_| "[]".into());
        let owner = owner.to_string();
        self.submit(move |txn| {
            txn.exec_cached(
                "UPDATE calls SET state = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'queued' END,
                     attempts = attempts - 1, owner = NULL, lease_until = NULL
                 WHERE owner = ?1 AND state = 'running'
                   AND call_id IN (SELECT value FROM json_each(?2))",
                params![owner, ids],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn cancel<'a>(&'a self, call_id: &'a str) -> BoxFuture<'a, Result<Cancelled, QueueError>> {
        let call_id = call_id.to_string();
        self.submit_durable(move |txn| {
            let n = txn
                .exec_cached(
                    "UPDATE calls SET state = 'cancelled', finished_at = ?2
                     WHERE call_id = ?1 AND state IN ('queued', 'retrying')",
                    params![call_id, now_ms()],
                )
                .map_err(unavailable)?;
            if n == 1 {
                return Ok(Cancelled::Yes);
            }
            let state: Option<String> = txn
                .query_row_cached(
                    "SELECT state FROM calls WHERE call_id = ?1",
                    params![call_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            Ok(match state.as_deref().and_then(CallState::parse) {
                Some(state) => Cancelled::TooLate(state),
                None => Cancelled::NotFound,
            })
        })
    }

    fn status<'a>(
        &'a self,
        call_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CallStatus>, QueueError>> {
        let call_id = call_id.to_string();
        let cap = self.config.result_cap;
        self.submit(move |txn| {
            txn.query_row_cached(
                &format!("SELECT {STATUS_COLUMNS} FROM calls WHERE call_id = ?1"),
                params![call_id, cap as i64],
                |row| status_row(row, cap),
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn list_calls<'a>(
        &'a self,
        filter: &'a CallFilter,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<CallPage, QueueError>> {
        let (filter, page) = (filter.clone(), page.clone());
        let cap = self.config.result_cap;
        self.submit(move |txn| listing::calls(txn, &filter, &page, cap))
    }

    fn dead_letters<'a>(
        &'a self,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<CallPage, QueueError>> {
        let page = page.clone();
        let cap = self.config.result_cap;
        self.submit(move |txn| listing::dead_letters(txn, &page, cap))
    }

    fn redrive<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>> {
        let call_id = call_id.map(str::to_string);
        self.submit_durable(move |txn| {
            let n = txn
                .exec_cached(
                    "UPDATE calls SET state = 'queued', dead = 0, attempts = 0, visible_at = ?2,
                         retry_since = ?2, finished_at = NULL, cb_state = 'none', cb_attempts = 0, cb_error = NULL
                     WHERE dead = 1 AND (?1 IS NULL OR call_id = ?1)",
                    params![call_id, now_ms()],
                )
                .map_err(unavailable)?;
            Ok(n as u64)
        })
    }

    fn purge<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>> {
        let call_id = call_id.map(str::to_string);
        self.submit_durable(move |txn| {
            let n = txn
                .exec_cached(
                    "DELETE FROM calls WHERE dead = 1 AND (?1 IS NULL OR call_id = ?1)",
                    params![call_id],
                )
                .map_err(unavailable)?;
            Ok(n as u64)
        })
    }

    fn due_callbacks(
        &self,
        max: usize,
        claim: Duration,
    ) -> BoxFuture<'_, Result<Vec<CallbackJob>, QueueError>> {
        self.submit(move |txn| {
            let now = now_ms();
            let mut stmt = txn
                .prepare_cached(
                    "UPDATE calls SET cb_next_at = ?2
                     WHERE call_id IN (
                         SELECT call_id FROM calls
                         WHERE cb_state = 'pending' AND cb_next_at <= ?1
                         ORDER BY cb_next_at LIMIT ?3)
                     RETURNING call_id, function, cb_url, status_code, result_headers, result,
                               duration, last_error, attempts, cb_attempts",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![now, later(now, claim), max as i64], |row| {
                    let headers: Option<String> = row.get(4)?;
                    Ok(CallbackJob {
                        call_id: row.get(0)?,
                        function: row.get(1)?,
                        url: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        outcome: Outcome {
                            status: row.get::<_, Option<u16>>(3)?.unwrap_or(0),
                            headers: headers
                                .and_then(|h| serde_json::from_str(&h).ok())
                                .unwrap_or_default(),
                            body: row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                            duration: row.get::<_, Option<f64>>(6)?.unwrap_or(0.0),
                            error: row.get(7)?,
                        },
                        attempts: row.get(8)?,
                        delivery_attempts: row.get(9)?,
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn callback_result<'a>(
        &'a self,
        call_id: &'a str,
        delivered: bool,
        retry_in: Option<Duration>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let call_id = call_id.to_string();
        let error = error.map(str::to_string);
        self.submit(move |txn| {
            let (state, retry_in) = CallbackState::after_attempt(delivered, retry_in);
            let next = retry_in.map(|d| later(now_ms(), d));
            txn.exec_cached(
                "UPDATE calls SET cb_state = ?2, cb_next_at = ?3, cb_attempts = cb_attempts + 1,
                 cb_error = ?4 WHERE call_id = ?1 AND cb_state = 'pending'",
                params![call_id, state.as_str(), next, error],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        self.submit(move |txn| {
            let (depth, oldest): (i64, Option<i64>) = txn
                .query_row_cached(
                    "SELECT count(*), min(enqueued_at) FROM calls
                     WHERE state IN ('queued', 'retrying')",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(unavailable)?;
            let in_flight: i64 = txn
                .query_row_cached(
                    "SELECT count(*) FROM calls WHERE state = 'running'",
                    [],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            let (retrying, dead): (i64, i64) = txn
                .query_row_cached(
                    "SELECT (SELECT count(*) FROM calls WHERE state = 'retrying'),
                            (SELECT count(*) FROM calls WHERE dead = 1)",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(unavailable)?;
            let oldest_age = oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
            Ok(QueueStats {
                depth: u64::try_from(depth).unwrap_or(0),
                oldest_age,
                in_flight: u64::try_from(in_flight).unwrap_or(0),
                retrying: Some(u64::try_from(retrying).unwrap_or(0)),
                dead_letters: u64::try_from(dead).unwrap_or(0),
            })
        })
    }

    fn expire(&self) -> BoxFuture<'_, Result<u64, QueueError>> {
        let horizon = now_ms().saturating_sub(ms(self.config.retention));
        self.submit(move |txn| {
            let n = txn
                .exec_cached(
                    "DELETE FROM calls
                     WHERE state IN ('succeeded', 'failed', 'cancelled') AND dead = 0
                       AND cb_state != 'pending' AND finished_at < ?1",
                    params![horizon],
                )
                .map_err(unavailable)?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_the_shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        let queue =
            super::EmbeddedQueue::open(&dir.path().join("q.db"), super::EmbeddedConfig::default())
                .unwrap();
        crate::queue::suite::run(&queue).await;
    }

    #[tokio::test]
    async fn lists_calls_and_dead_letters_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let queue =
            super::EmbeddedQueue::open(&dir.path().join("q.db"), super::EmbeddedConfig::default())
                .unwrap();
        crate::queue::suite::listing(&queue).await;
    }

    #[test]
    fn leases_read_the_waiting_calls_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::writer::open_connection(&dir.path().join("q.db")).unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", super::LEASE_SQL))
            .unwrap();
        let mut rows = stmt.raw_query();
        let mut plan = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            plan.push(row.get::<_, String>(3).unwrap());
        }
        let uses = |index: &str| plan.iter().filter(|l| l.contains(index)).count();
        assert_eq!(
            uses("calls_waiting (state=? AND visible_at<?)"),
            2,
            "{plan:#?}"
        );
        assert_eq!(
            uses("calls_leases (state=? AND lease_until<?)"),
            1,
            "{plan:#?}"
        );
        assert!(
            !plan.iter().any(|l| l.starts_with("SCAN calls")),
            "{plan:#?}"
        );
    }

    #[tokio::test]
    async fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        {
            let q = super::EmbeddedQueue::open(&db, super::EmbeddedConfig::default()).unwrap();
            crate::queue::suite::enqueue_one(&q, "persist-1").await;
        }
        let q = super::EmbeddedQueue::open(&db, super::EmbeddedConfig::default()).unwrap();
        crate::queue::suite::lease_one(&q, "persist-1").await;
    }
}
