//! The docker provider against a real engine (Podman's Docker-compatible API service): images
//! built here, containers deployed, called, scaled, killed, updated, adopted across gateway
//! restarts and removed.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::callback::Receiver;
use crate::harness::{DEADLINE, Gateway, eventually, eventually_async, get, post, send};
use crate::podman::{
    Cleanup, Service, all_containers_of, build_image, containers_of, podman, podman_out,
};
use crate::system_secrets::system;

/// The plain test image: `cat` behind fwatchdog.
fn echo_image() -> String {
    build_image(
        "fgw-test-echo:2",
        &[
            "ENV fprocess=cat".to_string(),
            r#"CMD ["fwatchdog"]"#.to_string(),
        ],
    )
}

/// A Podman service and a gateway data directory whose containers are removed at the end
/// (fields drop in order: containers first, the service last).
struct Engine {
    _cleanup: Cleanup,
    data: std::path::PathBuf,
    service: Service,
    tmp: tempfile::TempDir,
}

impl Engine {
    async fn start() -> Engine {
        let tmp = tempfile::tempdir().unwrap();
        let service = Service::start(tmp.path()).await;
        let data = tmp.path().join("data");
        Engine {
            _cleanup: Cleanup(data.clone()),
            data,
            service,
            tmp,
        }
    }
}

async fn up(service: &Service, data: &Path, extra: &[&str]) -> Gateway {
    let host = service.host();
    let mut args = vec!["--provider", "docker", "--docker-host", host.as_str()];
    args.extend_from_slice(extra);
    Gateway::start(data, &args, &[]).await
}

async fn functions(gw: &Gateway) -> Vec<Value> {
    serde_json::from_str(&get(gw.addr, "/system/functions").await.text()).unwrap()
}

async fn available(gw: &Gateway, name: &str) -> u64 {
    functions(gw)
        .await
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["availableReplicas"].as_u64())
        .unwrap_or(0)
}

async fn wait_available(gw: &Gateway, name: &str, n: u64) {
    eventually_async(
        &format!("{n} ready replicas of {name}"),
        DEADLINE,
        || async { (available(gw, name).await == n).then_some(()) },
    )
    .await;
}

fn inspect(id: &str, format: &str) -> String {
    podman_out(&["inspect", "--format", format, id])
}

