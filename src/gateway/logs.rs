//! Function logs: the recent lines of every function's replicas, kept per function in a buffer
//! bounded in bytes, and `GET /system/logs` (faas-provider's API, which `faas-cli logs` uses).
//!
//! Providers push each line a replica writes (stdout or stderr) with the replica's instance
//! name. A function's buffer outlives its replicas (restarts, scaling, updates) and goes when
//! the function is deleted; the gateway's restart clears it. Lines longer than
//! [`MAX_LINE`] bytes are cut; when a buffer is over its size, its oldest lines go.
//!
//! Followers (`follow=true`) get new lines through a broadcast channel: the writer never waits
//! for a reader, and a follower that falls more than [`FOLLOW_BACKLOG`] lines behind loses the
//! oldest of them and is told so by a line of its own in the stream.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::http::body::{self, BoxError, ResponseBody};

/// Longest line kept, in bytes; longer lines are cut (at a character boundary).
pub const MAX_LINE: usize = 16 * 1024;

/// Lines a follower may fall behind before it loses some.
pub const FOLLOW_BACKLOG: usize = 256;

/// Bytes a line costs in a buffer beyond its text (its names, timestamp and allocations).
const LINE_OVERHEAD: usize = 256;

/// One line a replica wrote, as `GET /system/logs` returns it (faas-provider's `logs.Message`).
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// The function.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The replica that wrote it.
    pub instance: String,
    /// When the gateway read it (RFC 3339, nanoseconds).
    pub timestamp: String,
    /// The line, without its line break.
    pub text: String,
    /// Order of arrival within the function (not serialized).
    #[serde(skip)]
    seq: u64,
    /// Arrival time (not serialized).
    #[serde(skip)]
    at: SystemTime,
}

/// One function's recent lines and its followers.
#[derive(Debug)]
struct Buffer {
    /// The lines, oldest first, and their size in bytes.
    lines: Mutex<(VecDeque<Arc<LogLine>>, usize, u64)>,
    /// New lines, for followers.
    followers: broadcast::Sender<Arc<LogLine>>,
}

/// Every function's log buffer.
#[derive(Debug)]
pub struct FunctionLogs {
    /// Buffers by function key (`name.namespace`).
    buffers: Mutex<HashMap<String, Arc<Buffer>>>,
    /// Bytes each buffer may hold.
    capacity: usize,
}

/// What `GET /system/logs` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    /// The function.
    pub name: String,
    /// Its namespace, when given.
    pub namespace: Option<String>,
    /// Only this replica's lines.
    pub instance: Option<String>,
    /// Only lines read at or after this time.
    pub since: Option<SystemTime>,
    /// Only the last this many lines (`None`: all).
    pub tail: Option<usize>,
    /// Keep streaming new lines until the client goes.
    pub follow: bool,
}

impl FunctionLogs {
    /// Buffers of `capacity` bytes per function.
    pub fn new(capacity: usize) -> Self {
        FunctionLogs {
            buffers: Mutex::new(HashMap::new()),
            capacity: capacity.max(MAX_LINE + LINE_OVERHEAD),
        }
    }

    fn buffer(&self, key: &str) -> Arc<Buffer> {
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(buffers.entry(key.to_string()).or_insert_with(|| {
            Arc::new(Buffer {
                lines: Mutex::new((VecDeque::new(), 0, 0)),
                followers: broadcast::channel(FOLLOW_BACKLOG).0,
            })
        }))
    }

    /// Records a line `instance` of function `name` in `namespace` wrote.
    pub fn push(&self, name: &str, namespace: &str, instance: &str, text: &str) {
        let key = key(name, namespace);
        let buffer = self.buffer(&key);
        let at = SystemTime::now();
        let text = cut(text, MAX_LINE);
        let cost = text.len() + LINE_OVERHEAD;
        let line = {
            let mut guard = buffer.lines.lock().unwrap_or_else(PoisonError::into_inner);
            let (lines, bytes, next_seq) = &mut *guard;
            *next_seq += 1;
            let line = Arc::new(LogLine {
                name: name.to_string(),
                namespace: namespace.to_string(),
                instance: instance.to_string(),
                timestamp: humantime::format_rfc3339_nanos(at).to_string(),
                text: text.to_string(),
                seq: *next_seq,
                at,
            });
            lines.push_back(Arc::clone(&line));
            *bytes += cost;
            while *bytes > self.capacity {
                match lines.pop_front() {
                    Some(old) => *bytes -= old.text.len() + LINE_OVERHEAD,
                    None => break,
                }
            }
            line
        };
        // No follower is fine.
        let _ = buffer.followers.send(line);
    }

