//! An output buffer that stays in memory up to a threshold and spills to a temporary file past
//! it, so buffering a handler's output never costs memory in proportion to its size.

use std::io;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes kept in memory before the buffer moves to a file.
pub const DEFAULT_SPILL_THRESHOLD: usize = 1024 * 1024;

/// Where a finished buffer's bytes are.
#[derive(Debug)]
pub enum Spilled {
    /// All in memory.
    Memory(Bytes),
    /// In an unlinked temporary file, rewound to its start.
    File {
        /// The file, positioned at 0.
        file: tokio::fs::File,
        /// How many bytes it holds.
        len: u64,
    },
}

impl Spilled {
    /// The number of bytes held.
    pub fn len(&self) -> u64 {
        match self {
            Spilled::Memory(b) => b.len() as u64,
            Spilled::File { len, .. } => *len,
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `n` bytes from the start; a file is left positioned at its start again.
    pub async fn head(&mut self, n: usize) -> io::Result<Bytes> {
        match self {
            Spilled::Memory(b) => Ok(b.slice(..b.len().min(n))),
            Spilled::File { file, .. } => {
                let mut head = vec![0; n];
                let mut filled = 0;
                while filled < n {
                    let read = file.read(&mut head[filled..]).await?;
                    if read == 0 {
                        break;
                    }
                    filled += read;
                }
                head.truncate(filled);
                file.seek(io::SeekFrom::Start(0)).await?;
                Ok(head.into())
            }
        }
    }
}

/// Collects bytes, in memory up to `threshold`, then in a temporary file in `dir`.
#[derive(Debug)]
pub struct SpillBuffer {
    /// Bytes held in memory (until the threshold is crossed).
    memory: BytesMut,
    /// The temporary file, once the threshold was crossed.
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    /// Bytes written in all.
    len: u64,
    /// How much may stay in memory.
    threshold: usize,
    /// Where the temporary file is created.
    dir: PathBuf,
}

impl SpillBuffer {
    /// An empty buffer.
    pub fn new(threshold: usize, dir: PathBuf) -> Self {
        SpillBuffer {
            memory: BytesMut::new(),
            file: None,
            len: 0,
            threshold,
            dir,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.len += data.len() as u64;
        if let Some(file) = &mut self.file {
            return file.write_all(data).await;
        }
        if self.memory.len() + data.len() <= self.threshold {
            self.memory.extend_from_slice(data);
            return Ok(());
        }
        let dir = self.dir.clone();
        let std_file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
            .await
            .map_err(io::Error::other)??;
        let mut file =
            tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(std_file));
        file.write_all(&self.memory).await?;
        file.write_all(data).await?;
        self.memory = BytesMut::new();
        self.file = Some(file);
        Ok(())
    }

    /// Finishes writing and returns the bytes for reading.
    pub async fn finish(self) -> io::Result<Spilled> {
        match self.file {
            None => Ok(Spilled::Memory(self.memory.freeze())),
            Some(mut writer) => {
                writer.flush().await?;
                let mut file = writer.into_inner();
                file.rewind().await?;
                Ok(Spilled::File {
                    file,
                    len: self.len,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn stays_in_memory_below_the_threshold() -> io::Result<()> {
        let mut b = SpillBuffer::new(8, std::env::temp_dir());
        b.write(b"abcd").await?;
        b.write(b"efgh").await?;
        match b.finish().await? {
            Spilled::Memory(bytes) => assert_eq!(&bytes[..], b"abcdefgh"),
            other => panic!("expected memory, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn spills_to_a_file_past_the_threshold() -> io::Result<()> {
        let mut b = SpillBuffer::new(8, std::env::temp_dir());
        b.write(b"abcd").await?;
        b.write(b"efghij").await?;
        b.write(b"kl").await?;
        assert_eq!(b.len(), 12);
        match b.finish().await? {
            Spilled::File { mut file, len } => {
                assert_eq!(len, 12);
                let mut s = String::new();
                file.read_to_string(&mut s).await?;
                assert_eq!(s, "abcdefghijkl");
            }
            other => panic!("expected a file, got {other:?}"),
        }
        Ok(())
    }
}
