//! The rest of the OpenFaaS system API against real replicas: logs, invocation counts and the
//! scaling labels.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::{DEADLINE, Gateway, eventually_async, get, send};

/// A stack with `talk`, a fork-mode function that logs `said QUERY` to stderr on every call.
fn stack(dir: &Path, labels: &str) -> std::path::PathBuf {
    let yaml = format!(
        r#"
functions:
  talk:
    fprocess: sh -c 'echo "said $Http_Query" >&2; echo ok'
    environment:
      combine_output: "false"
    labels:
{labels}
"#
    );
    let path = dir.join("stack.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn up(data: &Path, labels: &str) -> Gateway {
    let file = stack(data, labels);
    Gateway::start(data, &["-f", file.to_str().unwrap()], &[]).await
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
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

#[tokio::test]
async fn logs_answer_tail_since_instance_and_follow() {
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"2\"").await;
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
    let mut follower = TcpStream::connect(gw.addr).unwrap();
    follower.set_read_timeout(Some(DEADLINE)).unwrap();
    follower
        .write_all(b"GET /system/logs?name=talk&tail=1&follow=true HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(follower);
    let mut line = String::new();
    // Past the head.
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    assert_eq!(get(gw.addr, "/function/talk?n=late").await.status(), 200);
    let found = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.contains("\"text\":\"said n=late\"") {
                return true;
            }
        }
    })
    .await
    .unwrap();
    assert!(found, "the followed stream never showed the new line");
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

async fn system(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> crate::harness::Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(gw.addr, req).await
}

