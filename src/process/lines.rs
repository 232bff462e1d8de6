//! Forwarding a handler's log stream line by line.
//!
//! Lines longer than the configured limit are split, never buffered without bound, and the pipe is
//! always drained so a chatty handler can never block on a full pipe.

use std::io::Write;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How forwarded lines are written.
#[derive(Debug, Clone)]
pub struct LineLog {
    /// Which stream the lines came from ("stderr", "stdout").
    pub stream: &'static str,
    /// Log through `tracing` with the stream named; when false, write the raw line to our stderr.
    pub prefix: bool,
    /// A call id to attach to each line.
    pub call_id: Option<String>,
    /// Longest line before it is split.
    pub max_line: usize,
}

impl LineLog {
    /// Emits one line (without its newline).
    pub fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if self.prefix {
            // of-watchdog's wording: `stderr: <line>`.
            match &self.call_id {
                Some(call_id) => {
                    tracing::info!(target: "function", call_id = %call_id, "{}: {text}", self.stream)
                }
                None => tracing::info!(target: "function", "{}: {text}", self.stream),
            }
        } else {
            let mut err = std::io::stderr().lock();
            let _ = match &self.call_id {
                Some(call_id) => writeln!(err, "{call_id} {text}"),
                None => writeln!(err, "{text}"),
            };
        }
    }
}

/// Splits a byte stream into lines of at most `max_line` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    /// The partial line carried between chunks.
    pending: Vec<u8>,
    /// Longest line before it is split.
    max_line: usize,
}

impl LineSplitter {
    /// A splitter for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// Feeds a chunk, calling `emit` for every complete (or over-long) line.
    pub fn push(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8])) {
        while !chunk.is_empty() {
            let room = self.max_line - self.pending.len();
            let window = &chunk[..chunk.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&window[..i]);
                    emit(trim_cr(&self.pending));
                    self.pending.clear();
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(window);
                    chunk = &chunk[window.len()..];
                    if self.pending.len() == self.max_line {
                        emit(&self.pending);
                        self.pending.clear();
                    }
                }
            }
        }
    }

    /// Emits what is left at end of stream.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(trim_cr(&self.pending));
            self.pending.clear();
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads `reader` to its end, forwarding each line to `log`.
pub async fn forward(mut reader: impl AsyncRead + Unpin, log: LineLog) {
    let mut splitter = LineSplitter::new(log.max_line);
    let mut buf = vec![0u8; 16 * 1024];
    let mut emit = |line: &[u8]| log.emit(line);
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.push(&buf[..n], &mut emit),
        }
    }
    splitter.finish(&mut emit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        let mut emit = |l: &[u8]| out.push(String::from_utf8_lossy(l).into_owned());
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        assert_eq!(split(100, &[b"a\nb", b"c\r\nd"]), vec!["a", "bc", "d"]);
        assert_eq!(split(100, &[b"\n\n"]), vec!["", ""]);
        assert_eq!(split(100, &[b""]), Vec::<String>::new());
    }

    #[test]
    fn long_lines_are_split_at_the_limit() {
        assert_eq!(
            split(4, &[b"abcdefghij\nxy"]),
            vec!["abcd", "efgh", "ij", "xy"]
        );
        assert_eq!(split(4, &[b"ab", b"cd", b"ef\n"]), vec!["abcd", "ef"]);
        assert_eq!(split(4, &[b"abcd\n"]), vec!["abcd", ""]);
    }
}
