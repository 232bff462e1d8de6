//! Classic mode: status codes, bodies, CGI variables, timeouts, limits, process cleanup.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    DEADLINE, Watchdog, eventually, get, post, process_gone, read_pid, send, wait_gone,
};

#[tokio::test]
async fn echoes_the_body_with_duration_and_content_type() {
    let wd = Watchdog::start(&[("fprocess", "cat")]).await;
    let req = Request::post("/")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"hello\":1}")))
        .unwrap();
    let r = send(wd.addr, req).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "{\"hello\":1}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let secs: f64 = r.header("x-duration-seconds").unwrap().parse().unwrap();
    assert!(secs >= 0.0);
}

#[tokio::test]
async fn every_method_invokes_the_function() {
    let wd = Watchdog::start(&[("fprocess", "sh -c 'echo $Http_Method'")]).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let req = Request::builder()
            .method(method)
            .uri("/any/path")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(wd.addr, req).await;
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(r.text().trim(), method);
    }
    let head = Request::head("/").body(Full::new(Bytes::new())).unwrap();
    let r = send(wd.addr, head).await;
    assert_eq!(r.status(), 200);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn content_type_variable_overrides() {
    let wd = Watchdog::start(&[("fprocess", "cat"), ("content_type", "text/csv")]).await;
    let r = post(wd.addr, "/", "a,b").await;
    assert_eq!(r.header("content-type").as_deref(), Some("text/csv"));
}

#[tokio::test]
async fn non_zero_exit_is_500_with_status_then_output() {
    let wd = Watchdog::start(&[("fprocess", "sh -c 'echo partial; echo oops >&2; exit 3'")]).await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 500);
    let text = r.text();
    assert!(text.starts_with("exit status 3\n"), "{text:?}");
    assert!(
        text.contains("partial\n") && text.contains("oops\n"),
        "{text:?}"
    );
}

#[tokio::test]
async fn combine_output_false_sends_stderr_to_the_log() {
    let wd = Watchdog::start(&[
        ("fprocess", "sh -c 'echo out; echo to-the-log >&2'"),
        ("combine_output", "false"),
    ])
    .await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.text(), "out\n");
    eventually("stderr in the log", DEADLINE, || {
        wd.log.text().contains("to-the-log").then_some(())
    })
    .await;
}

#[tokio::test]
async fn cgi_variables() {
    let wd = Watchdog::start(&[("fprocess", "env")]).await;
    let req = Request::post("/some/path?a=1&b=two")
        .header("host", "fn.example:8080")
        .header("x-custom-header", "first")
        .header("x-custom-header", "second")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let r = send(wd.addr, req).await;
    assert_eq!(r.status(), 200);
    let env = r.text();
    for want in [
        "Http_Method=POST",
        "Http_ContentLength=5",
        "Http_Content_Length=5",
        "Http_Query=a=1&b=two",
        "Http_Path=/some/path",
        "Http_Host=fn.example:8080",
        "Http_X_Custom_Header=first",
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
    }
    assert!(!env.contains("Http_Transfer_Encoding"), "{env}");
}

#[tokio::test]
async fn chunked_bodies_report_length_minus_one() {
    let wd = Watchdog::start(&[("fprocess", "sh -c 'env; cat'")]).await;
    let chunks = futures_util::stream::iter(vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"ab"))),
        Ok(hyper::body::Frame::data(Bytes::from_static(b"cd"))),
    ]);
    let req = Request::post("/").body(StreamBody::new(chunks)).unwrap();
    let r = send(wd.addr, req).await;
    let text = r.text();
    assert!(text.lines().any(|l| l == "Http_ContentLength=-1"), "{text}");
    assert!(
        text.lines().any(|l| l == "Http_Content_Length=-1"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "Http_Transfer_Encoding=chunked"),
        "{text}"
    );
    assert!(text.ends_with("abcd"), "{text}");
}

