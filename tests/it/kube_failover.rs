//! Calls under load on the test cluster (see `kube_cluster`) while things change under them:
//! a rolling update, a function pod killed, a gateway restarted. Clients count every answer;
//! the function's calls must not fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;

use crate::harness::{Gateway, eventually_async};
use crate::kube_cluster::kube;
use crate::kubernetes::{available, deploy, gateway};

/// Answers seen by the load's clients: status (0 for a connection that failed) → count, and
/// the bodies of the failures.
#[derive(Debug, Default)]
struct Tally {
    codes: BTreeMap<u16, u64>,
    failures: Vec<String>,
}

impl Tally {
    /// Counts one answer.
    fn add(&mut self, answer: Result<(u16, String), String>) {
        match answer {
            Ok((code, text)) => {
                *self.codes.entry(code).or_default() += 1;
                if code != 200 {
                    self.failures.push(format!("{code}: {text}"));
                }
            }
            Err(e) => {
                *self.codes.entry(0).or_default() += 1;
                self.failures.push(e);
            }
        }
    }
}

/// Clients calling one path in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One request on a new connection: the status and body, or `Err` when no answer came.
pub async fn try_call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: &'static str,
) -> Result<(u16, String), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .map_err(|e| e.to_string())?;
    let reply = crate::harness::try_send(addr, req).await?;
    Ok((reply.status(), reply.text()))
}

impl Load {
    /// `clients` clients sending `method path` (with `body`) to the gateway at `*addr`, one
    /// call after another.
    fn start(
        addr: SocketAddr,
        clients: usize,
        method: http::Method,
        path: String,
        body: &'static str,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                let (method, path) = (method.clone(), path.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = try_call(addr, method.clone(), &path, body).await;
                        tally.lock().unwrap().add(answer);
                        // A gateway that is down refuses at once: don't spin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load { stop, tally, tasks }
    }

    /// How many calls were answered 200 so far.
    fn ok(&self) -> u64 {
        self.tally
            .lock()
            .unwrap()
            .codes
            .get(&200)
            .copied()
            .unwrap_or(0)
    }

