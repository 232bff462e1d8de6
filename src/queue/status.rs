//! What a call's status record says, and the rules both backends apply to it: the state a
//! final outcome leaves a call in, where its callback delivery is after an attempt, and how a
//! stored result is shown (text, or base64 when it is not UTF-8, cut at the status size cap).

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::Outcome;

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// Failed with a retryable error; waiting for its next attempt.
    Retrying,
    /// The function answered with a final status below 400 (or a non-retryable one... see
    /// [`Outcome::succeeded`]).
    Succeeded,
    /// It failed for good (a final 4xx/5xx, or retries exhausted: then it is a dead letter too).
    Failed,
    /// Cancelled before it ran.
    Cancelled,
}

impl CallState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Queued => "queued",
            CallState::Running => "running",
            CallState::Retrying => "retrying",
            CallState::Succeeded => "succeeded",
            CallState::Failed => "failed",
            CallState::Cancelled => "cancelled",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => CallState::Queued,
            "running" => CallState::Running,
            "retrying" => CallState::Retrying,
            "succeeded" => CallState::Succeeded,
            "failed" => CallState::Failed,
            "cancelled" => CallState::Cancelled,
            _ => return None,
        })
    }
}

impl CallState {
    /// The state a final outcome leaves a call in: succeeded when the function answered with a
    /// success, failed otherwise, and always failed when the call is dead-lettered.
    pub fn ended(outcome: &Outcome, dead: bool) -> CallState {
        if !dead && outcome.succeeded() {
            CallState::Succeeded
        } else {
            CallState::Failed
        }
    }
}

/// Where a call's callback delivery is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackState {
    /// No callback: none was asked for, or the call has not finished.
    #[default]
    None,
    /// Waiting for its (next) delivery.
    Pending,
    /// The receiver answered with a success.
    Delivered,
    /// Given up on.
    Failed,
}

impl CallbackState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackState::None => "none",
            CallbackState::Pending => "pending",
            CallbackState::Delivered => "delivered",
            CallbackState::Failed => "failed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => CallbackState::None,
            "pending" => CallbackState::Pending,
            "delivered" => CallbackState::Delivered,
            "failed" => CallbackState::Failed,
            _ => return None,
        })
    }

    /// After a delivery attempt: delivered; pending again and due after `retry_in`; or failed
    /// for good when there is no retry.
    pub fn after_attempt(delivered: bool, retry_in: Option<Duration>) -> (Self, Option<Duration>) {
        match (delivered, retry_in) {
            (true, _) => (CallbackState::Delivered, None),
            (false, Some(d)) => (CallbackState::Pending, Some(d)),
            (false, None) => (CallbackState::Failed, None),
        }
    }
}

impl std::fmt::Display for CallbackState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call's status record.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallStatus {
    /// The call id.
    pub call_id: String,
    /// The function.
    pub function: String,
    /// Where it is.
    pub state: CallState,
    /// Attempts made.
    pub attempts: u32,
    /// Whether it is in the dead-letter set.
    pub dead_letter: bool,
    /// The last status code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The last error, when the call itself failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Accepted at (RFC 3339).
    pub enqueued_at: String,
    /// Last attempt started at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Finished at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Next attempt at, while retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The result body (up to the status size cap), as text when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The result body, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_base64: Option<String>,
    /// Whether the result was cut at the size cap.
    pub result_truncated: bool,
    /// Callback delivery: pending, delivered, failed, or none.
    pub callback: CallbackState,
    /// Callback attempts made.
    pub callback_attempts: u32,
    /// Why the last callback delivery failed or was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_error: Option<String>,
}

/// The head of a result as a status record shows it: at most `cap` bytes of `bytes`, as text
/// (`result`) when they are UTF-8, else base64 (`result_base64`); and whether it was cut.
pub fn shown_result(bytes: &[u8], cap: usize) -> (Option<String>, Option<String>, bool) {
    let head = &bytes[..bytes.len().min(cap)];
    let truncated = bytes.len() > cap;
    match std::str::from_utf8(head) {
        Ok(text) => (Some(text.to_string()), None, truncated),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(head)),
            truncated,
        ),
    }
}

/// Unix milliseconds as RFC 3339 text, as status records show times.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A duration in whole milliseconds, saturating (a huge `Retry-After` must not wrap).
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_and_callback_steps() {
        let ok = Outcome {
            status: 200,
            ..Outcome::default()
        };
        let not_found = Outcome {
            status: 404,
            ..Outcome::default()
        };
        assert_eq!(CallState::ended(&ok, false), CallState::Succeeded);
        assert_eq!(CallState::ended(&ok, true), CallState::Failed);
        assert_eq!(CallState::ended(&not_found, false), CallState::Failed);
        let d = Duration::from_secs(3);
        assert_eq!(
            CallbackState::after_attempt(true, Some(d)),
            (CallbackState::Delivered, None)
        );
        assert_eq!(
            CallbackState::after_attempt(false, Some(d)),
            (CallbackState::Pending, Some(d))
        );
        assert_eq!(
            CallbackState::after_attempt(false, None),
            (CallbackState::Failed, None)
        );
        for s in ["none", "pending", "delivered", "failed"] {
            assert_eq!(CallbackState::parse(s).map(CallbackState::as_str), Some(s));
        }
    }

    #[test]
    fn results_show_as_text_or_base64_cut_at_the_cap() {
        assert_eq!(shown_result(b"hello", 3), (Some("hel".into()), None, true));
        assert_eq!(
            shown_result(b"hello", 5),
            (Some("hello".into()), None, false)
        );
        assert_eq!(
            shown_result(&[0xff, 0x00], 10),
            (None, Some("/wA=".into()), false)
        );
        assert_eq!(ms(Duration::MAX), u64::MAX);
    }
}
