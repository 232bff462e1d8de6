//! The JetStream queue with real parts: a `nats-server -js` of the test's own, gateways and
//! separate worker processes sharing it, functions run by the local provider, and a real
//! callback receiver.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nix::sys::signal::Signal;

use crate::callback::Receiver;
use crate::harness::{
    DEADLINE, Gateway, KillOnDrop, Nats, Reply, eventually, fgateway_bin, get, send,
};

/// Quick leases and retries, so tests wait on seconds, not production defaults.
const FAST: &[&str] = &[
    "--lease",
    "2s",
    "--retry-backoff",
    "50ms",
    "--retry-backoff-max",
    "200ms",
    "--callback-backoff",
    "100ms",
    "--callback-backoff-max",
    "300ms",
];

/// Functions that append their call id to `DIR/<name>.runs` each time they run.
pub(crate) fn stack(dir: &Path) -> PathBuf {
    let d = dir.display();
    let yaml = format!(
        r#"
functions:
  record:
    fprocess: sh -c 'echo "$Http_X_Call_Id" >> {d}/record.runs; cat'
  flaky:
    fprocess: sh -c 'echo "$Http_X_Call_Id" >> {d}/flaky.runs; if [ -e {d}/fixed ]; then echo fixed; else echo broken; exit 1; fi'
  slow:
    fprocess: sh -c 'echo "$Http_X_Call_Id" >> {d}/slow.runs; sleep 3; echo slept'
    environment:
      exec_timeout: 30s
"#
    );
    let path = dir.join("stack.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Call ids in a function's runs file, with how often each ran.
pub(crate) fn runs(dir: &Path, function: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let text = std::fs::read_to_string(dir.join(format!("{function}.runs"))).unwrap_or_default();
    for line in text.lines() {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

/// `fgateway up` on the JetStream queue, its data in `data`.
async fn gateway(data: &Path, file: &Path, nats: &Nats, extra: &[&str]) -> Gateway {
    std::fs::create_dir_all(data).unwrap();
    let url = nats.url();
    let mut args = vec!["-f", file.to_str().unwrap(), "--queue", url.as_str()];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    Gateway::start(data, &args, &[]).await
}

/// `fgateway worker` on the JetStream queue, calling functions through `gw`.
fn worker(gw: &Gateway, nats: &Nats, cwd: &Path, extra: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(fgateway_bin())
            .current_dir(cwd)
            .arg("worker")
            .arg("--gateway")
            .arg(format!("http://{}", gw.addr))
            .arg("--queue")
            .arg(nats.url())
            .args(FAST)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Queues an asynchronous call of `function` with `body`, to be called back at `callback`.
pub(crate) async fn enqueue(gw: &Gateway, function: &str, body: String, callback: &str) -> Reply {
    send(
        gw.addr,
        Request::post(format!("/async-function/{function}"))
            .header("x-callback-url", callback)
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await
}

async fn status(gw: &Gateway, call_id: &str) -> serde_json::Value {
    let r = get(gw.addr, &format!("/async-function/status/{call_id}")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

/// Polls until `check` holds for the call's status.
async fn status_until(
    gw: &Gateway,
    call_id: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = status(gw, call_id).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < end, "{what}: last status {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_gateways_and_two_workers_share_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let a = gateway(&dir.path().join("a"), &file, &nats, &["--no-worker"]).await;
    let b = gateway(&dir.path().join("b"), &file, &nats, &["--no-worker"]).await;
    let _w1 = worker(&a, &nats, dir.path(), &[]);
    let _w2 = worker(&b, &nats, dir.path(), &[]);
    let rx = Receiver::start(0).await;
    let url = rx.url();

    let mut ids = Vec::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = enqueue(gw, "record", format!("call {i}"), &url).await;
        assert_eq!(r.status(), 202, "{}", r.text());
        ids.push(r.header("x-call-id").unwrap());
    }
    let callbacks = rx.wait_for(ids.len()).await;
    let mut bodies: HashMap<String, String> = HashMap::new();
    for cb in &callbacks {
        let previous = bodies.insert(
            cb.header("x-call-id"),
            String::from_utf8_lossy(&cb.body).into_owned(),
        );
        assert!(
            previous.is_none(),
            "two callbacks for {}",
            cb.header("x-call-id")
        );
    }
    let ran = runs(dir.path(), "record");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            ran.get(id),
            Some(&1),
            "call {id} ran {:?} times",
            ran.get(id)
        );
        assert_eq!(
            bodies.get(id).map(String::as_str),
            Some(format!("call {i}").as_str())
        );
        for gw in [&a, &b] {
            let s = status_until(gw, id, "delivered", |s| s["callback"] == "delivered").await;
            assert_eq!(s["state"], "succeeded", "{s}");
            assert_eq!(s["attempts"], 1, "{s}");
        }
    }
    assert_eq!(ran.len(), ids.len(), "only the enqueued calls ran: {ran:?}");
}

#[tokio::test]
async fn a_worker_killed_mid_call_is_replaced_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let gw = gateway(&dir.path().join("gw"), &file, &nats, &["--no-worker"]).await;
    let rx = Receiver::start(0).await;
    let url = rx.url();

    // The first worker takes the call; it is killed while the function runs.
    let mut first = worker(&gw, &nats, dir.path(), &[]);
    let r = enqueue(&gw, "slow", String::new(), &url).await;
    assert_eq!(r.status(), 202);
    let id = r.header("x-call-id").unwrap();
    eventually("the call to start", DEADLINE, || {
        runs(dir.path(), "slow").contains_key(&id).then_some(())
    })
    .await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    // Another worker gets it once the lease (2 s) runs out, and it completes.
    let _second = worker(&gw, &nats, dir.path(), &[]);
    let cb = &rx.wait_for(1).await[0];
    assert_eq!(cb.header("x-call-id"), id);
    assert_eq!(cb.header("x-function-status"), "200");
    assert_eq!(String::from_utf8_lossy(&cb.body), "slept\n");
    assert_eq!(runs(dir.path(), "slow").get(&id), Some(&2));
    let s = status_until(&gw, &id, "succeeded", |s| s["callback"] == "delivered").await;
    assert_eq!(s["attempts"], 2, "{s}");

    // A call longer than the lease runs once: the worker keeps extending it.
    let r = enqueue(&gw, "slow", String::new(), &url).await;
    let long = r.header("x-call-id").unwrap();
    let cbs = rx.wait_for(2).await;
    assert_eq!(cbs[1].header("x-call-id"), long);
    assert_eq!(runs(dir.path(), "slow").get(&long), Some(&1));
    assert_eq!(status(&gw, &long).await["attempts"], 1);
}

/// What the load generator saw.
#[derive(Default)]
struct Load {
    accepted: Mutex<Vec<String>>,
    unavailable: AtomicUsize,
    stop: AtomicBool,
}

#[tokio::test]
async fn every_202_survives_a_nats_restart_and_the_gateway_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let gw = gateway(&dir.path().join("gw"), &file, &nats, &[]).await;
    let rx = Receiver::start(0).await;
    let url = rx.url();

    let load = Arc::new(Load::default());
    let mut clients = Vec::new();
    for c in 0..8 {
        let (load, url, addr) = (Arc::clone(&load), url.clone(), gw.addr);
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !load.stop.load(Ordering::Relaxed) {
                i += 1;
                let r = send(
                    addr,
                    Request::post("/async-function/record")
                        .header("x-callback-url", url.as_str())
                        .body(Full::new(Bytes::from(format!("client {c} call {i}"))))
                        .unwrap(),
                )
                .await;
                match r.status() {
                    202 => load
                        .accepted
                        .lock()
                        .unwrap()
                        .push(r.header("x-call-id").unwrap()),
                    503 => {
                        load.unavailable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => panic!("unexpected {other}: {}", r.text()),
                }
            }
        }));
    }
    let accepted = |load: &Load| load.accepted.lock().unwrap().len();
    let wait_accepted = |n: usize| {
        let load = Arc::clone(&load);
        eventually("calls to be accepted", DEADLINE, move || {
            (accepted(&load) >= n).then_some(())
        })
    };
    wait_accepted(100).await;

    // The server dies mid-load: the gateway answers 503, never a 202 it cannot keep.
    nats.down(Signal::SIGKILL).await;
    let before = accepted(&load);
    eventually("503 while NATS is down", DEADLINE, || {
        (load.unavailable.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    assert_eq!(get(gw.addr, "/async-function/status/x").await.status(), 503);
    let during = accepted(&load);
    assert!(
        during <= before + 8,
        "{} calls accepted while NATS was down",
        during - before
    );

    // Back up on the same store: the gateway and its worker recover without a restart.
    nats.up().await;
    wait_accepted(during + 100).await;
    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let accepted: Vec<String> = load.accepted.lock().unwrap().clone();
    let end = Instant::now() + DEADLINE * 2;
    loop {
        let delivered: HashSet<String> = rx.all().iter().map(|cb| cb.header("x-call-id")).collect();
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !delivered.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= end {
            // What the queue says of each missing call, whether it ran, and what the gateway
            // logged of it.
            let ran = runs(dir.path(), "record");
            let log = gw.log.text();
            let mut report = String::new();
            for id in missing.iter().take(5) {
                let status = get(gw.addr, &format!("/async-function/status/{id}")).await;
                report.push_str(&format!(
                    "\n{id}: status {} {}; ran {} times; log:\n{}",
                    status.status(),
                    status.text(),
                    ran.get(*id).copied().unwrap_or(0),
                    log.lines()
                        .filter(|l| l.contains(id.as_str()))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
            let troubles: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
                .collect();
            panic!(
                "{} of {} accepted calls never called back:{report}\ngateway warnings and errors:\n{}",
                missing.len(),
                accepted.len(),
                troubles.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ran = runs(dir.path(), "record");
    assert!(accepted.iter().all(|id| ran.contains_key(id)));
    eprintln!(
        "accepted {} calls ({} answered 503 while NATS was down); all delivered",
        accepted.len(),
        load.unavailable.load(Ordering::Relaxed)
    );
}

/// A gauge or counter from `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = get(gw.addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics:\n{text}"))
}

#[tokio::test]
async fn queue_metrics_retries_dead_letters_and_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let gw = gateway(
        &dir.path().join("gw"),
        &file,
        &nats,
        &["--no-worker", "--max-retry-attempts", "2"],
    )
    .await;
    let rx = Receiver::start(0).await;
    let url = rx.url();

    // With no worker yet, the calls wait: the depth comes from the stream's consumer.
    let r = enqueue(&gw, "flaky", "please".into(), &url).await;
    let id = r.header("x-call-id").unwrap();
    for i in 0..2 {
        enqueue(&gw, "record", format!("r{i}"), &url).await;
    }
    assert_eq!(metric(&gw, "gateway_queue_depth").await, 3.0);
    assert_eq!(metric(&gw, "gateway_queue_in_flight").await, 0.0);

    // A worker runs them; the flaky one fails twice and becomes a dead letter.
    let _w = worker(&gw, &nats, dir.path(), &["--max-retry-attempts", "2"]);
    let s = status_until(&gw, &id, "dead letter", |s| s["deadLetter"] == true).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["attempts"], 2, "{s}");
    assert_eq!(s["statusCode"], 500, "{s}");
    assert_eq!(runs(dir.path(), "flaky").get(&id), Some(&2));
    let dead = get(gw.addr, "/system/async/dead-letters").await;
    assert_eq!(dead.status(), 200);
    let list: serde_json::Value = serde_json::from_str(&dead.text()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["callId"], id.as_str());
    let cbs = rx.wait_for(3).await;
    let failed = cbs.iter().find(|c| c.header("x-call-id") == id).unwrap();
    assert_eq!(failed.header("x-function-status"), "500");
    let end = Instant::now() + DEADLINE;
    while metric(&gw, "gateway_queue_depth").await != 0.0 {
        assert!(Instant::now() < end, "the queue never emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Fixed, redriven through the system API: it runs again from attempt 1 and succeeds.
    std::fs::write(dir.path().join("fixed"), "").unwrap();
    let r = send(
        gw.addr,
        Request::post("/system/async/dead-letters/redrive")
            .body(Full::new(Bytes::from(format!("{{\"callId\":\"{id}\"}}"))))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(r.text().contains("\"redriven\":1"), "{}", r.text());
    let cbs = rx.wait_for(4).await;
    assert_eq!(cbs[3].header("x-call-id"), id);
    assert_eq!(cbs[3].header("x-function-status"), "200");
    assert_eq!(String::from_utf8_lossy(&cbs[3].body), "fixed\n");
    let s = status_until(&gw, &id, "succeeded", |s| s["state"] == "succeeded").await;
    assert_eq!(s["attempts"], 1, "{s}");
    assert_eq!(s["deadLetter"], false, "{s}");
    let dead = get(gw.addr, "/system/async/dead-letters").await.text();
    assert_eq!(dead.trim(), "[]");
}

#[tokio::test]
async fn oversized_requests_get_413_and_a_conflicting_stream_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let gw = gateway(&dir.path().join("gw"), &file, &nats, &["--no-worker"]).await;

    // Within max_async_body (8 MiB) but over what one NATS message holds (1 MiB).
    let r = send(
        gw.addr,
        Request::post("/async-function/record")
            .body(Full::new(Bytes::from(vec![b'x'; 900 * 1024])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 413, "{}", r.text());
    assert!(r.text().contains("max_payload"), "{}", r.text());

    // The same stream asked for with other replicas: a clear error, exit status 64.
    let out = Command::new(fgateway_bin())
        .args(["up", "--port", "0", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--queue", &nats.url(), "--nats-replicas", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"faas-request\" exists with replicas = 1"),
        "{stderr}"
    );
}

/// `--queue` takes the comma-separated list of a cluster's servers, as the README shows: any
/// listed server that is up is enough to start. A URL that cannot be parsed stops start-up at
/// once (no waiting out the connect timeout) with exit status 64, naming it.
#[tokio::test]
async fn the_queue_takes_a_server_list_and_refuses_a_bad_url_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    // The first listed server is down.
    let down = format!("nats://127.0.0.1:{}", crate::harness::free_port());
    let list = format!("{down}, {}", nats.url());
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &["-f", file.to_str().unwrap(), "--queue", &list],
        &[],
    )
    .await;
    let receiver = Receiver::start(0).await;
    let r = enqueue(&gw, "record", "listed".into(), &receiver.url()).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let id = r.header("x-call-id").unwrap();
    status_until(&gw, &id, "the call run", |s| s["state"] == "succeeded").await;

    let started = Instant::now();
    let bad = format!("{},nats://127.0.0.1:99999", nats.url());
    let out = Command::new(fgateway_bin())
        .args(["up", "--port", "0", "--data-dir"])
        .arg(dir.path().join("bad"))
        .args(["--queue", &bad, "--nats-connect-timeout", "60s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nats://127.0.0.1:99999"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused without waiting for the connect timeout: {:?}",
        started.elapsed()
    );
}
