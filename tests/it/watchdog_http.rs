//! mode=http against a real upstream process (`examples/python-http/server.py`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use nix::sys::signal::Signal;

use crate::harness::{
    DEADLINE, KeepAlive, Watchdog, free_port, get, post, process_gone, send, send_streaming,
    start_in_repo, wait_gone, wait_status,
};

/// An http-mode watchdog in front of the example server; returns once it is healthy.
async fn start_http(extra: &[(&str, &str)]) -> Watchdog {
    let wd = start_http_unready(extra).await;
    wait_status(wd.addr, "/_/health", 200).await;
    wd
}

/// Like [`start_http`], without waiting for the upstream.
async fn start_http_unready(extra: &[(&str, &str)]) -> Watchdog {
    let port = free_port().to_string();
    let upstream = format!("http://127.0.0.1:{port}");
    let mut vars = vec![
        ("mode", "http"),
        ("fprocess", "python3 examples/python-http/server.py"),
        ("upstream_url", upstream.as_str()),
        ("LISTEN_PORT", port.as_str()),
        ("QUIET", "1"),
    ];
    vars.extend_from_slice(extra);
    start_in_repo(&vars).await
}

/// The upstream's pid, from the watchdog's log.
async fn upstream_pid(wd: &Watchdog) -> i32 {
    crate::harness::eventually("the upstream pid in the log", DEADLINE, || {
        wd.log
            .find_field("started upstream", "pid")
            .and_then(|p| p.parse().ok())
    })
    .await
}

#[tokio::test]
async fn proxies_method_path_query_headers_body_and_status() {
    let wd = start_http(&[]).await;
    let req = Request::put("/a/b?x=1&y=two")
        .header("host", "fn.example")
        .header("x-custom", "value")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not cross")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let r = send(wd.addr, req).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(r.header("x-duration-seconds").is_some());
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["body_bytes"], 5);
    assert_eq!(v["headers"]["x-custom"], "value");
    assert_eq!(v["headers"]["host"], "fn.example");
    assert_eq!(v["headers"]["x-forwarded-host"], "fn.example");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(v["headers"].get("x-hop").is_none(), "{v}");

    let r = post(wd.addr, "/status/418", "").await;
    assert_eq!(r.status(), 418);
    assert_eq!(r.text(), "status as asked\n");

    let head = Request::head("/").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(wd.addr, head).await.status(), 200);
}

/// The upstream port a request arrived from, as the example server saw it; checks that its
/// request line had the path alone (origin form) and that the client's Host came through.
fn upstream_peer_port(r: &crate::harness::Reply) -> u64 {
    assert_eq!(r.status(), 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["target"], "/", "{v}");
    assert_eq!(v["headers"]["host"], "localhost", "{v}");
    v["peer_port"].as_u64().unwrap()
}

#[tokio::test]
async fn a_keep_alive_client_keeps_one_upstream_connection_of_its_own() {
    let wd = start_http(&[]).await;
    let mut first = KeepAlive::open(wd.addr).await;
    let mut second = KeepAlive::open(wd.addr).await;
    // The first request of a connection goes through the shared pool; from the second on,
    // each client connection has an upstream connection of its own.
    upstream_peer_port(&first.post("/", "a").await);
    upstream_peer_port(&second.post("/", "a").await);
    let mine = upstream_peer_port(&first.post("/", "b").await);
    let theirs = upstream_peer_port(&second.post("/", "b").await);
    assert_ne!(
        mine, theirs,
        "two client connections share an upstream connection"
    );
    for _ in 0..5 {
        assert_eq!(upstream_peer_port(&first.post("/", "c").await), mine);
        assert_eq!(upstream_peer_port(&second.post("/", "c").await), theirs);
    }

    // The upstream closes the connection after answering: the next request gets a new one,
    // and no client sees an error.
    let r = first.post("/close", "").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.text(), "closed\n");
    let fresh = upstream_peer_port(&first.post("/", "d").await);
    assert_ne!(fresh, mine, "a closed upstream connection was used again");
    assert_eq!(upstream_peer_port(&first.post("/", "e").await), fresh);

    // One request per connection (through the pool) still works alongside.
    upstream_peer_port(&get(wd.addr, "/").await);
}