#[tokio::test]
async fn client_headers_cannot_inject_watchdog_variables() {
    let wd = Watchdog::start(&[("fprocess", "env")]).await;
    let req = Request::post("/real")
        .header("query", "x")
        .header("path", "/etc/passwd")
        .header("method", "DELETE")
        .header("x_sneaky", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let env = send(wd.addr, req).await.text();
    assert!(!env.contains("Http_Query"), "{env}");
    assert!(env.lines().any(|l| l == "Http_Path=/real"), "{env}");
    assert!(env.lines().any(|l| l == "Http_Method=POST"), "{env}");
    assert!(!env.contains("Http_X_Sneaky"), "{env}");
    assert_eq!(
        env.lines().filter(|l| l.starts_with("Http_Path=")).count(),
        1
    );
}

#[tokio::test]
async fn cgi_headers_false_passes_no_http_variables() {
    let wd = Watchdog::start(&[("fprocess", "env"), ("cgi_headers", "false")]).await;
    let env = post(wd.addr, "/", "").await.text();
    assert!(!env.contains("Http_"), "{env}");
    assert!(
        env.contains("PATH="),
        "the watchdog's env is inherited: {env}"
    );
}

#[tokio::test]
async fn marshal_request_wraps_headers_and_body_in_json() {
    let wd = Watchdog::start(&[("fprocess", "cat"), ("marshal_request", "true")]).await;
    let req = Request::post("/")
        .header("x-a", "1")
        .body(Full::new(Bytes::from_static(b"hello world")))
        .unwrap();
    let r = send(wd.addr, req).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["header"]["X-A"], serde_json::json!(["1"]));
    assert_eq!(v["body"]["raw"], "aGVsbG8gd29ybGQ=");
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_group_and_answers_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The grandchild inherits stdout and would hold the pipe open for 60s.
    let script = format!(
        "sh -c 'sleep 60 & echo $! > {}; sleep 60'",
        pidfile.display()
    );
    let wd = Watchdog::start(&[("fprocess", &script), ("exec_timeout", "1s")]).await;
    let started = Instant::now();
    let r = post(wd.addr, "/", "").await;
    let took = started.elapsed();
    assert_eq!(r.status(), 408);
    assert_eq!(r.text(), "Killed process.\n");
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let grandchild = read_pid(&pidfile).await;
    wait_gone(grandchild, "the grandchild to be killed").await;
}

#[tokio::test]
async fn write_timeout_kills_and_answers_504_with_a_body() {
    let wd = Watchdog::start(&[("fprocess", "sleep 60"), ("write_timeout", "1s")]).await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 504);
    assert!(r.text().contains("write_timeout"), "{}", r.text());
}

#[tokio::test]
async fn background_jobs_do_not_outlive_their_request() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    // Detaches its output so the response is not held, then returns at once.
    let script = format!(
        "sh -c 'sleep 60 >/dev/null 2>&1 & echo $! > {}; echo done'",
        pidfile.display()
    );
    let wd = Watchdog::start(&[("fprocess", &script)]).await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.text(), "done\n");
    let bg = read_pid(&pidfile).await;
    wait_gone(bg, "the background job to be killed").await;
}

#[tokio::test]
async fn an_escaped_grandchild_does_not_hold_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    // setsid leaves the process group; the escaped process keeps stdout open.
    let script = format!(
        "sh -c 'setsid sleep 30 & echo $! > {}; echo quick'",
        pidfile.display()
    );
    let wd = Watchdog::start(&[("fprocess", &script)]).await;
    let started = Instant::now();
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "quick\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid = read_pid(&pidfile).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn client_disconnect_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!("sh -c 'sleep 60 & echo $! > {}; wait'", pidfile.display());
    let wd = Watchdog::start(&[("fprocess", &script)]).await;
    let mut stream = TcpStream::connect(wd.addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let pid = read_pid(&pidfile).await;
    assert!(!process_gone(pid));
    drop(stream);
    wait_gone(pid, "the handler group to be killed").await;
}

