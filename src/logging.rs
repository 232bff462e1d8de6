//! The log formats of both binaries, and how the gateway reads the lines its replicas write.
//!
//! - fwatchdog writes text as OpenFaaS's watchdogs do (Go's `log` package): a
//!   `YYYY/MM/DD HH:MM:SS` UTC stamp, then the message (`Forking fprocess.`), then any fields,
//!   with the level named only when it is not `INFO`. Tools that read watchdog logs (the
//!   OpenFaaS certifier, people's `grep`s) find the same lines.
//! - fgateway writes tracing's usual text (`<RFC 3339>  INFO target: message fields`).
//! - Either writes one JSON object per line with `log_format=json` (`--log-format json`).
//!
//! How the gateway reads the lines its replicas write is `gateway::provider::replica_log`'s.

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
pub fn go_stamp_of_rfc3339(rfc3339: &str) -> Option<String> {
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
}