#[tokio::test]
async fn not_ready_until_the_upstream_listens_and_requests_wait() {
    let port = free_port().to_string();
    let upstream = format!("http://127.0.0.1:{port}");
    let wd = start_in_repo(&[
        ("mode", "http"),
        (
            "fprocess",
            "sh -c 'sleep 1.5; exec python3 examples/python-http/server.py'",
        ),
        ("upstream_url", upstream.as_str()),
        ("LISTEN_PORT", port.as_str()),
        ("QUIET", "1"),
    ])
    .await;
    assert_eq!(get(wd.addr, "/_/ready").await.status(), 503);
    assert_eq!(get(wd.addr, "/_/health").await.status(), 503);
    assert!(!wd.lock_path().exists());
    // Sent before the upstream listens: waits for it instead of failing.
    let r = get(wd.addr, "/early").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(r.text().contains("\"/early\""));
    assert_eq!(get(wd.addr, "/_/ready").await.status(), 200);
    wait_status(wd.addr, "/_/health", 200).await;
    assert!(wd.lock_path().exists());
}

#[tokio::test]
async fn ready_path_decides_readiness() {
    let wd = start_http(&[("ready_path", "/status/204")]).await;
    assert_eq!(get(wd.addr, "/_/ready").await.status(), 204);
}

