//! The fork-per-request modes and the supervision loop they share.
//!
//! [`supervise`] runs one handler to its end: it feeds stdin, drains stdout and stderr, watches
//! for the leader's exit and for the deadline, all at once. When the leader exits, the rest of its
//! group is killed and the pipes get a short grace to deliver what is already written; a process
//! that escaped the group and still holds a pipe is reported and no longer waited for, so the
//! response is never held hostage by a grandchild.

pub mod buffered;
pub mod http;
pub mod static_files;
pub mod streaming;

use std::future::Future;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::stdin::BodyError;
use crate::http::body::BoxError;
use crate::process::HandlerProcess;
use crate::process::lines::{LineLog, LineSplitter};
use crate::process::spill::SpillBuffer;

/// How long the pipes may stay open after the leader exited and its group was killed.
const LEAK_GRACE: Duration = Duration::from_millis(200);

/// Largest read from a handler pipe. Reads start at [`FIRST_READ`] and double each time a
/// read fills the space it was given, so small replies (the common case, and the one that
/// matters under high concurrency) keep only a few KiB per request.
const READ_CHUNK: usize = 64 * 1024;

/// Space offered to the first read from a handler pipe.
const FIRST_READ: usize = 4 * 1024;

/// A pipe's read buffer, growing with the output it sees.
struct ReadBuf {
    buf: BytesMut,
    want: usize,
}

impl ReadBuf {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            want: FIRST_READ,
        }
    }

    /// Reads once from an optional pipe into the buffer; pending forever when there is none.
    async fn read_from<R: AsyncRead + Unpin>(&mut self, pipe: &mut Option<R>) -> io::Result<usize> {
        let Some(p) = pipe else {
            return std::future::pending().await;
        };
        self.buf.reserve(self.want);
        let n = p.read_buf(&mut self.buf).await?;
        if n >= self.want && self.want < READ_CHUNK {
            self.want = (self.want * 2).min(READ_CHUNK);
        }
        Ok(n)
    }

    /// Takes what was read so far.
    fn split(&mut self) -> BytesMut {
        self.buf.split()
    }
}

/// Which limit a deadline enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `exec_timeout`: the handler's own run time.
    Exec(Duration),
    /// `write_timeout`: the time to produce and send the response.
    Write(Duration),
}

/// The earliest of the exec and write deadlines for a request started at `start`.
/// On a tie, `exec_timeout` wins (it names the handler's limit, which is the more precise story).
pub fn run_deadline(
    start: Instant,
    exec: Option<Duration>,
    write: Option<Duration>,
) -> Option<(Instant, Limit)> {
    match (exec, write) {
        (None, None) => None,
        (Some(e), None) => Some((start + e, Limit::Exec(e))),
        (None, Some(w)) => Some((start + w, Limit::Write(w))),
        (Some(e), Some(w)) if e <= w => Some((start + e, Limit::Exec(e))),
        (Some(_), Some(w)) => Some((start + w, Limit::Write(w))),
    }
}

/// How a supervised handler ended.
#[derive(Debug)]
pub enum Ended {
    /// The leader exited (and was reaped).
    Exited(ExitStatus),
    /// A deadline passed; the group was killed.
    TimedOut(Limit),
    /// The request body failed; the group was killed.
    Body(BodyError),
    /// Whoever consumes the output went away; the group was killed.
    ClientGone,
    /// Reading the pipes or waiting for the process failed; the group was killed.
    Io(io::Error),
}

