//! Watchdog configuration, read once from the environment into typed values.
//!
//! The environment is read through the [`Env`] trait so tests pass a map instead of mutating the
//! process environment. Every invalid value is an error that names the variable, the value and
//! the accepted form; the binary turns it into exit code 64 before any port is bound.

pub mod parse;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

/// Names of the environment variables, as OpenFaaS's watchdogs spell them.
pub mod vars {
    /// The handler command line.
    pub const FPROCESS: &str = "fprocess";
    /// Alias of [`FPROCESS`].
    pub const FUNCTION_PROCESS: &str = "function_process";
    /// of-watchdog mode.
    pub const MODE: &str = "mode";
    /// Limit on reading a request.
    pub const READ_TIMEOUT: &str = "read_timeout";
    /// Limit on producing and writing a response.
    pub const WRITE_TIMEOUT: &str = "write_timeout";
    /// Limit on the handler's run time.
    pub const EXEC_TIMEOUT: &str = "exec_timeout";
    /// How long to keep serving after a shutdown signal while health reports 503.
    pub const HEALTHCHECK_INTERVAL: &str = "healthcheck_interval";
    /// HTTP port.
    pub const PORT: &str = "port";
    /// Metrics port.
    pub const METRICS_PORT: &str = "metrics_port";
    /// Address the HTTP and metrics ports listen on (ours; not an OpenFaaS variable).
    pub const BIND_ADDRESS: &str = "bind_address";
    /// Concurrency limit.
    pub const MAX_INFLIGHT: &str = "max_inflight";
    /// Pass request metadata to the handler as `Http_*` variables.
    pub const CGI_HEADERS: &str = "cgi_headers";
    /// Wrap the request in JSON on the handler's stdin.
    pub const MARSHAL_REQUEST: &str = "marshal_request";
    /// Merge the handler's stderr into the response.
    pub const COMBINE_OUTPUT: &str = "combine_output";
    /// Log the handler's output.
    pub const WRITE_DEBUG: &str = "write_debug";
    /// Do not write the lock file.
    pub const SUPPRESS_LOCK: &str = "suppress_lock";
    /// Response content type.
    pub const CONTENT_TYPE: &str = "content_type";
    /// http mode: where the upstream listens.
    pub const UPSTREAM_URL: &str = "upstream_url";
    /// Alias of [`UPSTREAM_URL`].
    pub const HTTP_UPSTREAM_URL: &str = "http_upstream_url";
    /// http mode: path on the upstream that says it is ready.
    pub const READY_PATH: &str = "ready_path";
    /// static mode: the directory served.
    pub const STATIC_PATH: &str = "static_path";
    /// Prefix forwarded handler log lines.
    pub const PREFIX_LOGS: &str = "prefix_logs";
    /// Longest handler log line before it is split.
    pub const LOG_BUFFER_SIZE: &str = "log_buffer_size";
    /// Add the call id to forwarded log lines.
    pub const LOG_CALLID: &str = "log_callid";
    /// Log a line per request, as OpenFaaS's watchdogs do (ours; not an OpenFaaS variable).
    pub const LOG_REQUESTS: &str = "log_requests";
    /// `text` (OpenFaaS's watchdogs' lines) or `json` (ours; not an OpenFaaS variable).
    pub const LOG_FORMAT: &str = "log_format";
    /// http mode: buffer the request body.
    pub const HTTP_BUFFER_REQ_BODY: &str = "http_buffer_req_body";
    /// Alias of [`HTTP_BUFFER_REQ_BODY`].
    pub const BUFFER_HTTP: &str = "buffer_http";
    /// http mode: the most bytes `http_buffer_req_body` buffers.
    pub const HTTP_BUFFER_REQ_BODY_LIMIT: &str = "http_buffer_req_body_limit";
    /// http mode: the longest an upgraded (websocket) connection may stay open.
    pub const UPGRADE_TIMEOUT: &str = "upgrade_timeout";
    /// Where temporary files and the lock file go.
    pub const TMPDIR: &str = "TMPDIR";
}

/// A source of environment values.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| v.to_string())
    }
}

/// An invalid configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds a value outside its accepted form.
    #[error("invalid {name}={value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it held.
        value: String,
        /// The accepted form.
        expected: &'static str,
    },
    /// A required variable is missing.
    #[error("{name} is not set: {why}")]
    Missing {
        /// The variable.
        name: &'static str,
        /// Why it is needed.
        why: &'static str,
    },
}

/// Reads `content_type`: empty means unset; otherwise it must be a valid header value.
fn content_type(env: &impl Env) -> Result<Option<http::HeaderValue>, ConfigError> {
    let Some(value) = env.get(vars::CONTENT_TYPE).filter(|c| !c.trim().is_empty()) else {
        return Ok(None);
    };
    http::HeaderValue::from_str(value.trim())
        .map(Some)
        .map_err(|_| ConfigError::Invalid {
            name: vars::CONTENT_TYPE,
            value,
            expected: "a media type such as text/plain (visible ASCII, no line breaks)",
        })
}

