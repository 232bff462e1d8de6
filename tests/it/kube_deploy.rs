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
use crate::harness::{Reply, eventually_async};
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

/// Where the claims' volumes live on the node (the host), owned by the pods' user.
const VOLUMES: &str = "/var/tmp/fwatchdog-k8s/volumes";

/// Runs kubectl as the cluster's admin, whatever it answers (for cleaning up and reports):
/// what it printed, on both streams.
fn kubectl_quiet(args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/cluster.sh"))
        .arg("kubectl")
        .args(args)
        .output();
    match out {
        Ok(out) => {
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        }
        Err(e) => format!("kubectl: {e}\n"),
    }
}

/// `deploy/kubernetes/`, or a directory in it.
fn manifests(dir: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(dir)
        .display()
        .to_string()
}

/// What a test applied (and the volumes it made, by name): removed on drop, also when the
/// test fails.
struct Applied {
    volumes: Vec<String>,
}

impl Applied {
    /// The static fgateway loaded as `fgateway:latest`, then `volumes` made for the claims
    /// (a cluster without a default StorageClass: volumes as an admin makes them).
    fn prepare(volumes: &[&str]) -> Applied {
        let k = kube();
        k.load_image(
            "docker.io/library/fgateway:latest",
            "/fgateway",
            &[(&static_fgateway(), "/fgateway")],
            65532,
        );
        let applied = Applied {
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
        };
        for name in volumes {
            let path = format!("{VOLUMES}/{name}");
            std::fs::create_dir_all(&path).unwrap();
            nix::unistd::chown(
                path.as_str(),
                Some(nix::unistd::Uid::from_raw(65532)),
                Some(nix::unistd::Gid::from_raw(65532)),
            )
            .unwrap();
            let pv = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": path, "type": "Directory"},
                },
            });
            let (code, body) = k.api("POST", "/api/v1/persistentvolumes", Some(pv));
            assert_eq!(code, 201, "{body}");
        }
        applied
    }

    /// `kubectl apply -f deploy/kubernetes/` and the basic-auth Secret, as the README says;
    /// then waits for the gateway on the node port.
    async fn apply_gateway(&self) {
        let k = kube();
        k.kubectl(&["apply", "-f", &manifests("")]);
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
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        let wait = ["--ignore-not-found", "--wait=true", "--timeout=120s", "-f"];
        kubectl_quiet(&[&["delete"], &wait[..], &[&manifests("jetstream")]].concat());
        kubectl_quiet(&[&["delete"], &wait[..], &[&manifests("")]].concat());
        for name in &self.volumes {
            kubectl_quiet(&["delete", "--ignore-not-found", "pv", name]);
            let _ = std::fs::remove_dir_all(format!("{VOLUMES}/{name}"));
        }
    }
}

/// Sends the request `build` makes to the gateway through its node port. While gateway pods
/// come and go, the node may have no ready endpoint for a moment and refuse the connection;
/// one that could not be made (nothing was sent) is made again, for up to two minutes (a
/// loaded test machine can hold pods unready that long), with a report of the cluster's state
/// once it has taken 10 s. So is one that got no answer in 20 s: while kube-proxy rewrites its
/// rules, a connection can reach the socket it holds the node port with, which accepts it and
/// never answers (no call of these tests takes 20 s; one that did would be sent twice, and
/// said so here).
async fn via_node_port(build: impl Fn() -> Request<Full<Bytes>>) -> Reply {
    let start = std::time::Instant::now();
    let mut reported = false;
    loop {
        let attempt = build();
        match crate::harness::try_send_within(NODE_PORT, attempt, Duration::from_secs(20)).await {
            Ok(reply) => return reply,
            Err(e)
                if (e.starts_with("connect:") || e.starts_with("no answer"))
                    && start.elapsed() < Duration::from_secs(120) =>
            {
                let what = format!("{} {}", build().method(), build().uri());
                if e.starts_with("no answer") {
                    eprintln!("{what}: {e}; sending it again");
                }
                if !reported && start.elapsed() > Duration::from_secs(10) {
                    reported = true;
                    eprintln!("{what}: {e} for 10 s; the cluster:\n{}", gateway_report());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "{} {}: {e}\n{}",
                build().method(),
                build().uri(),
                gateway_report()
            ),
        }
    }
}

/// Why the node port may have no endpoint: the node, the namespace `openfaas` and its events,
/// the functions' pods, kube-proxy's rules for the port and its last log lines, and every
/// gateway pod's last log lines (also those of a container that restarted).
fn gateway_report() -> String {
    // Each read bounded: the API server may be what is slow.
    let get = |args: &[&str]| kubectl_quiet(&[&["--request-timeout=10s"], args].concat());
    let mut report = get(&["get", "nodes", "-o", "wide"]);
    report += &get(&["-n", "default", "get", "events", "--sort-by=.lastTimestamp"]);
    report += &get(&["-n", "openfaas", "get", "pods,endpoints", "-o", "wide"]);
    report += &get(&[
        "-n",
        "openfaas",
        "get",
        "events",
        "--sort-by=.lastTimestamp",
    ]);
    report += &get(&["-n", "openfaas-fn", "get", "pods", "-o", "wide"]);
    // How kube-proxy routes the node port, and what it last said.
    report += "--- kube-proxy's rules for the gateway\n";
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "exec", "fgwk8s", "iptables-save"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains("31112") || line.contains("openfaas/gateway") {
                report += &format!("{line}\n");
            }
        }
    }
    let run = std::env::var("FGW_K8S_RUN").unwrap_or_else(|_| "/var/tmp/fwatchdog-k8s".into());
    let proxy_log =
        std::fs::read_to_string(format!("{run}/logs/kube-proxy.log")).unwrap_or_default();
    let lines: Vec<&str> = proxy_log.lines().collect();
    report += "--- kube-proxy's log\n";
    for line in &lines[lines.len().saturating_sub(20)..] {
        report += &format!("{line}\n");
    }
    let pods = get(&[
        "-n",
        "openfaas",
        "get",
        "pods",
        "-l",
        "app=gateway",
        "-o",
        "name",
    ]);
    for pod in pods.lines().filter(|l| l.starts_with("pod/")) {
        for previous in ["--previous=false", "--previous=true"] {
            report += &format!("--- {pod} {previous}\n");
            report += &get(&["-n", "openfaas", "logs", "--tail=40", previous, pod]);
        }
    }
    report
}

