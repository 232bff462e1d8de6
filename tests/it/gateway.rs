//! fgateway with real fwatchdog children: proxying, errors, the system API, replicas, restarts,
//! persistence, shutdown and auth.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use nix::sys::signal::Signal;

use crate::harness::{
    DEADLINE, Gateway, KeepAlive, Reply, descendants, free_port, get, process_gone, send,
    send_streaming, wait_status,
};

/// A stack file with an http-mode function (`web`, the python-http example on its own port)
/// and a fork-per-request one (`echo`).
fn stack(dir: &Path) -> std::path::PathBuf {
    let port = free_port();
    let root = env!("CARGO_MANIFEST_DIR");
    let yaml = format!(
        r#"
functions:
  web:
    handler: {root}/examples/python-http
    fprocess: python3 server.py
    environment:
      mode: http
      upstream_url: http://127.0.0.1:{port}
      LISTEN_PORT: {port}
      ready_path: /ready
      QUIET: 1
  echo:
    handler: {root}/examples/echo
    fprocess: sh handler.sh
"#
    );
    let path = dir.join("stack.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn up_with_stack(data: &tempfile::TempDir, extra: &[&str]) -> Gateway {
    let file = stack(data.path());
    let mut args = vec!["-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let gw = Gateway::start(data.path(), &args, &[]).await;
    wait_status(gw.addr, "/function/web/ready", 200).await;
    gw
}

async fn call(gw: &Gateway, method: &str, path: &str, body: &'static str) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw.example")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(gw.addr, req).await
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[tokio::test]
async fn keep_alive_clients_keep_their_own_connections_down_the_chain() {
    // Client → fgateway → fwatchdog (http mode) → the example server, which reports the port
    // of the connection each request came in on. From their third request on, two keep-alive
    // clients each stay on connections of their own, at every hop; every request line carries
    // the path alone and the client's Host comes through.
    let data = tempfile::tempdir().unwrap();
    let gw = up_with_stack(&data, &[]).await;
    let port = |r: &Reply, target: &str| {
        assert_eq!(r.status(), 200, "{}", r.text());
        let v = json(r);
        assert_eq!(v["target"], target, "{v}");
        assert_eq!(v["headers"]["host"], "localhost", "{v}");
        v["peer_port"].as_u64().unwrap()
    };
    let mut first = KeepAlive::open(gw.addr).await;
    let mut second = KeepAlive::open(gw.addr).await;
    for _ in 0..2 {
        port(&first.post("/function/web/", "a").await, "/");
        port(&second.post("/function/web/", "a").await, "/");
    }
    let mine = port(&first.post("/function/web/", "b").await, "/");
    let theirs = port(&second.post("/function/web/", "b").await, "/");
    assert_ne!(mine, theirs);
    for _ in 0..5 {
        assert_eq!(
            port(&first.post("/function/web/x?q=1", "c").await, "/x?q=1"),
            mine
        );
        assert_eq!(
            port(&second.post("/function/web/y", "c").await, "/y"),
            theirs
        );
    }
}

#[tokio::test]
async fn proxies_methods_paths_queries_headers_and_bodies() {
    let data = tempfile::tempdir().unwrap();
    let gw = up_with_stack(&data, &[]).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = call(&gw, method, "/function/web/a/b?x=1&y=%20z", "body!").await;
        assert_eq!(r.status(), 200, "{method}: {}", r.text());
        let v = json(&r);
        assert_eq!(v["method"], method);
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["query"], "x=1&y=%20z");
        assert_eq!(v["body_bytes"], 5);
        // The caller, then the gateway (added by the function's fwatchdog).
        assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1, 127.0.0.1");
        assert_eq!(v["headers"]["x-forwarded-host"], "gw.example");
        let call_id = r.header("x-call-id").unwrap();
        assert_eq!(v["headers"]["x-call-id"], call_id.as_str());
        let start: u128 = v["headers"]["x-start-time"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(start > 1_600_000_000_000_000_000);
        // The caller sees the same start time, as from OpenFaaS's gateway.
        assert_eq!(
            r.header("x-start-time").as_deref(),
            v["headers"]["x-start-time"].as_str(),
            "{method}"
        );
    }
    // A caller's call id is kept; hop-by-hop headers do not cross.
    let req = Request::get("/function/web.openfaas-fn/")
        .header("x-call-id", "my-call-1")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.header("x-call-id").as_deref(), Some("my-call-1"));
    let v = json(&r);
    assert_eq!(v["headers"]["x-call-id"], "my-call-1");
    assert!(v["headers"].get("x-secret").is_none());
    let unknown = get(gw.addr, "/function/web.other-ns/").await;
    assert_eq!(unknown.status(), 404);
    assert!(unknown.header("x-start-time").is_some() && unknown.header("x-call-id").is_some());
    // No name at all (what the OpenFaaS certifier calls): 404 too.
    assert_eq!(get(gw.addr, "/function/.openfaas-fn").await.status(), 404);

    // Streamed both ways: 20 MB through the gateway and the watchdog and back.
    const TOTAL: usize = 20 * 1024 * 1024;
    let req = Request::post("/function/web/echo")
        .header("content-length", TOTAL.to_string())
        .body(crate::harness::big_body(TOTAL))
        .unwrap();
    let resp = send_streaming(gw.addr, req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(received, TOTAL);

    // A fork-per-request function works the same way.
    let r = call(&gw, "POST", "/function/echo/hello?q=1", "hi").await;
    assert_eq!(r.text(), "method=POST path=/hello query=q=1\nhi");
}

#[tokio::test]
async fn unknown_unreachable_and_slow_functions_say_which() {
    let data = tempfile::tempdir().unwrap();
    let gw = up_with_stack(&data, &["--upstream-timeout", "1s"]).await;
    // The web function may run 30 s (http mode's default exec_timeout): the gateway says so.
    assert!(
        gw.log
            .text()
            .contains("upstream_timeout is shorter than the function's exec_timeout"),
        "{}",
        gw.log.text()
    );
    let r = get(gw.addr, "/function/nope").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().contains("nope not found"), "{}", r.text());

    let started = Instant::now();
    let r = get(gw.addr, "/function/web/sleep?s=5").await;
    assert_eq!(r.status(), 504);
    assert!(r.text().contains("upstream_timeout (1s)"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(4));

    // The static provider pointed at a port nobody listens on.
    let data = tempfile::tempdir().unwrap();
    let dead = free_port();
    let file = data.path().join("stack.yml");
    std::fs::write(
        &file,
        format!("functions:\n  gone:\n    upstream: http://127.0.0.1:{dead}\n"),
    )
    .unwrap();
    let gw = Gateway::start(
        data.path(),
        &["--provider", "static", "-f", file.to_str().unwrap()],
        &[],
    )
    .await;
    let r = get(gw.addr, "/function/gone/").await;
    assert_eq!(r.status(), 502);
    assert!(
        r.text().contains("Cannot reach function gone"),
        "{}",
        r.text()
    );
}

/// The distinct answers of `n` calls.
async fn answers(gw: &Gateway, path: &str, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status(), 200, "{}", r.text());
        seen.insert(r.text());
    }
    seen
}

