//! fgateway deployed into the test cluster from `deploy/kubernetes/`, as a Kubernetes user
//! applies it: the static fgateway packed FROM scratch as `fgateway:latest`, a volume for its
//! claim, `kubectl apply -f deploy/kubernetes/`, the basic-auth Secret. The gateway then runs
//! as its service account with the manifests' RBAC, reached on the node port 31112, and serves
//! a function: deploy, call, async call called back, secret, logs, scale, delete; an accepted
//! call survives the gateway's pod being killed (the queue is on the claim).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::callback::Receiver;
use crate::harness::{Reply, eventually_async, send};
use crate::kube_cluster::{IMAGE, kube};
use crate::podman::static_fgateway;

/// The gateway's node port, as `deploy/kubernetes/20-gateway.yaml` publishes it.
const NODE_PORT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 250, 0, 1)),
    31112,
);

/// The host's address on the cluster's link, which pods reach.
const HOST_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 250, 0, 2));

/// The credentials the test stores in the Secret basic-auth.
const AUTH: &str = "Basic YWRtaW46czNjcjN0LWluLWNsdXN0ZXI="; // admin:s3cr3t-in-cluster

/// Where the claim's volume lives on the node (the host), owned by the gateway's user.
const VOLUME: &str = "/var/tmp/fwatchdog-k8s/volumes/gateway-data";

/// Removes what the test applied, also when it fails.
struct Applied;

impl Drop for Applied {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/cluster.sh"))
            .args(["kubectl", "delete", "--ignore-not-found", "--wait=true"])
            .args(["--timeout=120s", "-f"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes"))
            .output();
        let _ = std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/cluster.sh"))
            .args([
                "kubectl",
                "delete",
                "--ignore-not-found",
                "pv",
                "fgateway-test-data",
            ])
            .output();
        let _ = std::fs::remove_dir_all(VOLUME);
    }
}

/// `METHOD path` to the gateway through its node port, with the credentials when `auth`.
async fn call(method: http::Method, path: &str, body: impl Into<Bytes>, auth: bool) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway");
    if auth {
        req = req.header("authorization", AUTH);
    }
    send(NODE_PORT, req.body(Full::new(body.into())).unwrap()).await
}

/// Waits until the gateway behind the node port answers `/healthz`.
async fn gateway_ready(what: &str) {
    eventually_async(what, Duration::from_secs(180), || async {
        tokio::net::TcpStream::connect(NODE_PORT).await.ok()?;
        (call(http::Method::GET, "/healthz", "", false)
            .await
            .status()
            == 200)
            .then_some(())
    })
    .await;
}