/// Where stdout goes.
pub enum Stdout<'a> {
    /// Into a buffer (stderr too, when `combine` is set).
    Buffer {
        /// The buffer.
        buffer: &'a mut SpillBuffer,
        /// Also put stderr into the buffer instead of the log.
        combine: bool,
    },
    /// Through a channel, as it is produced.
    Stream {
        /// The response body channel.
        tx: &'a mpsc::Sender<Result<Bytes, BoxError>>,
        /// Set once a chunk was sent (the response has started).
        sent_any: &'a mut bool,
        /// When the response must be written by (chunk sends wait at most until then).
        write_deadline: Option<Instant>,
    },
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs `process` to its end. See the module docs.
pub async fn supervise(
    process: &mut HandlerProcess,
    feed: impl Future<Output = Result<(), BodyError>>,
    mut stdout_to: Stdout<'_>,
    stderr_log: LineLog,
    deadline: Option<(Instant, Limit)>,
) -> Ended {
    let mut stdout = process.take_stdout();
    let mut stderr = process.take_stderr();
    let mut out_buf = ReadBuf::new();
    let mut err_buf = ReadBuf::new();
    let mut splitter = LineSplitter::new(stderr_log.max_line);
    let mut emit = |line: &[u8]| stderr_log.emit(line);
    let mut feed = std::pin::pin!(feed);
    let mut feed_done = false;
    let mut exited = false;
    let mut leak_deadline: Option<Instant> = None;
    let (deadline_at, limit) = match deadline {
        Some((at, limit)) => (Some(at), Some(limit)),
        None => (None, None),
    };
    let gone_watch = match &stdout_to {
        Stdout::Stream { tx, .. } => Some((*tx).clone()),
        Stdout::Buffer { .. } => None,
    };
    let consumer_gone = async move {
        match gone_watch {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    };
    let mut consumer_gone = std::pin::pin!(consumer_gone);

    let ended = loop {
        if exited && stdout.is_none() && stderr.is_none() {
            break None;
        }
        tokio::select! {
            biased;
            _ = sleep_until(deadline_at) => {
                break limit.map(Ended::TimedOut);
            }
            _ = &mut consumer_gone => break Some(Ended::ClientGone),
            r = &mut feed, if !feed_done => {
                feed_done = true;
                if let Err(e) = r {
                    break Some(Ended::Body(e));
                }
            }
            r = process.exited(), if !exited => {
                if let Err(e) = r {
                    break Some(Ended::Io(e));
                }
                exited = true;
                // Nothing outlives its request: the rest of the group goes with the leader.
                process.kill_group();
                leak_deadline = Some(Instant::now() + LEAK_GRACE);
            }
            r = out_buf.read_from(&mut stdout), if stdout.is_some() => match r {
                Ok(0) | Err(_) => stdout = None,
                Ok(_) => {
                    let chunk = out_buf.split();
                    let sent = match &mut stdout_to {
                        Stdout::Buffer { buffer, .. } => buffer.write(&chunk).await.map_err(Ended::Io),
                        Stdout::Stream { tx, sent_any, write_deadline } => {
                            **sent_any = true;
                            send_chunk(tx, chunk.freeze(), *write_deadline, limit).await
                        }
                    };
                    if let Err(ended) = sent {
                        break Some(ended);
                    }
                }
            },
            r = err_buf.read_from(&mut stderr), if stderr.is_some() => match r {
                Ok(0) | Err(_) => stderr = None,
                Ok(_) => {
                    let chunk = err_buf.split();
                    match &mut stdout_to {
                        Stdout::Buffer { buffer, combine: true } => {
                            if let Err(e) = buffer.write(&chunk).await {
                                break Some(Ended::Io(e));
                            }
                        }
                        _ => splitter.push(&chunk, &mut emit),
                    }
                }
            },
            _ = sleep_until(leak_deadline), if leak_deadline.is_some() => {
                tracing::warn!(
                    pid = process.pid(),
                    "handler output is still held open by a process outside its group; not waiting for it"
                );
                break None;
            }
        }
    };
    splitter.finish(&mut emit);
    match ended {
        Some(ended) => {
            process.kill_group();
            ended
        }
        None => match process.reap().await {
            Ok(status) => Ended::Exited(status),
            Err(e) => Ended::Io(e),
        },
    }
}

/// Sends a chunk to the response channel, waiting at most until the write deadline.
async fn send_chunk(
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
    chunk: Bytes,
    write_deadline: Option<Instant>,
    limit: Option<Limit>,
) -> Result<(), Ended> {
    let send = tx.send(Ok(chunk));
    let result = match write_deadline {
        Some(d) => match tokio::time::timeout_at(d, send).await {
            Ok(r) => r,
            Err(_) => {
                return Err(limit.map_or(Ended::ClientGone, Ended::TimedOut));
            }
        },
        None => send.await,
    };
    result.map_err(|_| Ended::ClientGone)
}

/// The text Go gives an exit status (`exit status 1`, `signal: killed`), which OpenFaaS users
/// see in error bodies.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => "killed",
                libc::SIGTERM => "terminated",
                libc::SIGINT => "interrupt",
                libc::SIGHUP => "hangup",
                libc::SIGSEGV => "segmentation fault",
                libc::SIGABRT => "aborted",
                libc::SIGPIPE => "broken pipe",
                libc::SIGBUS => "bus error",
                libc::SIGFPE => "floating point exception",
                libc::SIGILL => "illegal instruction",
                _ => return format!("signal: {sig}"),
            };
            format!("signal: {name}")
        }
        None => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_descriptions_match_go() {
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "exit status 0");
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal: killed");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(15)),
            "signal: terminated"
        );
    }

    #[test]
    fn deadlines_pick_the_earliest_limit() {
        let t = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(run_deadline(t, None, None), None);
        assert_eq!(
            run_deadline(t, Some(s(5)), None),
            Some((t + s(5), Limit::Exec(s(5))))
        );
        assert_eq!(
            run_deadline(t, None, Some(s(5))),
            Some((t + s(5), Limit::Write(s(5))))
        );
        assert_eq!(
            run_deadline(t, Some(s(5)), Some(s(5))),
            Some((t + s(5), Limit::Exec(s(5))))
        );
        assert_eq!(
            run_deadline(t, Some(s(9)), Some(s(5))),
            Some((t + s(5), Limit::Write(s(5))))
        );
    }
}