    /// Stops the clients and returns what they saw.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// Waits until the load has had `n` more 200s than `from`.
async fn more_ok(load: &Load, from: u64, n: u64, what: &str) {
    crate::harness::eventually(what, Duration::from_secs(60), || {
        (load.ok() >= from + n).then_some(())
    })
    .await;
}

/// The running pods of `function` in `namespace`.
fn pods(namespace: &str, function: &str) -> Vec<String> {
    let (code, list) = kube().api(
        "GET",
        &format!("/api/v1/namespaces/{namespace}/pods?labelSelector=faas_function%3D{function}"),
        None,
    );
    assert_eq!(code, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// The host's pid of the watchdog in pod `pod` (containers' processes are the host's; the
/// kubelet gives each container `HOSTNAME` = its pod's name).
fn watchdog_pid(pod: &str) -> Option<i32> {
    let needle = format!("HOSTNAME={pod}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        if !cmdline.starts_with(b"/fwatchdog\0") {
            return None;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|v| v == needle.as_bytes())
            .then_some(pid)
    })
}

/// A rolling update of a function under POST load, then one of its two pods killed (its
/// watchdog SIGKILLed) under GET load: every call is answered 200 (a call the dead pod
/// refuses goes to the other one).
#[tokio::test]
async fn calls_do_not_fail_through_an_update_or_a_killed_pod() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("failover");
    let gw = gateway(&dir.path().join("gw"), &ns.name).await;
    let two = json!({"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "2"});
    deploy(&gw, "echo", &ns.name, "cat", two.clone()).await;
    available(&gw, "echo", &ns.name, 2).await;
    let addr = gw.addr;
    let path = format!("/function/echo.{}", ns.name);

    // An update (another handler, same answer to POSTs) rolls out under load.
    let load = Load::start(addr, 4, http::Method::POST, path.clone(), "same");
    more_ok(&load, 0, 50, "calls before the update").await;
    let before = pods(&ns.name, "echo");
    deploy(&gw, "echo", &ns.name, "sh -c cat", two.clone()).await;
    eventually_async(
        "the update rolled out",
        Duration::from_secs(120),
        || async {
            let now = pods(&ns.name, "echo");
            (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(())
        },
    )
    .await;
    let through = load.ok();
    more_ok(&load, through, 50, "calls after the update").await;
    let tally = load.finish().await;
    eprintln!("update: {:?}", tally.codes);
    assert!(
        tally.failures.is_empty(),
        "failed calls through the update: {:?}",
        tally.failures
    );

    // One pod's watchdog killed: its container restarts; meanwhile calls go to the other.
    available(&gw, "echo", &ns.name, 2).await;
    let load = Load::start(addr, 4, http::Method::GET, path, "");
    more_ok(&load, 0, 50, "calls before the kill").await;
    let victim = pods(&ns.name, "echo").remove(0);
    let pid = watchdog_pid(&victim).unwrap_or_else(|| panic!("no watchdog process for {victim}"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let at_kill = load.ok();
    more_ok(&load, at_kill, 300, "calls after the kill").await;
    available(&gw, "echo", &ns.name, 2).await;
    let tally = load.finish().await;
    eprintln!("killed pod: {:?}", tally.codes);
    assert!(
        tally.failures.is_empty(),
        "failed calls with a pod killed: {:?}",
        tally.failures
    );
}

/// Two gateways serve one function under load; one is stopped (SIGTERM) and started again on
/// the same port mid-traffic. The other's calls never fail; the restarted one lists and calls
/// the function at once (the cluster holds it), and the calls in flight when it stopped were
/// answered.
#[tokio::test]
async fn a_gateway_restarted_mid_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let ns = kube().namespace("restart");
    let a = gateway(&dir.path().join("a"), &ns.name).await;
    let b = gateway(&dir.path().join("b"), &ns.name).await;
    deploy(
        &a,
        "echo",
        &ns.name,
        "cat",
        json!({"com.openfaas.scale.min": "2"}),
    )
    .await;
    available(&b, "echo", &ns.name, 2).await;
    let path = format!("/function/echo.{}", ns.name);
    let through_a = Load::start(a.addr, 3, http::Method::POST, path.clone(), "a");
    let through_b = Load::start(b.addr, 3, http::Method::POST, path.clone(), "b");
    more_ok(&through_a, 0, 50, "calls through a").await;

    let port = a.addr.port().to_string();
    let mut a = a;
    a.signal(nix::sys::signal::Signal::SIGTERM);
    a.wait_exit(Duration::from_secs(40)).await;
    let b_during = through_b.ok();
    let a_at_stop = through_a.ok();
    more_ok(&through_b, b_during, 50, "calls through b while a is down").await;
    let a = restart(&dir.path().join("a"), &ns.name, &port).await;
    let listed = crate::harness::get(
        a.addr,
        &format!("/system/function/echo?namespace={}", ns.name),
    )
    .await;
    assert_eq!(listed.status(), 200, "{}", listed.text());
    more_ok(
        &through_a,
        a_at_stop,
        50,
        "calls through a after its restart",
    )
    .await;

    let a_tally = through_a.finish().await;
    let b_tally = through_b.finish().await;
    eprintln!(
        "through a: {:?}; through b: {:?}",
        a_tally.codes, b_tally.codes
    );
    assert!(
        b_tally.failures.is_empty(),
        "through b: {:?}",
        b_tally.failures
    );
    // While a stopped, its clients' requests got no answer (refused, or a connection closed
    // as it drained, before the request was read); every answer it gave was 200.
    let answered_otherwise: Vec<_> = a_tally
        .failures
        .iter()
        .filter(|f| {
            f.split(':')
                .next()
                .is_some_and(|code| code.parse::<u16>().is_ok())
        })
        .collect();
    assert!(
        answered_otherwise.is_empty(),
        "through a: {answered_otherwise:?}"
    );
}

/// The gateway of the test `restart`, started again with data directory `data` on `port`.
async fn restart(data: &std::path::Path, namespace: &str, port: &str) -> Gateway {
    let kubeconfig = kube().kubeconfig.display().to_string();
    Gateway::start(
        data,
        &["--provider", "kubernetes", "--port", port],
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("POD_NAMESPACE", namespace),
        ],
    )
    .await
}
