//! A request body that can be taken back while none of it has been read, so that a request
//! which could not be sent (its upstream refused the connection, or is gone) can be sent again
//! to another upstream with the same body.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, ResponseBody};

/// The body until its first read; see [`reclaimable`].
type Slot = Arc<Mutex<Option<ResponseBody>>>;

/// Wraps `body` for one attempt at sending it: the wrapper goes into the request, the
/// [`Reclaim`] stays with the sender.
pub fn reclaimable(body: ResponseBody) -> (Reclaimable, Reclaim) {
    let end = body.is_end_stream();
    let hint = body.size_hint();
    let slot: Slot = Arc::new(Mutex::new(Some(body)));
    (
        Reclaimable {
            slot: Arc::clone(&slot),
            reading: None,
            end,
            hint,
        },
        Reclaim(slot),
    )
}

/// The body as sent: it moves out of the shared slot on its first read.
pub struct Reclaimable {
    /// Where the body waits until it is first read.
    slot: Slot,
    /// The body, once read from.
    reading: Option<ResponseBody>,
    /// The body's `is_end_stream` when wrapped.
    end: bool,
    /// The body's size hint when wrapped.
    hint: SizeHint,
}

impl Body for Reclaimable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.reading.is_none() {
            this.reading = this
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        match &mut this.reading {
            Some(body) => Pin::new(body).poll_frame(cx),
            // Taken back by the sender: this attempt was given up.
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().map_or(self.end, Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.reading.as_ref().map_or(self.hint, Body::size_hint)
    }
}

/// Takes the body back, if it was never read.
pub struct Reclaim(Slot);

impl Reclaim {
    /// The body, when no part of it was read (the request can be sent again with it).
    pub fn take(self) -> Option<ResponseBody> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::http::body::full;

    #[tokio::test]
    async fn a_body_never_read_is_taken_back_whole() {
        let (sent, reclaim) = reclaimable(full("payload"));
        assert_eq!(sent.size_hint().exact(), Some(7));
        assert!(!sent.is_end_stream());
        drop(sent);
        let back = reclaim.take().expect("the body, unread");
        let bytes = back.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(bytes.as_deref(), Some(&b"payload"[..]));
    }

    #[tokio::test]
    async fn a_body_read_from_is_not_taken_back() {
        let (sent, reclaim) = reclaimable(full("payload"));
        let bytes = sent.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(bytes.as_deref(), Some(&b"payload"[..]));
        assert!(reclaim.take().is_none());
    }
}