    /// Forgets a deleted function's lines (its followers' streams end).
    pub fn remove(&self, name: &str, namespace: &str) {
        self.buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key(name, namespace));
    }

    /// The buffered lines `query` selects, oldest first.
    pub fn snapshot(&self, query: &LogQuery, namespace: &str) -> Vec<Arc<LogLine>> {
        let buffer = self.buffer(&key(&query.name, namespace));
        let guard = buffer.lines.lock().unwrap_or_else(PoisonError::into_inner);
        select(guard.0.iter(), query)
    }

    /// The answer to `query` for a function known to be deployed in `namespace`: NDJSON, the
    /// buffered lines and then, when following, new ones until the client goes.
    pub fn respond(&self, query: &LogQuery, namespace: &str) -> Response<ResponseBody> {
        let buffer = self.buffer(&key(&query.name, namespace));
        // Subscribe before reading the buffer, so no line falls between the two.
        let mut follower = query.follow.then(|| buffer.followers.subscribe());
        let (past, last_seq) = {
            let guard = buffer.lines.lock().unwrap_or_else(PoisonError::into_inner);
            (select(guard.0.iter(), query), guard.2)
        };
        let mut first = Vec::new();
        for line in &past {
            encode(line, &mut first);
        }
        let body = match follower.take() {
            None => body::full(first),
            Some(mut rx) => {
                let (tx, body_rx) = mpsc::channel::<Result<Bytes, BoxError>>(16);
                let query = query.clone();
                let namespace = namespace.to_string();
                tokio::spawn(async move {
                    loop {
                        let received = tokio::select! {
                            // A follower that went away ends the task even if no line comes.
                            _ = tx.closed() => return,
                            received = rx.recv() => received,
                        };
                        let chunk = match received {
                            Ok(line) if line.seq <= last_seq || !matches(&line, &query) => continue,
                            Ok(line) => {
                                let mut out = Vec::new();
                                encode(&line, &mut out);
                                out
                            }
                            Err(broadcast::error::RecvError::Lagged(missed)) => {
                                let notice = LogLine {
                                    name: query.name.clone(),
                                    namespace: namespace.clone(),
                                    instance: "fgateway".into(),
                                    timestamp: humantime::format_rfc3339_nanos(SystemTime::now())
                                        .to_string(),
                                    text: format!(
                                        "fgateway: {missed} log lines dropped for this follower (it read too slowly)"
                                    ),
                                    seq: 0,
                                    at: SystemTime::now(),
                                };
                                let mut out = Vec::new();
                                encode(&notice, &mut out);
                                out
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        // A follower that is gone ends this task; a slow one makes it wait,
                        // and the broadcast channel (never the function) absorbs the wait.
                        if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                            return;
                        }
                    }
                });
                body::channel((!first.is_empty()).then(|| Bytes::from(first)), body_rx)
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        resp
    }
}

/// A function's key: its name and namespace.
fn key(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// The first `max` bytes of `text`, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether `line` passes the query's instance and time filters.
fn matches(line: &LogLine, query: &LogQuery) -> bool {
    query.instance.as_ref().is_none_or(|i| *i == line.instance)
        && query.since.is_none_or(|since| line.at >= since)
}

/// The lines of `lines` that `query` selects (its tail included).
fn select<'a>(
    lines: impl Iterator<Item = &'a Arc<LogLine>>,
    query: &LogQuery,
) -> Vec<Arc<LogLine>> {
    let mut picked: Vec<Arc<LogLine>> = lines.filter(|l| matches(l, query)).cloned().collect();
    if let Some(tail) = query.tail
        && picked.len() > tail
    {
        picked.drain(..picked.len() - tail);
    }
    picked
}

/// Appends `line` as one line of JSON.
fn encode(line: &LogLine, out: &mut Vec<u8>) {
    // A struct of strings always serializes.
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

/// Reads `GET /system/logs`'s query (`name`, `namespace`, `instance`, `since` RFC 3339, `tail`,
/// `follow`); `Err` is the reason for a 400.
pub fn parse_query(query: Option<&str>) -> Result<LogQuery, String> {
    let mut out = LogQuery::default();
    let mut name = None;
    for (key, value) in form_pairs(query.unwrap_or_default()) {
        match key.as_str() {
            "name" => name = Some(value),
            "namespace" if !value.is_empty() => out.namespace = Some(value),
            "instance" if !value.is_empty() => out.instance = Some(value),
            "since" if !value.is_empty() => {
                out.since = Some(parse_rfc3339(&value).ok_or_else(|| {
                    format!("invalid since={value:?}: expected an RFC 3339 time, e.g. 2026-12-01T05:00:00Z")
                })?);
            }
            "tail" if !value.is_empty() => {
                let n: i64 = value.parse().map_err(|_| {
                    format!("invalid tail={value:?}: expected a number of lines (-1 or 0: all)")
                })?;
                out.tail = match n {
                    // faas-cli sends -1 for "no limit", as faas-provider reads it.
                    -1 | 0 => None,
                    n if n < 0 => {
                        return Err(format!(
                            "invalid tail={value:?}: expected a number of lines (-1 or 0: all)"
                        ));
                    }
                    n => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                };
            }
            "follow" if !value.is_empty() => {
                out.follow = crate::config::parse::boolean(&value)
                    .map_err(|_| format!("invalid follow={value:?}: expected true or false"))?;
            }
            _ => {}
        }
    }
    out.name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "name is required: /system/logs?name=FUNCTION".to_string())?;
    Ok(out)
}

/// The `key=value` pairs of a query string, percent-decoded (`+` is a space).
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Reads an RFC 3339 time with any offset (`Z`, `+01:00`) and optional fractional seconds.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    // Only ASCII can be a time; it also keeps the byte offsets below on character boundaries.
    if text.len() < 20 || !text.is_ascii() {
        return None;
    }
    let (local, offset) = if let Some(stripped) = text.strip_suffix(['Z', 'z']) {
        (stripped, 0i64)
    } else {
        let split = text.len().checked_sub(6)?;
        let (local, off) = text.split_at(split);
        let sign = match off.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = off[1..].split_once(':')?;
        let minutes = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
        (local, sign * minutes * 60)
    };
    let utc = humantime::parse_rfc3339_weak(local).ok()?;
    if offset >= 0 {
        utc.checked_sub(Duration::from_secs(offset.unsigned_abs()))
    } else {
        utc.checked_add(Duration::from_secs(offset.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Arc<LogLine>]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn buffers_are_bounded_in_bytes_and_keep_the_newest_lines() {
        let logs = FunctionLogs::new(MAX_LINE + LINE_OVERHEAD);
        for i in 0..1000 {
            logs.push("f", "ns", "f-0", &format!("line {i}"));
        }
        logs.push("f", "ns", "f-0", &"x".repeat(100 * 1024));
        let all = logs.snapshot(
            &LogQuery {
                name: "f".into(),
                ..Default::default()
            },
            "ns",
        );
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].text.len(), MAX_LINE);
    }

    #[test]
    fn tail_instance_and_since_select_lines() {
        let logs = FunctionLogs::new(1 << 20);
        for i in 0..10 {
            logs.push(
                "f",
                "ns",
                if i % 2 == 0 { "f-0" } else { "f-1" },
                &format!("{i}"),
            );
        }
        let q = |tail, instance: Option<&str>| LogQuery {
            name: "f".into(),
            tail,
            instance: instance.map(String::from),
            ..Default::default()
        };
        assert_eq!(
            texts(&logs.snapshot(&q(Some(3), None), "ns")),
            ["7", "8", "9"]
        );
        assert_eq!(
            texts(&logs.snapshot(&q(Some(2), Some("f-1")), "ns")),
            ["7", "9"]
        );
        let future = LogQuery {
            name: "f".into(),
            since: Some(SystemTime::now() + Duration::from_secs(60)),
            ..Default::default()
        };
        assert!(logs.snapshot(&future, "ns").is_empty());
        // Another namespace is another function.
        assert!(logs.snapshot(&q(None, None), "other").is_empty());
    }

    #[test]
    fn queries_are_read_as_faas_cli_sends_them() {
        let q = parse_query(Some(
            "follow=false&name=fn&namespace=staging&since=2026-12-01T05%3A22%3A33Z&tail=5",
        ))
        .unwrap();
        assert_eq!(q.name, "fn");
        assert_eq!(q.namespace.as_deref(), Some("staging"));
        assert_eq!(q.tail, Some(5));
        assert!(!q.follow);
        assert_eq!(
            q.since,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_102_553))
        );
        let q = parse_query(Some("follow=true&name=fn&tail=-1")).unwrap();
        assert_eq!((q.tail, q.follow), (None, true));
        for bad in [
            "tail=2",
            "name=fn&tail=-2",
            "name=fn&tail=ten",
            "name=fn&since=garbage",
            "name=fn&follow=maybe",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_offsets_and_fractions() {
        let base = parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-01-01T01:00:00+01:00"), Some(base));
        assert_eq!(parse_rfc3339("2025-12-31T23:30:00-00:30"), Some(base));
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00.5Z"),
            Some(base + Duration::from_millis(500))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        // Found by fuzzing: a multi-byte character where the offset would start.
        assert_eq!(parse_rfc3339("2026-12-01T05:22:3\u{125}\u{64b}ail"), None);
    }

    #[test]
    fn query_pairs_are_decoded() {
        assert_eq!(
            form_pairs("a=x%3Ay+z&b"),
            [
                ("a".to_string(), "x:y z".to_string()),
                ("b".into(), "".into())
            ]
        );
    }
}