/// Reads `log_format`: unset or empty means text.
fn log_format(env: &impl Env) -> Result<crate::logging::LogFormat, ConfigError> {
    match env.get(vars::LOG_FORMAT).filter(|v| !v.trim().is_empty()) {
        None => Ok(crate::logging::LogFormat::Text),
        Some(value) => crate::logging::LogFormat::parse(&value).ok_or(ConfigError::Invalid {
            name: vars::LOG_FORMAT,
            value,
            expected: crate::logging::LogFormat::FORM,
        }),
    }
}

/// How requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// OpenFaaS classic watchdog: fork per request, buffer output, status from the exit code.
    Classic,
    /// of-watchdog `serializing`: like classic, with of-watchdog's defaults and error responses.
    Serializing,
    /// of-watchdog `streaming`: fork per request, output streams as it is produced.
    Streaming,
    /// of-watchdog `http`: `fprocess` is a long-running HTTP server; requests are proxied to it.
    Http,
    /// of-watchdog `static`: files are served from `static_path`.
    Static,
}

impl Mode {
    /// The name used in logs and in the `mode` variable.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Classic => "classic",
            Mode::Serializing => "serializing",
            Mode::Streaming => "streaming",
            Mode::Http => "http",
            Mode::Static => "static",
        }
    }

    /// Whether the mode is one of of-watchdog's (which changes some defaults).
    pub fn is_of_watchdog(self) -> bool {
        !matches!(self, Mode::Classic)
    }
}

/// Accepted form of `mode`.
const MODE_FORM: &str = "unset, serializing, streaming, http or static";

/// How long the http-mode upstream may take to exit after SIGTERM before its group is killed
/// (a gateway stopping a replica waits this long on top of `write_timeout`).
pub const UPSTREAM_STOP_GRACE: Duration = Duration::from_secs(5);

/// The default for `read_timeout` and `write_timeout`.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `exec_timeout` in of-watchdog modes.
pub const DEFAULT_MODE_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `static_path`.
pub const DEFAULT_STATIC_PATH: &str = "/home/app/public";
/// The default `http_buffer_req_body_limit`.
pub const DEFAULT_BUFFER_LIMIT: usize = 10 * 1024 * 1024;
/// The default `upgrade_timeout`.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The default `log_buffer_size`.
pub const DEFAULT_LOG_BUFFER_SIZE: usize = 64 * 1024;

/// The complete watchdog configuration.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// The handler's argv, split like a shell would (no shell is run). Empty in static mode
    /// when `fprocess` is not set.
    pub fprocess: Vec<String>,
    /// How requests are served.
    pub mode: Mode,
    /// Limit on reading a request (headers and body); `None` = no limit.
    pub read_timeout: Option<Duration>,
    /// Limit on producing and writing a response; `None` = no limit.
    pub write_timeout: Option<Duration>,
    /// Limit on the handler's run time; `None` = no limit.
    pub exec_timeout: Option<Duration>,
    /// How long to keep serving after a shutdown signal, while health reports 503.
    pub healthcheck_interval: Duration,
    /// HTTP port; 0 picks a free one.
    pub port: u16,
    /// Address both ports listen on (default all interfaces).
    pub bind_address: std::net::IpAddr,
    /// Metrics port; `None` disables the metrics server.
    pub metrics_port: Option<u16>,
    /// Concurrency limit; `None` = unlimited.
    pub max_inflight: Option<NonZeroUsize>,
    /// Pass request metadata to the handler as `Http_*` variables.
    pub cgi_headers: bool,
    /// Wrap the request in JSON on the handler's stdin.
    pub marshal_request: bool,
    /// Merge the handler's stderr into the response body (else it is logged).
    pub combine_output: bool,
    /// Log the handler's output and exit details.
    pub write_debug: bool,
    /// Do not write the lock file.
    pub suppress_lock: bool,
    /// Response content type; `None` = the mode's default.
    pub content_type: Option<http::HeaderValue>,
    /// Prefix forwarded handler log lines with their stream.
    pub prefix_logs: bool,
    /// Longest handler log line before it is split.
    pub log_buffer_size: NonZeroUsize,
    /// Add the request's call id to forwarded log lines.
    pub log_callid: bool,
    /// Log a line per request (classic: `Forking fprocess.` and `Wrote N Bytes - Duration:
    /// S.ssssssss`; of-watchdog's modes: `METHOD PATH - STATUS - ContentLength: SIZE (S.ssssss)`).
    pub log_requests: bool,
    /// How the watchdog's own log lines are written.
    pub log_format: crate::logging::LogFormat,
    /// http mode: the upstream server's base URL (`Some` exactly in http mode).
    pub upstream_url: Option<http::Uri>,
    /// http mode: the upstream path that answers 2xx once it is ready.
    pub ready_path: Option<String>,
    /// http mode: buffer request bodies so the upstream gets `Content-Length`.
    pub buffer_body: bool,
    /// http mode: the largest body `buffer_body` accepts (larger → 413).
    pub buffer_body_limit: usize,
    /// http mode: the longest an upgraded connection (websocket) may stay open.
    pub upgrade_timeout: Option<Duration>,
    /// static mode: the directory served.
    pub static_path: PathBuf,
    /// Directory for temporary files (spilled output).
    pub tmp_dir: PathBuf,
    /// The lock file, `$TMPDIR/.lock`.
    pub lock_path: PathBuf,
}

