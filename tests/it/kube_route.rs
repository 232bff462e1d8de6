//! `--kube-route proxy`: a gateway that cannot reach the pod network (the host's route to it
//! is taken away for the test) calls functions through the API server's proxy to their pods.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Gateway, eventually_async, post};
use crate::kube_cluster::kube;
use crate::kubernetes::{available, deploy};

/// The pod network and the node, as `tests/k8s/cluster.sh` sets them up.
const POD_NET: &str = "10.244.0.0/24";
const NODE_IP: &str = "10.250.0.1";
const HOST_LINK: &str = "fgwk8s0";

/// Takes the host's route to the pods away (a blackhole route); puts it back when dropped.
struct NoPodRoute;

impl NoPodRoute {
    fn take() -> NoPodRoute {
        // A blackhole, not just no route: the default route may lead somewhere that answers.
        let out = std::process::Command::new("ip")
            .args(["route", "replace", "blackhole", POD_NET])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip route replace blackhole {POD_NET}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        NoPodRoute
    }
}

impl Drop for NoPodRoute {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "route", "replace", POD_NET, "via", NODE_IP, "dev", HOST_LINK,
            ])
            .output();
    }
}

// The cluster is held for the whole test on purpose: the host's route to the pods is gone
// meanwhile, which other tests' gateways need (see `Kube::alone`).
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn calls_go_through_the_api_servers_proxy() {
    let k = kube();
    let alone = k.alone();
    let ns = k.namespace_alone("route", &alone);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = k.kubeconfig.display().to_string();
    let gw = Gateway::start(
        dir.path(),
        &["--provider", "kubernetes", "--kube-route", "proxy"],
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("POD_NAMESPACE", ns.name.as_str()),
        ],
    )
    .await;
    deploy(&gw, "env", &ns.name, "env", json!({})).await;
    available(&gw, "env", &ns.name, 1).await;
    let (code, pods) = k.api(
        "GET",
        &format!(
            "/api/v1/namespaces/{}/pods?labelSelector=faas_function%3Denv",
            ns.name
        ),
        None,
    );
    assert_eq!(code, 200, "{pods}");
    let pod_ip = pods["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();

    let _no_route = NoPodRoute::take();
    let direct = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((pod_ip.as_str(), 8080)),
    )
    .await;
    assert!(
        !matches!(direct, Ok(Ok(_))),
        "the pod at {pod_ip} is still reachable from the host"
    );

    // The path and query reach the function through the proxy; so does the body.
    let r = eventually_async(
        "a call through the proxy",
        Duration::from_secs(30),
        || async {
            let r = post(
                gw.addr,
                &format!("/function/env.{}/some/path?x=1", ns.name),
                "body",
            )
            .await;
            (r.status() == 200).then_some(r)
        },
    )
    .await;
    let text = r.text();
    assert!(text.contains("Http_Path=/some/path"), "{text}");
    assert!(text.contains("Http_Query=x=1"), "{text}");
    assert!(text.contains("Http_Method=POST"), "{text}");
    deploy(&gw, "echo", &ns.name, "cat", json!({})).await;
    available(&gw, "echo", &ns.name, 1).await;
    let r = post(
        gw.addr,
        &format!("/function/echo.{}", ns.name),
        "through the API server",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.text(), "through the API server");
}
