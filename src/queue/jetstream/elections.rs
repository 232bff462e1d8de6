//! Riding out leader elections: a step the cluster cannot take while a stream or the status
//! bucket has no leader (no responders, no answer) is tried again, each attempt bounded, until
//! a deadline. Enqueue steps, the undo of a failed enqueue, and the recording of a finished
//! call's outcome share it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{QueueError, unavailable};

/// Longest one attempt may take: a server that has a leader answers in milliseconds, and one
/// that has none answers a read never.
pub(super) const ATTEMPT: Duration = Duration::from_secs(2);

/// First pause between attempts; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Longest pause between attempts.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(400);

/// A step ran out of time while the cluster could not take it (an election, say).
#[derive(Debug, thiserror::Error)]
#[error("could not {what} within {within:?} (last error: {last})")]
pub(super) struct NoLeader {
    /// The step that did not complete.
    what: &'static str,
    /// The bound it had.
    within: Duration,
    /// The last attempt's error.
    last: String,
}

/// Runs `step` until it succeeds, retrying what the queue calls unavailable (no leader, no
/// responders, timeouts) until `deadline`; each attempt is bounded by [`ATTEMPT`]. Other
/// errors return at once. `what` names the step in the final error, `within` the bound.
///
/// A step may be cut short after its write landed: it must recognise its own write when it
/// runs again.
pub(super) async fn within<T, F, Fut>(
    deadline: Instant,
    within: Duration,
    what: &'static str,
    step: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    within_each(deadline, within, ATTEMPT, what, step).await
}

/// [`within`], each attempt bounded by `attempt` (a step that moves much data).
pub(super) async fn within_each<T, F, Fut>(
    deadline: Instant,
    within: Duration,
    attempt: Duration,
    what: &'static str,
    mut step: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let mut pause = RETRY_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(attempt.min(left), step()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(QueueError::Unavailable(e))) => e.to_string(),
            Ok(Err(other)) => return Err(other),
            Err(_) => format!("no answer within {:?}", attempt.min(left)),
        };
        if Instant::now() + pause >= deadline {
            return Err(unavailable(NoLeader { what, within, last }));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An error the queue calls unavailable.
    fn down() -> QueueError {
        unavailable(std::io::Error::other("no responders"))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_step_succeeds() {
        let tries = AtomicUsize::new(0);
        let got = within(
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
            "step",
            || async {
                if tries.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(down())
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(tries.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_naming_the_step() {
        let began = Instant::now();
        let got: Result<(), _> = within(
            began + Duration::from_secs(5),
            Duration::from_secs(5),
            "store the outcome",
            // Never answers: each attempt is cut at ATTEMPT.
            std::future::pending,
        )
        .await;
        let e = match got {
            Err(QueueError::Unavailable(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(e.contains("store the outcome"), "{e}");
        assert!(
            began.elapsed() <= Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        assert!(
            began.elapsed() >= Duration::from_secs(4),
            "{:?}",
            began.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_other_errors() {
        let tries = AtomicUsize::new(0);
        let got: Result<(), _> = within(
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
            "step",
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(QueueError::Corrupt {
                    call_id: "c".into(),
                    source: serde_json::from_str::<u8>("x").unwrap_err(),
                })
            },
        )
        .await;
        assert!(matches!(got, Err(QueueError::Corrupt { .. })));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
