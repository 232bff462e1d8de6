//! Content-Type sniffing that matches Go's `net/http.DetectContentType`.
//!
//! OpenFaaS's classic watchdog is written in Go. When a function's response has
//! no Content-Type, Go's HTTP server sets one by looking at the first bytes of
//! the body, using the rules of the WHATWG MIME Sniffing standard
//! (<https://mimesniff.spec.whatwg.org/>) as Go implements them. Clients of a
//! classic-mode function may rely on those exact header values, so this module
//! reproduces Go's answer byte for byte: the same signatures, checked in the
//! same order, with the same resulting strings (including the
//! `; charset=...` parameters), looking at no more than [`SNIFF_LEN`] bytes.
//!
//! Go does not detect JSON, SVG or plain XML without a `<?xml` prolog: such
//! bodies come out as `text/plain; charset=utf-8`, and so they do here.
//!
//! Go's server never sniffs an empty body (it sends no Content-Type at all),
//! nor one that already has a Content-Type or a non-empty Content-Encoding;
//! those decisions belong to the caller. [`sniff`] itself answers
//! `text/plain; charset=utf-8` for empty input, exactly as Go's function does.

/// The most bytes of a body that [`sniff`] looks at; anything after this is ignored.
pub const SNIFF_LEN: usize = 512;

/// The type reported for HTML documents.
const HTML: &str = "text/html; charset=utf-8";

/// The type reported for text without a byte order mark, and for empty input.
const TEXT_UTF8: &str = "text/plain; charset=utf-8";

/// The type reported when no rule matches.
const OCTET_STREAM: &str = "application/octet-stream";