fn deploy_json(greeting: &str) -> String {
    // $PPID is the fwatchdog replica that forked the handler: it tells replicas apart.
    serde_json::json!({
        "service": "hello",
        "image": "example/hello:1",
        "envProcess": "sh -c 'echo $GREETING $PPID'",
        "envVars": {"GREETING": greeting},
        "labels": {"team": "a"}
    })
    .to_string()
}

async fn system(gw: &Gateway, method: &str, path: &str, body: String) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(gw.addr, req).await
}

#[tokio::test]
async fn deploy_update_scale_delete() {
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(data.path(), &[], &[]).await;

    let r = system(&gw, "POST", "/system/functions", deploy_json("hello")).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let r = get(gw.addr, "/function/hello").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(r.text().starts_with("hello "), "{}", r.text());

    let r = system(&gw, "PUT", "/system/functions", deploy_json("bonjour")).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let r = get(gw.addr, "/function/hello").await;
    assert!(
        r.text().starts_with("bonjour "),
        "the update took effect at once: {}",
        r.text()
    );

    let status = json(&get(gw.addr, "/system/function/hello").await);
    assert_eq!(status["name"], "hello");
    assert_eq!(status["image"], "example/hello:1");
    assert_eq!(status["envVars"]["GREETING"], "bonjour");
    assert_eq!(status["labels"]["team"], "a");
    assert_eq!(status["labels"]["faas_function"], "hello");
    assert_eq!(status["replicas"], 1);
    // faas-provider's shape: what was not deployed is left out (annotations excepted, `{}`).
    assert_eq!(status["annotations"], serde_json::json!({}));
    for absent in [
        "requests",
        "limits",
        "constraints",
        "secrets",
        "readOnlyRootFilesystem",
    ] {
        assert!(status.get(absent).is_none(), "{absent}: {status}");
    }

    let r = system(
        &gw,
        "POST",
        "/system/scale-function/hello",
        r#"{"serviceName":"hello","replicas":3}"#.into(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let end = Instant::now() + DEADLINE;
    loop {
        let status = json(&get(gw.addr, "/system/function/hello").await);
        if status["availableReplicas"] == 3 {
            break;
        }
        assert!(
            Instant::now() < end,
            "replicas never became ready: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = answers(&gw, "/function/hello", 12).await;
    assert_eq!(seen.len(), 3, "requests were not spread: {seen:?}");

    let list = json(&get(gw.addr, "/system/functions").await);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let r = system(
        &gw,
        "DELETE",
        "/system/functions",
        r#"{"functionName":"hello"}"#.into(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    assert_eq!(get(gw.addr, "/function/hello").await.status(), 404);
    assert_eq!(get(gw.addr, "/system/function/hello").await.status(), 404);
    let r = system(
        &gw,
        "DELETE",
        "/system/functions",
        r#"{"functionName":"hello"}"#.into(),
    )
    .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_deployments_are_400_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(data.path(), &[], &[]).await;
    let r = system(&gw, "POST", "/system/functions", "{not json".into()).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("Invalid JSON"), "{}", r.text());
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        r#"{"service":"Bad_Name","envProcess":"cat"}"#.into(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("Bad_Name"), "{}", r.text());
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        r#"{"service":"noproc"}"#.into(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("envProcess"), "{}", r.text());
    let r = system(&gw, "PUT", "/system/functions", deploy_json("x")).await;
    assert_eq!(r.status(), 404);
    let r = system(
        &gw,
        "POST",
        "/system/scale-function/hello",
        r#"{"replicas":2}"#.into(),
    )
    .await;
    assert_eq!(r.status(), 404);
}

/// The fwatchdog replicas (direct children) of a gateway.
fn replicas(gw: &Gateway) -> Vec<i32> {
    let gateway = gw.pid();
    descendants(gateway)
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                    .is_some_and(|ppid| ppid == gateway.to_string())
            })
        })
        .collect()
}

