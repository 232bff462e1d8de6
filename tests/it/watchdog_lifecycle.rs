//! Health, metrics, graceful shutdown, PID 1 reaping, bounded memory.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use nix::sys::signal::Signal;

use crate::harness::{DEADLINE, Watchdog, eventually, get, post, send};

#[tokio::test]
async fn health_and_ready() {
    let wd = Watchdog::start(&[("fprocess", "cat")]).await;
    let r = get(wd.addr, "/_/health").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "OK"));
    assert_eq!(get(wd.addr, "/_/ready").await.status(), 200);
    assert!(wd.lock_path().exists());
}

#[tokio::test]
async fn metrics_exposition_parses() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port().to_string();
    drop(probe);
    let wd = Watchdog::start(&[
        ("fprocess", "sh -c 'cat; exit $Http_X_Exit'"),
        ("metrics_port", &port),
    ])
    .await;
    for code in ["0", "0", "1"] {
        let req = Request::post("/")
            .header("x-exit", code)
            .body(http_body_util::Full::new(Bytes::from_static(b"x")))
            .unwrap();
        send(wd.addr, req).await;
    }
    let metrics = wd.metrics_addr.expect("metrics address logged");
    let mut text = String::new();
    for _ in 0..100 {
        text = get(metrics, "/metrics").await.text();
        if text.contains("code=\"500\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut samples = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let metric = name.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line}"
        );
        samples.insert(name.to_string(), value);
    }
    assert_eq!(
        samples.get("http_requests_total{code=\"200\",method=\"post\"}"),
        Some(&2.0),
        "{text}"
    );
    assert_eq!(
        samples.get("http_requests_total{code=\"500\",method=\"post\"}"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(
        samples.get("http_request_duration_seconds_count{code=\"200\",method=\"post\"}"),
        Some(&2.0),
        "{text}"
    );
    assert!(
        samples.contains_key(
            "http_request_duration_seconds_bucket{le=\"0.005\",code=\"200\",method=\"post\"}"
        ),
        "{text}"
    );
    assert_eq!(samples.get("http_requests_in_flight"), Some(&0.0), "{text}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "sh -c 'while [ ! -e {} ]; do sleep 0.02; done; echo drained'",
        go.display()
    );
    let mut wd = Watchdog::start(&[
        ("fprocess", &script),
        ("healthcheck_interval", "1s"),
        ("write_timeout", "30s"),
    ])
    .await;
    let addr = wd.addr;
    let in_flight = tokio::spawn(async move { post(addr, "/", "").await });
    // Wait until the handler is really running before signalling.
    let mut started = false;
    for _ in 0..500 {
        if std::fs::read_dir("/proc").is_ok_and(|d| {
            d.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path().join("cmdline"))
                    .is_ok_and(|c| c.contains(&go.display().to_string()))
            })
        }) {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started, "handler started");

    wd.signal(Signal::SIGTERM);
    // Health turns 503 at once, while requests are still served during the interval.
    let mut status = 0;
    for _ in 0..100 {
        status = get(addr, "/_/health").await.status();
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(status, 503);
    assert!(!wd.lock_path().exists(), "lock file removed");
    eventually("the drain to begin", DEADLINE, || {
        wd.log.text().contains("draining").then_some(())
    })
    .await;
    assert!(!in_flight.is_finished());
    std::fs::write(&go, b"").unwrap();
    let r = in_flight.await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "drained\n"));
    let status = wd.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", wd.log.text());
}

#[tokio::test]
async fn sigint_also_shuts_down_and_kills_leftovers_after_the_drain_limit() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("stuck.pid");
    let script = format!("sh -c 'echo $$ > {}; exec sleep 60'", pidfile.display());
    let mut wd = Watchdog::start(&[
        ("fprocess", &script),
        ("write_timeout", "1s"),
        ("exec_timeout", "0"),
    ])
    .await;
    let addr = wd.addr;
    let in_flight = tokio::spawn(async move { post(addr, "/", "").await });
    let pid = crate::harness::read_pid(&pidfile).await;
    wd.signal(Signal::SIGINT);
    let status = wd.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0));
    assert!(crate::harness::process_gone(pid));
    let _ = in_flight.await;
    assert!(!wd.lock_path().exists());
}

#[tokio::test]
async fn a_100mb_body_through_cat_keeps_memory_bounded_in_every_mode() {
    const TOTAL: usize = 100 * 1024 * 1024;
    for mode in ["", "serializing", "streaming"] {
        let wd = Watchdog::start(&[("fprocess", "cat"), ("mode", mode)]).await;
        let req = Request::post("/")
            .body(crate::harness::big_body(TOTAL))
            .unwrap();
        let resp = crate::harness::send_streaming(wd.addr, req).await;
        assert_eq!(resp.status(), 200, "mode {mode:?}");
        let mut body = resp.into_body();
        let mut received = 0usize;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            received += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
        }
        assert_eq!(received, TOTAL / (256 * 1024) * 256 * 1024, "mode {mode:?}");
        let peak = crate::harness::peak_rss_kib(wd.pid());
        assert!(peak < 40 * 1024, "mode {mode:?}: peak RSS {peak} KiB");
    }
}

#[tokio::test]
async fn as_pid1_orphans_are_reaped() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: unshare --pid needs root");
        return;
    }
    // Each request leaves an orphan behind: a process that left the group (setsid) and exits
    // shortly after, re-parented to PID 1, which is the watchdog.
    let script = "sh -c 'setsid sh -c \"sleep 0.05\" >/dev/null 2>&1 & echo ok'";
    let wd = Watchdog::start_with(&[("fprocess", script)], |cmd| {
        let mut wrapped = std::process::Command::new("unshare");
        wrapped.args(["--fork", "--pid", "--mount-proc", "--kill-child"]);
        wrapped.arg(cmd.get_program());
        wrapped
            .env_clear()
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
        wrapped
    })
    .await;
    eventually("the PID 1 log line", DEADLINE, || {
        wd.log.text().contains("running as PID 1").then_some(())
    })
    .await;
    for _ in 0..50 {
        let r = post(wd.addr, "/", "").await;
        assert_eq!(r.text(), "ok\n");
    }
    // The watchdog is the unshare process's child; find its host pid.
    let unshare = wd.pid();
    let watchdog = eventually("the namespaced watchdog", DEADLINE, || {
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok())
    })
    .await;
    let zombies = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let rest = &stat[stat.rfind(')').unwrap_or(0) + 1..];
                let mut f = rest.split_whitespace();
                let state = f.next();
                let ppid = f.next().and_then(|p| p.parse::<i32>().ok());
                state == Some("Z") && ppid == Some(watchdog)
            })
            .count()
    };
    eventually("no zombies under the watchdog", DEADLINE, || {
        (zombies() == 0).then_some(())
    })
    .await;
    // And it still serves (its own children's exit statuses were not stolen).
    let r = post(wd.addr, "/", "").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "ok\n"));
}