/// `METHOD path` to the gateway through its node port, with the credentials when `auth`.
async fn call(method: http::Method, path: &str, body: impl Into<Bytes>, auth: bool) -> Reply {
    let body: Bytes = body.into();
    via_node_port(|| {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "gateway");
        if auth {
            req = req.header("authorization", AUTH);
        }
        req.body(Full::new(body.clone())).unwrap()
    })
    .await
}

/// Waits until the gateway behind the node port answers `/healthz` (while pods come and go,
/// a connection may be refused).
async fn gateway_ready(what: &str) {
    eventually_async(what, Duration::from_secs(180), || async {
        let req = Request::get("/healthz")
            .header("host", "gateway")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = crate::harness::try_send_within(NODE_PORT, req, Duration::from_secs(5));
        matches!(answer.await, Ok(r) if r.status() == 200).then_some(())
    })
    .await;
}

/// Deploys `spec` through the node port (202 expected).
async fn deploy(spec: serde_json::Value) {
    let r = call(
        http::Method::POST,
        "/system/functions",
        spec.to_string(),
        true,
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text());
}

/// Deploys `slow` (answers its body after a second) through the node port and waits until
/// it answers.
async fn deploy_slow() {
    deploy(json!({"service": "slow", "image": IMAGE, "envProcess": "sh -c 'sleep 1; cat'"})).await;
    eventually_async("slow answering", Duration::from_secs(120), || async {
        let r = call(http::Method::POST, "/function/slow", "x", false).await;
        (r.status() == 200).then_some(())
    })
    .await;
}

/// Sends `n` asynchronous calls of `slow` through the node port, to be called back at
/// `hook`; their call ids.
async fn slow_calls(hook: &Receiver, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = via_node_port(|| {
            Request::post("/async-function/slow")
                .header("host", "gateway")
                .header("x-callback-url", hook.url())
                .body(Full::new(Bytes::from(format!("call {i}"))))
                .unwrap()
        })
        .await;
        assert_eq!(r.status(), 202, "{}", r.text());
        ids.push(r.header("x-call-id").unwrap());
    }
    ids
}

/// Waits up to `limit` until every call of `ids` was called back with status 200.
async fn all_called_back(hook: &Receiver, ids: &[String], limit: Duration) {
    let got = crate::harness::eventually("every accepted call called back", limit, || {
        let got = hook.all();
        ids.iter()
            .all(|id| got.iter().any(|c| &c.header("x-call-id") == id))
            .then_some(got)
    })
    .await;
    for id in ids {
        let back = got.iter().find(|c| &c.header("x-call-id") == id);
        let back = back.unwrap_or_else(|| panic!("no callback for {id}: {got:?}"));
        assert_eq!(back.header("x-function-status"), "200");
    }
}

/// Checks that no gateway pod's log shows a request its service account was refused.
fn no_refusals() {
    for pod in gateway_pods() {
        let logs = kube().kubectl(&["-n", "openfaas", "logs", &pod]);
        assert!(
            !logs.contains("forbidden") && !logs.contains("Forbidden"),
            "{pod}: {logs}"
        );
    }
}

