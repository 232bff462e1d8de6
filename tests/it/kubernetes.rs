//! The Kubernetes provider on a real cluster (see `kube_cluster`): functions deployed through
//! the system API become Deployments and Services, calls reach their pods, the cluster holds
//! the deployed set (two gateways share it; a function made with the Kubernetes API shows up),
//! scaling (to zero and back) moves the Deployment, async calls are called back.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::callback::Receiver;
use crate::harness::{Gateway, eventually_async, get, post};
use crate::kube_cluster::{IMAGE, NONROOT_IMAGE, kube};

/// `fgateway up --provider kubernetes` on the test cluster, its leases (shared with the
/// test's other gateways) in the test's namespace.
pub async fn gateway(data: &Path, namespace: &str) -> Gateway {
    std::fs::create_dir_all(data).unwrap();
    let kubeconfig = kube().kubeconfig.display().to_string();
    Gateway::start(
        data,
        &["--provider", "kubernetes"],
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("POD_NAMESPACE", namespace),
        ],
    )
    .await
}

/// Sends `METHOD path` with `body` as JSON (none when it is null) to the gateway at `addr`.
async fn send_json(
    addr: std::net::SocketAddr,
    method: http::Method,
    path: impl Into<String>,
    body: serde_json::Value,
) -> crate::harness::Reply {
    let body = if body.is_null() {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::from(body.to_string())
    };
    crate::harness::send(
        addr,
        http::Request::builder()
            .method(method)
            .uri(path.into())
            .body(http_body_util::Full::new(body))
            .unwrap(),
    )
    .await
}

