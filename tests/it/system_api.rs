//! The rest of the OpenFaaS system API against real replicas: logs, invocation counts and the
//! scaling labels.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::{DEADLINE, Gateway, eventually, eventually_async, get, send};

/// A stack with `talk`, a fork-mode function that logs `said QUERY` to stderr on every call
/// (and nothing else: fwatchdog's per-request lines are off).
fn stack(dir: &Path, labels: &str) -> std::path::PathBuf {
    let yaml = format!(
        r#"
functions:
  talk:
    fprocess: sh -c 'echo "said $Http_Query" >&2; echo ok'
    environment:
      combine_output: "false"
      log_requests: "false"
    labels:
{labels}
"#
    );
    let path = dir.join("stack.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

pub(crate) async fn up(data: &Path, labels: &str) -> Gateway {
    let file = stack(data, labels);
    Gateway::start(data, &["-f", file.to_str().unwrap()], &[]).await
}

pub(crate) fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A follower of `/system/logs?QUERY` on the gateway at `addr`, read past the answer's head;
/// a read waits at most `limit`.
pub(crate) fn follow_logs(
    addr: std::net::SocketAddr,
    query: &str,
    limit: Duration,
) -> BufReader<TcpStream> {
    let mut follower = TcpStream::connect(addr).unwrap();
    follower.set_read_timeout(Some(limit)).unwrap();
    write!(
        follower,
        "GET /system/logs?{query} HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(follower);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    reader
}

/// Reads a follower's lines until one contains `needle`; false when the stream ends (or a read
/// times out) first.
pub(crate) async fn followed(mut reader: BufReader<TcpStream>, needle: &str) -> bool {
    let needle = needle.to_string();
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.contains(&needle) {
                return true;
            }
        }
    })
    .await
    .unwrap()
}

/// The NDJSON lines of a logs answer whose text contains `said`.
fn said(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .map(json)
        .filter(|v| v["text"].as_str().unwrap_or_default().starts_with("said"))
        .collect()
}

async fn scale(gw: &Gateway, name: &str, replicas: u64) -> crate::harness::Reply {
    let req = Request::post(format!("/system/scale-function/{name}"))
        .body(Full::new(Bytes::from(format!(
            "{{\"serviceName\":\"{name}\",\"replicas\":{replicas}}}"
        ))))
        .unwrap();
    send(gw.addr, req).await
}

/// Per request, a replica logs what OpenFaaS's classic watchdog logs, and `/system/logs` shows
/// it as that watchdog writes it (a Go `log` stamp, then the words), which is what the OpenFaaS
/// certifier's logs test looks for. The gateway's own log carries each replica line once, with
/// one time stamp and the function and replica named.
#[tokio::test]
async fn a_replicas_request_lines_read_as_the_classic_watchdogs() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("stack.yml");
    std::fs::write(&file, "functions:\n  logger:\n    fprocess: cat\n").unwrap();
    let gw = Gateway::start(data.path(), &["-f", file.to_str().unwrap()], &[]).await;
    let r = crate::harness::post(gw.addr, "/function/logger", "openfaas-fn").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "openfaas-fn"));
    let texts = eventually_async("the request's lines", DEADLINE, || async {
        let body = get(gw.addr, "/system/logs?name=logger&follow=false")
            .await
            .text();
        let texts: Vec<String> = body
            .lines()
            .map(|l| json(l)["text"].as_str().unwrap_or_default().to_string())
            .collect();
        texts.iter().any(|t| t.contains("Wrote")).then_some(texts)
    })
    .await;
    // As the certifier reads them: the stamp's digits, slashes, colons and spaces trimmed.
    let trimmed: Vec<&str> = texts
        .iter()
        .map(|t| t.trim_start_matches(|c: char| c.is_ascii_digit() || "/: ".contains(c)))
        .collect();
    assert!(
        trimmed.iter().any(|t| t.starts_with("Forking fprocess")),
        "{texts:?}"
    );
    assert!(
        trimmed
            .iter()
            .any(|t| t.starts_with("Wrote 11 Bytes - Duration: ")),
        "{texts:?}"
    );
    let wrote = texts.iter().find(|t| t.contains("Wrote")).unwrap();
    assert!(
        wrote.as_bytes()[..20]
            .iter()
            .filter(|b| **b == b'/')
            .count()
            == 2,
        "{wrote}"
    );
    // The gateway's log: the line once, stamped once, naming function and replica.
    let log = eventually("the gateway's copy", DEADLINE, || {
        let text = gw.log.text();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains("Wrote 11 Bytes"))
            .map(str::to_string)
            .collect();
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains("function=\"logger\""), "{log:?}");
    assert!(log[0].contains("replica="), "{log:?}");
    assert_eq!(log[0].matches("INFO").count(), 1, "{log:?}");
    assert!(!log[0].contains(&wrote[..19]), "stamped twice: {log:?}");
}

