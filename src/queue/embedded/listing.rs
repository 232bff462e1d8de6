//! Listing calls and dead letters a page at a time, on the indexes `calls_by_time`,
//! `calls_by_function`, `calls_by_state` and `calls_dead_letters` (each ends in `enqueued_at,
//! call_id`, the listing order, so a page costs its own rows, not the table's).

use rusqlite::{Transaction, params_from_iter, types::Value};

use super::records::{STATUS_COLUMNS, status_row};
use super::unavailable;
use crate::queue::{CallFilter, CallPage, CallStatus, Cursor, MAX_PAGE, PageQuery, QueueError};

/// Calls, newest first, filtered and paged.
pub(super) fn calls(
    txn: &Transaction<'_>,
    filter: &CallFilter,
    page: &PageQuery,
    cap: usize,
) -> Result<CallPage, QueueError> {
    let mut clauses = Vec::new();
    let mut args: Vec<Value> = vec![Value::Null, Value::Integer(cap as i64)];
    if let Some(function) = &filter.function {
        args.push(Value::Text(function.clone()));
        clauses.push(format!("function = ?{}", args.len()));
    }
    if let Some(state) = filter.state {
        args.push(Value::Text(state.as_str().to_string()));
        clauses.push(format!("state = ?{}", args.len()));
    }
    if let Some(after) = &page.after {
        args.push(Value::Integer(
            i64::try_from(after.enqueued_ms).unwrap_or(i64::MAX),
        ));
        args.push(Value::Text(after.call_id.clone()));
        clauses.push(format!(
            "(enqueued_at, call_id) < (?{}, ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    let filter_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    query(txn, &filter_sql, "DESC", args, page, cap)
}

/// Dead letters, oldest first, paged.
pub(super) fn dead_letters(
    txn: &Transaction<'_>,
    page: &PageQuery,
    cap: usize,
) -> Result<CallPage, QueueError> {
    let mut args: Vec<Value> = vec![Value::Null, Value::Integer(cap as i64)];
    let mut filter_sql = "WHERE dead = 1".to_string();
    if let Some(after) = &page.after {
        args.push(Value::Integer(
            i64::try_from(after.enqueued_ms).unwrap_or(i64::MAX),
        ));
        args.push(Value::Text(after.call_id.clone()));
        filter_sql.push_str(&format!(
            " AND (enqueued_at, call_id) > (?{}, ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    query(txn, &filter_sql, "ASC", args, page, cap)
}

/// Runs a listing. `?1` is bound but unused (the status columns read the result cap from
/// `?2`); one more row than the page is read to tell whether another page follows.
fn query(
    txn: &Transaction<'_>,
    filter_sql: &str,
    order: &str,
    mut args: Vec<Value>,
    page: &PageQuery,
    cap: usize,
) -> Result<CallPage, QueueError> {
    let limit = page.limit.clamp(1, MAX_PAGE);
    args.push(Value::Integer(limit as i64 + 1));
    let sql = format!(
        "SELECT {STATUS_COLUMNS}, enqueued_at AS enqueued_ms FROM calls {filter_sql}
         ORDER BY enqueued_at {order}, call_id {order} LIMIT ?{}",
        args.len()
    );
    let mut stmt = txn.prepare_cached(&sql).map_err(unavailable)?;
    let rows = stmt
        .query_map(params_from_iter(args), |row| {
            let ms: i64 = row.get("enqueued_ms")?;
            Ok((ms, status_row(row, cap)?))
        })
        .map_err(unavailable)?;
    let mut found: Vec<(i64, CallStatus)> =
        rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = more.then(|| found.last()).flatten().map(|(ms, status)| {
        Cursor {
            enqueued_ms: u64::try_from(*ms).unwrap_or(0),
            call_id: status.call_id.clone(),
        }
        .to_string()
    });
    Ok(CallPage {
        calls: found.into_iter().map(|(_, s)| s).collect(),
        next,
        partial: false,
    })
}
