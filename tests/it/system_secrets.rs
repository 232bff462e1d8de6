//! Secrets and namespaces through the system API, against real replicas.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::{DEADLINE, Gateway, eventually_async, get, send};
use crate::system_api::{json, up};

pub(crate) async fn system(
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
