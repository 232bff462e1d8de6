//! The one place where a handler's failure becomes an HTTP status and body.

use http::StatusCode;

/// A reply the watchdog writes itself: a status and a plain-text body (see `Reply::text`).
pub type Text = (StatusCode, Vec<u8>);

use super::mode::{Ended, Limit, describe_exit};
use super::stdin::BodyError;
use crate::config::Mode;

/// Formats a limit for humans (`10s`, `1m 30s`).
fn human(d: std::time::Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// Whether the error body continues with the handler's output: classic mode does that for a
/// non-zero exit, as OpenFaaS's classic watchdog does.
pub fn includes_output(mode: Mode, ended: &Ended) -> bool {
    mode == Mode::Classic && matches!(ended, Ended::Exited(_))
}

/// Status and body for a handler that did not succeed (see [`includes_output`] for what may
/// follow the body).
pub fn failure(mode: Mode, ended: &Ended) -> (StatusCode, Vec<u8>) {
    let text = |s: String| s.into_bytes();
    match ended {
        Ended::Exited(status) => {
            let mut body = describe_exit(*status).into_bytes();
            if mode == Mode::Classic {
                body.push(b'\n');
            }
            (StatusCode::INTERNAL_SERVER_ERROR, body)
        }
        Ended::TimedOut(Limit::Exec(_)) if mode == Mode::Classic => (
            StatusCode::REQUEST_TIMEOUT,
            text("Killed process.\n".into()),
        ),
        Ended::TimedOut(Limit::Exec(d)) => (
            StatusCode::GATEWAY_TIMEOUT,
            text(format!(
                "Function exceeded exec_timeout ({}) and was killed.\n",
                human(*d)
            )),
        ),
        Ended::TimedOut(Limit::Write(d)) => (
            StatusCode::GATEWAY_TIMEOUT,
            text(format!(
                "Function did not finish within write_timeout ({}) and was killed.\n",
                human(*d)
            )),
        ),
        Ended::Body(BodyError::TimedOut) => read_timed_out(),
        Ended::Body(e @ (BodyError::Malformed(_) | BodyError::Incomplete(_))) => (
            StatusCode::BAD_REQUEST,
            text(format!("{e}: {}\n", source_of(e))),
        ),
        Ended::ClientGone => (StatusCode::BAD_REQUEST, text("Client went away.\n".into())),
        Ended::Io(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            text(format!("Error while running the function: {e}\n")),
        ),
    }
}

/// The request body did not arrive within `read_timeout`: 408.
pub fn read_timed_out() -> Text {
    (
        StatusCode::REQUEST_TIMEOUT,
        b"Request body was not received within read_timeout.\n".to_vec(),
    )
}

/// The request body was malformed or cut short: 400.
pub fn body_unreadable() -> Text {
    (
        StatusCode::BAD_REQUEST,
        b"Request body is malformed or incomplete.\n".to_vec(),
    )
}

/// Status and body when the handler could not be started at all.
pub fn spawn_failed(command: &str, error: &std::io::Error) -> (StatusCode, Vec<u8>) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("Failed to start fprocess {command:?}: {error}\n").into_bytes(),
    )
}

/// Status and body when `max_inflight` requests are already running.
pub fn too_many(limit: usize) -> (StatusCode, Vec<u8>) {
    (
        StatusCode::TOO_MANY_REQUESTS,
        format!("Concurrent request limit exceeded. Max concurrent requests: {limit}\n")
            .into_bytes(),
    )
}

fn source_of(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    #[test]
    fn classic_bodies_match_openfaas() {
        let exit = Ended::Exited(ExitStatus::from_raw(1 << 8));
        assert_eq!(
            failure(Mode::Classic, &exit),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                b"exit status 1\n".to_vec()
            )
        );
        assert!(includes_output(Mode::Classic, &exit));
        let timeout = Ended::TimedOut(Limit::Exec(Duration::from_secs(1)));
        assert_eq!(
            failure(Mode::Classic, &timeout),
            (StatusCode::REQUEST_TIMEOUT, b"Killed process.\n".to_vec())
        );
        assert_eq!(
            too_many(3),
            (
                StatusCode::TOO_MANY_REQUESTS,
                b"Concurrent request limit exceeded. Max concurrent requests: 3\n".to_vec()
            )
        );
    }

    #[test]
    fn of_watchdog_modes() {
        let exit = Ended::Exited(ExitStatus::from_raw(2 << 8));
        assert_eq!(
            failure(Mode::Serializing, &exit),
            (StatusCode::INTERNAL_SERVER_ERROR, b"exit status 2".to_vec())
        );
        assert!(!includes_output(Mode::Serializing, &exit));
        let (status, body) = failure(
            Mode::Streaming,
            &Ended::TimedOut(Limit::Exec(Duration::from_secs(2))),
        );
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(String::from_utf8_lossy(&body).contains("exec_timeout (2s)"));
        let (status, body) = failure(
            Mode::Classic,
            &Ended::TimedOut(Limit::Write(Duration::from_secs(3))),
        );
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(String::from_utf8_lossy(&body).contains("write_timeout (3s)"));
    }
}