/// The gateway's pods' names.
fn gateway_pods() -> Vec<String> {
    kube()
        .kubectl(&[
            "-n",
            "openfaas",
            "get",
            "pods",
            "-l",
            "app=gateway",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(String::from)
        .collect()
}

// The cluster is held for the whole test on purpose (see `Kube::alone`); the test's runtime
// is its own, so the guard blocks no other task.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fgateway_deployed_from_its_manifests_serves_functions() {
    let k = kube();
    let _alone = k.alone();
    let _applied = Applied;
    k.load_fgateway_image(
        "docker.io/library/fgateway:latest",
        &static_fgateway(),
        65532,
    );

    // A cluster without a default StorageClass: a volume for the claim, as an admin makes one.
    std::fs::create_dir_all(VOLUME).unwrap();
    nix::unistd::chown(
        VOLUME,
        Some(nix::unistd::Uid::from_raw(65532)),
        Some(nix::unistd::Gid::from_raw(65532)),
    )
    .unwrap();
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "fgateway-test-data"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": VOLUME, "type": "Directory"},
        },
    });
    let (code, body) = k.api("POST", "/api/v1/persistentvolumes", Some(pv));
    assert_eq!(code, 201, "{body}");

    // As the README says.
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/");
    k.kubectl(&["apply", "-f", &manifests.display().to_string()]);
    k.kubectl(&[
        "-n",
        "openfaas",
        "create",
        "secret",
        "generic",
        "basic-auth",
        "--from-literal=basic-auth-user=admin",
        "--from-literal=basic-auth-password=s3cr3t-in-cluster",
    ]);
    gateway_ready("the gateway ready on the node port").await;
    assert_eq!(
        call(http::Method::GET, "/system/functions", "", false)
            .await
            .status(),
        401
    );
    let info = call(http::Method::GET, "/system/info", "", true).await;
    assert_eq!(info.status(), 200, "{}", info.text());
    assert!(info.text().contains("kubernetes"), "{}", info.text());

    // A secret, and a function reading it (in the default namespace, openfaas-fn).
    let r = call(
        http::Method::POST,
        "/system/secrets",
        json!({"name": "api-key", "value": "k-123"}).to_string(),
        true,
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let deploy = json!({
        "service": "reader",
        "image": IMAGE,
        "envProcess": "cat /var/openfaas/secrets/api-key",
        "secrets": ["api-key"],
    });
    let r = call(
        http::Method::POST,
        "/system/functions",
        deploy.to_string(),
        true,
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let answer = eventually_async("reader answering", Duration::from_secs(120), || async {
        let r = call(http::Method::POST, "/function/reader", "", false).await;
        (r.status() == 200).then(|| r.text())
    })
    .await;
    assert_eq!(answer, "k-123");
    let ns = call(http::Method::GET, "/system/namespaces", "", true).await;
    assert!(ns.text().contains("openfaas-fn"), "{}", ns.text());

    // Its logs, from the pod.
    eventually_async("reader's log lines", Duration::from_secs(30), || async {
        let r = call(
            http::Method::GET,
            "/system/logs?name=reader&tail=50",
            "",
            true,
        )
        .await;
        r.text().contains("Forking fprocess").then_some(())
    })
    .await;

    // Asynchronous calls, accepted, then the gateway's pod killed at once: the new pod (same
    // claim) runs them and calls back.
    let hook = Receiver::start_on(HOST_IP, 0).await;
    let r = call(
        http::Method::POST,
        "/system/functions",
        json!({
            "service": "slow",
            "image": IMAGE,
            "envProcess": "sh -c 'sleep 1; cat'",
        })
        .to_string(),
        true,
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually_async("slow answering", Duration::from_secs(120), || async {
        (call(http::Method::POST, "/function/slow", "x", false)
            .await
            .status()
            == 200)
            .then_some(())
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let req = Request::post("/async-function/slow")
            .header("host", "gateway")
            .header("x-callback-url", hook.url())
            .body(Full::new(Bytes::from(format!("call {i}"))))
            .unwrap();
        let r = send(NODE_PORT, req).await;
        assert_eq!(r.status(), 202, "{}", r.text());
        ids.push(r.header("x-call-id").unwrap());
    }
    let before = gateway_pods();
    k.kubectl(&[
        "-n",
        "openfaas",
        "delete",
        "pod",
        "-l",
        "app=gateway",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    eventually_async("a new gateway pod", Duration::from_secs(60), || async {
        let now = gateway_pods();
        (!now.is_empty() && now.iter().all(|p| !before.contains(p))).then_some(())
    })
    .await;
    gateway_ready("the new gateway pod ready").await;
    // Calls that were running when the pod died run again once their lease (30 s) lapses.
    let got = crate::harness::eventually(
        "every accepted call called back",
        Duration::from_secs(120),
        || {
            let got = hook.all();
            ids.iter()
                .all(|id| got.iter().any(|c| &c.header("x-call-id") == id))
                .then_some(got)
        },
    )
    .await;
    for id in &ids {
        let back = got.iter().find(|c| &c.header("x-call-id") == id);
        let back = back.unwrap_or_else(|| panic!("no callback for {id}: {got:?}"));
        assert_eq!(back.header("x-function-status"), "200");
    }

    // Scale and delete, through the API.
    let r = call(
        http::Method::POST,
        "/system/scale-function/reader",
        json!({"replicas": 2}).to_string(),
        true,
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
    eventually_async("reader at 2 replicas", Duration::from_secs(120), || async {
        let r = call(http::Method::GET, "/system/function/reader", "", true).await;
        let s: serde_json::Value = serde_json::from_str(&r.text()).ok()?;
        (s["availableReplicas"] == 2).then_some(())
    })
    .await;
    for name in ["reader", "slow"] {
        let r = call(
            http::Method::DELETE,
            "/system/functions",
            json!({"functionName": name}).to_string(),
            true,
        )
        .await;
        assert_eq!(r.status(), 202, "{}", r.text());
    }
    let r = call(
        http::Method::DELETE,
        "/system/secrets",
        json!({"name": "api-key"}).to_string(),
        true,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());

    // Nothing the service account was refused.
    let logs = k.kubectl(&["-n", "openfaas", "logs", "deploy/gateway"]);
    assert!(
        !logs.contains("forbidden") && !logs.contains("Forbidden"),
        "{logs}"
    );
}
