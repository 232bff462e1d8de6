//! Scheduled functions (cron-connector's annotations) on real gateways: firings are
//! asynchronous calls on the queue, once per tick across gateways, caught up once after a
//! stop, switched and stopped by deployments, retried and dead-lettered like any call.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Gateway, Nats, eventually_async, get, post};

/// Fast retries so failing firings reach the dead-letter set quickly.
const FAST: &[&str] = &[
    "--retry-backoff",
    "50ms",
    "--retry-backoff-max",
    "100ms",
    "--max-retry-attempts",
    "2",
];

/// A stack file with `tick` (every second, or `schedule`), appending a line to `DIR/tick.runs`
/// per run; `annotations` are added to its own.
fn stack(dir: &Path, schedule: &str, fprocess: &str, annotations: &[(&str, &str)]) -> PathBuf {
    let d = dir.display();
    let mut extra = String::new();
    for (k, v) in annotations {
        extra.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    let yaml = format!(
        r#"
functions:
  tick:
    fprocess: sh -c 'echo "$Http_X_Scheduled_At $Http_X_Topic $Http_X_Connector $Http_X_Missed" >> {d}/tick.runs; {fprocess}'
    annotations:
      topic: cron-function
      schedule: "{schedule}"
{extra}"#
    );
    let path = dir.join("stack.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The calls of `tick` the gateway's queue holds.
async fn calls(gw: &Gateway) -> Vec<Value> {
    let r = get(gw.addr, "/system/async/calls?function=tick&limit=1000").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let page: Value = serde_json::from_str(&r.text()).unwrap();
    page["calls"].as_array().cloned().unwrap_or_default()
}

/// The scheduled instants (Unix seconds) of `tick`'s calls, from their ids.
fn instants(calls: &[Value]) -> BTreeSet<i64> {
    calls
        .iter()
        .filter_map(|c| c["callId"].as_str())
        .filter_map(|id| id.rsplit(':').next()?.parse().ok())
        .collect()
}

/// A metric's value for `tick`, or 0.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = get(gw.addr, "/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains("function_name=\"tick\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `@every 1s`: a call per second, each run with the cron-connector's headers, succeeded;
/// `/system/triggers` and the metrics show it.
#[tokio::test]
async fn a_schedule_of_every_second_fires_and_its_calls_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let file = stack(dir.path(), "@every 1s", "cat", &[]);
    let gw = Gateway::start(dir.path(), &["-f", file.to_str().unwrap()], &[]).await;
    let done = eventually_async(
        "three succeeded firings",
        Duration::from_secs(15),
        || async {
            let calls = calls(&gw).await;
            let ok: Vec<Value> = calls
                .into_iter()
                .filter(|c| c["state"] == "succeeded")
                .collect();
            (ok.len() >= 3).then_some(ok)
        },
    )
    .await;
    let seconds = instants(&done);
    let (first, last) = (seconds.first().unwrap(), seconds.last().unwrap());
    assert!(last - first >= 2, "{seconds:?}");
    let runs = std::fs::read_to_string(dir.path().join("tick.runs")).unwrap();
    let line = runs.lines().next().unwrap();
    assert!(line.contains(" cron-function cron-connector"), "{line}");
    assert!(line.starts_with("20"), "X-Scheduled-At: {line}");

    let r = get(gw.addr, "/system/triggers").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let rows: Vec<Value> = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["function"], "tick");
    assert_eq!(rows[0]["kind"], "schedule");
    assert_eq!(rows[0]["schedule"], "@every 1s");
    assert!(rows[0]["nextFiring"].is_string(), "{rows:?}");
    assert!(
        rows[0]["lastFiring"]["callId"]
            .as_str()
            .unwrap()
            .starts_with("cron:tick.openfaas-fn:"),
        "{rows:?}"
    );
    assert!(metric(&gw, "gateway_trigger_firings_total").await >= 3.0);
}

/// Two gateways on one JetStream queue both run the schedule: each tick is one call.
#[tokio::test]
async fn two_gateways_on_one_queue_fire_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats")).await;
    let file = stack(dir.path(), "@every 1s", "cat", &[]);
    let url = nats.url();
    let args = ["-f", file.to_str().unwrap(), "--queue", url.as_str()];
    let a = Gateway::start(&dir.path().join("a"), &args, &[]).await;
    let b = Gateway::start(&dir.path().join("b"), &args, &[]).await;
    let from = now_secs() + 1;
    eventually_async("six ticks", Duration::from_secs(20), || async {
        (instants(&calls(&a).await).range(from..).count() >= 6).then_some(())
    })
    .await;
    let to = now_secs() - 1;
    let calls = calls(&a).await;
    let ticks: Vec<i64> = instants(&calls).range(from..=to).copied().collect();
    // One call per tick (the ids are the ticks), and each ran once.
    let runs = std::fs::read_to_string(dir.path().join("tick.runs")).unwrap();
    for tick in &ticks {
        let at = jiff::Timestamp::from_second(*tick).unwrap().to_string();
        let n = runs
            .lines()
            .filter(|l| l.starts_with(&format!("{at} ")))
            .count();
        assert!(n <= 1, "tick {at} ran {n} times");
    }
    let fired = metric(&a, "gateway_trigger_firings_total").await
        + metric(&b, "gateway_trigger_firings_total").await;
    assert!(
        fired <= calls.len() as f64,
        "the gateways queued {fired} firings for {} calls",
        calls.len()
    );
    assert!(ticks.len() >= 4, "{ticks:?}");
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1,
            "a tick missing between {pair:?}: {ticks:?}"
        );
    }
}

