//! The handlers in `examples/`, run exactly as `examples/README.md` tells users to run them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::{get, post, start_in_repo, wait_gone};

#[tokio::test]
async fn echo_reports_the_request_and_echoes_the_body() {
    let wd = start_in_repo(&[("fprocess", "sh examples/echo/handler.sh")]).await;
    let r = post(wd.addr, "/greet?lang=en", "hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "method=POST path=/greet query=lang=en\nhello");
}

#[tokio::test]
async fn python_env_reads_http_variables() {
    let wd = start_in_repo(&[
        ("fprocess", "python3 examples/python-env/handler.py"),
        ("content_type", "application/json"),
    ])
    .await;
    let req = Request::post("/people?name=Ada&tag=a&tag=b")
        .header("X-Request-Id", "abc")
        .header("Query", "injected")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let r = crate::harness::send(wd.addr, req).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["greeting"], "Hello, Ada!");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/people");
    assert_eq!(v["query"]["tag"], serde_json::json!(["a", "b"]));
    assert_eq!(v["headers"]["X_Request_Id"], "abc");
    assert_eq!(v["body_bytes"], 5);
    // The `Query` header did not become the query string.
    assert_eq!(v["query"]["name"], "Ada");
}

#[tokio::test]
async fn flaky_fails_times_out_and_leaves_nothing_behind() {
    let wd = start_in_repo(&[
        ("fprocess", "sh examples/flaky/handler.sh"),
        ("exec_timeout", "2s"),
    ])
    .await;

    let r = get(wd.addr, "/?exit=3").await;
    assert_eq!(r.status(), 500);
    assert!(r.text().starts_with("exit status 3\n"), "{}", r.text());
    assert!(
        r.text().contains("failing with exit status 3"),
        "{}",
        r.text()
    );

    let started = Instant::now();
    let r = get(wd.addr, "/?sleep=30").await;
    assert_eq!(r.status(), 408);
    assert_eq!(r.text(), "Killed process.\n");
    assert!(started.elapsed() < Duration::from_secs(10));

    let started = Instant::now();
    let r = get(wd.addr, "/?orphan=1").await;
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = r.text();
    let pid: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("left pid ")?.strip_suffix(" behind"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    assert!(text.ends_with("ok\n"), "{text:?}");
    wait_gone(pid, "the orphaned sleep to be killed").await;
}
