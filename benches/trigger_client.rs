//! Completed calls per second for the same function, started two ways in one run: CALLS
//! asynchronous calls over HTTP (`POST /async-function/FUNCTION` on CONNECTIONS keep-alive
//! connections, each answered 202), then CALLS NATS messages published on SUBJECT (which the
//! function's `topic` annotation names). Each phase ends when the gateway's
//! `gateway_function_invocation_total{function_name=FUNCTION,code="200"}` has grown by CALLS,
//! that is when every call has run.
//!
//! ```sh
//! cargo build --release --example trigger-client
//! ./target/release/examples/trigger-client 127.0.0.1:8080 nats://127.0.0.1:4222 events.fast fast 20000 64
//! ```
//!
//! Last line, for scripts: `RESULT http_rate=.. nats_rate=.. ratio=..`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

// Only the connection helper is used here; the callback receiver serves the other clients.
#[path = "support.rs"]
#[allow(dead_code)]
mod support;

use support::{Error, connect};

/// Longest wait for a phase's calls.
const DEADLINE: Duration = Duration::from_secs(600);

/// The function's completed (200) calls so far, from the gateway's metrics.
async fn completed(gateway: SocketAddr, function: &str) -> Result<u64, Error> {
    let mut sender = connect(gateway).await?;
    let req = Request::get("/metrics")
        .header("host", "gateway")
        .body(Full::new(Bytes::new()))?;
    let body = sender
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?;
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    let wanted = format!("function_name=\"{function}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("gateway_function_invocation_total{"))
        .filter(|l| l.contains(&wanted) && l.contains("code=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

/// Waits until `function` has `target` completed calls; the time it took from `started`.
async fn until_completed(
    gateway: SocketAddr,
    function: &str,
    target: u64,
    started: Instant,
) -> Result<Duration, Error> {
    loop {
        if completed(gateway, function).await? >= target {
            return Ok(started.elapsed());
        }
        if started.elapsed() > DEADLINE {
            return Err(format!("{function}: not {target} calls within {DEADLINE:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, gateway, nats, subject, function, calls, connections] = args.as_slice() else {
        return Err(
            "usage: trigger-client GATEWAY_ADDR NATS_URL SUBJECT FUNCTION CALLS CONNECTIONS".into(),
        );
    };
    let gateway: SocketAddr = gateway.parse()?;
    let calls: u64 = calls.parse()?;
    let connections: u64 = connections.parse()?;

    // (a) Over HTTP.
    let before = completed(gateway, function).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let path = format!("/async-function/{function}");
        let n = calls / connections + u64::from(c < calls % connections);
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(gateway).await?;
            for _ in 0..n {
                sender.ready().await?;
                let req = Request::post(path.as_str())
                    .header("host", "gateway")
                    .body(Full::new(Bytes::from_static(b"hello world")))?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await?;
                if status != 202 {
                    return Err::<(), Error>(format!("enqueue answered {status}").into());
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let http = until_completed(gateway, function, before + calls, started).await?;

    // (b) Over NATS.
    let client = async_nats::connect(nats.as_str()).await?;
    let before = completed(gateway, function).await?;
    let started = Instant::now();
    for _ in 0..calls {
        client
            .publish(subject.clone(), Bytes::from_static(b"hello world"))
            .await?;
    }
    client.flush().await?;
    let over_nats = until_completed(gateway, function, before + calls, started).await?;

    let rate = |d: Duration| calls as f64 / d.as_secs_f64();
    println!(
        "(a) async calls over HTTP, {connections} connections: {calls} completed in {:.2} s, {:.0}/s",
        http.as_secs_f64(),
        rate(http)
    );
    println!(
        "(b) NATS messages on {subject}: {calls} completed in {:.2} s, {:.0}/s ({:.2} of (a))",
        over_nats.as_secs_f64(),
        rate(over_nats),
        rate(over_nats) / rate(http)
    );
    println!(
        "RESULT http_rate={:.0} nats_rate={:.0} ratio={:.2}",
        rate(http),
        rate(over_nats),
        rate(over_nats) / rate(http)
    );
    Ok(())
}
