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

/// `fgateway up --provider kubernetes` on the test cluster.
async fn gateway(data: &Path, extra: &[&str]) -> Gateway {
    std::fs::create_dir_all(data).unwrap();
    let k = kube();
    let mut args = vec!["--provider", "kubernetes"];
    args.extend_from_slice(extra);
    let kubeconfig = k.kubeconfig.display().to_string();
    Gateway::start(data, &args, &[("KUBECONFIG", kubeconfig.as_str())]).await
}

/// Deploys `name` in `namespace` through `gw`'s system API.
async fn deploy(
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

/// A function's status through `gw`.
async fn status(gw: &Gateway, name: &str, namespace: &str) -> Option<serde_json::Value> {
    let r = get(
        gw.addr,
        &format!("/system/function/{name}?namespace={namespace}"),
    )
    .await;
    (r.status() == 200).then(|| serde_json::from_str(&r.text()).unwrap())
}

/// Waits until `name` has `n` available replicas, as `gw` lists it.
async fn available(gw: &Gateway, name: &str, namespace: &str, n: u64) {
    eventually_async(
        &format!("{name} with {n} available replicas"),
        Duration::from_secs(120),
        || async {
            let s = status(gw, name, namespace).await?;
            (s["availableReplicas"].as_u64().unwrap_or(0) == n
                && s["replicas"].as_u64().unwrap_or(0) == n)
                .then_some(())
        },
    )
    .await;
}

/// Deploy, call, update, scale up (calls spread over the pods), scale down, delete: each a
/// change of the function's Deployment, listed from the cluster.
#[tokio::test]
async fn deploy_call_scale_and_delete_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("crud");
    let gw = gateway(&dir.path().join("gw"), &[]).await;
    deploy(&gw, "echo", &ns.name, "cat", json!({})).await;
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
    deploy(&gw, "echo", &ns.name, "hostname", json!({})).await;
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
    let r = crate::harness::send(
        gw.addr,
        http::Request::delete("/system/functions")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({"functionName": "echo", "namespace": ns.name}).to_string(),
            )))
            .unwrap(),
    )
    .await;
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
    let a = gateway(&dir.path().join("a"), &[]).await;
    let b = gateway(&dir.path().join("b"), &[]).await;
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
    let gw = gateway(&dir.path().join("gw"), &[]).await;
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
    let gw = gateway(&dir.path().join("gw"), &[]).await;
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
        crate::harness::send(
            gw.addr,
            http::Request::delete("/system/secrets")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    json!({"name": "api-key", "namespace": ns.name}).to_string(),
                )))
                .unwrap(),
        )
    };
    let r = delete_secret().await;
    assert_eq!(r.status(), 409, "{}", r.text());
    let r = crate::harness::send(
        gw.addr,
        http::Request::delete("/system/functions")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({"functionName": "reader", "namespace": ns.name}).to_string(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let r = delete_secret().await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let r = delete_secret().await;
    assert_eq!(r.status(), 404, "{}", r.text());
}
