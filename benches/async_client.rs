//! End-to-end client for the async path: enqueues CALLS async calls over CONNECTIONS keep-alive
//! connections, each with an `X-Callback-Url` pointing at a receiver of its own, and waits until
//! every accepted call has been called back. It checks that each call was called back exactly
//! once (by `X-Call-Id`), and prints the rates.
//!
//! ```sh
//! cargo build --release --example async-client
//! ./target/release/examples/async-client http://127.0.0.1:8080/async-function/fast 20000 64
//! ```
//!
//! Last line, for scripts: `RESULT enqueue_rate=.. e2e_rate=.. duplicates=.. missing=..`.
//! Exits non-zero when a call was lost, called back twice, or the gateway refused one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

#[path = "support.rs"]
mod support;

use support::{Error, connect, receiver};

/// How long after the last expected callback the receiver keeps listening for repeats.
const REPEAT_WATCH: Duration = Duration::from_secs(2);

/// Longest wait for all callbacks.
const DEADLINE: Duration = Duration::from_secs(600);

/// Call ids the receiver has seen, with how often.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

/// The arguments: URL, calls, connections.
struct Args {
    addr: SocketAddr,
    path: String,
    calls: usize,
    connections: usize,
}

fn args() -> Result<Args, Error> {
    let usage = "usage: async-client http://HOST:PORT/async-function/NAME CALLS CONNECTIONS";
    let mut argv = std::env::args().skip(1);
    let url: http::Uri = argv.next().ok_or(usage)?.parse()?;
    let authority = url.authority().ok_or(usage)?.as_str();
    let addr = authority
        .parse()
        .map_err(|e| format!("{authority}: want IP:PORT ({e})"))?;
    let path = url.path().to_string();
    let calls = argv.next().ok_or(usage)?.parse()?;
    let connections: usize = argv.next().ok_or(usage)?.parse()?;
    Ok(Args {
        addr,
        path,
        calls,
        connections: connections.max(1),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = args()?;
    let seen: Seen = Arc::default();
    let distinct = Arc::new(AtomicUsize::new(0));
    let (counts, firsts) = (Arc::clone(&seen), Arc::clone(&distinct));
    let callback = format!(
        "http://{}/done",
        receiver(move |id| {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            let n = counts.entry(id.to_string()).or_default();
            *n += 1;
            if *n == 1 {
                firsts.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await?
    );

    let next = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (next, accepted) = (Arc::clone(&next), Arc::clone(&accepted));
        let (addr, path, callback, calls) =
            (args.addr, args.path.clone(), callback.clone(), args.calls);
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                let req = Request::post(path.as_str())
                    .header("x-callback-url", callback.as_str())
                    .body(Full::new(Bytes::from_static(b"hello world")))?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let id = resp
                    .headers()
                    .get("x-call-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp.into_body().collect().await?.to_bytes();
                match (status.as_u16(), id) {
                    (202, Some(id)) => {
                        accepted
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(id);
                    }
                    (code, _) => {
                        return Err::<(), Error>(
                            format!(
                                "enqueue answered {code}: {}",
                                String::from_utf8_lossy(&body).trim()
                            )
                            .into(),
                        );
                    }
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enqueued = started.elapsed();
    let total = accepted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    if total != args.calls {
        return Err(format!("{} calls accepted under {total} distinct ids", args.calls).into());
    }

    let deadline = started + DEADLINE;
    while distinct.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done = started.elapsed();
    // Repeats arrive after the first delivery; watch a little longer for them.
    tokio::time::sleep(REPEAT_WATCH).await;

    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    let accepted = accepted.lock().unwrap_or_else(PoisonError::into_inner);
    let missing = accepted.iter().filter(|id| !seen.contains_key(*id)).count();
    let duplicates: u32 = seen.values().map(|n| n.saturating_sub(1)).sum();
    let strangers = seen.keys().filter(|id| !accepted.contains(*id)).count();
    let enqueue_rate = total as f64 / enqueued.as_secs_f64();
    let e2e_rate = total as f64 / done.as_secs_f64();
    println!(
        "{total} calls accepted (202) in {:.2} s: {enqueue_rate:.0}/s; all called back after {:.2} s: {e2e_rate:.0} calls/s end to end",
        enqueued.as_secs_f64(),
        done.as_secs_f64()
    );
    println!(
        "callbacks: {} distinct, {duplicates} repeated, {missing} missing, {strangers} for calls never accepted",
        seen.len()
    );
    println!(
        "RESULT enqueue_rate={enqueue_rate:.0} e2e_rate={e2e_rate:.0} duplicates={duplicates} missing={missing}"
    );
    if missing > 0 || duplicates > 0 || strangers > 0 {
        return Err("not every call was called back exactly once".into());
    }
    Ok(())
}
