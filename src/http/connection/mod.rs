//! One client connection's socket as the HTTP server sees it, with two guards hyper lacks.
//!
//! **Framing.** A request head that carries both `Content-Length` and `Transfer-Encoding` is
//! refused with `400` and the connection closed (RFC 9112, section 6.1 allows it; a proxy must
//! never let two readers disagree about where a body ends). hyper would silently prefer the
//! chunked framing and drop the `Content-Length` header, so the check happens here, below hyper:
//! request heads are parsed (with `httparse`, as hyper does) before hyper sees them, and bodies
//! are followed (length or chunks) to find the next head. A head this cannot follow (an
//! upgrade, a parse error, an oversized head) switches the check off for the rest of the
//! connection and hands every byte to hyper, which answers such requests itself.
//!
//! **Lingering close.** When the server answers before reading the whole request body (413,
//! 401, 404, a handler that exits without reading stdin...), closing the socket with unread
//! bytes makes the kernel send a reset, and a client that writes its whole body before reading
//! loses the answer. So closing first shuts down the write side (the client sees the end of the
//! response), then reads and discards what the client still sends, until it closes, for at most
//! [`LINGER_TOTAL`], [`LINGER_IDLE`] without data, or [`LINGER_BYTES`] bytes, as nginx's
//! lingering close does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

mod framing;
#[cfg(test)]
mod tests;

use framing::{Framing, HeadScan, chunk_byte, scan_head};

/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one request; more get 431.
pub const MAX_HEADERS: usize = 100;
/// Longest a closing connection keeps reading what the client still sends.
pub const LINGER_TOTAL: Duration = Duration::from_secs(10);
/// Longest a closing connection waits for more bytes from the client.
pub const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and discards.
pub const LINGER_BYTES: u64 = 32 * 1024 * 1024;

/// What a refused request gets.
const REFUSED_FRAMING: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\
content-length: 75\r\n\
\r\n\
A request may not carry both Content-Length and Transfer-Encoding: chunked\n";

/// What a connection over the server's connection limit gets.
pub const REFUSED_BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\
retry-after: 1\r\n\
content-length: 45\r\n\
\r\n\
Too many open connections; try again shortly\n";

/// How long a connection refused for the connection limit lingers (short: refusals must stay
/// cheap under a flood).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Size of the buffer request heads are checked in (it grows for larger heads).
const READ_CHUNK: usize = 8 * 1024;

/// A socket with the framing check and the lingering close; see the module docs.
#[derive(Debug)]
pub struct GuardedIo<T> {
    /// The socket.
    io: T,
    /// Bytes read from the socket that the server has not taken yet; empty (and unallocated)
    /// most of the time. Its length is always `end`: reads go into its spare capacity, which
    /// is never zeroed.
    buf: Vec<u8>,
    /// Where the untaken bytes start in `buf`.
    start: usize,
    /// Bytes of `buf` before this were checked and may be handed to the server.
    checked: usize,
    /// Where the read bytes end in `buf`.
    end: usize,
    /// Where the byte stream stands in the current request.
    framing: Framing,
    /// The client closed its side.
    eof: bool,
    /// The connection was upgraded: it ends as the tunnel ends, without lingering (which would
    /// swallow what the client still sends).
    upgrade: bool,
    /// Set by the server when it answers an upgrade (101, or 2xx to CONNECT): from then on the
    /// bytes are the tunnel's, not HTTP.
    switched: Option<Arc<AtomicBool>>,
    /// A response to write before closing, instead of the server's.
    reply: Option<&'static [u8]>,
    /// How far closing has come.
    closing: Closing,
    /// How long closing lingers at most, and without data.
    linger: (Duration, Duration),
    /// The connection's place under the server's connection limit, held as long as the
    /// socket lives (an upgraded connection included).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How far closing has come.
#[derive(Debug)]
enum Closing {
    /// Not closing.
    Open,
    /// Writing [`GuardedIo::reply`]: bytes written so far.
    Reply(usize),
    /// Shutting down the write side.
    ShutWrite,
    /// Reading and discarding.
    Drain {
        /// When lingering ends whatever happens.
        total: Pin<Box<Sleep>>,
        /// When lingering ends if nothing arrives.
        idle: Pin<Box<Sleep>>,
        /// Bytes discarded so far.
        discarded: u64,
    },
    /// Done.
    Done,
}

impl<T> GuardedIo<T> {
    /// Wraps a freshly accepted socket.
    pub fn new(io: T) -> Self {
        GuardedIo {
            io,
            buf: Vec::new(),
            start: 0,
            checked: 0,
            end: 0,
            framing: Framing::Head,
            eof: false,
            upgrade: false,
            switched: None,
            reply: None,
            closing: Closing::Open,
            slot: None,
            linger: (LINGER_TOTAL, LINGER_IDLE),
        }
    }

