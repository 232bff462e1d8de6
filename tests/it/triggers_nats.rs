//! NATS subjects as triggers (the nats-connector's `topic` annotation), on a real nats-server
//! and real gateways: each message runs once across gateways, request/reply returns the
//! function's output, and subscriptions survive a NATS restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Gateway, Nats, eventually, eventually_async, get};

/// A stack file with `onmsg` (subject `orders.created`, appending its body and headers to
/// `DIR/onmsg.runs`) and `greet` (subject `greet`, answering `hello BODY`).
fn stack(dir: &Path) -> PathBuf {
    let d = dir.display();
    let yaml = format!(
        r#"
functions:
  onmsg:
    fprocess: sh -c 'echo "$(cat) $Http_X_Topic $Http_X_Connector" >> {d}/onmsg.runs'
    annotations:
      topic: orders.created
  greet:
    fprocess: sed 's/^/hello /'
    annotations:
      topic: greet
"#
    );
    let path = dir.join("stack.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// How many times each payload ran.
fn runs(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(dir.join("onmsg.runs"))
        .unwrap_or_default()
        .lines()
    {
        *counts
            .entry(line.split(' ').next().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// A client of the test's own.
async fn client(nats: &Nats) -> async_nats::Client {
    async_nats::connect(nats.url()).await.unwrap()
}

/// Waits until `gw` has subscribed to every subject.
async fn subscribed(gw: &Gateway) {
    eventually("the gateway subscribed", Duration::from_secs(20), || {
        let log = gw.log.text();
        let said = |subject: &str| {
            log.lines()
                .any(|l| l.contains(" subscribed ") && l.contains(subject))
        };
        (said("orders.created") && said("greet")).then_some(())
    })
    .await;
}

/// Publishes `payload` on `subject` until `seen`, for up to `limit`: while a subscription is
/// being made, a message may find no subscriber.
async fn publish_until(
    c: &async_nats::Client,
    (subject, payload): (&'static str, &'static str),
    limit: Duration,
    seen: impl Fn() -> bool,
) {
    eventually_async(&format!("a message on {subject} taken"), limit, || async {
        c.publish(subject, payload.into()).await.ok()?;
        c.flush().await.ok()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen().then_some(())
    })
    .await;
}

/// The `gateway_trigger_firings_total` of `onmsg` at `gw`.
async fn firings(gw: &Gateway) -> f64 {
    get(gw.addr, "/metrics")
        .await
        .text()
        .lines()
        .find(|l| {
            l.starts_with("gateway_trigger_firings_total") && l.contains("function_name=\"onmsg\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Two gateways on one JetStream queue (their triggers on the same server, by default):
/// 40 messages each run once, shared between the gateways; a request gets the function's
/// output as its reply.
#[tokio::test]
async fn messages_run_once_across_gateways_and_requests_get_replies() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let url = nats.url();
    let args = ["-f", file.to_str().unwrap(), "--queue", url.as_str()];
    let a = Gateway::start(&dir.path().join("a"), &args, &[]).await;
    let b = Gateway::start(&dir.path().join("b"), &args, &[]).await;
    subscribed(&a).await;
    subscribed(&b).await;

    let c = client(&nats).await;
    for i in 0..40 {
        c.publish("orders.created", format!("order-{i}").into())
            .await
            .unwrap();
    }
    c.flush().await.unwrap();
    let counts = eventually_async("40 messages run", Duration::from_secs(30), || async {
        let counts = runs(dir.path());
        (counts.len() >= 40).then_some(counts)
    })
    .await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let line = std::fs::read_to_string(dir.path().join("onmsg.runs")).unwrap();
    assert!(
        line.lines()
            .next()
            .unwrap()
            .ends_with(" orders.created nats-connector"),
        "{line}"
    );
    let (fa, fb) = (firings(&a).await, firings(&b).await);
    assert_eq!(fa + fb, 40.0, "a {fa}, b {fb}");
    assert!(fa > 0.0 && fb > 0.0, "one queue group: a {fa}, b {fb}");

    let reply = tokio::time::timeout(Duration::from_secs(20), c.request("greet", "nats".into()))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&reply.payload).trim(), "hello nats");
    let headers = reply.headers.expect("the reply's headers");
    assert_eq!(
        headers.get("X-Function-Status").map(|v| v.as_str()),
        Some("200")
    );
    assert!(headers.get("X-Call-Id").is_some());

    let r = get(a.addr, "/system/triggers").await.text();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&r).unwrap();
    let onmsg = rows.iter().find(|r| r["function"] == "onmsg").unwrap();
    assert_eq!(onmsg["kind"], "nats");
    assert_eq!(onmsg["subjects"][0], "orders.created");

    queue_subjects_are_not_triggers([&a, &b], &c, dir.path()).await;
}

/// Deploys `spec` through `gw`'s API.
async fn deploy(gw: &Gateway, spec: serde_json::Value) -> crate::harness::Reply {
    crate::harness::post(gw.addr, "/system/functions", spec.to_string()).await
}

/// On a JetStream queue: a subject of the queue's own is refused at deploy, and a function
/// subscribed to every subject of two tokens or more (`*.>`) is called for the users'
/// messages only, not for what the queue and the replies publish (each call it made would
/// be published again). Both gateways deploy it: they share the queue, not their functions.
async fn queue_subjects_are_not_triggers(
    gateways: [&Gateway; 2],
    c: &async_nats::Client,
    dir: &Path,
) {
    let r = deploy(
        gateways[0],
        serde_json::json!({"service": "loop", "envProcess": "cat",
            "annotations": {"topic": "orders.created,faas-request.loop"}}),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert!(
        r.text().contains("topic") && r.text().contains("faas-request.>"),
        "{}",
        r.text()
    );

    let log = dir.join("all.runs");
    for gw in gateways {
        let r = deploy(
            gw,
            serde_json::json!({"service": "all", "annotations": {"topic": "*.>"},
                "envProcess": format!("sh -c 'echo $Http_X_Topic >> {}'", log.display())}),
        )
        .await;
        assert_eq!(r.status(), 202, "{}", r.text());
    }
    let topics = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    // Published until one gets through (the subscription follows the deployment).
    publish_until(c, ("misc.first", "x"), Duration::from_secs(20), || {
        topics().iter().any(|t| t == "misc.first")
    })
    .await;
    // A request through `greet`: its call is published on the queue's subject and its reply
    // on an inbox, which `*.>` both match.
    let reply = tokio::time::timeout(Duration::from_secs(20), c.request("greet", "x".into()))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&reply.payload).trim(), "hello x");
    c.publish("misc.last", "x".into()).await.unwrap();
    c.flush().await.unwrap();
    let seen = eventually("the last message", Duration::from_secs(20), || {
        let seen = topics();
        seen.iter().any(|t| t == "misc.last").then_some(seen)
    })
    .await;
    assert!(seen.iter().all(|t| t.starts_with("misc.")), "{seen:?}");
}

/// `--triggers-nats` with the embedded queue: the server restarts, the gateway's client
/// reconnects and resubscribes, and the next messages run; once the function is deleted, its
/// subject's messages run nothing.
#[tokio::test]
async fn subscriptions_survive_a_nats_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path());
    let url = nats.url();
    let gw = Gateway::start(
        dir.path(),
        &[
            "-f",
            file.to_str().unwrap(),
            "--triggers-nats",
            url.as_str(),
        ],
        &[],
    )
    .await;
    subscribed(&gw).await;
    let c = client(&nats).await;
    c.publish("orders.created", "before".into()).await.unwrap();
    c.flush().await.unwrap();
    eventually("the first message run", Duration::from_secs(20), || {
        runs(dir.path()).contains_key("before").then_some(())
    })
    .await;

    nats.down(nix::sys::signal::Signal::SIGKILL).await;
    nats.up().await;
    // Published until one gets through: the clients reconnect with backoff.
    let c = client(&nats).await;
    publish_until(
        &c,
        ("orders.created", "after"),
        Duration::from_secs(30),
        || runs(dir.path()).contains_key("after"),
    )
    .await;

    // The function deleted: its subject is unsubscribed; a message on it runs nothing (a
    // request to the other function, answered, shows the gateway took what came after it).
    let r = crate::harness::request(
        gw.addr,
        http::Method::DELETE,
        "/system/functions",
        serde_json::json!({"functionName": "onmsg"}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually(
        "orders.created unsubscribed",
        Duration::from_secs(10),
        || {
            gw.log
                .text()
                .lines()
                .any(|l| l.contains(" unsubscribed ") && l.contains("orders.created"))
                .then_some(())
        },
    )
    .await;
    c.publish("orders.created", "gone".into()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(20), c.request("greet", "x".into()))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&reply.payload).trim(), "hello x");
    assert!(
        !runs(dir.path()).contains_key("gone"),
        "{:?}",
        runs(dir.path())
    );
}