#[tokio::test]
async fn max_inflight_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "sh -c 'while [ ! -e {} ]; do sleep 0.02; done; echo finished'",
        go.display()
    );
    let wd = Watchdog::start(&[("fprocess", &script), ("max_inflight", "1")]).await;
    let addr = wd.addr;
    let first = tokio::spawn(async move { post(addr, "/", "").await });
    let mut ready = 0;
    for _ in 0..1000 {
        ready = get(addr, "/_/ready").await.status();
        if ready == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 429, "/_/ready reports the limit");
    let r = post(addr, "/", "").await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.text(),
        "Concurrent request limit exceeded. Max concurrent requests: 1\n"
    );
    std::fs::write(&go, b"").unwrap();
    let r = first.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "finished\n");
    assert_eq!(get(addr, "/_/ready").await.status(), 200);
}

#[tokio::test]
async fn stalled_request_body_gets_408_and_frees_the_connection() {
    let wd = Watchdog::start(&[("fprocess", "cat"), ("read_timeout", "1s")]).await;
    let mut stream = TcpStream::connect(wd.addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("the connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn malformed_chunked_body_gets_400() {
    let wd = Watchdog::start(&[("fprocess", "cat")]).await;
    let mut stream = TcpStream::connect(wd.addr).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnope\r\n",
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("the connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

#[tokio::test]
async fn a_missing_handler_binary_is_a_500_that_says_so() {
    let wd = Watchdog::start(&[("fprocess", "/nonexistent/handler")]).await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 500);
    assert!(r.text().contains("/nonexistent/handler"), "{}", r.text());
}

#[tokio::test]
async fn long_log_lines_are_split_and_never_block() {
    // 300 KB on one stderr line: more than a pipe holds, so a reader that waited for a newline
    // with a bounded buffer would deadlock the handler.
    let wd = Watchdog::start(&[
        (
            "fprocess",
            "sh -c 'head -c 300000 /dev/zero | tr \"\\\\0\" x >&2; echo; echo ok'",
        ),
        ("combine_output", "false"),
        ("log_buffer_size", "1000"),
        ("prefix_logs", "false"),
    ])
    .await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.text(), "\nok\n");
    let lines = eventually("the split lines", DEADLINE, || {
        let text = wd.log.text();
        let xs: Vec<usize> = text
            .lines()
            .filter(|l| l.starts_with('x'))
            .map(str::len)
            .collect();
        (xs.iter().sum::<usize>() == 300_000).then_some(xs)
    })
    .await;
    assert_eq!(lines.len(), 300);
    assert!(lines.iter().all(|&n| n == 1000));
}

#[tokio::test]
async fn without_any_content_type_the_type_is_sniffed_from_the_output_as_go_does() {
    // The handler prints what the request body asks for (`cat`); nothing sets a type.
    let wd = Watchdog::start(&[("fprocess", "cat")]).await;
    let big_html = format!("<!DOCTYPE html>{}", "x".repeat(2 * 1024 * 1024));
    for (output, expected) in [
        (
            "  <html><body>hi</body></html>",
            Some("text/html; charset=utf-8"),
        ),
        ("hello", Some("text/plain; charset=utf-8")),
        ("{\"json\": true}", Some("text/plain; charset=utf-8")),
        ("\u{1}\u{2}\u{3}", Some("application/octet-stream")),
        ("%PDF-1.7", Some("application/pdf")),
        // Past the spill threshold: the first bytes come from the temp file.
        (big_html.as_str(), Some("text/html; charset=utf-8")),
        ("", None),
    ] {
        let req = Request::post("/")
            .body(Full::new(Bytes::from(output.to_string())))
            .unwrap();
        let r = send(wd.addr, req).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().len(), output.len());
        assert_eq!(
            r.header("content-type").as_deref(),
            expected,
            "{output:.20}"
        );
    }
    // A failure's "exit status N" text is sniffed too.
    let failing = Watchdog::start(&[("fprocess", "sh -c 'echo oops; exit 3'")]).await;
    let r = get(failing.addr, "/").await;
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    // The request's type, or content_type, still wins.
    let req = Request::post("/")
        .header("content-type", "application/x-mine")
        .body(Full::new(Bytes::from_static(b"<html>")))
        .unwrap();
    assert_eq!(
        send(wd.addr, req).await.header("content-type").as_deref(),
        Some("application/x-mine")
    );
}