impl WatchdogConfig {
    /// Reads and validates the whole configuration.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let mode = match env.get(vars::MODE).as_deref().map(str::trim) {
            None | Some("") => Mode::Classic,
            Some("serializing") => Mode::Serializing,
            Some("streaming") => Mode::Streaming,
            Some("http") => Mode::Http,
            Some("static") => Mode::Static,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: vars::MODE,
                    value: other.to_string(),
                    expected: MODE_FORM,
                });
            }
        };

        let raw_process = first_of(env, &[vars::FPROCESS, vars::FUNCTION_PROCESS]);
        let fprocess = match raw_process {
            Some((name, value)) => {
                let argv = shell_words::split(&value).map_err(|_| ConfigError::Invalid {
                    name,
                    value: value.clone(),
                    expected: "a command line with balanced quotes",
                })?;
                if argv.is_empty() {
                    return Err(ConfigError::Missing {
                        name: vars::FPROCESS,
                        why: "it names the handler command to run for each request",
                    });
                }
                argv
            }
            None if mode == Mode::Static => Vec::new(),
            None => {
                return Err(ConfigError::Missing {
                    name: vars::FPROCESS,
                    why: "it names the handler command to run for each request",
                });
            }
        };

        let read_timeout = timeout(env, vars::READ_TIMEOUT, Some(DEFAULT_IO_TIMEOUT))?;
        let write_timeout = timeout(env, vars::WRITE_TIMEOUT, Some(DEFAULT_IO_TIMEOUT))?;
        let exec_default = mode.is_of_watchdog().then_some(DEFAULT_MODE_EXEC_TIMEOUT);
        let exec_timeout = timeout(env, vars::EXEC_TIMEOUT, exec_default)?;
        let healthcheck_interval =
            timeout(env, vars::HEALTHCHECK_INTERVAL, write_timeout)?.unwrap_or(Duration::ZERO);

        let port = parsed(env, vars::PORT, parse::port)?.unwrap_or(8080);
        let bind_address = parsed(env, vars::BIND_ADDRESS, |v| {
            v.trim()
                .parse::<std::net::IpAddr>()
                .map_err(|_| "an IP address such as 0.0.0.0, 127.0.0.1 or ::")
        })?
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let metrics_port = match parsed(env, vars::METRICS_PORT, parse::port)? {
            None => Some(8081),
            Some(0) => None,
            Some(p) => Some(p),
        };
        let max_inflight =
            parsed(env, vars::MAX_INFLIGHT, parse::uint)?.and_then(NonZeroUsize::new);

        let log_buffer_size = match parsed(env, vars::LOG_BUFFER_SIZE, parse::uint)? {
            None => NonZeroUsize::new(DEFAULT_LOG_BUFFER_SIZE),
            Some(n) => NonZeroUsize::new(n),
        }
        .ok_or_else(|| ConfigError::Invalid {
            name: vars::LOG_BUFFER_SIZE,
            value: "0".into(),
            expected: "a positive integer (bytes)",
        })?;

        let tmp_dir = tmp_dir(env);
        let lock_path = tmp_dir.join(".lock");

        let upstream_url = match first_of(env, &[vars::UPSTREAM_URL, vars::HTTP_UPSTREAM_URL]) {
            Some((name, value)) if mode == Mode::Http => Some(upstream_url(name, &value)?),
            None if mode == Mode::Http => {
                return Err(ConfigError::Missing {
                    name: vars::UPSTREAM_URL,
                    why: "mode=http proxies requests to it (for example http://127.0.0.1:5000)",
                });
            }
            _ => None,
        };
        let ready_path = match env.get(vars::READY_PATH).filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(p) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => {
                Some(p)
            }
            Some(p) => {
                return Err(ConfigError::Invalid {
                    name: vars::READY_PATH,
                    value: p,
                    expected: "a path starting with / (for example /ready)",
                });
            }
        };
        let buffer_body = match first_of(env, &[vars::HTTP_BUFFER_REQ_BODY, vars::BUFFER_HTTP]) {
            Some((name, _)) => flag(env, name, false)?,
            None => false,
        };
        let buffer_body_limit = parsed(env, vars::HTTP_BUFFER_REQ_BODY_LIMIT, parse::uint)?
            .unwrap_or(DEFAULT_BUFFER_LIMIT);
        let upgrade_timeout = timeout(env, vars::UPGRADE_TIMEOUT, Some(DEFAULT_UPGRADE_TIMEOUT))?;
        let static_path = env
            .get(vars::STATIC_PATH)
            .filter(|p| !p.trim().is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_STATIC_PATH), PathBuf::from);
        if mode == Mode::Static && !static_path.is_dir() {
            return Err(ConfigError::Invalid {
                name: vars::STATIC_PATH,
                value: static_path.display().to_string(),
                expected: "an existing directory",
            });
        }

        Ok(WatchdogConfig {
            fprocess,
            mode,
            read_timeout,
            write_timeout,
            exec_timeout,
            healthcheck_interval,
            port,
            bind_address,
            metrics_port,
            max_inflight,
            cgi_headers: flag(env, vars::CGI_HEADERS, true)?,
            marshal_request: flag(env, vars::MARSHAL_REQUEST, false)?,
            combine_output: flag(env, vars::COMBINE_OUTPUT, true)?,
            write_debug: flag(env, vars::WRITE_DEBUG, false)?,
            suppress_lock: flag(env, vars::SUPPRESS_LOCK, false)?,
            content_type: content_type(env)?,
            prefix_logs: flag(env, vars::PREFIX_LOGS, true)?,
            log_buffer_size,
            log_callid: flag(env, vars::LOG_CALLID, false)?,
            log_requests: flag(env, vars::LOG_REQUESTS, true)?,
            log_format: log_format(env)?,
            upstream_url,
            ready_path,
            buffer_body,
            buffer_body_limit,
            upgrade_timeout,
            static_path,
            tmp_dir,
            lock_path,
        })
    }
}