/// Deploys `name` in `namespace` through `gw`'s system API.
pub async fn deploy(
    gw: &Gateway,
    name: &str,
    namespace: &str,
    fprocess: &str,
    labels: serde_json::Value,
) {
    let r = post(
        gw.addr,
        "/system/functions",
        json!({
            "service": name,
            "namespace": namespace,
            "image": IMAGE,
            "envProcess": fprocess,
            "labels": labels,
        })
        .to_string(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
}

/// Removes a function through `gw`'s system API.
async fn remove(gw: &Gateway, name: &str, namespace: &str) -> crate::harness::Reply {
    send_json(
        gw.addr,
        http::Method::DELETE,
        "/system/functions",
        json!({"functionName": name, "namespace": namespace}),
    )
    .await
}

/// A function's status through `gw`.
async fn status(gw: &Gateway, name: &str, namespace: &str) -> Option<serde_json::Value> {
    let r = get(
        gw.addr,
        &format!("/system/function/{name}?namespace={namespace}"),
    )
    .await;
    (r.status() == 200).then(|| serde_json::from_str(&r.text()).unwrap())
}

/// Waits until `name` has `n` available replicas, as `gw` lists it; when it does not in
/// time, the failure shows the listing, the Deployment's status and the gateway's last log
/// lines.
pub async fn available(gw: &Gateway, name: &str, namespace: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(gw, name, namespace).await;
        let reached = s.as_ref().is_some_and(|s| {
            s["availableReplicas"].as_u64().unwrap_or(0) == n
                && s["replicas"].as_u64().unwrap_or(0) == n
        });
        if reached {
            return;
        }
        if std::time::Instant::now() > deadline {
            let (_, deployment) = kube().api(
                "GET",
                &format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
                None,
            );
            // The gateway's own lines about the function (its scaling, its pods), not what
            // the pods of every test log.
            let log = gw.log.text();
            let label = format!("{name}.{namespace}");
            let about: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&label) && !l.contains(" function: "))
                .collect();
            panic!(
                "timed out waiting for {name} with {n} available replicas: listed {s:?}; \
                 Deployment spec.replicas {}, status {}; gateway log about {label}:\n{}",
                deployment["spec"]["replicas"],
                deployment["status"],
                about.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deploy, call, update, scale up (calls spread over the pods), scale down, delete: each a
/// change of the function's Deployment, listed from the cluster.
#[tokio::test]
async fn deploy_call_scale_and_delete_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("crud");
    let gw = gateway(&dir.path().join("gw"), &ns.name).await;
    // Counts set by hand only: the calls polling for the update's rollout would otherwise fire
    // the rate alert, whose resolution returns the function to its minimum (1) under the
    // manual scale to 2.
    let manual = json!({"com.openfaas.scale.factor": "0"});
    deploy(&gw, "echo", &ns.name, "cat", manual.clone()).await;
    available(&gw, "echo", &ns.name, 1).await;
    let r = post(gw.addr, &format!("/function/echo.{}", ns.name), "hello pod").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.text(), "hello pod");

    // The objects, as faas-netes makes them.
    let k = kube();
    let (code, d) = k.api(
        "GET",
        &format!("/apis/apps/v1/namespaces/{}/deployments/echo", ns.name),
        None,
    );
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["metadata"]["labels"]["faas_function"], "echo");
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], IMAGE);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/_/health");
    let (code, svc) = k.api(
        "GET",
        &format!("/api/v1/namespaces/{}/services/echo", ns.name),
        None,
    );
    assert_eq!(code, 200, "{svc}");
    assert_eq!(svc["spec"]["selector"]["faas_function"], "echo");

    // An update: another handler, rolled out.
    deploy(&gw, "echo", &ns.name, "hostname", manual).await;
    eventually_async(
        "the updated handler answering",
        Duration::from_secs(120),
        || async {
            let r = post(gw.addr, &format!("/function/echo.{}", ns.name), "").await;
            (r.status() == 200 && r.text().trim().starts_with("echo-")).then_some(())
        },
    )
    .await;

    // Scaled to 2: both pods answer.
    let r = post(
        gw.addr,
        &format!("/system/scale-function/echo?namespace={}", ns.name),
        json!({"serviceName": "echo", "namespace": ns.name, "replicas": 2}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    available(&gw, "echo", &ns.name, 2).await;
    let mut pods = HashSet::new();
    for _ in 0..20 {
        let r = post(gw.addr, &format!("/function/echo.{}", ns.name), "").await;
        assert_eq!(r.status(), 200, "{}", r.text());
        pods.insert(r.text().trim().to_string());
    }
    assert_eq!(pods.len(), 2, "calls reached {pods:?}");

    // Deleted: gone from the listing and from the cluster.
    let r = remove(&gw, "echo", &ns.name).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    assert!(status(&gw, "echo", &ns.name).await.is_none());
    eventually_async("the Deployment gone", Duration::from_secs(60), || async {
        let (code, _) = k.api(
            "GET",
            &format!("/apis/apps/v1/namespaces/{}/deployments/echo", ns.name),
            None,
        );
        (code == 404).then_some(())
    })
    .await;
}

/// The cluster holds the deployed set: a function deployed through one gateway is listed and
/// called through another, and one made with the Kubernetes API under the same labels is
/// listed and called by both.
#[tokio::test]
async fn gateways_share_the_functions_the_cluster_holds() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("shared");
    let a = gateway(&dir.path().join("a"), &ns.name).await;
    let b = gateway(&dir.path().join("b"), &ns.name).await;
    deploy(&a, "through-a", &ns.name, "cat", json!({})).await;
    available(&b, "through-a", &ns.name, 1).await;
    let r = post(b.addr, &format!("/function/through-a.{}", ns.name), "via b").await;
    assert_eq!(r.text(), "via b");

    // Made with the API, as kubectl would.
    let (code, body) = kube().api(
        "POST",
        &format!("/apis/apps/v1/namespaces/{}/deployments", ns.name),
        Some(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "by-hand", "labels": {"faas_function": "by-hand"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"faas_function": "by-hand"}},
                "template": {
                    "metadata": {"labels": {"faas_function": "by-hand"}},
                    "spec": {"containers": [{
                        "name": "by-hand",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                        "env": [{"name": "fprocess", "value": "echo made by hand"}],
                        "readinessProbe": {"httpGet": {"path": "/_/health", "port": 8080}, "periodSeconds": 1},
                    }]},
                },
            },
        })),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = kube().api(
        "POST",
        &format!("/api/v1/namespaces/{}/services", ns.name),
        Some(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "by-hand", "labels": {"faas_function": "by-hand"}},
            "spec": {"selector": {"faas_function": "by-hand"}, "ports": [{"name": "http", "port": 8080}]},
        })),
    );
    assert_eq!(code, 201, "{body}");
    for gw in [&a, &b] {
        available(gw, "by-hand", &ns.name, 1).await;
        let r = post(gw.addr, &format!("/function/by-hand.{}", ns.name), "").await;
        assert_eq!(r.text().trim(), "made by hand");
    }
    let listed = get(a.addr, &format!("/system/functions?namespace={}", ns.name)).await;
    let names: HashSet<String> = serde_json::from_str::<Vec<serde_json::Value>>(&listed.text())
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, HashSet::from(["through-a".into(), "by-hand".into()]));
}

