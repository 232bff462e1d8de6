//! The autoscaler and scale to zero, with real replicas under a real load of concurrent calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::harness::{DEADLINE, Gateway, eventually_async, get};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn start(data: &std::path::Path, function: &str, labels: &[(&str, &str)]) -> Gateway {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
        .collect();
    let yaml = format!("functions:\n  {function}\n    labels:\n{labels}");
    let file = data.join("stack.yml");
    std::fs::write(&file, yaml).unwrap();
    Gateway::start(
        data,
        &[
            "-f",
            file.to_str().unwrap(),
            "--autoscale-interval",
            "200ms",
            "--scale-down-window",
            "2s",
        ],
        &[],
    )
    .await
}

async fn replicas(gw: &Gateway, name: &str) -> (u64, u64) {
    let v = json(
        &get(gw.addr, &format!("/system/function/{name}"))
            .await
            .text(),
    );
    (
        v["replicas"].as_u64().unwrap_or(0),
        v["availableReplicas"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn capacity_load_scales_up_at_once_and_down_after_the_window() {
    let data = tempfile::tempdir().unwrap();
    let gw = start(
        data.path(),
        "slow:\n    fprocess: sleep 1",
        &[
            ("com.openfaas.scale.type", "capacity"),
            ("com.openfaas.scale.target", "2"),
            ("com.openfaas.scale.max", "4"),
        ],
    )
    .await;
    assert_eq!(replicas(&gw, "slow").await.0, 1);
    // Eight callers, each calling again as soon as its call returns.
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (stop, addr) = (Arc::clone(&stop), gw.addr);
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(get(addr, "/function/slow").await.status(), 200);
            }
        }));
    }
    let loaded = Instant::now();
    eventually_async("4 ready replicas under load", DEADLINE, || async {
        (replicas(&gw, "slow").await == (4, 4)).then_some(())
    })
    .await;
    eprintln!(
        "autoscaler: 1 -> 4 ready replicas in {:?}",
        loaded.elapsed()
    );
    let metrics = get(gw.addr, "/metrics").await.text();
    assert!(
        metrics.contains(r#"gateway_service_target_load{function_name="slow"} 1.8"#),
        "{metrics}"
    );
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.unwrap();
    }
    let idle = Instant::now();
    eventually_async("back to 1 replica after the load", DEADLINE, || async {
        (replicas(&gw, "slow").await.0 == 1).then_some(())
    })
    .await;
    let took = idle.elapsed();
    eprintln!("autoscaler: 4 -> 1 replicas {took:?} after the load stopped");
    assert!(gw.log.text().contains("autoscaled"), "{}", gw.log.text());
}

/// With no `type` or `target` label, OpenFaaS CE's way: a sustained rate above 5 calls a second
/// adds 20 % of max (rounded up) per step; when the rate falls, back to min. The load is the
/// OpenFaaS certifier's: about 10 calls a second, two at a time.
#[tokio::test]
async fn a_sustained_call_rate_steps_up_and_back_to_min_by_default() {
    let data = tempfile::tempdir().unwrap();
    let gw = start(
        data.path(),
        "quick:\n    fprocess: cat",
        &[
            ("com.openfaas.scale.min", "1"),
            ("com.openfaas.scale.max", "2"),
        ],
    )
    .await;
    assert_eq!(replicas(&gw, "quick").await.0, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..2 {
        let (stop, addr) = (Arc::clone(&stop), gw.addr);
        callers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                assert_eq!(get(addr, "/function/quick").await.status(), 200);
            }
        }));
    }
    let loaded = Instant::now();
    let limit = std::time::Duration::from_secs(60);
    eventually_async("2 replicas under a sustained rate", limit, || async {
        (replicas(&gw, "quick").await.0 == 2).then_some(())
    })
    .await;
    eprintln!("rate alert: 1 -> 2 replicas in {:?}", loaded.elapsed());
    let metrics = get(gw.addr, "/metrics").await.text();
    assert!(
        metrics.contains(r#"gateway_service_target_load{function_name="quick"} 5"#),
        "{metrics}"
    );
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.unwrap();
    }
    let idle = Instant::now();
    eventually_async("back to min once the rate falls", limit, || async {
        (replicas(&gw, "quick").await.0 == 1).then_some(())
    })
    .await;
    eprintln!(
        "rate alert: 2 -> 1 replicas {:?} after the load",
        idle.elapsed()
    );
    assert!(gw.log.text().contains("rate alert"), "{}", gw.log.text());
}