/// What `-run-healthcheck` needs: it must work even where `fprocess` is not in its environment.
#[derive(Debug, Clone)]
pub struct HealthcheckConfig {
    /// No lock file: probe the HTTP endpoint instead.
    pub suppress_lock: bool,
    /// The watchdog's port, for the HTTP probe.
    pub port: u16,
    /// The lock file, `$TMPDIR/.lock`.
    pub lock_path: PathBuf,
}

impl HealthcheckConfig {
    /// Reads the probe's configuration.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(HealthcheckConfig {
            suppress_lock: flag(env, vars::SUPPRESS_LOCK, false)?,
            port: parsed(env, vars::PORT, parse::port)?.unwrap_or(8080),
            lock_path: tmp_dir(env).join(".lock"),
        })
    }
}

/// `$TMPDIR`, or `/tmp`.
fn tmp_dir(env: &impl Env) -> PathBuf {
    env.get(vars::TMPDIR)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Parses an http-mode upstream URL: `http://host[:port][/base]`, no query.
fn upstream_url(name: &'static str, value: &str) -> Result<http::Uri, ConfigError> {
    let invalid = || ConfigError::Invalid {
        name,
        value: value.to_string(),
        expected: "an http URL such as http://127.0.0.1:5000 (https is not supported for a local upstream)",
    };
    let uri: http::Uri = value.trim().parse().map_err(|_| invalid())?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() || uri.query().is_some() {
        return Err(invalid());
    }
    Ok(uri)
}

/// The first of `names` that is set, with the name it was found under.
fn first_of(env: &impl Env, names: &[&'static str]) -> Option<(&'static str, String)> {
    names
        .iter()
        .find_map(|name| env.get(name).map(|value| (*name, value)))
}

/// Parses `name` with `parser`; `None` when the variable is unset or empty.
fn parsed<T>(
    env: &impl Env,
    name: &'static str,
    parser: fn(&str) -> Result<T, &'static str>,
) -> Result<Option<T>, ConfigError> {
    match env.get(name) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Ok(None),
        Some(value) => parser(&value)
            .map(Some)
            .map_err(|expected| ConfigError::Invalid {
                name,
                value,
                expected,
            }),
    }
}

/// A boolean variable with a default.
fn flag(env: &impl Env, name: &'static str, default: bool) -> Result<bool, ConfigError> {
    Ok(parsed(env, name, parse::boolean)?.unwrap_or(default))
}

/// A timeout variable with a default; `0` means no limit.
fn timeout(
    env: &impl Env,
    name: &'static str,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    Ok(parsed(env, name, parse::duration)?.unwrap_or(default))
}

#[cfg(test)]
mod tests;
