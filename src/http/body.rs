//! Response bodies: from memory, from a spilled temp file, from a channel fed by a running
//! handler, and a wrapper that enforces the write deadline and holds per-request resources
//! (concurrency permit, metrics) until the body is finished or dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::io::ReaderStream;

use crate::process::spill::Spilled;

/// A boxed error, as hyper bodies use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every watchdog response.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A body with the bytes of a finished output buffer.
pub fn spilled(output: Spilled) -> ResponseBody {
    match output {
        Spilled::Memory(bytes) => full(bytes),
        Spilled::File { file, .. } => StreamBody::new(
            ReaderStream::with_capacity(file, 64 * 1024)
                .map_ok(Frame::data)
                .map_err(BoxError::from),
        )
        .boxed_unsync(),
    }
}

/// A body of `prefix` followed by the bytes of `output`.
pub fn prefixed(prefix: Vec<u8>, output: Spilled) -> ResponseBody {
    match output {
        Spilled::Memory(bytes) => {
            let mut all = prefix;
            all.extend_from_slice(&bytes);
            full(all)
        }
        Spilled::File { file, .. } => {
            let head = futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(
                Frame::data(Bytes::from(prefix)),
            )));
            let rest = ReaderStream::with_capacity(file, 64 * 1024)
                .map_ok(Frame::data)
                .map_err(BoxError::from);
            StreamBody::new(futures_util::StreamExt::chain(head, rest)).boxed_unsync()
        }
    }
}

/// A body that starts with `first` and continues with what arrives through `rx`; an `Err` item
/// aborts the response (the client sees an incomplete body, never a clean end).
pub fn channel(first: Option<Bytes>, rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> ResponseBody {
    ChannelBody { first, rx }.boxed_unsync()
}

/// Receives body chunks from a task that produces them.
struct ChannelBody {
    /// A chunk received before the body was built.
    first: Option<Bytes>,
    /// Chunks as they are produced; the sender closing ends the body.
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(Ok(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }
}

/// The response body took longer than `write_timeout` to send.
#[derive(Debug, thiserror::Error)]
#[error("response not written within write_timeout")]
pub struct WriteTimedOut;

/// Wraps a body with a write deadline and keeps `hold` alive until the body ends or is dropped.
pub fn guarded<H: Send + Unpin + 'static>(
    inner: ResponseBody,
    deadline: Option<Instant>,
    hold: H,
) -> ResponseBody {
    Guarded {
        inner,
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        hold: Some(hold),
    }
    .boxed_unsync()
}

/// See [`guarded`].
struct Guarded<H> {
    /// The body being sent.
    inner: ResponseBody,
    /// When sending must have finished.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Resources released when the body is done (permit, metrics, process).
    hold: Option<H>,
}

impl<H: Unpin> Body for Guarded<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.hold = None;
            return Poll::Ready(Some(Err(WriteTimedOut.into())));
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.hold = None;
        }
        Poll::Ready(frame)
    }

    // `is_end_stream` stays false so that the server polls to the end, which releases `hold`
    // (and records the request's metrics) as soon as the body is complete.

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body did not arrive within `read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within read_timeout")]
pub struct ReadTimedOut;

/// Forwards a request body that must have arrived by `deadline`; past it the body fails with
/// [`ReadTimedOut`] and the returned flag is set, so the caller can tell a slow client from a
/// failing upstream.
pub fn read_bounded<B>(
    inner: B,
    deadline: Option<Instant>,
) -> (ResponseBody, std::sync::Arc<std::sync::atomic::AtomicBool>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = ReadBounded {
        inner,
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        timed_out: std::sync::Arc::clone(&flag),
    };
    (body.boxed_unsync(), flag)
}

/// See [`read_bounded`].
struct ReadBounded<B> {
    /// The client's body.
    inner: B,
    /// When it must have ended.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline passed.
    timed_out: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<B> Body for ReadBounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.timed_out
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Poll::Ready(Some(Err(ReadTimedOut.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
