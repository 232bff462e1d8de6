//! The log formats of both binaries, and how the gateway reads the lines its replicas write.
//!
//! - fwatchdog writes text as OpenFaaS's watchdogs do (Go's `log` package): a
//!   `YYYY/MM/DD HH:MM:SS` UTC stamp, then the message (`Forking fprocess.`), then any fields,
//!   with the level named only when it is not `INFO`. Tools that read watchdog logs (the
//!   OpenFaaS certifier, people's `grep`s) find the same lines.
//! - fgateway writes tracing's usual text (`<RFC 3339>  INFO target: message fields`).
//! - Either writes one JSON object per line with `log_format=json` (`--log-format json`).
//!
//! A local replica's fwatchdog logs JSON to the gateway ([`ReplicaLine::parse`]), so the gateway
//! passes each of its lines on once, at its own level, with the function and replica named,
//! in the gateway's own format; the function's log (`/system/logs`) gets the line as fwatchdog
//! prints it in text. A container's lines come as text: the gateway only drops the watchdog's
//! own time stamp from its copy ([`without_go_stamp`]).

use std::fmt;
use std::time::SystemTime;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain text, one event per line.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, then the fields).
    Json,
}

impl LogFormat {
    /// The accepted values, for error messages.
    pub const FORM: &'static str = "text or json";

    /// Reads `text` or `json` (any case).
    pub fn parse(value: &str) -> Option<LogFormat> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The filter: `RUST_LOG`, else `info`.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Whether colours suit standard error.
fn ansi() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Sets up fwatchdog's logging on standard error.
pub fn init_watchdog(format: LogFormat) {
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(GoLog)
            .init(),
        LogFormat::Json => init_json(),
    }
}

/// Sets up fgateway's logging on standard error.
pub fn init_gateway(format: LogFormat) {
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(ansi())
            .init(),
        LogFormat::Json => init_json(),
    }
}

/// One JSON object per event on standard error, its fields beside the message.
fn init_json() {
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .init();
}

/// Go's `log` stamp for `at`: `YYYY/MM/DD HH:MM:SS`, UTC.
pub fn go_stamp(at: SystemTime) -> String {
    go_stamp_of_rfc3339(&humantime::format_rfc3339_seconds(at).to_string())
        .unwrap_or_else(|| "0000/00/00 00:00:00".into())
}

/// Go's `log` stamp for an RFC 3339 time (`2026-12-06T23:40:00.123Z` → `2026/12/06 23:40:00`).
fn go_stamp_of_rfc3339(rfc3339: &str) -> Option<String> {
    let date = rfc3339.get(..10)?;
    let time = rfc3339.get(11..19)?;
    (rfc3339.as_bytes().get(10) == Some(&b'T'))
        .then(|| format!("{} {time}", date.replace('-', "/")))
}

/// fwatchdog's text format: Go's `log` stamp, the level unless it is `INFO`, the message and
/// the fields.
#[derive(Debug, Clone, Copy)]
struct GoLog;