/// A gateway stopped across several ticks runs the latest missed one once when it is back;
/// with `com.fgateway.schedule.missed: skip`, none.
#[tokio::test]
async fn missed_ticks_run_once_after_a_stop_unless_skipped() {
    for skip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let annotations: &[(&str, &str)] = if skip {
            &[("com.fgateway.schedule.missed", "skip")]
        } else {
            &[]
        };
        let file = stack(dir.path(), "@every 2s", "cat", annotations);
        let args = ["-f", file.to_str().unwrap()];
        let mut gw = Gateway::start(dir.path(), &args, &[]).await;
        eventually_async("a firing", Duration::from_secs(10), || async {
            (!calls(&gw).await.is_empty()).then_some(())
        })
        .await;
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        gw.wait_exit(Duration::from_secs(30)).await;
        let stopped = now_secs();
        // Down across three ticks (the scenario itself, not a wait for something).
        tokio::time::sleep(Duration::from_secs(7)).await;
        let back = now_secs();
        let gw = Gateway::start(dir.path(), &args, &[]).await;
        // The first tick after the restart, which the running schedule fires.
        eventually_async(
            "a tick after the restart",
            Duration::from_secs(10),
            || async { (instants(&calls(&gw).await).range(back + 1..).count() >= 1).then_some(()) },
        )
        .await;
        let during: Vec<i64> = instants(&calls(&gw).await)
            .range(stopped + 1..=back)
            .copied()
            .collect();
        let runs = std::fs::read_to_string(dir.path().join("tick.runs")).unwrap();
        let missed: Vec<&str> = runs.lines().filter(|l| l.ends_with(" true")).collect();
        if skip {
            assert!(
                missed.is_empty() && during.is_empty(),
                "skip missed, yet ran {missed:?}"
            );
            assert!(metric(&gw, "gateway_trigger_missed_total").await >= 3.0);
        } else {
            assert_eq!(missed.len(), 1, "the missed ticks ran as {missed:?}");
            assert!(during.len() <= 1, "ticks while down: {during:?}");
            assert!(metric(&gw, "gateway_trigger_missed_total").await >= 2.0);
        }
    }
}

/// A redeployment with another schedule switches at once; deleting the function stops it.
#[tokio::test]
async fn deployments_switch_and_stop_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let file = stack(dir.path(), "@yearly", "cat", &[]);
    let gw = Gateway::start(dir.path(), &["-f", file.to_str().unwrap()], &[]).await;
    let triggers = get(gw.addr, "/system/triggers").await.text();
    assert!(triggers.contains("@yearly"), "{triggers}");
    let deploy = |schedule: &str| {
        json!({
            "service": "tick",
            "envProcess": "cat",
            "annotations": {"topic": "cron-function", "schedule": schedule},
        })
        .to_string()
    };
    let r = crate::harness::request(
        gw.addr,
        http::Method::PUT,
        "/system/functions",
        deploy("@every 1s"),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually_async(
        "firings of the new schedule",
        Duration::from_secs(5),
        || async { (calls(&gw).await.len() >= 2).then_some(()) },
    )
    .await;

    let r = crate::harness::request(
        gw.addr,
        http::Method::DELETE,
        "/system/functions",
        json!({"functionName": "tick"}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let deleted = now_secs();
    eventually_async("no trigger listed", Duration::from_secs(5), || async {
        (get(gw.addr, "/system/triggers").await.text() == "[]").then_some(())
    })
    .await;
    let after = now_secs() + 3;
    eventually_async("three seconds after", Duration::from_secs(10), || async {
        (now_secs() >= after).then_some(())
    })
    .await;
    let late: Vec<i64> = instants(&calls(&gw).await)
        .range(deleted + 1..)
        .copied()
        .collect();
    assert!(late.is_empty(), "fired after the deletion: {late:?}");
}

/// A firing whose call fails is retried and dead-lettered like any asynchronous call; the
/// trigger counts the failure.
#[tokio::test]
async fn a_failing_firing_is_retried_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let file = stack(dir.path(), "@every 2s", "exit 1", &[]);
    let mut args = vec!["-f", file.to_str().unwrap()];
    args.extend_from_slice(FAST);
    let gw = Gateway::start(dir.path(), &args, &[]).await;
    let failed = eventually_async("a failed firing", Duration::from_secs(15), || async {
        calls(&gw)
            .await
            .into_iter()
            .find(|c| c["state"] == "failed")
    })
    .await;
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert_eq!(failed["deadLetter"], true, "{failed}");
    eventually_async("the failure counted", Duration::from_secs(10), || async {
        (metric(&gw, "gateway_trigger_failures_total").await >= 1.0).then_some(())
    })
    .await;
}

/// A bad schedule (or option, or NATS subject) is refused at deployment, naming the
/// annotation and the accepted form.
#[tokio::test]
async fn bad_schedules_are_refused_at_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &[], &[]).await;
    for (annotations, says) in [
        (
            json!({"topic": "cron-function", "schedule": "every minute"}),
            "five cron fields",
        ),
        (
            json!({"topic": "cron-function"}),
            "annotation schedule is missing",
        ),
        (
            json!({"topic": "cron-function", "schedule": "CRON_TZ=Nowhere/Else 0 * * * *"}),
            "unknown time zone",
        ),
        (
            json!({"topic": "cron-function", "schedule": "@hourly", "com.fgateway.schedule.overlap": "sometimes"}),
            "com.fgateway.schedule.overlap",
        ),
        (json!({"topic": "orders..created"}), "annotation topic"),
    ] {
        let r = post(
            gw.addr,
            "/system/functions",
            json!({"service": "tick", "envProcess": "cat", "annotations": annotations}).to_string(),
        )
        .await;
        assert_eq!(r.status(), 400, "{annotations}: {}", r.text());
        assert!(r.text().contains(says), "{annotations}: {}", r.text());
    }
}