/// One entry of the signature table that [`sniff`] walks in order.
enum Rule {
    /// An HTML tag, given in upper case, looked for after any leading
    /// whitespace. ASCII letters match in either case; every other byte must be
    /// equal. The byte right after the tag must be a tag-terminating byte
    /// (a space or `>`), so the input must be at least one byte longer than the
    /// tag. Matches yield `text/html; charset=utf-8`.
    Html(&'static [u8]),
    /// A byte pattern compared after masking: input byte `i` ANDed with
    /// `mask[i]` must equal `pattern[i]`. With `skip_ws`, the comparison starts
    /// after any leading whitespace; otherwise at the very first byte.
    Masked {
        /// The expected bytes, already masked.
        pattern: &'static [u8],
        /// The bits of each input byte that take part in the comparison.
        mask: &'static [u8],
        /// Whether leading whitespace is skipped before comparing.
        skip_ws: bool,
        /// The type reported on a match.
        mime: &'static str,
    },
    /// A literal prefix that must sit at the very start of the input.
    Exact {
        /// The bytes the input must start with.
        prefix: &'static [u8],
        /// The type reported on a match.
        mime: &'static str,
    },
    /// The ISO base media file format check for `video/mp4`: a leading `ftyp`
    /// box whose major brand or one of whose compatible brands starts with
    /// `mp4`.
    Mp4,
    /// The last resort: `text/plain; charset=utf-8` unless a binary data byte
    /// appears after the leading whitespace.
    Text,
}

/// Builds a [`Rule::Masked`], refusing at compile time a mask whose length
/// differs from its pattern's.
const fn masked(
    pattern: &'static [u8],
    mask: &'static [u8],
    skip_ws: bool,
    mime: &'static str,
) -> Rule {
    assert!(
        pattern.len() == mask.len(),
        "pattern and mask lengths differ"
    );
    Rule::Masked {
        pattern,
        mask,
        skip_ws,
        mime,
    }
}

/// Builds a [`Rule::Exact`].
const fn exact(prefix: &'static [u8], mime: &'static str) -> Rule {
    Rule::Exact { prefix, mime }
}

/// Embedded OpenType (EOT) pattern: 34 ignored bytes, then the magic `LP`.
const EOT_PATTERN: [u8; 36] = {
    let mut bytes = [0u8; 36];
    bytes[34] = b'L';
    bytes[35] = b'P';
    bytes
};

/// Mask for [`EOT_PATTERN`]: only the last two bytes are compared.
const EOT_MASK: [u8; 36] = {
    let mut bytes = [0u8; 36];
    bytes[34] = 0xFF;
    bytes[35] = 0xFF;
    bytes
};

/// Mask for the RIFF-based formats: the four-byte chunk size is ignored.
const RIFF_MASK: &[u8] = b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF";

/// Every signature, in the order Go's `net/http` checks them; the first match wins.
const RULES: &[Rule] = &[
    // HTML documents (leading whitespace allowed, case-insensitive tags).
    Rule::Html(b"<!DOCTYPE HTML"),
    Rule::Html(b"<HTML"),
    Rule::Html(b"<HEAD"),
    Rule::Html(b"<SCRIPT"),
    Rule::Html(b"<IFRAME"),
    Rule::Html(b"<H1"),
    Rule::Html(b"<DIV"),
    Rule::Html(b"<FONT"),
    Rule::Html(b"<TABLE"),
    Rule::Html(b"<A"),
    Rule::Html(b"<STYLE"),
    Rule::Html(b"<TITLE"),
    Rule::Html(b"<B"),
    Rule::Html(b"<BODY"),
    Rule::Html(b"<BR"),
    Rule::Html(b"<P"),
    Rule::Html(b"<!--"),
    // XML prolog (leading whitespace allowed, case-sensitive).
    masked(
        b"<?xml",
        b"\xFF\xFF\xFF\xFF\xFF",
        true,
        "text/xml; charset=utf-8",
    ),
    // Documents.
    exact(b"%PDF-", "application/pdf"),
    exact(b"%!PS-Adobe-", "application/postscript"),
    // Byte order marks; the bytes after the mark are not looked at, but must exist.
    masked(
        b"\xFE\xFF\x00\x00",
        b"\xFF\xFF\x00\x00",
        false,
        "text/plain; charset=utf-16be",
    ),
    masked(
        b"\xFF\xFE\x00\x00",
        b"\xFF\xFF\x00\x00",
        false,
        "text/plain; charset=utf-16le",
    ),
    masked(b"\xEF\xBB\xBF\x00", b"\xFF\xFF\xFF\x00", false, TEXT_UTF8),
    // Images.
    exact(b"\x00\x00\x01\x00", "image/x-icon"),
    exact(b"\x00\x00\x02\x00", "image/x-icon"),
    exact(b"BM", "image/bmp"),
    exact(b"GIF87a", "image/gif"),
    exact(b"GIF89a", "image/gif"),
    masked(
        b"RIFF\x00\x00\x00\x00WEBPVP",
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF\xFF\xFF",
        false,
        "image/webp",
    ),
    exact(b"\x89PNG\r\n\x1A\n", "image/png"),
    exact(b"\xFF\xD8\xFF", "image/jpeg"),
    // Audio and video.
    masked(b"FORM\x00\x00\x00\x00AIFF", RIFF_MASK, false, "audio/aiff"),
    masked(b"ID3", b"\xFF\xFF\xFF", false, "audio/mpeg"),
    masked(
        b"OggS\x00",
        b"\xFF\xFF\xFF\xFF\xFF",
        false,
        "application/ogg",
    ),
    masked(
        b"MThd\x00\x00\x00\x06",
        b"\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF",
        false,
        "audio/midi",
    ),
    masked(b"RIFF\x00\x00\x00\x00AVI ", RIFF_MASK, false, "video/avi"),
    masked(b"RIFF\x00\x00\x00\x00WAVE", RIFF_MASK, false, "audio/wave"),
    Rule::Mp4,
    exact(b"\x1A\x45\xDF\xA3", "video/webm"),
    // Fonts.
    masked(
        &EOT_PATTERN,
        &EOT_MASK,
        false,
        "application/vnd.ms-fontobject",
    ),
    exact(b"\x00\x01\x00\x00", "font/ttf"),
    exact(b"OTTO", "font/otf"),
    exact(b"ttcf", "font/collection"),
    exact(b"wOFF", "font/woff"),
    exact(b"wOF2", "font/woff2"),
    // Archives.
    exact(b"\x1F\x8B\x08", "application/x-gzip"),
    exact(b"PK\x03\x04", "application/zip"),
    exact(b"Rar!\x1A\x07\x00", "application/x-rar-compressed"),
    exact(b"Rar!\x1A\x07\x01\x00", "application/x-rar-compressed"),
    // WebAssembly.
    exact(b"\x00asm", "application/wasm"),
    // Must stay last: it decides between text and the binary fallback.
    Rule::Text,
];

/// Guesses the Content-Type of a body from its first bytes, returning exactly
/// what Go's `net/http.DetectContentType` returns for the same bytes.
///
/// At most the first [`SNIFF_LEN`] (512) bytes are considered. The answer is
/// always a valid MIME type: `application/octet-stream` when nothing more
/// specific fits, and `text/plain; charset=utf-8` for empty input.
///
/// For example, `<html><body>hi</body></html>` gives
/// `text/html; charset=utf-8`, `{"ok":true}` gives `text/plain; charset=utf-8`
/// (Go does not detect JSON), a PNG header gives `image/png`, and the bytes
/// `0x00 0x01 0x02` give `application/octet-stream`.
pub fn sniff(data: &[u8]) -> &'static str {
    let data = &data[..data.len().min(SNIFF_LEN)];
    let first_non_ws = data
        .iter()
        .position(|&b| !is_whitespace(b))
        .unwrap_or(data.len());
    RULES
        .iter()
        .find_map(|rule| rule.check(data, first_non_ws))
        .unwrap_or(OCTET_STREAM)
}

