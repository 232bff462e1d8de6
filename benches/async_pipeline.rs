//! Asynchronous pipeline benchmark, in one run:
//!
//! (a) sync calls of a trivial http-mode function through fgateway (the baseline),
//! (b) durable async enqueues (202s) per second at 64 connections, with no worker running,
//! (c) end to end: 10,000 async calls from the first enqueue to the last callback received.
//!
//! Then, when `nats-server` is installed, the same on the JetStream queue (a `nats-server -js`
//! started here, store in a temporary directory): (b) enqueues with no worker, and (c) with one
//! and with two `fgateway worker` processes running the calls through the gateway.
//!
//! Run with `bash benches/async.sh` (it builds the release binaries first). Prints figures and
//! the ratios to (a).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

const CONNECTIONS: usize = 64;
const SYNC_CALLS: usize = 20_000;
const ENQUEUES: usize = 50_000;
const E2E_CALLS: usize = 10_000;

#[path = "support.rs"]
mod support;

use support::{Error, connect};

struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the release fgateway with a stack holding the python-http example as `web` (one
/// replica: its server listens on a fixed port).
fn start_gateway(root: &Path, data: &Path, extra: &[&str]) -> Result<Gateway, Error> {
    let up_port = free_port()?;
    let port = free_port()?;
    let stack = data.join("stack.yml");
    std::fs::create_dir_all(data)?;
    std::fs::write(
        &stack,
        format!(
            "functions:\n  web:\n    handler: {}/examples/python-http\n    fprocess: python3 server.py\n    environment:\n      mode: http\n      upstream_url: http://127.0.0.1:{up_port}\n      LISTEN_PORT: {up_port}\n      ready_path: /ready\n      QUIET: 1\n      RUST_LOG: warn\n    labels:\n      com.openfaas.scale.max: \"1\"\n",
            root.display()
        ),
    )?;
    let child = Command::new(root.join("target/release/fgateway"))
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(data)
        .arg("-f")
        .arg(&stack)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Gateway {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

/// Waits until `path` answers 200.
async fn wait_ready(addr: SocketAddr, path: &str) -> Result<(), Error> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = connect(addr).await {
            let req = Request::get(path).body(Full::new(Bytes::new()))?;
            if let Ok(resp) = s.send_request(req).await
                && resp.status() == 200
            {
                return Ok(());
            }
        }
        if Instant::now() > end {
            return Err(format!("{addr}{path} never became ready").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `total` requests made by `make` over `CONNECTIONS` connections; returns requests/s.
async fn load(
    addr: SocketAddr,
    total: usize,
    expect: u16,
    make: impl Fn() -> Request<Full<Bytes>> + Send + Sync + 'static,
) -> Result<f64, Error> {
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (make, next) = (Arc::clone(&make), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let resp = sender.send_request(make()).await?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await?;
                if status != expect {
                    return Err::<(), Error>(format!("got {status}, expected {expect}").into());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// A callback receiver counting what it gets.
async fn receiver() -> Result<(SocketAddr, Arc<AtomicUsize>), Error> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let addr = support::receiver(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    })
    .await?;
    Ok((addr, count))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir()?;

    // (a) and (b): a gateway without a worker, so enqueues measure only the durable write.
    let gw = start_gateway(&root, &work.path().join("a"), &["--no-worker"])?;
    wait_ready(gw.addr, "/function/web/ready").await?;
    let post = |path: &'static str| {
        move || {
            Request::post(path)
                .body(Full::new(Bytes::from_static(b"{\"hello\":\"world\"}")))
                .unwrap_or_default()
        }
    };
    load(gw.addr, 2_000, 200, post("/function/web/")).await?;
    let sync_rate = load(gw.addr, SYNC_CALLS, 200, post("/function/web/")).await?;
    let enqueue_rate = load(gw.addr, ENQUEUES, 202, post("/async-function/web/")).await?;
    drop(gw);

    // (c): a gateway with its worker; callbacks to a receiver in this process.
    // As many calls in flight as (a) has connections.
    let gw = start_gateway(
        &root,
        &work.path().join("c"),
        &["--max-inflight", "64", "--max-inflight-per-function", "64"],
    )?;
    let (e2e_rate, e2e, enqueued_after, counters) = end_to_end(&gw).await?;
    drop(gw);

    println!(
        "(a) sync calls through fgateway:        {sync_rate:>9.0} req/s   ({SYNC_CALLS} calls, {CONNECTIONS} connections)"
    );
    println!(
        "(b) durable async enqueues (202):       {enqueue_rate:>9.0} req/s   ({ENQUEUES} calls, {CONNECTIONS} connections, no worker)"
    );
    println!(
        "(c) end to end, enqueue to callback:    {e2e_rate:>9.0} calls/s ({E2E_CALLS} calls in {:.2} s; all enqueued after {:.2} s)",
        e2e.as_secs_f64(),
        enqueued_after.as_secs_f64()
    );
    println!("(c)/(a): {:.0}%", 100.0 * e2e_rate / sync_rate);
    println!("during (c): {counters}");

    match nats_server() {
        None => println!("JetStream: skipped (nats-server is not installed)"),
        Some(bin) => jetstream(&root, work.path(), &bin, sync_rate).await?,
    }
    Ok(())
}

/// Runs `E2E_CALLS` async calls through `gw` with callbacks to a receiver here; returns
/// calls/s, the whole time, the time all were enqueued, and the gateway's async counters.
async fn end_to_end(gw: &Gateway) -> Result<(f64, Duration, Duration, String), Error> {
    let (cb_addr, received) = receiver().await?;
    wait_ready(gw.addr, "/function/web/ready").await?;
    let url = format!("http://{cb_addr}/done");
    let started = Instant::now();
    load(gw.addr, E2E_CALLS, 202, move || {
        Request::post("/async-function/web/")
            .header("x-callback-url", url.as_str())
            .body(Full::new(Bytes::from_static(b"{\"hello\":\"world\"}")))
            .unwrap_or_default()
    })
    .await?;
    let enqueued_after = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < E2E_CALLS {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {E2E_CALLS} callbacks arrived",
                received.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e2e = started.elapsed();
    let e2e_rate = E2E_CALLS as f64 / e2e.as_secs_f64();
    let mut metrics = connect(gw.addr).await?;
    let resp = metrics
        .send_request(Request::get("/metrics").body(Full::new(Bytes::new()))?)
        .await?;
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    let counters: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gateway_async_"))
        .collect();
    Ok((e2e_rate, e2e, enqueued_after, counters.join(", ")))
}

/// `nats-server` on `PATH` or where Debian puts it.
fn nats_server() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The JetStream figures: enqueues, and end to end with one and two worker processes.
async fn jetstream(root: &Path, work: &Path, bin: &Path, sync_rate: f64) -> Result<(), Error> {
    let port = free_port()?;
    let _nats = Killed(
        Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(work.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let end = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > end {
            return Err("nats-server never listened".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("nats://127.0.0.1:{port}");

    let gw = start_gateway(
        root,
        &work.join("js-b"),
        &["--no-worker", "--queue", &url, "--nats-stream", "bench-b"],
    )?;
    wait_ready(gw.addr, "/function/web/ready").await?;
    let enqueue_rate = load(gw.addr, ENQUEUES, 202, || {
        Request::post("/async-function/web/")
            .body(Full::new(Bytes::from_static(b"{\"hello\":\"world\"}")))
            .unwrap_or_default()
    })
    .await?;
    drop(gw);
    println!(
        "JetStream (b) durable async enqueues:   {enqueue_rate:>9.0} req/s   ({ENQUEUES} calls, {CONNECTIONS} connections, no worker; publish acked before each 202)"
    );

    // 0: the worker inside the gateway, as in (c) above; 1 and 2: separate worker processes.
    for workers in [0, 1, 2] {
        let stream = format!("bench-c{workers}");
        let limits = ["--max-inflight", "64", "--max-inflight-per-function", "64"];
        let mut args = vec!["--queue", &url, "--nats-stream", &stream];
        if workers == 0 {
            args.extend(limits);
        } else {
            args.push("--no-worker");
        }
        let gw = start_gateway(root, &work.join(&stream), &args)?;
        let gateway_url = format!("http://{}", gw.addr);
        let mut running = Vec::new();
        for _ in 0..workers {
            running.push(Killed(
                Command::new(root.join("target/release/fgateway"))
                    .current_dir(work)
                    .args(["worker", "--gateway", &gateway_url, "--queue", &url])
                    .args(["--nats-stream", &stream])
                    .args(limits)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            ));
        }
        let (rate, e2e, enqueued_after, _) = end_to_end(&gw).await?;
        drop(running);
        drop(gw);
        let who = match workers {
            0 => "worker in the gateway".to_string(),
            1 => "1 worker process".to_string(),
            n => format!("{n} worker processes"),
        };
        println!(
            "JetStream (c) end to end, {who:<22} {rate:>9.0} calls/s ({E2E_CALLS} calls in {:.2} s; all enqueued after {:.2} s) = {:.0}% of (a)",
            e2e.as_secs_f64(),
            enqueued_after.as_secs_f64(),
            100.0 * rate / sync_rate
        );
    }
    Ok(())
}