#[tokio::test]
async fn secrets_round_trip_and_reach_functions_as_files() {
    use serde_json::json;
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"1\"").await;
    let secret = |v: &str| json!({"name": "api-key", "value": v});
    assert_eq!(
        system(&gw, "POST", "/system/secrets", secret("one"))
            .await
            .status(),
        201
    );
    assert_eq!(
        system(&gw, "POST", "/system/secrets", secret("again"))
            .await
            .status(),
        409
    );
    let raw = json!({"name": "blob", "namespace": "openfaas-fn", "rawValue": "AAEC"});
    assert_eq!(
        system(&gw, "POST", "/system/secrets", raw).await.status(),
        201
    );
    for bad in ["../etc", "a/b", "UPPER", ""] {
        let r = system(
            &gw,
            "POST",
            "/system/secrets",
            json!({"name": bad, "value": "x"}),
        )
        .await;
        assert_eq!(r.status(), 400, "{bad}: {}", r.text());
    }
    let listed = json(&get(gw.addr, "/system/secrets").await.text());
    assert_eq!(
        listed,
        json!([{"name": "api-key", "namespace": "openfaas-fn"}, {"name": "blob", "namespace": "openfaas-fn"}])
    );
    let file = data.path().join("secrets/openfaas-fn/api-key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A function that names a missing secret is refused, naming it.
    let missing = json!({"service": "reader", "envProcess": "cat", "secrets": ["nope"]});
    let r = system(&gw, "POST", "/system/functions", missing).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("secret nope"), "{}", r.text());

    // The function reads its secret from secret_mount_path.
    let reader = json!({
        "service": "reader",
        "envProcess": "sh -c 'cat \"$secret_mount_path/api-key\"'",
        "secrets": ["api-key"],
    });
    assert_eq!(
        system(&gw, "POST", "/system/functions", reader)
            .await
            .status(),
        202
    );
    let r = get(gw.addr, "/function/reader").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "one"));
    // An update reaches the running replica's file.
    assert_eq!(
        system(&gw, "PUT", "/system/secrets", secret("two"))
            .await
            .status(),
        200
    );
    assert_eq!(get(gw.addr, "/function/reader").await.text(), "two");
    // As root, replicas also find it where OpenFaaS puts secrets.
    if nix::unistd::geteuid().is_root() {
        let conventional = json!({
            "service": "conventional",
            "envProcess": "cat /var/openfaas/secrets/api-key",
            "secrets": ["api-key"],
        });
        assert_eq!(
            system(&gw, "POST", "/system/functions", conventional)
                .await
                .status(),
            202
        );
        let r = get(gw.addr, "/function/conventional").await;
        assert_eq!(
            (r.status(), r.text().as_str()),
            (200, "two"),
            "{}",
            gw.log.text()
        );
        let r = system(
            &gw,
            "DELETE",
            "/system/functions",
            json!({"functionName": "conventional"}),
        )
        .await;
        assert_eq!(r.status(), 202);
    } else {
        eprintln!("not root: the /var/openfaas/secrets mount is not tested");
    }
    // In use: 409 naming the function; then gone: 200, and 404 after.
    let r = system(&gw, "DELETE", "/system/secrets", json!({"name": "api-key"})).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().contains("reader"), "{}", r.text());
    let r = system(
        &gw,
        "DELETE",
        "/system/functions",
        json!({"functionName": "reader"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        system(&gw, "DELETE", "/system/secrets", json!({"name": "api-key"}))
            .await
            .status(),
        200
    );
    assert_eq!(
        system(&gw, "DELETE", "/system/secrets", json!({"name": "api-key"}))
            .await
            .status(),
        404
    );
    assert_eq!(
        system(&gw, "PUT", "/system/secrets", secret("x"))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn namespaces_hold_functions_of_the_same_name_apart() {
    use serde_json::json;
    let data = tempfile::tempdir().unwrap();
    let gw = up(data.path(), "      com.openfaas.scale.min: \"1\"").await;
    assert_eq!(
        json(&get(gw.addr, "/system/namespaces").await.text()),
        json!(["openfaas-fn"])
    );
    // faas-cli's `namespace create` posts to /system/namespace/ with the name in the body.
    let team = json!({"name": "team-a", "labels": {"openfaas": "1"}});
    assert_eq!(
        system(&gw, "POST", "/system/namespace/", team.clone())
            .await
            .status(),
        201
    );
    assert_eq!(
        system(&gw, "POST", "/system/namespace/", team)
            .await
            .status(),
        409
    );
    let bad = system(&gw, "POST", "/system/namespace/", json!({"name": "Team_A"})).await;
    assert_eq!(bad.status(), 400);
    let updated = json!({"name": "team-a", "labels": {"openfaas": "1", "tier": "gold"}});
    assert_eq!(
        system(&gw, "PUT", "/system/namespace/team-a", updated)
            .await
            .status(),
        202
    );
    let one = json(&get(gw.addr, "/system/namespace/team-a").await.text());
    assert_eq!(one["labels"]["tier"], "gold");
    assert_eq!(get(gw.addr, "/system/namespace/nope").await.status(), 404);

    for (ns, says) in [("openfaas-fn", "default"), ("team-a", "team")] {
        let spec =
            json!({"service": "same", "namespace": ns, "envProcess": format!("echo {says}")});
        assert_eq!(
            system(&gw, "POST", "/system/functions", spec)
                .await
                .status(),
            202
        );
    }
    let all = json(&get(gw.addr, "/system/functions").await.text());
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let team_only = json(
        &get(gw.addr, "/system/functions?namespace=team-a")
            .await
            .text(),
    );
    assert_eq!(team_only.as_array().unwrap().len(), 1);
    assert_eq!(team_only[0]["namespace"], "team-a");
    for (path, says) in [
        ("/function/same.team-a", "team\n"),
        ("/function/same.openfaas-fn", "default\n"),
        ("/function/same", "default\n"),
    ] {
        let r = get(gw.addr, path).await;
        assert_eq!((r.status(), r.text().as_str()), (200, says), "{path}");
    }
    let r = get(gw.addr, "/system/function/same?namespace=team-a").await;
    assert_eq!(json(&r.text())["namespace"], "team-a");
    assert_eq!(
        get(gw.addr, "/system/function/same?namespace=nope")
            .await
            .status(),
        404
    );
    // Counts and scaling are per function, not per name.
    let team_count = json(
        &get(gw.addr, "/system/functions?namespace=team-a")
            .await
            .text(),
    )[0]["invocationCount"]
        .clone();
    assert_eq!(team_count, 1.0);
    let scale = json!({"serviceName": "same", "serviceNamespace": "team-a", "replicas": 2});
    assert_eq!(
        system(&gw, "POST", "/system/scale-function/same", scale)
            .await
            .status(),
        202
    );
    let replicas = |ns: &'static str| {
        let addr = gw.addr;
        async move {
            json(
                &get(addr, &format!("/system/function/same?namespace={ns}"))
                    .await
                    .text(),
            )["replicas"]
                .clone()
        }
    };
    assert_eq!(
        (replicas("team-a").await, replicas("openfaas-fn").await),
        (json!(2), json!(1))
    );
    // Asynchronous calls keep the namespace.
    let r = crate::harness::post(gw.addr, "/async-function/same.team-a", "").await;
    assert_eq!(r.status(), 202);
    let id = r.header("x-call-id").unwrap();
    let status = eventually_async("the async call to finish", DEADLINE, || async {
        let v = json(
            &get(gw.addr, &format!("/async-function/status/{id}"))
                .await
                .text(),
        );
        (v["state"] == "succeeded").then_some(v)
    })
    .await;
    assert_eq!(status["function"], "same.team-a");
    assert_eq!(status["result"], "team\n");
    // A namespace with functions, and the default one, cannot be removed.
    assert_eq!(
        system(&gw, "DELETE", "/system/namespace/team-a", json!({}))
            .await
            .status(),
        409
    );
    assert_eq!(
        system(&gw, "DELETE", "/system/namespace/openfaas-fn", json!({}))
            .await
            .status(),
        409
    );
    let del = json!({"functionName": "same", "namespace": "team-a"});
    assert_eq!(
        system(&gw, "DELETE", "/system/functions", del)
            .await
            .status(),
        202
    );
    assert_eq!(get(gw.addr, "/function/same").await.text(), "default\n");
    assert_eq!(
        system(&gw, "DELETE", "/system/namespace/team-a", json!({}))
            .await
            .status(),
        202
    );
    assert_eq!(get(gw.addr, "/system/namespace/team-a").await.status(), 404);
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