#[tokio::test]
async fn containers_are_called_scaled_restarted_updated_adopted_and_removed() {
    let image = echo_image();
    let engine = Engine::start().await;
    let (service, data) = (&engine.service, engine.data.clone());
    let mut gw = up(service, &data, &[]).await;

    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "echo", "image": image}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let r = post(gw.addr, "/function/echo", "hello container").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "hello container"));
    assert_eq!(containers_of(&data).len(), 1);

    // Asynchronously, with a callback.
    let rx = Receiver::start(0).await;
    let req = http::Request::post("/async-function/echo")
        .header("x-callback-url", rx.url())
        .body(http_body_util::Full::new(bytes::Bytes::from("later")))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].body, "later");
    assert_eq!(got[0].header("x-function-status"), "200");

    // Scale to 3: three containers, all taking traffic.
    let r = system(
        &gw,
        "POST",
        "/system/scale-function/echo",
        json!({"serviceName": "echo", "replicas": 3}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    wait_available(&gw, "echo", 3).await;
    let three = containers_of(&data);
    assert_eq!(three.len(), 3);

    // A container killed through the engine is noticed and started again.
    podman_out(&["kill", &three[0]]);
    eventually_async("the killed container restarted", DEADLINE, || async {
        let running = inspect(&three[0], "{{.State.Running}}") == "true";
        (running && available(&gw, "echo").await == 3).then_some(())
    })
    .await;
    assert!(
        gw.log.text().contains("container exited with status 137"),
        "{}",
        gw.log.text()
    );
    assert_eq!(
        containers_of(&data),
        three,
        "restarted in place, not replaced"
    );

    // An update replaces every replica; no call after the PUT reaches the old spec.
    let r = system(
        &gw,
        "PUT",
        "/system/functions",
        json!({"service": "echo", "image": image, "envProcess": "sh -c 'echo v2:$greeting'", "envVars": {"greeting": "hi"}}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    for _ in 0..6 {
        let r = post(gw.addr, "/function/echo", "x").await;
        assert_eq!((r.status(), r.text().trim()), (200, "v2:hi"));
    }
    wait_available(&gw, "echo", 3).await;
    let updated = eventually("the old containers gone", DEADLINE, || {
        let now = containers_of(&data);
        (now.len() == 3 && now.iter().all(|id| !three.contains(id))).then_some(now)
    })
    .await;

    // A second function, then deleted: its containers go.
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "two", "image": image}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    wait_available(&gw, "two", 1).await;
    assert_eq!(containers_of(&data).len(), 4);
    let r = system(
        &gw,
        "DELETE",
        "/system/functions",
        json!({"functionName": "two"}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually("two's container removed", DEADLINE, || {
        (all_containers_of(&data).len() == 3).then_some(())
    })
    .await;

    // The gateway exits (SIGTERM, default: keep); its containers keep running and the next
    // gateway adopts them: same ids, no extra set.
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(gw.wait_exit(DEADLINE).await.success());
    assert_eq!(containers_of(&data), updated);
    drop(gw);
    let gw = up(service, &data, &[]).await;
    wait_available(&gw, "echo", 3).await;
    let r = post(gw.addr, "/function/echo", "x").await;
    assert_eq!((r.status(), r.text().trim()), (200, "v2:hi"));
    assert_eq!(containers_of(&data), updated, "adopted, not replaced");
    assert_eq!(all_containers_of(&data).len(), 3);
    assert!(
        gw.log.text().contains("adopted running container"),
        "{}",
        gw.log.text()
    );

    // Scaling down removes containers.
    let r = system(
        &gw,
        "POST",
        "/system/scale-function/echo",
        json!({"serviceName": "echo", "replicas": 1}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually("two containers removed", DEADLINE, || {
        (all_containers_of(&data).len() == 1).then_some(())
    })
    .await;
    let left = containers_of(&data);

    // With --docker-on-exit stop, SIGTERM stops and removes them.
    drop(gw);
    let mut gw = up(service, &data, &["--docker-on-exit", "stop"]).await;
    wait_available(&gw, "echo", 1).await;
    assert_eq!(containers_of(&data), left);
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(60)).await.success());
    assert!(
        all_containers_of(&data).is_empty(),
        "stopped and removed on exit"
    );
}

#[tokio::test]
async fn containers_of_functions_no_longer_deployed_are_removed_at_start() {
    let image = echo_image();
    let engine = Engine::start().await;
    let (service, data) = (&engine.service, engine.data.clone());
    let gw = up(service, &data, &[]).await;
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "gone", "image": image}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    wait_available(&gw, "gone", 1).await;
    drop(gw); // SIGKILL: the container stays.
    assert_eq!(containers_of(&data).len(), 1);

    // A gateway with the same id but no functions deployed removes it.
    let fresh = engine.tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::copy(data.join("gateway-id"), fresh.join("gateway-id")).unwrap();
    let _gw = up(service, &fresh, &[]).await;
    assert!(
        all_containers_of(&data).is_empty(),
        "removed before the gateway listens"
    );
}

#[tokio::test]
async fn a_missing_image_or_limits_the_engine_refuses_are_refused_and_leave_nothing() {
    let engine = Engine::start().await;
    let (service, data) = (&engine.service, engine.data.clone());
    let gw = up(service, &data, &["--image-pull", "never"]).await;

    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "f", "image": "fgw-test-absent:7"}),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert!(
        r.text().contains("fgw-test-absent:7") && r.text().contains("never"),
        "{}",
        r.text()
    );
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "f", "envProcess": "cat"}),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert!(r.text().contains("image is required"), "{}", r.text());
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "f", "image": echo_image(), "limits": {"memory": "lots"}}),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert!(r.text().contains("limits.memory"), "{}", r.text());
    // What the engine refuses, it refuses at deployment, in its own words (Podman: a memory
    // reservation above the limit).
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "f", "image": echo_image(),
               "limits": {"memory": "10Mi"}, "requests": {"memory": "20Mi"}}),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert!(
        r.text().contains("container engine refused") && r.text().contains("memory"),
        "{}",
        r.text()
    );
    assert!(functions(&gw).await.is_empty());
    assert!(
        all_containers_of(&data).is_empty(),
        "the trial container is gone"
    );
    // What the engine accepts is passed on as given: 5 MiB is below Docker's minimum, not
    // Podman's.
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "small", "image": echo_image(), "envProcess": "cat",
               "limits": {"memory": "5Mi", "cpu": "100m"}}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let id = eventually("the replica's container", DEADLINE, || {
        containers_of(&data).pop()
    })
    .await;
    // Only the replica: the trial container the deployment made is gone.
    assert_eq!(all_containers_of(&data), std::slice::from_ref(&id));
    assert!(!inspect(&id, "{{.Name}}").ends_with("-trial"));
    assert_eq!(
        inspect(&id, "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}"),
        "5242880 100000000"
    );
    let status: Value =
        serde_json::from_str(&get(gw.addr, "/system/function/small").await.text()).unwrap();
    assert_eq!(status["limits"], json!({"memory": "5Mi", "cpu": "100m"}));
}