#[tokio::test]
async fn idle_functions_go_to_zero_and_the_next_calls_start_one_replica() {
    let data = tempfile::tempdir().unwrap();
    let gw = start(
        data.path(),
        "napper:\n    fprocess: echo awake",
        &[
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "1s"),
        ],
    )
    .await;
    assert_eq!(get(gw.addr, "/function/napper").await.status(), 200);
    eventually_async("zero replicas after idling", DEADLINE, || async {
        (replicas(&gw, "napper").await == (0, 0)).then_some(())
    })
    .await;
    // Ten first calls at once: all answered, by one replica started for them.
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move { get(addr, "/function/napper").await })
        })
        .collect();
    for call in calls {
        let r = call.await.unwrap();
        assert_eq!((r.status(), r.text().as_str()), (200, "awake\n"));
    }
    assert_eq!(replicas(&gw, "napper").await.0, 1);
    let metrics = get(gw.addr, "/metrics").await.text();
    assert!(
        metrics.contains(r#"gateway_function_cold_starts_total{function_name="napper"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_function_cold_start_seconds_count"));
    // scale-function to 0 works too, and a call wakes the function again.
    let req = http::Request::post("/system/scale-function/napper")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"replicas\":0}",
        )))
        .unwrap();
    assert_eq!(crate::harness::send(gw.addr, req).await.status(), 202);
    assert_eq!(replicas(&gw, "napper").await.0, 0);
    let started = Instant::now();
    let r = get(gw.addr, "/function/napper").await;
    assert_eq!(r.status(), 200);
    eprintln!("cold call answered in {:?}", started.elapsed());
}

#[tokio::test]
async fn a_slow_cold_start_is_not_scaled_back_to_zero_while_its_call_waits() {
    let data = tempfile::tempdir().unwrap();
    let port = crate::harness::free_port();
    let root = env!("CARGO_MANIFEST_DIR");
    // An http-mode function whose server takes 1.5 s to start: longer than zero-duration and
    // many autoscaler rounds.
    let function = format!(
        "sleepy:\n    handler: {root}/examples/python-http\n    \
         fprocess: sh -c 'sleep 1.5; exec python3 server.py'\n    environment:\n      \
         mode: http\n      upstream_url: http://127.0.0.1:{port}\n      LISTEN_PORT: \"{port}\"\n      \
         QUIET: \"1\"\n      ready_path: /ready"
    );
    let gw = start(
        data.path(),
        &function,
        &[
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "1s"),
        ],
    )
    .await;
    eventually_async("zero replicas after idling", DEADLINE, || async {
        (replicas(&gw, "sleepy").await == (0, 0)).then_some(())
    })
    .await;
    let r = get(gw.addr, "/function/sleepy/ready").await;
    assert_eq!(r.status(), 200, "{}", r.text());
}

#[tokio::test]
async fn an_open_websocket_counts_as_load_and_keeps_a_function_from_idling() {
    let data = tempfile::tempdir().unwrap();
    let port = crate::harness::free_port();
    let root = env!("CARGO_MANIFEST_DIR");
    let function = format!(
        "web:\n    handler: {root}/examples/python-http\n    fprocess: python3 server.py\n    \
         environment:\n      mode: http\n      upstream_url: http://127.0.0.1:{port}\n      \
         LISTEN_PORT: \"{port}\"\n      QUIET: \"1\"\n      ready_path: /ready"
    );
    let gw = start(
        data.path(),
        &function,
        &[
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "1s"),
            // Target tracking by calls in flight, so gateway_service_load shows the tunnel.
            ("com.openfaas.scale.type", "capacity"),
        ],
    )
    .await;
    let open = crate::harness::websocket_echo(gw.addr, "/function/web/ws").await;
    // Well past zero-duration, the function with an open websocket still runs.
    let metrics = eventually_async("the tunnel counted as load", DEADLINE, || async {
        let m = get(gw.addr, "/metrics").await.text();
        m.contains(r#"gateway_service_load{function_name="web"} 1"#)
            .then_some(m)
    })
    .await;
    assert!(metrics.contains("gateway_upgraded_connections 1"));
    // It stays at one replica throughout, well past zero-duration.
    let opened = Instant::now();
    while opened.elapsed() < std::time::Duration::from_secs(2) {
        assert_eq!(replicas(&gw, "web").await.0, 1);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(open);
    eventually_async(
        "zero replicas once the websocket closed",
        DEADLINE,
        || async { (replicas(&gw, "web").await.0 == 0).then_some(()) },
    )
    .await;
}
