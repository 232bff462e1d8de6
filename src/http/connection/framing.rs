//! Following an HTTP/1.1 request stream byte by byte: where a head ends (parsed with
//! `httparse`, as hyper does), how long its body is (a length or chunks), and whether the head
//! carries both framings.

use super::MAX_HEADERS;

/// Where the client's byte stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Expecting a request head.
    Head,
    /// In a body of a known length: the bytes left.
    Fixed(u64),
    /// In a chunk-size line: the size so far, its digit count, and whether an extension began.
    ChunkSize { size: u64, digits: u8, ext: bool },
    /// In a chunk's data: the bytes left.
    ChunkData(u64),
    /// After a chunk's data, before its line end.
    ChunkEnd,
    /// In the trailer section: the length of the current line.
    Trailers(usize),
    /// Not checked any more: every byte goes to the server.
    Off,
    /// A head was refused: the server gets no more bytes.
    Refused,
}

/// What a look at a request head found.
pub(super) enum HeadScan {
    /// The head is not complete yet.
    Partial,
    /// The head is complete (`len` bytes) and the stream goes on as `next`.
    Complete { len: usize, next: Framing },
    /// Both `Content-Length` and `Transfer-Encoding`.
    Refuse,
    /// Something this check does not follow; the server will judge it.
    Unchecked,
}

/// The framing after one more byte of chunk-size line, chunk end or trailers.
pub(super) fn chunk_byte(state: Framing, byte: u8) -> Framing {
    /// Longest chunk-size line (extensions included) or trailer line followed.
    const MAX_LINE: usize = 4096;
    match state {
        Framing::ChunkSize { size, digits, ext } => match byte {
            b'\n' if digits == 0 => Framing::Off,
            b'\n' if size == 0 => Framing::Trailers(0),
            b'\n' => Framing::ChunkData(size),
            b'\r' => state,
            _ if !ext && byte.is_ascii_hexdigit() => {
                let digit = u64::from((byte as char).to_digit(16).unwrap_or(0));
                if digits >= 15 {
                    return Framing::Off;
                }
                Framing::ChunkSize {
                    size: size * 16 + digit,
                    digits: digits + 1,
                    ext,
                }
            }
            _ if digits == 0 && byte != b' ' && byte != b'\t' => Framing::Off,
            // Extensions are skipped byte by byte (nothing is kept); hyper bounds their length.
            _ => Framing::ChunkSize {
                size,
                digits,
                ext: true,
            },
        },
        Framing::ChunkEnd => match byte {
            b'\r' => state,
            b'\n' => Framing::ChunkSize {
                size: 0,
                digits: 0,
                ext: false,
            },
            _ => Framing::Off,
        },
        Framing::Trailers(len) => match byte {
            b'\n' if len == 0 => Framing::Head,
            b'\n' => Framing::Trailers(0),
            b'\r' => state,
            _ if len >= MAX_LINE => Framing::Off,
            _ => Framing::Trailers(len + 1),
        },
        other => other,
    }
}

/// Looks at the request head at the start of `data`.
pub(super) fn scan_head(data: &[u8]) -> HeadScan {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(data) {
        Ok(httparse::Status::Partial) => return HeadScan::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return HeadScan::Unchecked,
    };
    let mut length: Option<u64> = None;
    let mut has_length = false;
    let mut encoding: Option<bool> = None;

    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (parsed, length) {
                (None, _) => return HeadScan::Unchecked,
                (Some(n), Some(m)) if n != m => return HeadScan::Unchecked,
                (Some(n), _) => length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    if has_length && encoding.is_some() {
        return HeadScan::Refuse;
    }
    // An upgrade (or CONNECT) becomes a tunnel only when the server answers it, which the
    // server tells the socket (`GuardedIo::with_upgrade_flag`); until then, HTTP goes on.
    let next = match (encoding, length) {
        (Some(false), _) => Framing::Off,
        (Some(true), _) => Framing::ChunkSize {
            size: 0,
            digits: 0,
            ext: false,
        },
        (None, Some(n)) if n > 0 => Framing::Fixed(n),
        _ => Framing::Head,
    };
    HeadScan::Complete { len, next }
}
