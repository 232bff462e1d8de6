//! The lines a replica writes (its watchdog's and its function's), passed on once: into the
//! function's log for `/system/logs` as the replica wrote them, and into the gateway's own log at
//! the line's level with the function and replica named, without a second time stamp.
//!
//! A local replica's fwatchdog logs JSON to the gateway ([`ReplicaLine::parse`]): its lines go
//! to `/system/logs` as the text fwatchdog writes by default. A container's lines come as
//! text: the gateway only drops the watchdog's own time stamp from its copy
//! ([`without_go_stamp`]).

use std::time::SystemTime;

use tracing::Level;

use crate::gateway::logs::FunctionLogs;
use crate::gateway::types::display_name;
use crate::logging::{go_stamp, go_stamp_of_rfc3339};

/// One replica's lines' destination.
#[derive(Debug, Clone)]
pub struct ReplicaLog {
    /// The function logs.
    pub logs: std::sync::Arc<FunctionLogs>,
    /// The function.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The replica, as `/system/logs` names it (`NAME-N`).
    pub instance: String,
}

impl ReplicaLog {
    /// The function as the gateway's log names it (`NAME`, or `NAME.NAMESPACE` outside the
    /// default namespace).
    fn label(&self) -> String {
        display_name(&self.name, &self.namespace)
    }

    /// Passes one line on; returns it parsed when it is one of fwatchdog's JSON lines.
    pub fn pass_on(&self, line: &str) -> Option<ReplicaLine> {
        match ReplicaLine::parse(line) {
            Some(parsed) => {
                self.logs.push(
                    &self.name,
                    &self.namespace,
                    &self.instance,
                    &parsed.as_text(),
                );
                replica_event(parsed.level, &self.label(), &self.instance, &parsed.text);
                Some(parsed)
            }
            None => {
                self.logs
                    .push(&self.name, &self.namespace, &self.instance, line);
                let (level, text) = text_line_event(line);
                replica_event(level, &self.label(), &self.instance, text);
                None
            }
        }
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
    /// such as a line the function itself wrote to the pipe.
    pub fn parse(line: &str) -> Option<ReplicaLine> {
        if !line.starts_with('{') {
            return None;
        }
        let serde_json::Value::Object(mut map) = serde_json::from_str(line).ok()? else {
            return None;
        };
        // fwatchdog's own events, and a function's lines it logs itself (`prefix_logs=true`).
        let target = map.remove("target")?;
        let target = target.as_str()?;
        if !(target.starts_with("fwatchdog") || target == "function") {
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

    #[test]
    fn a_functions_own_lines_pass_unchanged() {
        // An http-mode upstream's JSON, or its plain line, is the function's: kept as written.
        assert_eq!(
            ReplicaLine::parse(
                r#"{"timestamp":"x","level":"INFO","message":"listening addr=1","target":"app"}"#
            ),
            None
        );
        // fwatchdog logging a function's line itself (prefix_logs=true) is fwatchdog's.
        let line = r#"{"timestamp":"2026-12-06T23:40:00Z","level":"INFO","message":"stderr: hi","target":"function"}"#;
        assert_eq!(
            ReplicaLine::parse(line).unwrap().as_text(),
            "2026/12/06 23:40:00 stderr: hi"
        );
    }
}