/// The gateway's pods that are not being deleted, as the API lists them.
fn live_gateway_pods() -> Vec<serde_json::Value> {
    let (code, list) = kube().api(
        "GET",
        "/api/v1/namespaces/openfaas/pods?labelSelector=app%3Dgateway",
        None,
    );
    assert_eq!(code, 200, "{list}");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

/// The gateway's running pods' names (not those starting or being deleted).
fn gateway_pods() -> Vec<String> {
    live_gateway_pods()
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect()
}

// The cluster is held for the whole test on purpose (see `Kube::alone`); the test's runtime
// is its own, so the guard blocks no other task.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fgateway_deployed_from_its_manifests_serves_functions() {
    let k = kube();
    let _alone = k.alone();
    let applied = Applied::prepare(&["fgateway-test-data"]);
    applied.apply_gateway().await;
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
    deploy(json!({
        "service": "reader",
        "image": IMAGE,
        "envProcess": "cat /var/openfaas/secrets/api-key",
        "secrets": ["api-key"],
    }))
    .await;
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
    deploy_slow().await;
    let ids = slow_calls(&hook, 6).await;
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
    all_called_back(&hook, &ids, Duration::from_secs(120)).await;

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
    no_refusals();
}

/// Debian's nats-server (dynamically linked) and what it loads, packed as the image the
/// JetStream manifest names (there is no registry; `nats-server` takes the same flags).
fn load_nats_image() {
    let files: Vec<(std::path::PathBuf, &str)> = [
        ("/usr/sbin/nats-server", "/nats-server"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ),
        ("/lib64/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"),
    ]
    .into_iter()
    .map(|(src, dest)| {
        let real = std::fs::canonicalize(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        (real, dest)
    })
    .collect();
    let files: Vec<(&Path, &str)> = files.iter().map(|(p, d)| (p.as_path(), *d)).collect();
    kube().load_image("docker.io/library/nats:2.10", "/nats-server", &files, 65532);
}

/// `deploy/kubernetes/` then `deploy/kubernetes/jetstream/`: three NATS nodes and two
/// gateways on their queue. Asynchronous calls accepted through the node port (either
/// gateway) are run and called back, also with one gateway's pod killed right after.
// The cluster is held for the whole test on purpose (see `Kube::alone`).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_share_the_jetstream_queue_of_the_manifests() {
    assert!(
        Path::new("/usr/sbin/nats-server").exists(),
        "nats-server is needed (Debian package nats-server)"
    );
    let k = kube();
    let _alone = k.alone();
    let applied = Applied::prepare(&[
        "fgateway-test-data",
        "fgateway-test-nats-0",
        "fgateway-test-nats-1",
        "fgateway-test-nats-2",
    ]);
    load_nats_image();
    applied.apply_gateway().await;
    k.kubectl(&["apply", "-f", &manifests("jetstream")]);
    k.kubectl(&[
        "-n",
        "openfaas",
        "rollout",
        "status",
        "statefulset/nats",
        "--timeout=180s",
    ]);
    k.kubectl(&[
        "-n",
        "openfaas",
        "rollout",
        "status",
        "deployment/gateway",
        "--timeout=240s",
    ]);
    crate::harness::eventually("two gateways", Duration::from_secs(60), || {
        (gateway_pods().len() == 2).then_some(())
    })
    .await;
    gateway_ready("the gateways on the queue, ready").await;
    // They started with NATS, before it had a JetStream leader, and waited for it: none
    // exited and was restarted.
    for pod in live_gateway_pods() {
        let name = &pod["metadata"]["name"];
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(
                status["restartCount"],
                0,
                "gateway {name} restarted: {status}\n{}",
                gateway_report()
            );
        }
    }
    // `kubectl logs deploy/gateway` may pick a pod of the first Deployment that is still
    // being deleted; every pod that is not must be on the queue.
    for pod in gateway_pods() {
        let logs = k.kubectl(&["-n", "openfaas", "logs", &pod]);
        assert!(
            logs.contains("nats"),
            "gateway {pod} on the JetStream queue: {logs}"
        );
    }

    deploy_slow().await;

    // Calls accepted through the node port land on either gateway; one gateway's pod is
    // killed right after; every call is run once the queue's lease lapses, and called back.
    let hook = Receiver::start_on(HOST_IP, 0).await;
    let ids = slow_calls(&hook, 8).await;
    let victim = gateway_pods().remove(0);
    k.kubectl(&[
        "-n",
        "openfaas",
        "delete",
        "pod",
        &victim,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    all_called_back(&hook, &ids, Duration::from_secs(150)).await;
    no_refusals();
}
