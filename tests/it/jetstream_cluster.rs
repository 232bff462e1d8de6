//! The JetStream queue on a real three-node NATS cluster (three `nats-server -js` processes of
//! the test's own): the gateway given the cluster's server list, streams with three replicas,
//! and the leaders of the request stream and of the status bucket SIGKILLed under async load
//! with callbacks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::callback::Receiver;
use crate::gateway_jetstream::{runs, stack};
use crate::harness::{Gateway, eventually, send};
use crate::nats_cluster::Cluster;

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Call ids answered 202.
    accepted: Vec<String>,
    /// 503 answers (retried).
    unavailable: usize,
    /// Any other answer: status and body.
    other: Vec<(u16, String)>,
    /// The slowest answer.
    slowest: Duration,
}

/// Every call accepted while the leaders of the request stream, then of the status bucket, are
/// SIGKILLed (and restarted) is run and called back; nothing but 202 and 503 (with
/// `Retry-After` and the call id, retried as it says) is answered, none later than the enqueue
/// bound; the streams come back to three current replicas.
#[tokio::test]
async fn every_accepted_call_survives_the_loss_of_stream_and_bucket_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let urls = cluster.urls();
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &[
            "-f",
            file.to_str().unwrap(),
            "--queue",
            &urls,
            "--nats-replicas",
            "3",
            "--lease",
            "20s",
            "--retry-backoff",
            "50ms",
            "--callback-backoff",
            "100ms",
        ],
        &[],
    )
    .await;
    cluster.all_current().await;
    let receiver = Receiver::start(0).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (seen, stop, addr, url) = (
            Arc::clone(&seen),
            Arc::clone(&stop),
            gw.addr,
            receiver.url(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            // A call answered 503 is sent again, as the answer says: after Retry-After, with
            // the call id it gave.
            let mut again: Option<String> = None;
            while !stop.load(Ordering::SeqCst) || again.is_some() {
                n += 1;
                let mut req =
                    Request::post("/async-function/record").header("x-callback-url", url.as_str());
                if let Some(id) = &again {
                    req = req.header("x-call-id", id.as_str());
                }
                let asked = std::time::Instant::now();
                let r = send(
                    addr,
                    req.body(Full::new(Bytes::from(format!("{c}-{n}"))))
                        .unwrap(),
                )
                .await;
                let took = asked.elapsed();
                let mut pause = Duration::from_millis(50);
                {
                    let mut seen = seen.lock().unwrap();
                    seen.slowest = seen.slowest.max(took);
                    match r.status() {
                        202 => {
                            seen.accepted.push(r.header("x-call-id").unwrap());
                            again = None;
                        }
                        503 => {
                            seen.unavailable += 1;
                            let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
                            pause = Duration::from_secs(wait);
                            again = Some(r.header("x-call-id").unwrap());
                        }
                        other => seen.other.push((other, r.text())),
                    }
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    let accepted = || seen.lock().unwrap().accepted.len();

    for stream in ["faas-request", "KV_faas-request-calls"] {
        let before = accepted();
        eventually("calls flowing", Duration::from_secs(60), || {
            (accepted() >= before + 30).then_some(())
        })
        .await;
        let leader = cluster.leader(stream).await;
        eprintln!(
            "killing n{leader}, leader of {stream}, after {} calls",
            accepted()
        );
        cluster.kill(leader).await;
        let before = accepted();
        eventually(
            "calls accepted without that node",
            Duration::from_secs(60),
            || (accepted() >= before + 50).then_some(()),
        )
        .await;
        cluster.restart(leader).await;
        cluster.all_current().await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.other.is_empty(),
        "answers other than 202/503: {:?}",
        &seen.other[..seen.other.len().min(5)]
    );
    let accepted: HashSet<String> = seen.accepted.iter().cloned().collect();
    eventually(
        "every accepted call called back",
        Duration::from_secs(120),
        || {
            let got: HashSet<String> = receiver
                .got
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.header("x-call-id"))
                .collect();
            accepted.is_subset(&got).then_some(())
        },
    )
    .await;
    let ran = runs(dir.path(), "record");
    let twice = accepted
        .iter()
        .filter(|id| ran.get(*id).copied().unwrap_or(0) > 1)
        .count();
    assert!(
        accepted.iter().all(|id| ran.contains_key(id)),
        "an accepted call never ran"
    );
    eprintln!(
        "cluster: {} calls accepted, {} answers 503, {} ran more than once, slowest answer {:?}",
        accepted.len(),
        seen.unavailable,
        twice,
        seen.slowest
    );
    // Leader changes cost a pause of at most the enqueue bound (5 s), then a 503 to retry.
    assert!(
        seen.slowest < Duration::from_secs(7),
        "an enqueue took {:?}",
        seen.slowest
    );
    cluster.all_current().await;
}
