//! `streaming` mode: the handler's stdout becomes the response body as it is produced.
//!
//! The status is decided by the first byte: output before any failure means 200 and a streamed
//! body; a failure before the first byte is an ordinary error response. A failure after the
//! first byte aborts the response, so a client never mistakes a truncated body for a whole one.

use http::request::Parts;
use http::{StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::{Ended, Stdout, supervise};
use crate::http::body::{self, BoxError};
use crate::watchdog::invocation::{Invocation, Reply, reply_content_type};
use crate::watchdog::outcome;

/// Chunks buffered between the handler and a slow client.
const CHANNEL_CHUNKS: usize = 4;

/// The handler failed after its output had started.
#[derive(Debug, thiserror::Error)]
#[error("function failed after its response started: {0}")]
struct FailedMidStream(String);

/// Runs one request in streaming mode.
pub async fn serve(inv: Invocation, parts: &Parts, body: Incoming) -> Reply {
    let inv = inv.with_body(body, parts);
    let config = inv.config.clone();
    let write_deadline = inv.write_deadline;
    let (tx, mut rx) = mpsc::channel::<Result<bytes::Bytes, BoxError>>(CHANNEL_CHUNKS);
    let (done_tx, done_rx) = oneshot::channel::<Ended>();

    tokio::spawn(async move {
        let Invocation {
            mut process,
            run_deadline,
            stderr_log,
            feed,
            ..
        } = inv;
        let mut sent_any = false;
        let ended = supervise(
            &mut process,
            feed,
            Stdout::Stream {
                tx: &tx,
                sent_any: &mut sent_any,
                write_deadline,
            },
            stderr_log,
            run_deadline,
        )
        .await;
        let success = matches!(&ended, Ended::Exited(s) if s.success());
        if sent_any && !success {
            tracing::warn!(outcome = ?ended, "function failed mid-stream; aborting the response");
            let _ = tx
                .send(Err(FailedMidStream(format!("{ended:?}")).into()))
                .await;
        }
        // Report before the channel closes: the receiver looks here when it sees the end.
        let _ = done_tx.send(ended);
    });

    match rx.recv().await {
        Some(Ok(first)) => {
            let mut reply = Reply::new(StatusCode::OK, body::channel(Some(first), rx));
            if let Some(ct) = reply_content_type(&config, &parts.headers, true) {
                reply.headers.insert(header::CONTENT_TYPE, ct);
            }
            reply
        }
        Some(Err(_)) | None => match done_rx.await {
            Ok(Ended::Exited(status)) if status.success() => {
                let mut reply = Reply::new(StatusCode::OK, body::empty());
                if let Some(ct) = reply_content_type(&config, &parts.headers, false) {
                    reply.headers.insert(header::CONTENT_TYPE, ct);
                }
                reply
            }
            Ok(ended) => Reply::text(outcome::failure(config.mode, &ended)),
            Err(_) => Reply::text(outcome::failure(
                config.mode,
                &Ended::Io(std::io::Error::other("handler task ended unexpectedly")),
            )),
        },
    }
}
