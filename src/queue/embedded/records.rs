//! A call's row: reading it as a status record, and storing a call's final outcome.

use rusqlite::{Transaction, params};

use super::writer::Cached;
use super::{
    CallState, CallStatus, CallbackState, Outcome, QueueError, now_ms, shown_result, unavailable,
};

/// Unix milliseconds from a row as RFC 3339 text.
fn rfc3339(ms: i64) -> String {
    super::rfc3339(u64::try_from(ms).unwrap_or(0))
}

/// The columns a status record is read from; parameter `?2` is the status size cap (one byte
/// more is read, to tell whether the result was cut).
pub(super) const STATUS_COLUMNS: &str =
    "call_id, function, state, attempts, dead, status_code, last_error,
    enqueued_at, started_at, finished_at, visible_at, cb_state, cb_attempts, cb_error,
    substr(result, 1, ?2 + 1) AS result_head";

/// Reads a status record row.
pub(super) fn status_row(row: &rusqlite::Row<'_>, cap: usize) -> rusqlite::Result<CallStatus> {
    let state: String = row.get("state")?;
    let result: Option<Vec<u8>> = row.get("result_head")?;
    let visible_at: i64 = row.get("visible_at")?;
    let state = CallState::parse(&state).unwrap_or(CallState::Queued);
    let (text, b64, truncated) = match result {
        None => (None, None, false),
        Some(bytes) => shown_result(&bytes, cap),
    };
    let callback: String = row.get("cb_state")?;
    Ok(CallStatus {
        call_id: row.get("call_id")?,
        function: row.get("function")?,
        state,
        attempts: row.get("attempts")?,
        dead_letter: row.get::<_, i64>("dead")? != 0,
        status_code: row.get("status_code")?,
        last_error: row.get("last_error")?,
        enqueued_at: rfc3339(row.get("enqueued_at")?),
        started_at: row.get::<_, Option<i64>>("started_at")?.map(rfc3339),
        finished_at: row.get::<_, Option<i64>>("finished_at")?.map(rfc3339),
        next_attempt_at: (state == CallState::Retrying).then(|| rfc3339(visible_at)),
        result: text,
        result_base64: b64,
        result_truncated: truncated,
        callback: CallbackState::parse(&callback).unwrap_or_default(),
        callback_attempts: row.get("cb_attempts")?,
        callback_error: row.get("cb_error")?,
    })
}

/// The final outcome of a call, ready to store.
pub(super) struct Final {
    /// The call.
    pub(super) call_id: String,
    /// The worker that must still hold its lease.
    pub(super) owner: String,
    /// What happened.
    pub(super) outcome: Outcome,
    /// `outcome.headers` as JSON.
    pub(super) headers: String,
    /// Succeeded or failed.
    pub(super) state: CallState,
    /// Whether it joins the dead-letter set.
    pub(super) dead: bool,
    /// When its callback becomes due for the dispatcher.
    pub(super) callback_due: i64,
}

/// Stores the final outcome of a running call its owner still holds.
pub(super) fn record_final(txn: &Transaction<'_>, f: &Final) -> Result<bool, QueueError> {
    let n = txn
        .exec_cached(
            "UPDATE calls SET state = ?3, dead = ?4, finished_at = ?5, status_code = ?6,
                 last_error = ?7, result = ?8, result_headers = ?9, duration = ?10,
                 owner = NULL, lease_until = NULL,
                 cb_state = CASE WHEN cb_url IS NULL THEN 'none' ELSE 'pending' END,
                 cb_next_at = ?11
             WHERE call_id = ?1 AND owner = ?2 AND state = 'running'",
            params![
                f.call_id,
                f.owner,
                f.state.as_str(),
                i64::from(f.dead),
                now_ms(),
                f.outcome.status,
                f.outcome.error,
                f.outcome.body,
                f.headers,
                f.outcome.duration,
                f.callback_due
            ],
        )
        .map_err(unavailable)?;
    if n == 0 {
        tracing::warn!(
            call_id = %f.call_id,
            "lease lost before the outcome was recorded; another worker owns the call"
        );
    }
    Ok(n == 1)
}