/// `--log-format json`: every line of the gateway's log is a JSON object, a replica's lines
/// among them, at their own level, naming the function and the replica.
#[tokio::test]
async fn the_gateway_logs_json_when_asked_replica_lines_included() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("stack.yml");
    std::fs::write(&file, "functions:\n  logger:\n    fprocess: cat\n").unwrap();
    let mut cmd = std::process::Command::new(crate::harness::fgateway_bin());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--log-format", "json", "up", "--port", "0", "--data-dir"])
        .arg(data.path())
        .arg("-f")
        .arg(&file);
    let (child, log, addr) =
        crate::harness::launch(cmd, "fgateway", "\"message\":\"listening addr=0.0.0.0:").await;
    let _gateway = crate::harness::KillOnDrop(child);
    let r = crate::harness::post(addr, "/function/logger", "openfaas-fn").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let wrote = eventually("the replica's request line", DEADLINE, || {
        log.text().lines().map(json).find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Wrote 11 Bytes"))
        })
    })
    .await;
    assert_eq!(wrote["target"], "function", "{wrote}");
    assert_eq!(wrote["level"], "INFO", "{wrote}");
    assert_eq!(wrote["function"], "logger", "{wrote}");
    assert_eq!(wrote["replica"], "logger-0", "{wrote}");
    for line in log.text().lines() {
        let v = json(line);
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn logs_answer_tail_since_instance_and_follow() {
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"2\"").await;
    // Both replicas ready, so the calls below are spread over the two.
    eventually_async("two ready replicas", DEADLINE, || async {
        let v = json(&get(gw.addr, "/system/function/talk").await.text());
        (v["availableReplicas"] == 2).then_some(())
    })
    .await;
    for i in 0..6 {
        let r = get(gw.addr, &format!("/function/talk?n={i}")).await;
        assert_eq!(r.status(), 200, "{}", r.text());
    }
    let all = eventually_async("six logged calls", DEADLINE, || async {
        let body = get(gw.addr, "/system/logs?name=talk&follow=false")
            .await
            .text();
        let lines = said(&body);
        (lines.len() == 6).then_some(lines)
    })
    .await;
    for line in &all {
        assert_eq!(line["name"], "talk");
        assert_eq!(line["namespace"], "openfaas-fn");
        let ts = line["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
    }
    // tail: the last lines; the calls went round-robin over two replicas.
    let tail = said(
        &get(gw.addr, "/system/logs?name=talk&tail=2&follow=false")
            .await
            .text(),
    );
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[1]["text"], "said n=5", "{tail:?}");
    let instance = all[0]["instance"].as_str().unwrap().to_string();
    let mine = said(
        &get(
            gw.addr,
            &format!("/system/logs?name=talk&instance={instance}&follow=false"),
        )
        .await
        .text(),
    );
    assert!(!mine.is_empty() && mine.len() < 6, "{mine:?}");
    assert!(mine.iter().all(|l| l["instance"] == instance.as_str()));
    // since: a time after every line so far selects none of them.
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(2));
    let none = get(
        gw.addr,
        &format!("/system/logs?name=talk&since={later}&follow=false"),
    )
    .await;
    assert_eq!(none.status(), 200);
    assert!(said(&none.text()).is_empty());

    // follow: a line written after the follower connected arrives on the open stream.
    let follower = follow_logs(gw.addr, "name=talk&tail=1&follow=true", DEADLINE);
    assert_eq!(get(gw.addr, "/function/talk?n=late").await.status(), 200);
    assert!(
        followed(follower, "\"text\":\"said n=late\"").await,
        "the followed stream never showed the new line"
    );
}

#[tokio::test]
async fn a_stalled_follower_blocks_neither_the_function_nor_other_followers() {
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"1\"").await;
    // A follower that never reads.
    let mut stalled = TcpStream::connect(gw.addr).unwrap();
    stalled
        .write_all(b"GET /system/logs?name=talk&follow=true HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // More lines than every buffer between the gateway and the stalled reader holds.
    let long = "x".repeat(15_000);
    for i in 0..2000 {
        let r = get(gw.addr, &format!("/function/talk?{long}{i}")).await;
        assert_eq!(r.status(), 200);
    }
    // Other readers are served at once.
    let body = get(gw.addr, "/system/logs?name=talk&tail=1&follow=false")
        .await
        .text();
    assert!(
        said(&body)[0]["text"].as_str().unwrap().ends_with("1999"),
        "{body:.200}"
    );
    // The stalled follower, when it reads at last, is told it lost lines.
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    let told = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stalled);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.contains("log lines dropped for this follower") {
                return true;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        told,
        "the stalled follower was not told about the dropped lines"
    );
}