#[tokio::test]
async fn exec_timeout_and_x_timeout_answer_504_before_headers() {
    let wd = start_http(&[("exec_timeout", "1s")]).await;
    let started = Instant::now();
    let r = get(wd.addr, "/sleep?s=5").await;
    assert_eq!(r.status(), 504);
    assert!(r.text().contains("exec_timeout (1s)"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(4));

    let wd = start_http(&[("exec_timeout", "20s")]).await;
    let started = Instant::now();
    let req = Request::get("/sleep?s=5")
        .header("x-timeout", "500ms")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(wd.addr, req).await;
    assert_eq!(r.status(), 504);
    assert!(r.text().contains("X-Timeout (500ms)"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(4));

    // A longer X-Timeout cannot raise exec_timeout; a malformed one is refused.
    let req = Request::get("/")
        .header("x-timeout", "soon")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(wd.addr, req).await.status(), 400);
}

#[tokio::test]
async fn timeout_after_headers_aborts_the_body() {
    let wd = start_http(&[("exec_timeout", "1s")]).await;
    let req = Request::get("/sse?n=50&ms=100")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send_streaming(wd.addr, req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let ended = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                received.extend_from_slice(frame.data_ref().unwrap_or(&Bytes::new()))
            }
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    assert!(
        ended.is_err(),
        "body ended cleanly after {} bytes",
        received.len()
    );
    assert!(String::from_utf8_lossy(&received).contains("data: event 0"));
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let wd = start_http(&[]).await;
    let req = Request::get("/sse?n=3&ms=1000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send_streaming(wd.addr, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    let first_at = Instant::now();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("event 0"));
    let rest = body.collect().await.unwrap().to_bytes();
    // The other two events came a second apart, after the first had already been delivered.
    assert!(first_at.elapsed() >= Duration::from_millis(1500));
    assert!(String::from_utf8_lossy(&rest).contains("event 2"));
}

#[tokio::test]
async fn websocket_echo_passes_through() {
    let wd = start_http(&[]).await;
    let _open = crate::harness::websocket_echo(wd.addr, "/ws").await;
}

#[tokio::test]
async fn a_100mb_body_streams_both_ways_with_bounded_memory() {
    const TOTAL: usize = 100 * 1024 * 1024;
    let wd = start_http(&[]).await;
    let before = crate::harness::peak_rss_kib(wd.pid());
    let req = Request::post("/echo")
        .header("content-length", TOTAL.to_string())
        .body(crate::harness::big_body(TOTAL))
        .unwrap();
    let resp = send_streaming(wd.addr, req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(received, TOTAL);
    let grew = crate::harness::peak_rss_kib(wd.pid()).saturating_sub(before);
    assert!(grew < 8 * 1024, "peak RSS grew by {grew} KiB");
}

#[tokio::test]
async fn buffering_gives_the_upstream_a_content_length_and_caps_the_body() {
    let chunked = || {
        let chunks = ["abc", "defg", "hij"]
            .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(c))));
        StreamBody::new(futures_util::stream::iter(chunks))
    };
    let wd = start_http(&[]).await;
    let r = send(wd.addr, Request::post("/").body(chunked()).unwrap()).await;
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["headers"]["transfer-encoding"], "chunked");
    assert_eq!(v["body_bytes"], 10);

    let wd = start_http(&[
        ("http_buffer_req_body", "true"),
        ("http_buffer_req_body_limit", "64"),
    ])
    .await;
    let r = send(wd.addr, Request::post("/").body(chunked()).unwrap()).await;
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["headers"]["content-length"], "10");
    assert!(v["headers"].get("transfer-encoding").is_none());
    assert_eq!(v["body_bytes"], 10);

    let r = post(wd.addr, "/", vec![b'x'; 1000]).await;
    assert_eq!(r.status(), 413);
    assert!(
        r.text().contains("http_buffer_req_body_limit"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502_with_a_reason() {
    // A server that is ready once (the probe connects), then stops listening but keeps running.
    let port = free_port();
    let script = format!(
        "python3 -c \"import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',{port}))\ns.listen()\nc,_=s.accept()\nc.close()\ns.close()\ntime.sleep(60)\""
    );
    let upstream = format!("http://127.0.0.1:{port}");
    let wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", script.as_str()),
        ("upstream_url", upstream.as_str()),
    ])
    .await;
    wait_status(wd.addr, "/_/health", 200).await;
    let r = get(wd.addr, "/").await;
    assert_eq!(r.status(), 502);
    assert!(
        r.text().contains("Cannot reach the function's server"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn upstream_exit_stops_the_watchdog_with_an_error() {
    let mut wd = start_http(&[]).await;
    let pid = upstream_pid(&wd).await;
    let r = post(wd.addr, "/crash", "").await;
    assert_eq!(r.status(), 502);
    let status = wd.wait_exit(DEADLINE).await;
    assert_ne!(status.code(), Some(0), "{status:?}");
    assert!(
        wd.log.text().contains("upstream exited"),
        "{}",
        wd.log.text()
    );
    assert!(process_gone(pid));
    assert!(!wd.lock_path().exists());
}

#[tokio::test]
async fn sigterm_drains_before_the_upstream_is_stopped() {
    // max_inflight=1 makes /_/ready say 429 while the request is in flight.
    let mut wd = start_http(&[("healthcheck_interval", "0"), ("max_inflight", "1")]).await;
    let pid = upstream_pid(&wd).await;
    let addr = wd.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/sleep?s=1.5").await });
    wait_status(addr, "/_/ready", 429).await;
    wd.signal(Signal::SIGTERM);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "slept\n");
    let status = wd.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0));
    wait_gone(pid, "the upstream to be stopped").await;
    let log = wd.log.text();
    let draining = log.find("draining").unwrap();
    let stopping = log.find("stopping upstream").unwrap();
    assert!(draining < stopping, "{log}");
}

#[tokio::test]
async fn max_inflight_answers_429_and_ready_says_so() {
    let wd = start_http(&[("max_inflight", "1")]).await;
    let addr = wd.addr;
    let first = tokio::spawn(async move { get(addr, "/sleep?s=1.5").await });
    wait_status(addr, "/_/ready", 429).await;
    let r = get(addr, "/").await;
    assert_eq!(r.status(), 429);
    assert!(
        r.text().contains("Max concurrent requests: 1"),
        "{}",
        r.text()
    );
    assert_eq!(first.await.unwrap().status(), 200);
}