/// A function scaled to zero has no pod; a call wakes it, waits for a ready pod and is
/// answered. An async call runs on a pod and is called back.
#[tokio::test]
async fn scale_to_zero_and_back_and_async_calls() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("zero");
    let gw = gateway(&dir.path().join("gw"), &ns.name).await;
    deploy(&gw, "sleepy", &ns.name, "cat", json!({})).await;
    available(&gw, "sleepy", &ns.name, 1).await;
    let r = post(
        gw.addr,
        "/system/scale-function/sleepy",
        json!({"serviceName": "sleepy", "namespace": ns.name, "replicas": 0}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    available(&gw, "sleepy", &ns.name, 0).await;
    let r = post(gw.addr, &format!("/function/sleepy.{}", ns.name), "wake up").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.text(), "wake up");
    assert_eq!(
        status(&gw, "sleepy", &ns.name).await.unwrap()["replicas"],
        1
    );

    let receiver = Receiver::start(0).await;
    let r = crate::harness::send(
        gw.addr,
        http::Request::post(format!("/async-function/sleepy.{}", ns.name))
            .header("x-callback-url", receiver.url())
            .body(http_body_util::Full::new(bytes::Bytes::from("later")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("x-function-status"), "200");
    assert_eq!(got[0].body, "later");
}

/// Secrets through the system API are Kubernetes Secrets in the function's namespace, mounted
/// where OpenFaaS mounts them and readable by a function that does not run as root; one a
/// function names cannot be deleted, and a function naming a missing one is refused.
#[tokio::test]
async fn secrets_are_the_clusters_and_reach_non_root_functions() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("secrets");
    let gw = gateway(&dir.path().join("gw"), &ns.name).await;
    let secret = json!({"name": "api-key", "namespace": ns.name, "value": "s3cret"});
    let r = post(gw.addr, "/system/secrets", secret.to_string()).await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let r = post(gw.addr, "/system/secrets", secret.to_string()).await;
    assert_eq!(r.status(), 409, "{}", r.text());
    let listed = get(gw.addr, &format!("/system/secrets?namespace={}", ns.name)).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed.text()).unwrap(),
        json!([{"name": "api-key", "namespace": ns.name}])
    );
    let (code, s) = kube().api(
        "GET",
        &format!("/api/v1/namespaces/{}/secrets/api-key", ns.name),
        None,
    );
    assert_eq!(code, 200, "{s}");
    assert_eq!(
        s["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "openfaas"
    );

    let deploy_with = |name: &str, secret: &str| {
        json!({
            "service": name,
            "namespace": ns.name,
            "image": NONROOT_IMAGE,
            "envProcess": "sh -c 'id -u; cat /var/openfaas/secrets/api-key'",
            "secrets": [secret],
        })
        .to_string()
    };
    let r = post(
        gw.addr,
        "/system/functions",
        deploy_with("reader", "missing"),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert!(
        r.text().contains("secret missing not found"),
        "{}",
        r.text()
    );
    let r = post(
        gw.addr,
        "/system/functions",
        deploy_with("reader", "api-key"),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    available(&gw, "reader", &ns.name, 1).await;
    let r = post(gw.addr, &format!("/function/reader.{}", ns.name), "").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.text(), "12000\ns3cret");

    let delete_secret = || {
        send_json(
            gw.addr,
            http::Method::DELETE,
            "/system/secrets",
            json!({"name": "api-key", "namespace": ns.name}),
        )
    };
    let r = delete_secret().await;
    assert_eq!(r.status(), 409, "{}", r.text());
    let r = remove(&gw, "reader", &ns.name).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let r = delete_secret().await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let r = delete_secret().await;
    assert_eq!(r.status(), 404, "{}", r.text());
}

/// Function logs come from the pods: every replica's lines, merged, named after its pod, with
/// follow.
#[tokio::test]
async fn logs_come_from_every_pod_with_follow() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("logs");
    let gw = gateway(&dir.path().join("gw"), &ns.name).await;
    // The handler's stderr goes to the watchdog's log, not into the answer.
    let r = post(
        gw.addr,
        "/system/functions",
        json!({
            "service": "talk",
            "namespace": ns.name,
            "image": IMAGE,
            "envProcess": "sh -c 'echo said $Http_Query >&2; cat'",
            "envVars": {"combine_output": "false"},
            "labels": {"com.openfaas.scale.min": "2"},
        })
        .to_string(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    available(&gw, "talk", &ns.name, 2).await;
    let path = format!("/system/logs?name=talk&namespace={}&follow=false", ns.name);
    let pods = eventually_async("lines from both pods", Duration::from_secs(60), || async {
        let r = post(gw.addr, &format!("/function/talk.{}?n=1", ns.name), "").await;
        assert_eq!(r.status(), 200, "{}", r.text());
        let body = get(gw.addr, &path).await.text();
        let pods: HashSet<String> = body
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["text"].as_str().is_some_and(|t| t.contains("said n=1")))
            .map(|l| l["instance"].as_str().unwrap_or_default().to_string())
            .collect();
        (pods.len() == 2).then_some(pods)
    })
    .await;
    assert!(pods.iter().all(|p| p.starts_with("talk-")), "{pods:?}");

    let follower = crate::system_api::follow_logs(
        gw.addr,
        &format!("name=talk&namespace={}&tail=1&follow=true", ns.name),
        Duration::from_secs(60),
    );
    let r = post(gw.addr, &format!("/function/talk.{}?n=late", ns.name), "").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(
        crate::system_api::followed(follower, "said n=late").await,
        "the followed log never showed the late call"
    );
}

/// With two gateways, one at a time autoscales, from the calls of both; listings count both
/// gateways' calls; when the autoscaling gateway dies, the other takes over.
#[tokio::test]
async fn one_gateway_autoscales_from_every_gateways_calls() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("lead");
    let mut gateways = vec![
        gateway(&dir.path().join("a"), &ns.name).await,
        gateway(&dir.path().join("b"), &ns.name).await,
    ];
    let leads = |g: &Gateway| g.log.text().contains("autoscaler lease taken");
    let leader = eventually_async("one gateway leading", Duration::from_secs(30), || async {
        match (leads(&gateways[0]), leads(&gateways[1])) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await;
    let other = 1 - leader;
    deploy(
        &gateways[other],
        "busy",
        &ns.name,
        "cat",
        json!({"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "5"}),
    )
    .await;
    available(&gateways[other], "busy", &ns.name, 1).await;

    // Calls through the gateway that does not autoscale: the other scales up (the rate alert:
    // above 5 calls/s for 5 s), and lists them.
    let addr = gateways[other].addr;
    let url = format!("/function/busy.{}", ns.name);
    let load = tokio::spawn(async move {
        for _ in 0..400 {
            let r = post(addr, &url, "x").await;
            assert_eq!(r.status(), 200, "{}", r.text());
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    eventually_async(
        "the leading gateway scaling up from the other's calls",
        Duration::from_secs(60),
        || async {
            let s = status(&gateways[leader], "busy", &ns.name).await?;
            (s["replicas"].as_u64()? >= 2 && s["invocationCount"].as_f64()? > 10.0).then_some(())
        },
    )
    .await;
    load.abort();

    // The leader dies without giving the lease up: the other takes it once it lapses.
    gateways[leader].signal(nix::sys::signal::Signal::SIGKILL);
    gateways[leader].wait_exit(Duration::from_secs(10)).await;
    let survivor = gateways.swap_remove(other);
    eventually_async(
        "the other gateway taking over",
        Duration::from_secs(30),
        || async { leads(&survivor).then_some(()) },
    )
    .await;
    // Its pods are not needed for the rest: they leave the node to the other tests.
    let r = remove(&survivor, "busy", &ns.name).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    // The dead gateway's own lease is removed by the new leader once it is stale (60 s).
    let members = || {
        let (code, list) = kube().api(
            "GET",
            &format!(
                "/apis/coordination.k8s.io/v1/namespaces/{}/leases?labelSelector=app.kubernetes.io%2Fcomponent%3Dfgateway-member",
                ns.name
            ),
            None,
        );
        assert_eq!(code, 200, "{list}");
        list["items"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(members(), 2, "both gateways' leases");
    crate::harness::eventually(
        "the dead gateway's lease removed",
        Duration::from_secs(120),
        || (members() == 1).then_some(()),
    )
    .await;
}

/// Function namespaces are the cluster's namespaces labelled `openfaas: "1"`: listed, created,
/// relabelled and removed through the system API; the default one and one holding functions
/// cannot be removed.
#[tokio::test]
async fn namespaces_are_the_clusters_labelled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("names");
    let gw = gateway(&dir.path().join("gw"), &ns.name).await;
    let names = || async {
        serde_json::from_str::<Vec<String>>(&get(gw.addr, "/system/namespaces").await.text())
            .unwrap()
    };
    eventually_async(
        "the test's namespace listed",
        Duration::from_secs(30),
        || async { names().await.contains(&ns.name).then_some(()) },
    )
    .await;

    let made = format!("{}-made", ns.name);
    let r = post(
        gw.addr,
        "/system/namespace/",
        json!({"name": made, "labels": {"team": "a"}}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let (code, k) = kube().api("GET", &format!("/api/v1/namespaces/{made}"), None);
    assert_eq!(code, 200, "{k}");
    assert_eq!(k["metadata"]["labels"]["openfaas"], "1");
    assert_eq!(k["metadata"]["labels"]["team"], "a");
    eventually_async(
        "the made namespace listed",
        Duration::from_secs(30),
        || async {
            let r = get(gw.addr, &format!("/system/namespace/{made}")).await;
            (r.status() == 200
                && serde_json::from_str::<serde_json::Value>(&r.text()).ok()?["labels"]
                    == json!({"team": "a"}))
            .then_some(())
        },
    )
    .await;
    let r = send_json(
        gw.addr,
        http::Method::PUT,
        format!("/system/namespace/{made}"),
        json!({"name": made, "labels": {"team": "b"}, "annotations": {"owner": "me"}}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let (_, k) = kube().api("GET", &format!("/api/v1/namespaces/{made}"), None);
    assert_eq!(k["metadata"]["labels"]["team"], "b");
    assert_eq!(k["metadata"]["annotations"]["owner"], "me");

    let delete = |name: String| {
        send_json(
            gw.addr,
            http::Method::DELETE,
            format!("/system/namespace/{name}"),
            serde_json::Value::Null,
        )
    };
    assert_eq!(delete("openfaas-fn".into()).await.status(), 409);
    deploy(&gw, "inside", &ns.name, "cat", json!({})).await;
    let r = delete(ns.name.clone()).await;
    assert_eq!(r.status(), 409, "{}", r.text());
    let r = delete(made.clone()).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually_async(
        "the made namespace gone",
        Duration::from_secs(60),
        || async { (!names().await.contains(&made)).then_some(()) },
    )
    .await;
}