#[tokio::test]
async fn secrets_read_only_root_limits_labels_and_logs_reach_the_container() {
    // A non-root image: secrets must still be readable inside.
    let image = build_image(
        "fgw-test-user:2",
        &["USER 1000".to_string(), r#"CMD ["fwatchdog"]"#.to_string()],
    );
    let engine = Engine::start().await;
    let (service, data) = (&engine.service, engine.data.clone());
    let gw = up(service, &data, &[]).await;

    let r = system(
        &gw,
        "POST",
        "/system/secrets",
        json!({"name": "api-key", "value": "s3cret"}),
    )
    .await;
    assert!(r.status() < 300, "{}", r.text());
    let script = "cat /var/openfaas/secrets/api-key; echo; \
        touch /probe 2>/dev/null && echo root-writable || echo root-read-only; \
        touch /tmp/probe && echo tmp-writable; id -u; echo to-the-log >&2";
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({
            "service": "inside", "image": image, "secrets": ["api-key"],
            "envProcess": format!("sh -c '{script}'"),
            "envVars": {"combine_output": "false"},
            "readOnlyRootFilesystem": true,
            "limits": {"memory": "64Mi", "cpu": "500m"},
            "labels": {"team": "blue"}, "annotations": {"topic": "tests"}
        }),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let r = post(gw.addr, "/function/inside", "").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let text = r.text();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        ["s3cret", "root-read-only", "tmp-writable", "1000"],
        "{}",
        r.text()
    );

    let id = containers_of(&data).pop().unwrap();
    assert_eq!(
        inspect(
            &id,
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.ReadonlyRootfs}}"
        ),
        "67108864 500000000 true"
    );
    assert_eq!(
        inspect(
            &id,
            r#"{{index .Config.Labels "team"}} {{index .Config.Labels "topic"}} {{index .Config.Labels "com.fgateway.function"}} {{index .Config.Labels "com.fgateway.namespace"}}"#
        ),
        "blue tests inside openfaas-fn"
    );
    let ports = inspect(&id, "{{json .HostConfig.PortBindings}}");
    assert!(
        ports.contains("127.0.0.1"),
        "published on loopback only: {ports}"
    );

    // The container's output reaches the function's log.
    eventually_async(
        "the handler's stderr line in /system/logs",
        DEADLINE,
        || async {
            let body = get(gw.addr, "/system/logs?name=inside&follow=false")
                .await
                .text();
            body.contains("to-the-log").then_some(())
        },
    )
    .await;
}

/// The ENV, EXPOSE, HEALTHCHECK and CMD lines of the repository's Dockerfile.template.
fn template_lines() -> Vec<String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile.template"))
            .unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| {
            ["ENV ", "EXPOSE ", "HEALTHCHECK ", "CMD "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("HEALTHCHECK")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("CMD")), "{lines:?}");
    lines
}

#[tokio::test]
async fn an_image_from_the_dockerfile_template_is_healthy_drains_and_reaps() {
    let image = build_image("fgw-test-template:2", &template_lines());
    let engine = Engine::start().await;
    let (service, data) = (&engine.service, engine.data.clone());
    let gw = up(service, &data, &[]).await;
    // The template's fprocess runs Python; this image has busybox: the deployment says what to
    // run, as faas-cli's `fprocess` override does. The handler leaves an orphan behind. Its
    // call lasts 3 s: long enough for `podman exec`, slow on a loaded machine, to see it run.
    let r = system(
        &gw,
        "POST",
        "/system/functions",
        json!({"service": "tpl", "image": image, "envProcess": "sh -c 'sleep 3; (sleep 0.2 &); cat'"}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    wait_available(&gw, "tpl", 1).await;
    let id = containers_of(&data).pop().unwrap();
    let env = inspect(&id, "{{.Config.Env}}");
    assert!(
        env.contains("write_timeout=10s"),
        "the template's ENV lines: {env}"
    );

    // The template's HEALTHCHECK passes once fwatchdog is up.
    let health = podman().args(["healthcheck", "run", &id]).output().unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // The orphan is reaped by fwatchdog as PID 1: no zombie is left once it ends.
    let r = post(gw.addr, "/function/tpl", "first").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "first"));
    eventually("the orphan reaped", DEADLINE, || {
        let stats = podman_out(&["exec", &id, "sh", "-c", "cat /proc/[0-9]*/stat"]);
        let left = stats
            .lines()
            .any(|l| l.contains("(sleep)") || l.contains(") Z "));
        (!left).then_some(())
    })
    .await;
    assert_eq!(
        podman_out(&["exec", &id, "sh", "-c", "cat /proc/1/comm"]),
        "fwatchdog"
    );

    // `podman stop` while a call runs: fwatchdog drains it before exiting.
    let addr = gw.addr;
    let call = tokio::spawn(async move { post(addr, "/function/tpl", "in flight").await });
    eventually("the call running in the container", DEADLINE, || {
        let stats = podman_out(&["exec", &id, "sh", "-c", "cat /proc/[0-9]*/stat"]);
        stats.contains("(sleep)").then_some(())
    })
    .await;
    podman_out(&["stop", "-t", "20", &id]);
    let r = call.await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "in flight"));
}
