//! The queue's listing routes through the gateway: `GET /system/async/calls` with filters and
//! pages, the paged dead letters, the queue figures, and the 400s for bad parameters.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::harness::{DEADLINE, Gateway, eventually_async, get, send};

async fn enqueue(gw: &Gateway, function: &str, id: &str) {
    let req = Request::post(format!("/async-function/{function}"))
        .header("x-call-id", id)
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status(), 202, "{}", r.text());
}

async fn json(gw: &Gateway, path: &str) -> Value {
    let r = get(gw.addr, path).await;
    assert_eq!(r.status(), 200, "{path}: {}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

#[tokio::test]
async fn calls_are_listed_filtered_and_paged_and_bad_parameters_are_named() {
    let data = tempfile::tempdir().unwrap();
    let stack = data.path().join("stack.yml");
    std::fs::write(
        &stack,
        "functions:\n  ok:\n    fprocess: cat\n  bad:\n    fprocess: \"sh -c 'exit 1'\"\n",
    )
    .unwrap();
    let gw = Gateway::start(
        data.path(),
        &["-f", stack.to_str().unwrap(), "--max-retry-attempts", "1"],
        &[],
    )
    .await;
    for i in 0..5 {
        enqueue(&gw, "ok", &format!("ok-{i}")).await;
    }
    enqueue(&gw, "bad", "bad-0").await;
    enqueue(&gw, "bad", "bad-1").await;

    // Every call ends; two are dead letters.
    let stats = eventually_async("every call finished", DEADLINE, || async {
        let s = json(&gw, "/system/async/stats").await;
        (s["depth"] == 0 && s["inFlight"] == 0 && s["deadLetters"] == 2).then_some(s)
    })
    .await;
    assert_eq!(stats["retrying"], 0);

    // Pages of two, newest first, until `next` is absent.
    let mut seen = Vec::new();
    let mut path = "/system/async/calls?function=ok&limit=2".to_string();
    loop {
        let page = json(&gw, &path).await;
        for c in page["calls"].as_array().unwrap() {
            assert_eq!(c["function"], "ok");
            seen.push(c["callId"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/system/async/calls?function=ok&limit=2&after={next}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["ok-0", "ok-1", "ok-2", "ok-3", "ok-4"]);
    let failed = json(&gw, "/system/async/calls?state=failed").await;
    assert_eq!(failed["calls"].as_array().unwrap().len(), 2);

    // Dead letters, one a page: the next position is a header.
    let r = get(gw.addr, "/system/async/dead-letters?limit=1").await;
    assert_eq!(r.status(), 200);
    let next = r.header("x-next-after").expect("a second page");
    let first: Value = serde_json::from_str(&r.text()).unwrap();
    let r = get(
        gw.addr,
        &format!("/system/async/dead-letters?limit=1&after={next}"),
    )
    .await;
    let second: Value = serde_json::from_str(&r.text()).unwrap();
    assert!(r.header("x-next-after").is_none());
    assert_ne!(first[0]["callId"], second[0]["callId"]);

    for (query, names) in [
        ("state=done", "state"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("after=nonsense", "after"),
    ] {
        let r = get(gw.addr, &format!("/system/async/calls?{query}")).await;
        assert_eq!(r.status(), 400, "{query}");
        assert!(r.text().contains(names), "{query}: {}", r.text());
    }
}