impl<S, N> FormatEvent<S, N> for GoLog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{} ", go_stamp(SystemTime::now()))?;
        let level = *event.metadata().level();
        if level != Level::INFO {
            write!(writer, "{level} ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// A line in Go's `log` format without its stamp (`2026/12/06 23:40:00 Forking fprocess.` →
/// `Forking fprocess.`); any other line unchanged.
pub fn without_go_stamp(line: &str) -> &str {
    let bytes = line.as_bytes();
    let shape = b"dddd/dd/dd dd:dd:dd ";
    let stamped = bytes.len() >= shape.len()
        && shape.iter().zip(bytes).all(|(want, got)| match want {
            b'd' => got.is_ascii_digit(),
            other => other == got,
        });
    if stamped { &line[shape.len()..] } else { line }
}

/// One line of a replica's fwatchdog in JSON: an event of the watchdog's own.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLine {
    /// Its level.
    pub level: Level,
    /// When it was written, RFC 3339.
    pub timestamp: String,
    /// The message, then the other fields as `name=value`.
    pub text: String,
}

impl ReplicaLine {
    /// Reads a JSON line written by fwatchdog (`log_format=json`); `None` for any other line,
    /// such as a line the function itself wrote.
    pub fn parse(line: &str) -> Option<ReplicaLine> {
        if !line.starts_with('{') {
            return None;
        }
        let serde_json::Value::Object(mut map) = serde_json::from_str(line).ok()? else {
            return None;
        };
        let target = map.remove("target")?;
        if !target.as_str()?.starts_with("fwatchdog") {
            return None;
        }
        let level = match map.remove("level")?.as_str()? {
            "ERROR" => Level::ERROR,
            "WARN" => Level::WARN,
            "INFO" => Level::INFO,
            "DEBUG" => Level::DEBUG,
            "TRACE" => Level::TRACE,
            _ => return None,
        };
        let timestamp = map.remove("timestamp")?.as_str()?.to_string();
        let mut text = match map.remove("message") {
            Some(serde_json::Value::String(m)) => m,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        for (name, value) in map {
            if !text.is_empty() {
                text.push(' ');
            }
            match value {
                serde_json::Value::String(s) => text.push_str(&format!("{name}={s:?}")),
                other => text.push_str(&format!("{name}={other}")),
            }
        }
        Some(ReplicaLine {
            level,
            timestamp,
            text,
        })
    }

    /// The line as fwatchdog writes it in text.
    pub fn as_text(&self) -> String {
        let stamp =
            go_stamp_of_rfc3339(&self.timestamp).unwrap_or_else(|| go_stamp(SystemTime::now()));
        if self.level == Level::INFO {
            format!("{stamp} {}", self.text)
        } else {
            format!("{stamp} {} {}", self.level, self.text)
        }
    }
}

/// Writes one replica line to the gateway's log, at `level`, naming the function and replica.
pub fn replica_event(level: Level, function: &str, replica: &str, text: &str) {
    match level {
        Level::ERROR => tracing::error!(target: "function", function, replica, "{text}"),
        Level::WARN => tracing::warn!(target: "function", function, replica, "{text}"),
        Level::INFO => tracing::info!(target: "function", function, replica, "{text}"),
        Level::DEBUG => tracing::debug!(target: "function", function, replica, "{text}"),
        Level::TRACE => tracing::trace!(target: "function", function, replica, "{text}"),
    }
}

/// A text line of a replica (a container's, or a line its function wrote) for the gateway's
/// log: its level when fwatchdog named one after the stamp, and the text without the stamp.
pub fn text_line_event(line: &str) -> (Level, &str) {
    let rest = without_go_stamp(line);
    if rest.len() == line.len() {
        return (Level::INFO, line);
    }
    for (name, level) in [
        ("WARN ", Level::WARN),
        ("ERROR ", Level::ERROR),
        ("DEBUG ", Level::DEBUG),
    ] {
        if let Some(text) = rest.strip_prefix(name) {
            return (level, text);
        }
    }
    (Level::INFO, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_stamps() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        assert_eq!(go_stamp(at), "2026/11/30 00:53:20");
        assert_eq!(
            go_stamp_of_rfc3339("2026-12-06T23:40:00.123456Z").as_deref(),
            Some("2026/12/06 23:40:00")
        );
        assert_eq!(go_stamp_of_rfc3339("yesterday"), None);
    }

    #[test]
    fn stamps_come_off_go_log_lines_only() {
        assert_eq!(
            without_go_stamp("2026/12/06 23:40:00 Forking fprocess."),
            "Forking fprocess."
        );
        assert_eq!(without_go_stamp("Forking fprocess."), "Forking fprocess.");
        assert_eq!(without_go_stamp("2026/12/06"), "2026/12/06");
        assert_eq!(
            text_line_event("2026/12/06 23:40:00 WARN upstream slow"),
            (Level::WARN, "upstream slow")
        );
        assert_eq!(text_line_event("hello"), (Level::INFO, "hello"));
    }

    #[test]
    fn replica_json_lines() {
        let line = r#"{"timestamp":"2026-12-06T23:40:00.000001Z","level":"INFO","message":"listening addr=127.0.0.1:4000","mode":"classic","target":"fwatchdog::watchdog"}"#;
        let parsed = ReplicaLine::parse(line).unwrap();
        assert_eq!(parsed.level, Level::INFO);
        assert_eq!(
            parsed.text,
            r#"listening addr=127.0.0.1:4000 mode="classic""#
        );
        assert_eq!(
            parsed.as_text(),
            r#"2026/12/06 23:40:00 listening addr=127.0.0.1:4000 mode="classic""#
        );
        let warn = r#"{"timestamp":"2026-12-06T23:40:00Z","level":"WARN","message":"slow","target":"fwatchdog::watchdog::mode"}"#;
        assert_eq!(
            ReplicaLine::parse(warn).unwrap().as_text(),
            "2026/12/06 23:40:00 WARN slow"
        );
        // A function's own JSON, and plain lines, are not the watchdog's.
        assert_eq!(
            ReplicaLine::parse(r#"{"level":"INFO","message":"x"}"#),
            None
        );
        assert_eq!(ReplicaLine::parse("Forking fprocess."), None);
        assert_eq!(ReplicaLine::parse("{not json"), None);
    }
}