impl Rule {
    /// Returns this rule's type if `data` matches it. `data` is already cut to
    /// [`SNIFF_LEN`] bytes and `first_non_ws` is the index of its first
    /// non-whitespace byte (its length if it is all whitespace).
    fn check(&self, data: &[u8], first_non_ws: usize) -> Option<&'static str> {
        match *self {
            Rule::Html(tag) => html_matches(&data[first_non_ws..], tag).then_some(HTML),
            Rule::Masked {
                pattern,
                mask,
                skip_ws,
                mime,
            } => {
                let data = if skip_ws { &data[first_non_ws..] } else { data };
                masked_matches(data, pattern, mask).then_some(mime)
            }
            Rule::Exact { prefix, mime } => data.starts_with(prefix).then_some(mime),
            Rule::Mp4 => is_mp4(data).then_some("video/mp4"),
            Rule::Text => {
                (!data[first_non_ws..].iter().any(|&b| is_binary(b))).then_some(TEXT_UTF8)
            }
        }
    }
}

/// Whether `data` starts with `tag` (ASCII letters in any case) followed by a
/// tag-terminating byte.
fn html_matches(data: &[u8], tag: &[u8]) -> bool {
    match (data.get(..tag.len()), data.get(tag.len())) {
        (Some(head), Some(&next)) => head.eq_ignore_ascii_case(tag) && is_tag_terminator(next),
        _ => false,
    }
}

/// Whether the first `pattern.len()` bytes of `data`, masked, equal `pattern`.
fn masked_matches(data: &[u8], pattern: &[u8], mask: &[u8]) -> bool {
    data.len() >= pattern.len()
        && data
            .iter()
            .zip(mask)
            .zip(pattern)
            .all(|((&byte, &bits), &want)| byte & bits == want)
}

/// Whether `data` opens with an `ftyp` box naming an `mp4` brand.
///
/// The box's declared size (big-endian, first four bytes) must be a multiple
/// of four and fit inside `data`. Within the box, the major brand (offset 8)
/// and each compatible brand (offsets 16, 20, ...) are checked for a leading
/// `mp4`; the minor version at offset 12 is skipped.
fn is_mp4(data: &[u8]) -> bool {
    let Some(&[a, b, c, d]) = data.get(..4) else {
        return false;
    };
    if data.len() < 12 {
        return false;
    }
    let box_size = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    if box_size > data.len() || box_size % 4 != 0 || &data[4..8] != b"ftyp" {
        return false;
    }
    (8..box_size)
        .step_by(4)
        .filter(|&offset| offset != 12)
        .any(|offset| data[offset..].starts_with(b"mp4"))
}

/// Whitespace bytes as the standard defines them: tab, line feed, form feed,
/// carriage return and space (not vertical tab).
fn is_whitespace(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0C | b'\r' | b' ')
}

/// Bytes that may end an HTML tag name for sniffing: a space or `>`.
fn is_tag_terminator(b: u8) -> bool {
    matches!(b, b' ' | b'>')
}

/// Control bytes that mark data as binary: everything below 0x20 except tab,
/// line feed, form feed, carriage return and escape.
fn is_binary(b: u8) -> bool {
    matches!(b, 0x00..=0x08 | 0x0B | 0x0E..=0x1A | 0x1C..=0x1F)
}

#[cfg(test)]
mod tests;