#[tokio::test]
async fn a_killed_replica_is_restarted() {
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(data.path(), &[], &[]).await;
    let r = system(&gw, "POST", "/system/functions", deploy_json("hi")).await;
    assert_eq!(r.status(), 202);
    let first = get(gw.addr, "/function/hello").await.text();
    let before = replicas(&gw);
    assert_eq!(before.len(), 1, "{before:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before[0]), Signal::SIGKILL).unwrap();
    let end = Instant::now() + DEADLINE;
    loop {
        let r = get(gw.addr, "/function/hello").await;
        if r.status() == 200 && r.text() != first {
            break;
        }
        assert!(Instant::now() < end, "the replica never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.log.text().contains("restarting"), "{}", gw.log.text());
}

#[tokio::test]
async fn a_restarted_gateway_brings_its_functions_back() {
    let data = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(data.path(), &[], &[]).await;
    assert_eq!(
        system(&gw, "POST", "/system/functions", deploy_json("again"))
            .await
            .status(),
        202
    );
    assert_eq!(
        system(
            &gw,
            "POST",
            "/system/scale-function/hello",
            r#"{"replicas":2}"#.into()
        )
        .await
        .status(),
        202
    );
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(DEADLINE).await.code(), Some(0));
    drop(gw);

    let gw = Gateway::start(data.path(), &[], &[]).await;
    let r = get(gw.addr, "/function/hello").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(r.text().starts_with("again "), "{}", r.text());
    let status = json(&get(gw.addr, "/system/function/hello").await);
    assert_eq!(status["replicas"], 2);
}

#[tokio::test]
async fn sigterm_and_sigkill_leave_no_process_behind() {
    let data = tempfile::tempdir().unwrap();
    let mut gw = up_with_stack(&data, &[]).await;
    let family = descendants(gw.pid());
    // Two replicas and the http function's Python server.
    assert!(family.len() >= 3, "{family:?}");
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(DEADLINE).await.code(), Some(0));
    for pid in &family {
        assert!(process_gone(*pid), "pid {pid} outlived the gateway");
    }

    // SIGKILL gives the gateway no chance to clean up: the parent-death signal does it.
    let data = tempfile::tempdir().unwrap();
    let mut gw = up_with_stack(&data, &[]).await;
    let family = descendants(gw.pid());
    gw.signal(Signal::SIGKILL);
    gw.wait_exit(DEADLINE).await;
    for pid in family {
        crate::harness::wait_gone(pid, "a child of the killed gateway to die").await;
    }
}

#[tokio::test]
async fn basic_auth_guards_the_system_api_and_async_results() {
    let data = tempfile::tempdir().unwrap();
    let secrets = data.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("basic-auth-user"), "admin\n").unwrap();
    std::fs::write(secrets.join("basic-auth-password"), "pa55word\n").unwrap();
    let file = stack(data.path());
    let gw = Gateway::start(
        data.path(),
        &[
            "-f",
            file.to_str().unwrap(),
            "--basic-auth",
            "--secret-mount-path",
            secrets.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let r = get(gw.addr, "/system/functions").await;
    assert_eq!(r.status(), 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let creds = |user_pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    for (user_pass, want) in [("admin:wrong", 401), ("admin:pa55word", 200)] {
        let req = Request::get("/system/functions")
            .header("authorization", creds(user_pass))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(gw.addr, req).await.status(), want, "{user_pass}");
    }
    assert_eq!(get(gw.addr, "/function/echo").await.status(), 200);
    assert_eq!(get(gw.addr, "/healthz").await.status(), 200);

    // Enqueueing stays open like /function/; reading a result or cancelling needs credentials.
    let r = crate::harness::post(gw.addr, "/async-function/echo", "later").await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let id = r.header("x-call-id").unwrap();
    let status_path = format!("/async-function/status/{id}");
    assert_eq!(get(gw.addr, &status_path).await.status(), 401);
    let req = Request::delete(format!("/async-function/{id}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status(), 401);
    let req = Request::get(status_path.as_str())
        .header("authorization", creds("admin:pa55word"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status(), 200);
}

#[tokio::test]
async fn metrics_count_invocations() {
    let data = tempfile::tempdir().unwrap();
    let gw = up_with_stack(&data, &[]).await;
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/function/echo").await.status(), 200);
    }
    let text = get(gw.addr, "/metrics").await.text();
    assert!(
        text.contains(r#"gateway_function_invocation_total{function_name="echo",code="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gateway_service_count{function_name="web"} 1"#),
        "{text}"
    );
    assert!(text.contains("gateway_functions_seconds_bucket"), "{text}");
    assert!(
        text.contains("gateway_function_invocation_started_total"),
        "{text}"
    );
}

#[test]
fn bad_command_lines_exit_64() {
    let out = std::process::Command::new(crate::harness::fgateway_bin())
        .args(["up", "--upstream-timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream-timeout"));
    let help = std::process::Command::new(crate::harness::fgateway_bin())
        .args(["up", "--help"])
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--file",
        "--data-dir",
        "--upstream-timeout",
        "--basic-auth",
        "[env: upstream_timeout=",
    ] {
        assert!(
            text.contains(option),
            "{option} missing from --help:\n{text}"
        );
    }
}

#[tokio::test]
async fn websockets_tunnel_through_the_gateway_to_an_http_mode_function() {
    let data = tempfile::tempdir().unwrap();
    let gw = up_with_stack(&data, &[]).await;
    let open = crate::harness::websocket_echo(gw.addr, "/function/web/ws").await;
    let metrics = get(gw.addr, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_upgraded_connections 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_upgraded_connections_opened_total 1"),
        "{metrics}"
    );
    drop(open);
    crate::harness::eventually_async("the tunnel to close", DEADLINE, || async {
        get(gw.addr, "/metrics")
            .await
            .text()
            .contains("gateway_upgraded_connections 0")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn open_websockets_are_drained_then_cut_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = tempfile::tempdir().unwrap();
    let mut gw = up_with_stack(&data, &["--shutdown-timeout", "2s"]).await;
    let mut open = crate::harness::websocket_echo(gw.addr, "/function/web/ws").await;
    gw.signal(Signal::SIGTERM);
    // Still tunnelled while the gateway drains.
    let mask = [9u8, 8, 7, 6];
    let message = b"during the drain";
    let mut frame = vec![0x81, 0x80 | message.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(message.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    open.write_all(&frame).await.unwrap();
    let mut reply = vec![0u8; 2 + message.len()];
    tokio::time::timeout(DEADLINE, open.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[2..], message);
    // Then cut, and the gateway exits.
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}\n{}", gw.log.text());
    assert!(
        gw.log
            .text()
            .contains("closing upgraded connections still open")
    );
}
