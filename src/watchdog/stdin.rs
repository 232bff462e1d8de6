//! Streaming the request body to the handler's stdin, raw or wrapped in the `marshal_request`
//! JSON envelope, under the read deadline. The body is never buffered whole.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::time::Instant;

use super::cgi::MARSHAL_SUFFIX;

/// Why the request body could not be passed on.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body did not arrive within `read_timeout`.
    #[error("request body not received within read_timeout")]
    TimedOut,
    /// The client closed the connection before the body was complete.
    #[error("client closed the connection before the request body was complete")]
    Incomplete(#[source] hyper::Error),
    /// The body was not valid HTTP (bad chunked encoding, for example).
    #[error("malformed request body")]
    Malformed(#[source] hyper::Error),
}

/// Base64 over a stream: carries up to two bytes between chunks.
#[derive(Debug, Default)]
struct Base64Stream {
    /// Bytes that did not fill a 3-byte group yet.
    carry: Vec<u8>,
}

impl Base64Stream {
    fn push(&mut self, data: &[u8]) -> String {
        self.carry.extend_from_slice(data);
        let whole = self.carry.len() - self.carry.len() % 3;
        let encoded = STANDARD.encode(&self.carry[..whole]);
        self.carry.drain(..whole);
        encoded
    }

    fn finish(&mut self) -> String {
        let encoded = STANDARD.encode(&self.carry);
        self.carry.clear();
        encoded
    }
}

/// Writes to stdin until the handler closes it; afterwards writes are dropped.
struct Stdin {
    /// The pipe, `None` once closed by either side.
    pipe: Option<pipe::Sender>,
}

impl Stdin {
    async fn write(&mut self, data: &[u8]) {
        if let Some(pipe) = &mut self.pipe
            && pipe.write_all(data).await.is_err()
        {
            // The handler closed its stdin (or exited): it wants no more input.
            self.pipe = None;
        }
    }
}

/// Copies `body` to `stdin`, then closes it. With `marshal_prefix`, the body is wrapped in the
/// `marshal_request` envelope (the prefix, the body in base64, the suffix).
pub async fn feed(
    mut body: Incoming,
    stdin: Option<pipe::Sender>,
    deadline: Option<Instant>,
    marshal_prefix: Option<Vec<u8>>,
) -> Result<(), BodyError> {
    let mut stdin = Stdin { pipe: stdin };
    let mut base64 = marshal_prefix.as_ref().map(|_| Base64Stream::default());
    if let Some(prefix) = &marshal_prefix {
        stdin.write(prefix).await;
    }
    loop {
        let frame = match deadline {
            Some(d) => tokio::time::timeout_at(d, body.frame())
                .await
                .map_err(|_| BodyError::TimedOut)?,
            None => body.frame().await,
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) if e.is_incomplete_message() || e.is_closed() => {
                return Err(BodyError::Incomplete(e));
            }
            Some(Err(e)) if e.is_timeout() => return Err(BodyError::TimedOut),
            Some(Err(e)) => return Err(BodyError::Malformed(e)),
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        match &mut base64 {
            Some(b64) => {
                let encoded = b64.push(&data);
                stdin.write(encoded.as_bytes()).await;
            }
            None => stdin.write(&data).await,
        }
    }
    if let Some(b64) = &mut base64 {
        let tail = b64.finish();
        stdin.write(tail.as_bytes()).await;
        stdin.write(MARSHAL_SUFFIX).await;
    }
    if let Some(mut pipe) = stdin.pipe.take() {
        let _ = pipe.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_across_chunks_matches_one_shot() {
        let data: Vec<u8> = (0u8..=255).cycle().take(1000).collect();
        for split in [1usize, 2, 3, 4, 5, 7, 64, 999] {
            let mut s = Base64Stream::default();
            let mut out = String::new();
            for chunk in data.chunks(split) {
                out.push_str(&s.push(chunk));
            }
            out.push_str(&s.finish());
            assert_eq!(out, STANDARD.encode(&data), "split {split}");
        }
    }
}