#[tokio::test]
async fn logs_reject_bad_queries_and_unknown_functions() {
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"1\"").await;
    for (query, status) in [
        ("", 400),
        ("name=talk&tail=-2", 400),
        ("name=talk&tail=many", 400),
        ("name=talk&since=garbage", 400),
        ("name=talk&follow=perhaps", 400),
        ("name=nope", 404),
        ("name=talk&namespace=other", 404),
        ("name=talk&tail=-1&follow=false", 200),
    ] {
        let r = get(gw.addr, &format!("/system/logs?{query}")).await;
        assert_eq!(r.status(), status, "{query}: {}", r.text());
    }
}

#[tokio::test]
async fn invocation_counts_include_sync_and_async_calls() {
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"1\"").await;
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/function/talk").await.status(), 200);
    }
    let r = crate::harness::post(gw.addr, "/async-function/talk", "").await;
    assert_eq!(r.status(), 202);
    eventually_async("four counted calls", DEADLINE, || async {
        let list = json(&get(gw.addr, "/system/functions").await.text());
        let one = json(&get(gw.addr, "/system/function/talk").await.text());
        (list[0]["invocationCount"] == 4.0 && one["invocationCount"] == 4.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn scaling_labels_bound_replicas_on_deploy_update_and_scale() {
    let data = tempfile::tempdir().unwrap();
    let gw = up(
        data.path(),
        "      com.openfaas.scale.min: \"1\"\n      com.openfaas.scale.max: \"3\"",
    )
    .await;
    let replicas = |gw_addr| async move {
        json(&get(gw_addr, "/system/function/talk").await.text())["replicas"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(replicas(gw.addr).await, 1);
    // Above max: clamped, and the answer says so.
    let r = scale(&gw, "talk", 9).await;
    assert_eq!(r.status(), 202);
    assert!(r.text().contains("scaled to 3"), "{}", r.text());
    assert_eq!(replicas(gw.addr).await, 3);
    assert_eq!(scale(&gw, "talk", 1).await.status(), 202);
    // A redeploy with a higher minimum applies it.
    let mut spec = json(&get(gw.addr, "/system/function/talk").await.text());
    spec["service"] = spec["name"].clone();
    spec["labels"]["com.openfaas.scale.min"] = "2".into();
    let req = Request::put("/system/functions")
        .body(Full::new(Bytes::from(spec.to_string())))
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status(), 202);
    assert_eq!(replicas(gw.addr).await, 2);
    eventually_async("two ready replicas", DEADLINE, || async {
        let v = json(&get(gw.addr, "/system/function/talk").await.text());
        (v["availableReplicas"] == 2).then_some(())
    })
    .await;
    // Bad labels and absurd counts: 400 with the reason, nothing changed.
    spec["labels"]["com.openfaas.scale.max"] = "1".into();
    let req = Request::put("/system/functions")
        .body(Full::new(Bytes::from(spec.to_string())))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("com.openfaas.scale.min"), "{}", r.text());
    let r = scale(&gw, "talk", 100_000).await;
    assert_eq!(r.status(), 400, "{}", r.text());
    let req = Request::post("/system/scale-function/talk")
        .body(Full::new(Bytes::from_static(b"{\"replicas\":-1}")))
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status(), 400);
    assert_eq!(replicas(gw.addr).await, 2);
}

#[tokio::test]
async fn log_lines_survive_a_replica_restart() {
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"1\"").await;
    assert_eq!(
        get(gw.addr, "/function/talk?before=crash").await.status(),
        200
    );
    let replica = crate::harness::descendants(gw.pid())[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(replica),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The restarted replica answers, and the line written before the crash is still there.
    eventually_async("the restarted replica to answer", DEADLINE, || async {
        let r = get(gw.addr, "/function/talk?after=restart").await;
        (r.status() == 200).then_some(())
    })
    .await;
    let body = get(gw.addr, "/system/logs?name=talk&follow=false")
        .await
        .text();
    let texts: Vec<String> = said(&body)
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        texts.contains(&"said before=crash".to_string()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"said after=restart".to_string()),
        "{texts:?}"
    );
    assert!(gw.log.text().contains("replica exited; restarting"));
}
