//! The JetStream queue on a real three-node NATS cluster (three `nats-server -js` processes of
//! the test's own): two gateways and two separate workers given the cluster's server list,
//! streams with three replicas, async load with callbacks while the leaders of the request
//! stream and of the status bucket are SIGKILLed, then while a gateway and a worker are.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nix::sys::signal::Signal;

use crate::callback::Receiver;
use crate::gateway_jetstream::{enqueue, runs, stack};
use crate::harness::{
    Gateway, KillOnDrop, eventually, eventually_async, fgateway_bin, free_port, get,
};
use crate::nats_cluster::Cluster;

/// The lease: longer than an election, so that a call finished during one keeps its outcome.
const LEASE: &str = "20s";

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Call ids answered 202.
    accepted: Vec<String>,
    /// 503 answers (retried with the same call id).
    unavailable: usize,
    /// Requests that got no answer (the gateway was down; retried on the other one).
    unanswered: usize,
    /// Any other answer: status and body.
    other: Vec<(u16, String)>,
    /// The slowest answer.
    slowest: Duration,
}

/// Clients posting async calls, each with a call id of its own, to either gateway.
struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `n` clients; client `c` begins with gateway `c % 2` and moves to the other when
    /// its gateway does not answer.
    fn start(n: usize, gateways: [SocketAddr; 2], callback: String, phase: &str) -> Load {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..n)
            .map(|c| {
                let (seen, stop, url) = (Arc::clone(&seen), Arc::clone(&stop), callback.clone());
                let phase = phase.to_string();
                tokio::spawn(async move {
                    let mut at = c % 2;
                    let mut n = 0;
                    // A call not answered 202 is sent again with the same id (after the
                    // Retry-After a 503 gives).
                    let mut pending: Option<String> = None;
                    while !stop.load(Ordering::SeqCst) || pending.is_some() {
                        let id = pending.take().unwrap_or_else(|| {
                            n += 1;
                            format!("{phase}-{c}-{n}")
                        });
                        let asked = std::time::Instant::now();
                        let answer = try_post(gateways[at], &id, &url).await;
                        let took = asked.elapsed();
                        let mut pause = Duration::from_millis(50);
                        {
                            let mut seen = seen.lock().unwrap();
                            match answer {
                                Ok((202, _, _)) => {
                                    seen.slowest = seen.slowest.max(took);
                                    seen.accepted.push(id);
                                }
                                Ok((503, retry_after, _)) => {
                                    seen.slowest = seen.slowest.max(took);
                                    seen.unavailable += 1;
                                    pause = Duration::from_secs(retry_after.unwrap());
                                    pending = Some(id);
                                }
                                Ok((status, _, body)) => seen.other.push((status, body)),
                                Err(_) => {
                                    seen.unanswered += 1;
                                    at = 1 - at;
                                    pending = Some(id);
                                }
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            seen,
            stop,
            clients,
        }
    }

    /// How many calls were accepted so far.
    fn accepted(&self) -> usize {
        self.seen.lock().unwrap().accepted.len()
    }

    /// Waits until `more` calls have been accepted since now.
    async fn flowing(&self, more: usize, what: &str) {
        let before = self.accepted();
        eventually(what, Duration::from_secs(60), || {
            (self.accepted() >= before + more).then_some(())
        })
        .await;
    }

    /// Stops the clients (each finishes the call it is retrying) and returns what they saw.
    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// POSTs one async call with call id `id`: status, `Retry-After` seconds, body; an error when
/// the gateway did not answer.
async fn try_post(
    addr: SocketAddr,
    id: &str,
    callback: &str,
) -> Result<(u16, Option<u64>, String), String> {
    let req = Request::post("/async-function/record")
        .header("host", "localhost")
        .header("x-call-id", id)
        .header("x-callback-url", callback)
        .body(Full::new(Bytes::from(id.to_string())))
        .map_err(|e| e.to_string())?;
    let reply = crate::harness::try_send(addr, req).await?;
    let retry_after = reply.header("retry-after").and_then(|v| v.parse().ok());
    Ok((reply.status(), retry_after, reply.text()))
}

/// `fgateway up --no-worker` on the cluster, on `port`, its data in `data`.
async fn gateway(data: &Path, file: &Path, urls: &str, port: u16) -> Gateway {
    std::fs::create_dir_all(data).unwrap();
    let port = port.to_string();
    let args = [
        "-f",
        file.to_str().unwrap(),
        "--queue",
        urls,
        "--nats-replicas",
        "3",
        "--no-worker",
        "--port",
        &port,
    ];
    Gateway::start(data, &args, &[]).await
}

/// `fgateway worker` on the cluster, calling functions through the gateway on `port`.
fn worker(cwd: &Path, urls: &str, port: u16) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cwd.join(format!("worker-{port}.log")))
        .unwrap();
    KillOnDrop(
        Command::new(fgateway_bin())
            .current_dir(cwd)
            .args(["worker", "--gateway", &format!("http://127.0.0.1:{port}")])
            .args(["--queue", urls, "--nats-replicas", "3", "--lease", LEASE])
            .args(["--retry-backoff", "50ms", "--callback-backoff", "100ms"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits until every call in `accepted` was called back, then returns how often each ran.
async fn all_called_back(
    receiver: &Receiver,
    accepted: &HashSet<String>,
    dir: &Path,
    status_from: SocketAddr,
) -> HashMap<String, usize> {
    let missing = || {
        let got: HashSet<String> = receiver
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.header("x-call-id"))
            .collect();
        accepted.difference(&got).cloned().collect::<Vec<String>>()
    };
    let end = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = missing();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() > end {
            let mut states = Vec::new();
            for id in left.iter().take(5) {
                let r =
                    crate::harness::get(status_from, &format!("/async-function/status/{id}")).await;
                states.push(r.text());
            }
            panic!(
                "{} accepted calls not called back, for example: {states:#?}",
                left.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ran = runs(dir, "record");
    let never: Vec<&String> = accepted
        .iter()
        .filter(|id| !ran.contains_key(*id))
        .collect();
    assert!(never.is_empty(), "accepted calls that never ran: {never:?}");
    ran
}

/// Checks what the load saw: only 202 and 503, none slower than the enqueue bound (5 s) plus
/// a second for the request's way through a loaded machine.
fn answered_in_time(seen: &Seen, phase: &str) {
    assert!(
        seen.other.is_empty(),
        "{phase}: answers other than 202/503: {:?}",
        &seen.other[..seen.other.len().min(5)]
    );
    assert!(
        seen.slowest < Duration::from_secs(6),
        "{phase}: an enqueue took {:?}",
        seen.slowest
    );
}

/// Every call accepted while the leaders of the request stream, then of the status bucket, are
/// SIGKILLed (and restarted) runs once and is called back; nothing but 202 and 503 (with
/// `Retry-After`, retried as it says) is answered, none later than the enqueue bound. Then
/// every call accepted while a gateway and a worker are SIGKILLed and restarted runs and is
/// called back. The streams come back to three current replicas.
#[tokio::test]
async fn accepted_calls_survive_leader_gateway_and_worker_loss() {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("dir {}", dir.path().display());
    let mut cluster = Cluster::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let urls = cluster.urls();
    let ports = [free_port(), free_port()];
    let mut a = gateway(&dir.path().join("a"), &file, &urls, ports[0]).await;
    let b = gateway(&dir.path().join("b"), &file, &urls, ports[1]).await;
    let mut w1 = worker(dir.path(), &urls, ports[0]);
    let _w2 = worker(dir.path(), &urls, ports[1]);
    cluster.all_current().await;
    let receiver = Receiver::start(0).await;

    // Leader changes: a pause, no error, no call run twice.
    let load = Load::start(8, [a.addr, b.addr], receiver.url(), "leaders");
    let mut killed = Vec::new();
    for stream in ["faas-request", "KV_faas-request-calls"] {
        load.flowing(30, "calls flowing").await;
        let leader = cluster.leader(stream).await;
        eprintln!(
            "killing n{leader}, leader of {stream}, after {} calls",
            load.accepted()
        );
        cluster.kill(leader).await;
        killed.push(leader);
        load.flowing(50, "calls accepted without that node").await;
        cluster.restart(leader).await;
        cluster.all_current().await;
    }
    let seen = load.stop().await;
    answered_in_time(&seen, "leaders");
    assert_eq!(seen.unanswered, 0, "a gateway did not answer");
    let accepted: HashSet<String> = seen.accepted.iter().cloned().collect();
    let ran = all_called_back(&receiver, &accepted, dir.path(), b.addr).await;
    let twice: Vec<&String> = accepted.iter().filter(|id| ran[*id] > 1).collect();
    eprintln!(
        "leaders: {} calls accepted, {} answers 503, {} ran more than once, slowest answer {:?}",
        accepted.len(),
        seen.unavailable,
        twice.len(),
        seen.slowest
    );
    assert!(
        twice.is_empty(),
        "calls run again after a leader change: {twice:?}"
    );
    // A node that was down while messages were removed may keep them (NATS 2.9); leading the
    // request stream, it must not make the queue look busy.
    for &node in &killed {
        cluster.make_leader("faas-request", node).await;
        eventually_async(
            "an empty queue's stats with a restarted node leading",
            Duration::from_secs(30),
            || async {
                let stats: serde_json::Value =
                    serde_json::from_str(&get(b.addr, "/system/async/stats").await.text()).ok()?;
                (stats["depth"] == 0 && stats["oldestAge"] == 0.0).then_some(())
            },
        )
        .await;
    }

    // A gateway and a worker SIGKILLed mid-traffic and restarted: nothing accepted is lost (a
    // call the worker was running when it died runs again, after its lease).
    let load = Load::start(8, [a.addr, b.addr], receiver.url(), "processes");
    load.flowing(30, "calls flowing").await;
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(10)).await;
    load.flowing(30, "calls accepted by the other gateway")
        .await;
    let a_again = gateway(&dir.path().join("a"), &file, &urls, ports[0]).await;
    load.flowing(30, "calls flowing again").await;
    crate::harness::signal_child(&w1.0, Signal::SIGKILL);
    let _ = w1.0.wait();
    load.flowing(30, "calls accepted without that worker").await;
    w1 = worker(dir.path(), &urls, ports[0]);
    load.flowing(30, "calls flowing with the worker back").await;
    let seen = load.stop().await;
    answered_in_time(&seen, "processes");
    let accepted: HashSet<String> = seen.accepted.iter().cloned().collect();
    let ran = all_called_back(&receiver, &accepted, dir.path(), b.addr).await;
    eprintln!(
        "processes: {} calls accepted, {} answers 503, {} unanswered (gateway down), {} ran more than once",
        accepted.len(),
        seen.unavailable,
        seen.unanswered,
        accepted.iter().filter(|id| ran[*id] > 1).count(),
    );
    cluster.all_current().await;
    drop((w1, a_again, b));
}

/// A gateway started beside a cluster that is still starting (one node of three up, so no
/// JetStream quorum: its requests time out) waits for the cluster instead of exiting, and
/// takes calls once the other nodes are up, within its --nats-connect-timeout.
#[tokio::test]
async fn a_gateway_waits_for_a_cluster_still_starting() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::first(dir.path()).await;
    let urls = cluster.urls();
    let file = stack(dir.path());
    let data = dir.path().join("gw");
    let starting = tokio::spawn(async move {
        std::fs::create_dir_all(&data).unwrap();
        let args = [
            "-f",
            file.to_str().unwrap(),
            "--queue",
            &urls,
            "--nats-replicas",
            "3",
            "--nats-connect-timeout",
            "2m",
        ];
        Gateway::start_within(&data, &args, Duration::from_secs(150)).await
    });
    // Connected, and setting up the streams, which the lone node cannot take.
    eventually_async("the gateway connected", Duration::from_secs(20), || async {
        (cluster.clients(0).await > 0).then_some(())
    })
    .await;
    cluster.start_rest().await;
    let gw = starting.await.unwrap();
    assert!(
        gw.log.text().contains("JetStream not ready yet; retrying"),
        "{}",
        gw.log.text()
    );
    let hook = Receiver::start(0).await;
    let r = enqueue(&gw, "record", "after the wait".into(), &hook.url()).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually("the call called back", Duration::from_secs(60), || {
        (!hook.all().is_empty()).then_some(())
    })
    .await;
}
