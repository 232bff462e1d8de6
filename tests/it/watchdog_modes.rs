//! of-watchdog's fork modes: `serializing` and `streaming`.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::harness::{DEADLINE, Watchdog, post, send_streaming, wait_gone};

#[tokio::test]
async fn serializing_success_and_failure() {
    let wd = Watchdog::start(&[("fprocess", "cat"), ("mode", "serializing")]).await;
    let r = post(wd.addr, "/", "payload").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "payload");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(r.header("x-duration-seconds").is_some());

    let wd = Watchdog::start(&[
        ("fprocess", "sh -c 'echo out; echo err >&2; exit 2'"),
        ("mode", "serializing"),
    ])
    .await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.text(), "exit status 2");
}

#[tokio::test]
async fn serializing_exec_timeout_is_504() {
    let wd = Watchdog::start(&[
        ("fprocess", "sleep 60"),
        ("mode", "serializing"),
        ("exec_timeout", "500ms"),
    ])
    .await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 504);
    assert!(r.text().contains("exec_timeout"), "{}", r.text());
}

#[tokio::test]
async fn streaming_output_arrives_before_the_handler_ends() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "sh -c 'echo first; while [ ! -e {} ]; do sleep 0.02; done; echo second'",
        go.display()
    );
    let wd = Watchdog::start(&[("fprocess", &script), ("mode", "streaming")]).await;
    let req = Request::post("/").body(Full::new(Bytes::new())).unwrap();
    let resp = send_streaming(wd.addr, req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("first chunk arrives while the handler still runs")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first\n");
    std::fs::write(&go, b"").unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second\n");
}

#[tokio::test]
async fn streaming_failure_before_the_first_byte_is_500() {
    let wd = Watchdog::start(&[
        ("fprocess", "sh -c 'echo bad >&2; exit 4'"),
        ("mode", "streaming"),
    ])
    .await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.text(), "exit status 4");
}

#[tokio::test]
async fn streaming_timeout_before_the_first_byte_is_504() {
    let wd = Watchdog::start(&[
        ("fprocess", "sleep 60"),
        ("mode", "streaming"),
        ("exec_timeout", "500ms"),
    ])
    .await;
    let r = post(wd.addr, "/", "").await;
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn streaming_failure_after_the_first_byte_aborts_the_body() {
    for (script, timeout) in [
        ("sh -c 'echo partial; sleep 0.2; exit 1'", "30s"),
        ("sh -c 'echo partial; exec sleep 60'", "1s"),
    ] {
        let wd = Watchdog::start(&[
            ("fprocess", script),
            ("mode", "streaming"),
            ("exec_timeout", timeout),
        ])
        .await;
        let req = Request::post("/").body(Full::new(Bytes::new())).unwrap();
        let resp = send_streaming(wd.addr, req).await;
        assert_eq!(resp.status(), 200);
        let result = tokio::time::timeout(DEADLINE, resp.into_body().collect())
            .await
            .expect("the body ends");
        assert!(
            result.is_err(),
            "{script}: a failed stream must not end cleanly"
        );
    }
}

#[tokio::test]
async fn streaming_client_disconnect_kills_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!(
        "sh -c 'echo $$ > {}; while true; do echo tick; sleep 0.05; done'",
        pidfile.display()
    );
    let wd = Watchdog::start(&[("fprocess", &script), ("mode", "streaming")]).await;
    let req = Request::post("/").body(Full::new(Bytes::new())).unwrap();
    let resp = send_streaming(wd.addr, req).await;
    let mut body = resp.into_body();
    let _ = body.frame().await;
    let pid = crate::harness::read_pid(&pidfile).await;
    drop(body);
    wait_gone(pid, "the streaming handler to be killed").await;
}

/// A line per request in of-watchdog's words once the response is sent (the body bytes sent
/// counted), in every fork mode but classic; `log_requests=false` turns it off.
#[tokio::test]
async fn each_request_is_logged_as_of_watchdog_logs_it() {
    for mode in ["serializing", "streaming"] {
        let wd = Watchdog::start(&[("fprocess", "cat"), ("mode", mode)]).await;
        assert_eq!(post(wd.addr, "/x?y=1", "hello").await.status(), 200);
        crate::harness::eventually("the request's line", DEADLINE, || {
            let log = wd.log.text();
            log.lines()
                .find(|l| l.contains("POST /x?y=1 - 200 - ContentLength: 5B ("))
                .map(str::to_string)
        })
        .await;
        // The stamp is Go's log stamp: digits, slashes, colons and spaces.
        let line = wd
            .log
            .text()
            .lines()
            .find(|l| l.contains("ContentLength"))
            .unwrap()
            .to_string();
        assert!(
            line[..20]
                .chars()
                .all(|c| c.is_ascii_digit() || "/: ".contains(c)),
            "{line}"
        );
        let quiet = Watchdog::start(&[
            ("fprocess", "cat"),
            ("mode", mode),
            ("log_requests", "false"),
        ])
        .await;
        assert_eq!(post(quiet.addr, "/x", "hello").await.status(), 200);
        // Its whole log, up to its last line: a request line would be in it.
        quiet.signal(nix::sys::signal::Signal::SIGTERM);
        crate::harness::eventually("the quiet watchdog's last line", DEADLINE, || {
            quiet.log.text().contains("exiting").then_some(())
        })
        .await;
        assert!(!quiet.log.text().contains("ContentLength"), "{mode}");
    }
}