    /// Holds `slot` for as long as the socket lives.
    pub fn with_slot(mut self, slot: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        self.slot = slot;
        self
    }

    /// A socket that is only closed: `reply` is written, then the close lingers briefly (for
    /// connections refused before any HTTP is served; shut it down to send the reply).
    pub fn refusing(io: T, reply: &'static [u8]) -> Self {
        let mut guarded = Self::new(io);
        guarded.reply = Some(reply);
        guarded.framing = Framing::Refused;
        guarded.linger = (REFUSAL_LINGER, REFUSAL_LINGER);
        guarded
    }

    /// Advances the check over the bytes read but not checked yet.
    fn check(&mut self) {
        while self.checked < self.end {
            let data = &self.buf[self.checked..self.end];
            match self.framing {
                Framing::Off => self.checked = self.end,
                Framing::Refused => return,
                Framing::Head => match scan_head(data) {
                    HeadScan::Partial if data.len() <= MAX_HEAD => return,
                    HeadScan::Partial | HeadScan::Unchecked => self.framing = Framing::Off,
                    HeadScan::Refuse => {
                        self.framing = Framing::Refused;
                        self.reply = Some(REFUSED_FRAMING);
                        return;
                    }
                    HeadScan::Complete { len, .. } if len > MAX_HEAD => {
                        // The server answers 431.
                        self.framing = Framing::Off;
                    }
                    HeadScan::Complete { len, next } => {
                        self.checked += len;
                        self.framing = next;
                    }
                },
                Framing::Fixed(left) | Framing::ChunkData(left) => {
                    let take = left.min(data.len() as u64);
                    self.checked += take as usize;
                    self.framing = match (self.framing, left - take) {
                        (Framing::Fixed(_), 0) => Framing::Head,
                        (Framing::Fixed(_), rest) => Framing::Fixed(rest),
                        (_, 0) => Framing::ChunkEnd,
                        (_, rest) => Framing::ChunkData(rest),
                    };
                }
                Framing::ChunkSize { .. } | Framing::ChunkEnd | Framing::Trailers(_) => {
                    for &byte in data {
                        self.checked += 1;
                        self.framing = chunk_byte(self.framing, byte);
                        if !matches!(
                            self.framing,
                            Framing::ChunkSize { .. } | Framing::ChunkEnd | Framing::Trailers(_)
                        ) {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Watches `switched`, which the server sets when it answers an upgrade.
    pub fn with_upgrade_flag(mut self, switched: Arc<AtomicBool>) -> Self {
        self.switched = Some(switched);
        self
    }

    /// Once the server has answered an upgrade, every byte is the tunnel's: stop checking
    /// (bytes already buffered after the upgrade request are the tunnel's too).
    fn note_upgrade(&mut self) {
        if !self.upgrade
            && self
                .switched
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Acquire))
        {
            self.upgrade = true;
            self.framing = Framing::Off;
            self.checked = self.end;
            self.reply = None;
        }
    }

    /// Forgets buffered bytes and releases the buffer.
    fn discard_buffer(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.checked = 0;
        self.end = 0;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        this.note_upgrade();
        loop {
            // Checked bytes first.
            if this.checked > this.start {
                let n = (this.checked - this.start).min(out.remaining());
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                if this.start == this.end {
                    this.start = 0;
                    this.checked = 0;
                    this.end = 0;
                    this.buf.clear();
                }
                return Poll::Ready(Ok(()));
            }
            if this.framing == Framing::Refused {
                // The server sees the connection end before the refused request.
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                if this.end > this.start {
                    // A partial head at the end: the server reports it itself.
                    this.checked = this.end;
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            // Nothing buffered: bodies of known length and unchecked streams go straight
            // into the server's buffer.
            if this.start == this.end {
                match this.framing {
                    Framing::Off => {
                        this.discard_buffer();
                        return Pin::new(&mut this.io).poll_read(cx, out);
                    }
                    Framing::Fixed(left) => {
                        let limit = usize::try_from(left)
                            .unwrap_or(usize::MAX)
                            .min(out.remaining());
                        let mut part = out.take(limit);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                        let n = part.filled().len();
                        // SAFETY: `part` borrows the unfilled part of `out`, and its first `n`
                        // bytes were just initialised by the read.
                        unsafe { out.assume_init(n) };
                        out.advance(n);
                        if n == 0 {
                            this.eof = true;
                        } else {
                            let rest = left - n as u64;
                            this.framing = if rest == 0 {
                                Framing::Head
                            } else {
                                Framing::Fixed(rest)
                            };
                        }
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
            }
            // Read into our buffer and check.
            if this.buf.capacity() == 0 {
                this.buf = Vec::with_capacity(READ_CHUNK);
            }
            if this.end == this.buf.capacity() {
                if this.start > 0 {
                    this.buf.copy_within(this.start..this.end, 0);
                    this.checked -= this.start;
                    this.end -= this.start;
                    this.start = 0;
                    this.buf.truncate(this.end);
                } else if this.buf.capacity() <= MAX_HEAD {
                    this.buf.reserve_exact(this.buf.capacity());
                } else {
                    this.framing = Framing::Off;
                    this.checked = this.end;
                    continue;
                }
            }
            let mut space = ReadBuf::uninit(this.buf.spare_capacity_mut());
            match Pin::new(&mut this.io).poll_read(cx, &mut space) {
                Poll::Pending => {
                    if this.start == this.end {
                        this.discard_buffer();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = space.filled().len();
                    if n == 0 {
                        this.eof = true;
                    } else {
                        // SAFETY: the read initialised the first `n` bytes of the spare
                        // capacity, which starts at `end` (the buffer's length).
                        unsafe { this.buf.set_len(this.end + n) };
                        this.end += n;
                        this.check();
                    }
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    this.closing = match this.reply {
                        Some(_) => Closing::Reply(0),
                        None => Closing::ShutWrite,
                    };
                }
                Closing::Reply(written) => {
                    let reply = this.reply.unwrap_or_default();
                    while *written < reply.len() {
                        match ready!(Pin::new(&mut this.io).poll_write(cx, &reply[*written..])) {
                            Ok(0) | Err(_) => {
                                this.closing = Closing::Done;
                                return Poll::Ready(Ok(()));
                            }
                            Ok(n) => *written += n,
                        }
                    }
                    this.closing = Closing::ShutWrite;
                }
                Closing::ShutWrite => {
                    let shut = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
                    if !this.upgrade {
                        this.discard_buffer();
                    }
                    this.closing = if shut.is_err() || this.eof || this.upgrade {
                        Closing::Done
                    } else {
                        let now = Instant::now();
                        Closing::Drain {
                            total: Box::pin(tokio::time::sleep_until(now + this.linger.0)),
                            idle: Box::pin(tokio::time::sleep_until(now + this.linger.1)),
                            discarded: 0,
                        }
                    };
                }
                Closing::Drain {
                    total,
                    idle,
                    discarded,
                } => {
                    let mut scratch = [0u8; 4096];
                    loop {
                        let mut space = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut this.io).poll_read(cx, &mut space) {
                            Poll::Ready(Ok(())) if !space.filled().is_empty() => {
                                *discarded += space.filled().len() as u64;
                                if *discarded >= LINGER_BYTES {
                                    break;
                                }
                                idle.as_mut().reset(Instant::now() + this.linger.1);
                            }
                            Poll::Ready(_) => break,
                            Poll::Pending => {
                                if total.as_mut().poll(cx).is_pending()
                                    && idle.as_mut().poll(cx).is_pending()
                                {
                                    return Poll::Pending;
                                }
                                break;
                            }
                        }
                    }
                    this.closing = Closing::Done;
                }
                Closing::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
