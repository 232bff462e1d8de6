//! Classic and `serializing` modes: run the handler, buffer its output (spilling to a temp file
//! past a threshold), and answer once its exit status is known.

use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use hyper::body::Incoming;

use super::{Ended, Stdout, supervise};
use crate::config::Mode;
use crate::http::body;
use crate::process::spill::{DEFAULT_SPILL_THRESHOLD, SpillBuffer, Spilled};
use crate::watchdog::invocation::{Invocation, Reply, reply_content_type};
use crate::watchdog::{outcome, request_log, sniff};

/// Runs one request in a buffered mode.
pub async fn serve(inv: Invocation, parts: &Parts, body: Incoming) -> Reply {
    let Invocation {
        config,
        mut process,
        start,
        run_deadline,
        stderr_log,
        feed,
        ..
    } = inv.with_body(body, parts);
    let mut buffer = SpillBuffer::new(DEFAULT_SPILL_THRESHOLD, config.tmp_dir.clone());
    let combine = config.mode == Mode::Classic && config.combine_output;
    let ended = supervise(
        &mut process,
        feed,
        Stdout::Buffer {
            buffer: &mut buffer,
            combine,
        },
        stderr_log,
        run_deadline,
    )
    .await;
    let duration = start.elapsed();
    let mut output = match buffer.finish().await {
        Ok(output) => output,
        Err(e) => return Reply::text(outcome::failure(config.mode, &Ended::Io(e))),
    };

    let mut reply = match ended {
        Ended::Exited(status) if status.success() => {
            if config.write_debug {
                log_output(&output, duration);
            }
            if config.log_requests && config.mode == Mode::Classic {
                request_log::wrote(output.len(), duration);
            }
            let ct = match reply_content_type(&config, &parts.headers, true) {
                Some(ct) => Some(ct),
                // Nothing set a type: guess it from the output, as the classic watchdog's HTTP
                // server (Go's) does; an empty body gets none.
                None if config.mode == Mode::Classic && !output.is_empty() => {
                    sniffed(&[], &mut output).await
                }
                None => None,
            };
            let mut reply = Reply::new(StatusCode::OK, body::spilled(output));
            if let Some(ct) = ct {
                reply.headers.insert(header::CONTENT_TYPE, ct);
            }
            reply
        }
        ended => {
            if config.write_debug {
                tracing::info!(outcome = ?ended, "function failed");
            }
            let (status, text) = outcome::failure(config.mode, &ended);
            if outcome::includes_output(config.mode, &ended) {
                let ct = match config.mode {
                    Mode::Classic => sniffed(&text, &mut output).await,
                    _ => None,
                };
                let mut reply = Reply::new(status, body::prefixed(text, output));
                if let Some(ct) = ct {
                    reply.headers.insert(header::CONTENT_TYPE, ct);
                }
                reply
            } else {
                Reply::text((status, text))
            }
        }
    };
    reply.set_duration(duration);
    reply
}

/// The type Go's HTTP server would give a body starting with `prefix` and then `output`.
async fn sniffed(prefix: &[u8], output: &mut Spilled) -> Option<HeaderValue> {
    let mut head = prefix[..prefix.len().min(sniff::SNIFF_LEN)].to_vec();
    match output.head(sniff::SNIFF_LEN - head.len()).await {
        Ok(rest) => head.extend_from_slice(&rest),
        Err(e) => tracing::debug!(error = %e, "cannot read the output's first bytes"),
    }
    Some(HeaderValue::from_static(sniff::sniff(&head)))
}

fn log_output(output: &Spilled, duration: std::time::Duration) {
    const SHOWN: usize = 4096;
    match output {
        Spilled::Memory(bytes) => {
            let shown = &bytes[..bytes.len().min(SHOWN)];
            tracing::info!(
                bytes = bytes.len(),
                seconds = duration.as_secs_f64(),
                output = %String::from_utf8_lossy(shown),
                "function succeeded"
            );
        }
        Spilled::File { len, .. } => {
            tracing::info!(
                bytes = len,
                seconds = duration.as_secs_f64(),
                "function succeeded"
            );
        }
    }
}
