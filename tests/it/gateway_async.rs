//! Asynchronous calls through a real gateway, real functions and a real callback receiver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::callback::Receiver;
use crate::harness::{DEADLINE, Gateway, Reply, free_port, get, send};

/// Fast retries and callbacks so tests do not wait on production backoffs.
const FAST: &[&str] = &[
    "--retry-backoff",
    "50ms",
    "--retry-backoff-max",
    "200ms",
    "--callback-backoff",
    "100ms",
    "--callback-backoff-max",
    "300ms",
    "--max-retry-attempts",
    "3",
];

/// Test functions; each appends a line to `DIR/<name>.runs` when it runs.
fn stack(dir: &Path) -> PathBuf {
    let d = dir.display();
    let root = env!("CARGO_MANIFEST_DIR");
    let port = free_port();
    let yaml = format!(
        r#"
functions:
  echo:
    handler: {root}/examples/echo
    fprocess: sh -c 'echo run >> {d}/echo.runs; exec sh handler.sh'
  fails-twice:
    fprocess: sh -c 'n=$(cat {d}/fails-twice.runs 2>/dev/null | wc -l); echo run >> {d}/fails-twice.runs; if [ "$n" -lt 2 ]; then echo "not yet"; exit 1; fi; echo "worked on attempt $((n+1))"'
  slow:
    fprocess: sh -c 'echo run >> {d}/slow.runs; sleep 2.5; echo slept'
    environment:
      exec_timeout: 30s
  web:
    handler: {root}/examples/python-http
    fprocess: python3 server.py
    environment:
      mode: http
      upstream_url: http://127.0.0.1:{port}
      LISTEN_PORT: {port}
      QUIET: 1
"#
    );
    let path = dir.join("stack.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// How many times a test function ran.
fn runs(dir: &Path, function: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{function}.runs")))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn up(dir: &tempfile::TempDir, extra: &[&str]) -> Gateway {
    let file = stack(dir.path());
    let mut args = vec!["-f", file.to_str().unwrap()];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    Gateway::start(dir.path(), &args, &[]).await
}

async fn enqueue(gw: &Gateway, path: &str, body: &'static str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::post(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        gw.addr,
        req.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap(),
    )
    .await
}

async fn status(gw: &Gateway, call_id: &str) -> serde_json::Value {
    let r = get(gw.addr, &format!("/async-function/status/{call_id}")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

/// Polls a call's status until `check` holds.
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
async fn callback_carries_the_result_and_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hush\n").unwrap();
    let gw = up(&dir, &["--callback-secret-file", secret.to_str().unwrap()]).await;
    let rx = Receiver::start(0).await;
    let url = rx.url();

    let r = enqueue(
        &gw,
        "/async-function/echo/some/path?x=1",
        "hello async",
        &[
            ("x-callback-url", url.as_str()),
            ("content-type", "text/plain"),
        ],
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let call_id = r.header("x-call-id").unwrap();

    let got = rx.wait_for(1).await;
    let cb = &got[0];
    assert_eq!(
        cb.body,
        "method=POST path=/some/path query=x=1\nhello async"
    );
    assert_eq!(cb.header("x-call-id"), call_id);
    assert_eq!(cb.header("x-function-status"), "200");
    assert_eq!(cb.header("x-function-name"), "echo");
    assert_eq!(cb.header("x-retry"), "1");
    assert_eq!(cb.header("x-retry-max"), "3");
    assert_eq!(cb.header("content-type"), "text/plain");
    assert!(cb.header("user-agent").starts_with("fgateway/"));
    assert!(cb.header("x-duration-seconds").parse::<f64>().unwrap() >= 0.0);
    let want = format!(
        "sha256={}",
        fwatchdog::queue::worker::sign(b"hush", cb.body.as_ref())
    );
    assert_eq!(cb.header("x-fgateway-signature"), want);

    let s = status_until(&gw, &call_id, "callback recorded", |s| {
        s["callback"] == "delivered"
    })
    .await;
    assert_eq!(s["state"], "succeeded");
    assert_eq!(s["attempts"], 1);
    assert_eq!(s["statusCode"], 200);
    assert_eq!(
        s["result"],
        "method=POST path=/some/path query=x=1\nhello async"
    );

    // Only known functions, only POST, only http(s) callbacks.
    assert_eq!(
        enqueue(&gw, "/async-function/nope", "", &[]).await.status(),
        404
    );
    assert_eq!(get(gw.addr, "/async-function/echo").await.status(), 405);
    let r = enqueue(
        &gw,
        "/async-function/echo",
        "",
        &[("x-callback-url", "ftp://x/y")],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("X-Callback-Url"), "{}", r.text());
    assert_eq!(
        get(gw.addr, "/async-function/status/nope").await.status(),
        404
    );
}

#[tokio::test]
async fn retries_until_success() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(&dir, &[]).await;
    let rx = Receiver::start(0).await;
    let url = rx.url();
    let r = enqueue(
        &gw,
        "/async-function/fails-twice",
        "",
        &[("x-callback-url", url.as_str())],
    )
    .await;
    let call_id = r.header("x-call-id").unwrap();
    let cb = &rx.wait_for(1).await[0];
    assert_eq!(cb.header("x-function-status"), "200");
    assert_eq!(cb.header("x-retry"), "3");
    assert_eq!(cb.body, "worked on attempt 3\n");
    let s = status(&gw, &call_id).await;
    assert_eq!(s["state"], "succeeded");
    assert_eq!(s["attempts"], 3);
    assert_eq!(runs(dir.path(), "fails-twice"), 3);
    let metrics = get(gw.addr, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_async_retries_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn exhausted_retries_dead_letter_then_redrive_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(&dir, &["--max-retry-attempts", "2"]).await;
    let rx = Receiver::start(0).await;
    let url = rx.url();
    let r = enqueue(
        &gw,
        "/async-function/fails-twice",
        "",
        &[("x-callback-url", url.as_str())],
    )
    .await;
    let call_id = r.header("x-call-id").unwrap();
    let cb = &rx.wait_for(1).await[0];
    assert_eq!(cb.header("x-function-status"), "500");
    let s = status(&gw, &call_id).await;
    assert_eq!(s["state"], "failed");
    assert_eq!(s["deadLetter"], true);

    let dead: serde_json::Value =
        serde_json::from_str(&get(gw.addr, "/system/async/dead-letters").await.text()).unwrap();
    assert_eq!(dead[0]["callId"], call_id.as_str());
    let req = Request::post("/system/async/dead-letters/redrive")
        .body(Full::new(Bytes::from(format!(
            r#"{{"callId":"{call_id}"}}"#
        ))))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].header("x-function-status"), "200");
    let s = status(&gw, &call_id).await;
    assert_eq!(s["state"], "succeeded");
    assert_eq!(runs(dir.path(), "fails-twice"), 3);
    let metrics = get(gw.addr, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_async_dead_lettered_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_and_4xx_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(&dir, &[]).await;
    let r = enqueue(
        &gw,
        "/async-function/web/status/503?retry_after=30",
        "",
        &[],
    )
    .await;
    let call_id = r.header("x-call-id").unwrap();
    let s = status_until(&gw, &call_id, "a first attempt", |s| {
        s["state"] == "retrying"
    })
    .await;
    assert_eq!(s["statusCode"], 503);
    let next = humantime::parse_rfc3339(s["nextAttemptAt"].as_str().unwrap()).unwrap();
    let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
    // The backoff alone would be under 200 ms; Retry-After asked for 30 s.
    assert!(wait > Duration::from_secs(20), "next attempt in {wait:?}");

    // An absurd Retry-After cannot outlive max_retry_age: the call is dead-lettered at once.
    let r = enqueue(
        &gw,
        "/async-function/web/status/503?retry_after=18446744073709551615",
        "",
        &[],
    )
    .await;
    let huge = r.header("x-call-id").unwrap();
    let s = status_until(&gw, &huge, "dead letter", |s| s["deadLetter"] == true).await;
    assert_eq!(s["attempts"], 1);

    let rx = Receiver::start(0).await;
    let url = rx.url();
    let r = enqueue(
        &gw,
        "/async-function/web/status/404",
        "",
        &[("x-callback-url", url.as_str())],
    )
    .await;
    let call_id = r.header("x-call-id").unwrap();
    let cb = &rx.wait_for(1).await[0];
    assert_eq!(cb.header("x-function-status"), "404");
    let s = status(&gw, &call_id).await;
    assert_eq!(s["state"], "failed");
    assert_eq!(s["attempts"], 1);
    assert_eq!(s["deadLetter"], false);
}

#[tokio::test]
async fn a_callback_receiver_that_is_down_gets_the_result_later_without_a_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(&dir, &[]).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let r = enqueue(
        &gw,
        "/async-function/echo",
        "once",
        &[("x-callback-url", url.as_str())],
    )
    .await;
    let call_id = r.header("x-call-id").unwrap();
    status_until(&gw, &call_id, "a failed delivery", |s| {
        s["state"] == "succeeded" && s["callbackAttempts"].as_u64() >= Some(2)
    })
    .await;
    let rx = Receiver::start(port).await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].body, "method=POST path=/ query=\nonce");
    status_until(&gw, &call_id, "delivery recorded", |s| {
        s["callback"] == "delivered"
    })
    .await;
    assert_eq!(runs(dir.path(), "echo"), 1);
    let metrics = get(gw.addr, "/metrics").await.text();
    assert!(
        !metrics.contains("gateway_async_callback_failures_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn duplicate_call_ids_and_idempotency_keys_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(&dir, &[]).await;
    for _ in 0..3 {
        let r = enqueue(
            &gw,
            "/async-function/echo",
            "x",
            &[("x-call-id", "order-42")],
        )
        .await;
        assert_eq!(r.status(), 202);
        assert_eq!(r.header("x-call-id").as_deref(), Some("order-42"));
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = enqueue(
            &gw,
            "/async-function/echo",
            "y",
            &[("idempotency-key", "pay-7")],
        )
        .await;
        ids.push(r.header("x-call-id").unwrap());
    }
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    status_until(&gw, "order-42", "done", |s| s["state"] == "succeeded").await;
    status_until(&gw, &ids[0], "done", |s| s["state"] == "succeeded").await;
    assert_eq!(runs(dir.path(), "echo"), 2);
}

#[tokio::test]
async fn cancel_status_transitions_and_long_calls_run_once() {
    let dir = tempfile::tempdir().unwrap();
    // The lease is shorter than the call: only lease extension keeps it from running twice.
    let gw = up(&dir, &["--max-inflight-per-function", "1", "--lease", "1s"]).await;
    let first = enqueue(&gw, "/async-function/slow", "", &[])
        .await
        .header("x-call-id")
        .unwrap();
    let second = enqueue(&gw, "/async-function/slow", "", &[])
        .await
        .header("x-call-id")
        .unwrap();
    status_until(&gw, &first, "running", |s| s["state"] == "running").await;
    assert_eq!(status(&gw, &second).await["state"], "queued");

    let cancel = |id: String| {
        let addr = gw.addr;
        async move {
            let req = Request::delete(format!("/async-function/{id}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(addr, req).await.status()
        }
    };
    assert_eq!(cancel(second.clone()).await, 200);
    assert_eq!(status(&gw, &second).await["state"], "cancelled");
    assert_eq!(cancel(first.clone()).await, 409);
    assert_eq!(cancel("no-such-call".into()).await, 404);

    let s = status_until(&gw, &first, "finished", |s| s["state"] == "succeeded").await;
    // Leasing counts attempts: one attempt means no second worker ever took the call, though
    // it ran for longer than its lease.
    assert_eq!(s["attempts"], 1);
    assert_eq!(s["result"], "slept\n");
    assert_eq!(runs(dir.path(), "slow"), 1);
    assert_eq!(status(&gw, &second).await["state"], "cancelled");
}

#[tokio::test]
async fn oversized_bodies_get_413_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(&dir, &["--max-async-body", "1KiB"]).await;
    // Announces 100 MB and sends 4 KiB: the answer comes without the rest.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /async-function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n",
    )
    .await
    .unwrap();
    s.write_all(&[b'x'; 4096]).await.unwrap();
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    // Chunked, no length: cut off once it passes the limit.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /async-function/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    // Two 1 KiB chunks: the second passes the limit.
    let mut chunk = b"400\r\n".to_vec();
    chunk.extend_from_slice(&[b'y'; 1024]);
    chunk.extend_from_slice(b"\r\n");
    s.write_all(&chunk).await.unwrap();
    s.write_all(&chunk).await.unwrap();
    let n = tokio::time::timeout(DEADLINE, s.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"));
    assert_eq!(runs(dir.path(), "echo"), 0);
}

#[tokio::test]
async fn every_202_survives_a_sigkilled_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(0).await;
    let url = rx.url();
    let mut gw = up(&dir, &["--lease", "2s"]).await;
    let addr = gw.addr;

    // Eight clients enqueue as fast as they can until the gateway dies under them.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..8 {
        let accepted = std::sync::Arc::clone(&accepted);
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                else {
                    return;
                };
                tokio::spawn(conn);
                let req = Request::post("/async-function/echo")
                    .header("x-callback-url", url.as_str())
                    .body(Full::new(Bytes::from(format!("client {c} call {i}"))))
                    .unwrap();
                match sender.send_request(req).await {
                    Ok(resp) if resp.status() == 202 => {
                        let id = resp.headers()["x-call-id"].to_str().unwrap().to_string();
                        accepted.lock().unwrap().push(id);
                    }
                    _ => return,
                }
            }
        }));
    }
    let end = Instant::now() + DEADLINE;
    while accepted.lock().unwrap().len() < 150 {
        assert!(Instant::now() < end, "enqueueing too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.signal(Signal::SIGKILL);
    gw.wait_exit(DEADLINE).await;
    for c in clients {
        let _ = c.await;
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    drop(gw);

    // Same data directory, new process.
    let _gw = up(&dir, &["--lease", "2s"]).await;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rx.all();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for cb in &got {
            *seen.entry(cb.header("x-call-id")).or_default() += 1;
        }
        let missing = accepted.iter().filter(|id| !seen.contains_key(*id)).count();
        if missing == 0 {
            let duplicates: usize = seen.values().map(|n| n - 1).sum();
            eprintln!(
                "crash safety: {} calls got 202 before SIGKILL, all delivered; {duplicates} duplicate callbacks (at-least-once)",
                accepted.len()
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "{missing} of {} accepted calls were never delivered",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_separate_worker_process_runs_the_calls() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(&dir, &["--no-worker"]).await;
    let rx = Receiver::start(0).await;
    let url = rx.url();
    let r = enqueue(
        &gw,
        "/async-function/echo",
        "remote",
        &[("x-callback-url", url.as_str())],
    )
    .await;
    let call_id = r.header("x-call-id").unwrap();
    assert_eq!(status(&gw, &call_id).await["state"], "queued");

    let mut worker = crate::harness::KillOnDrop(
        std::process::Command::new(crate::harness::fgateway_bin())
            .arg("worker")
            .arg("--gateway")
            .arg(format!("http://{}", gw.addr))
            .arg("--data-dir")
            .arg(dir.path())
            .args(FAST)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cb = &rx.wait_for(1).await[0];
    assert_eq!(cb.body, "method=POST path=/ query=\nremote");
    assert_eq!(cb.header("x-call-id"), call_id);
    crate::harness::signal_child(&worker.0, Signal::SIGTERM);
    let status = crate::harness::wait_child(&mut worker.0, "the worker", DEADLINE).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_example_callback_receiver_checks_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hush").unwrap();
    let gw = up(&dir, &["--callback-secret-file", secret.to_str().unwrap()]).await;
    let port = free_port();
    let out = dir.path().join("receiver.out");
    let _receiver = crate::harness::KillOnDrop(
        std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/callback-receiver/receiver.py"
            ))
            .env("PORT", port.to_string())
            .env("CALLBACK_SECRET", "hush")
            .stdout(std::fs::File::create(&out).unwrap())
            .spawn()
            .unwrap(),
    );
    crate::harness::eventually("the receiver to listen", DEADLINE, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/");
    let r = enqueue(
        &gw,
        "/async-function/echo",
        "signed",
        &[("x-callback-url", url.as_str())],
    )
    .await;
    let call_id = r.header("x-call-id").unwrap();
    status_until(&gw, &call_id, "delivered", |s| s["callback"] == "delivered").await;
    let printed = std::fs::read_to_string(&out).unwrap();
    assert!(
        printed.contains(&format!("call {call_id}: function echo answered 200")),
        "{printed}"
    );
    assert!(printed.contains("signature ok"), "{printed}");
}

#[tokio::test]
async fn the_per_function_limit_holds_even_when_one_lease_could_take_more() {
    let dir = tempfile::tempdir().unwrap();
    let gw = up(
        &dir,
        &["--max-inflight", "8", "--max-inflight-per-function", "2"],
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            enqueue(&gw, "/async-function/slow", "", &[])
                .await
                .header("x-call-id")
                .unwrap(),
        );
    }
    let end = Instant::now() + DEADLINE;
    loop {
        let mut states = Vec::new();
        for id in &ids {
            states.push(status(&gw, id).await["state"].as_str().unwrap().to_string());
        }
        let running = states.iter().filter(|s| *s == "running").count();
        assert!(running <= 2, "{states:?}");
        if running == 2 {
            assert_eq!(
                states.iter().filter(|s| *s == "queued").count(),
                2,
                "{states:?}"
            );
            break;
        }
        assert!(Instant::now() < end, "calls never started: {states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_never_a_fake_202() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = stack(dir.path());
    // The gateway runs in its own mount namespace with its data directory on a 4 MiB tmpfs.
    let gw = Gateway::start_with(
        &data,
        &[
            "-f",
            file.to_str().unwrap(),
            "--no-worker",
            "--max-async-body",
            "1MiB",
        ],
        &[],
        |cmd| {
            let mut line = String::from("mount -t tmpfs -o size=4m tmpfs \"$0\" && exec");
            line.push_str(&format!(" {:?}", cmd.get_program()));
            for arg in cmd.get_args() {
                line.push_str(&format!(" {arg:?}"));
            }
            let mut wrapped = std::process::Command::new("unshare");
            wrapped
                .args(["--mount", "--propagation", "private", "sh", "-c", &line])
                .arg(&data)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env_clear()
                .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
            wrapped
        },
    )
    .await;
    let body: &'static str = Box::leak("x".repeat(256 * 1024).into_boxed_str());
    let mut accepted = Vec::new();
    let refused = loop {
        let r = enqueue(&gw, "/async-function/echo", body, &[]).await;
        match r.status() {
            202 => accepted.push(r.header("x-call-id").unwrap()),
            _ => break r,
        }
        assert!(
            accepted.len() < 100,
            "a 4 MiB disk took {} calls of 256 KiB",
            accepted.len()
        );
    };
    assert_eq!(refused.status(), 503, "{}", refused.text());
    assert!(
        refused.text().contains("queue cannot store"),
        "{}",
        refused.text()
    );
    assert!(!accepted.is_empty());
    eprintln!("disk full after {} calls of 256 KiB: 503", accepted.len());
    // Every call that got a 202 is there.
    for id in &accepted {
        assert_eq!(status(&gw, id).await["state"], "queued");
    }
}
