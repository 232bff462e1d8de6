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

/// Why a client's request body could not be forwarded, as [`read_bounded`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFailure {
    /// It did not arrive by the deadline (the client's fault: 408).
    TimedOut,
    /// It was malformed (bad chunked framing) or cut short (the client's fault: 400).
    Unreadable,
}

/// What happened to a body forwarded by [`read_bounded`], readable after the forwarding
/// failed, so the caller can tell a client's fault from a failing upstream.
#[derive(Debug, Default)]
pub struct BodyWatch(std::sync::atomic::AtomicU8);

impl BodyWatch {
    /// The body's failure, if it failed.
    pub fn failure(&self) -> Option<ClientBodyFailure> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            1 => Some(ClientBodyFailure::TimedOut),
            2 => Some(ClientBodyFailure::Unreadable),
            _ => None,
        }
    }

    fn set(&self, failure: ClientBodyFailure) {
        let code = match failure {
            ClientBodyFailure::TimedOut => 1,
            ClientBodyFailure::Unreadable => 2,
        };
        self.0.store(code, std::sync::atomic::Ordering::SeqCst);
    }
}

/// When a request body must have arrived.
#[derive(Debug, Clone, Copy)]
pub enum ReadDeadline {
    /// No limit.
    None,
    /// By this instant.
    At(Instant),
    /// Within this long of the first time the body is read (a gateway may wait for a replica
    /// before it reads the body, and that wait is not the client's).
    After(std::time::Duration),
}

/// Forwards a request body that must have arrived by `deadline`, with no gap between two
/// pieces longer than `idle` (counted from the first read); past either the body fails with
/// [`ReadTimedOut`]. The returned watch says whether (and how) the client's body failed.
pub fn read_bounded<B>(
    inner: B,
    deadline: ReadDeadline,
    idle: Option<std::time::Duration>,
) -> (ResponseBody, std::sync::Arc<BodyWatch>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let watch = std::sync::Arc::new(BodyWatch::default());
    let body = ReadBounded {
        inner,
        pending: Some((deadline, idle)),
        deadline: None,
        idle: None,
        watch: std::sync::Arc::clone(&watch),
    };
    (body.boxed_unsync(), watch)
}

/// See [`read_bounded`].
struct ReadBounded<B> {
    /// The client's body.
    inner: B,
    /// The limits, until the first read starts their timers.
    pending: Option<(ReadDeadline, Option<std::time::Duration>)>,
    /// When it must have ended.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The longest gap between two pieces, and when the current gap ends.
    idle: Option<(std::time::Duration, Pin<Box<Sleep>>)>,
    /// Records a failure.
    watch: std::sync::Arc<BodyWatch>,
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
        if let Some((deadline, idle)) = self.pending.take() {
            let now = Instant::now();
            self.deadline = match deadline {
                ReadDeadline::None => None,
                ReadDeadline::At(at) => Some(Box::pin(tokio::time::sleep_until(at))),
                ReadDeadline::After(d) => Some(Box::pin(tokio::time::sleep_until(now + d))),
            };
            self.idle = idle.map(|d| (d, Box::pin(tokio::time::sleep_until(now + d))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            let frame = frame.map(|f| f.map_err(Into::into));
            match &frame {
                Some(Err(_)) => self.watch.set(ClientBodyFailure::Unreadable),
                Some(Ok(_)) => {
                    if let Some((gap, sleep)) = &mut self.idle {
                        let next = Instant::now() + *gap;
                        sleep.as_mut().reset(next);
                    }
                }
                None => {}
            }
            return Poll::Ready(frame);
        }
        let idle_over = match &mut self.idle {
            Some((_, sleep)) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        };
        let deadline_over = match &mut self.deadline {
            Some(deadline) => deadline.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if idle_over || deadline_over {
            self.watch.set(ClientBodyFailure::TimedOut);
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
