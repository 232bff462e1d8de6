//! What every provider that runs replicas itself shares: the replica sets of the deployed
//! functions (apply a spec and a count, remove, round-robin over ready replicas, wait for one to
//! become ready) and the readiness probe ([`Probe`]).
//!
//! A provider supplies only how one replica runs: [`ReplicaSets::apply`] calls its `start` for
//! each replica to add, with the replica's shared state; the provider's task for that replica
//! sets [`Replica::set_ready`] from [`watch_readiness`] and ends by cancelling
//! [`Replica::gone`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Endpoint, ProviderError};
use crate::gateway::types::FunctionDeployment;
use crate::http::proxy;

/// Pauses between readiness probes while a replica starts.
const PROBE_DELAYS: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(200));

/// How often a ready replica is probed again.
const RECHECK: Duration = Duration::from_secs(2);

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Extra time a stopping replica gets beyond its own drain.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// How long a replica gets to exit after SIGTERM: its fwatchdog drains for up to its
/// `write_timeout` (30 s by default) and then stops an http-mode upstream (5 s).
pub fn stop_grace(spec: &FunctionDeployment) -> Duration {
    let write = spec
        .env_vars
        .get("write_timeout")
        .and_then(|v| crate::config::parse::duration(v).ok())
        .flatten()
        .unwrap_or(crate::config::DEFAULT_IO_TIMEOUT);
    write + crate::config::UPSTREAM_STOP_GRACE + STOP_MARGIN
}

/// One replica's state, shared between the provider's task that runs it and the request path.
#[derive(Debug)]
pub struct Replica {
    /// Its number within the function, unique for the function's life in this provider.
    pub serial: u64,
    /// Where it listens, once known.
    addr: Mutex<Option<SocketAddr>>,
    /// Whether it takes traffic.
    ready: AtomicBool,
    /// Stops this replica.
    pub stop: CancellationToken,
    /// Cancelled once the replica is gone for good (its processes or container stopped).
    pub gone: CancellationToken,
    /// The running process's id (0 when none is known), for CPU use.
    pub pid: AtomicI32,
    /// Woken whenever a replica of the same function becomes ready.
    ready_changed: Arc<Notify>,
}

impl Replica {
    /// The replica's base URL, once its address is known.
    pub fn uri(&self) -> Option<http::Uri> {
        let addr = (*self.addr.lock().unwrap_or_else(PoisonError::into_inner))?;
        format!("http://{addr}").parse().ok()
    }

    /// Records where the replica listens.
    pub fn set_addr(&self, addr: Option<SocketAddr>) {
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Whether the replica takes traffic now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Lets the replica take traffic, or not; `name` names the function in the log.
    pub fn set_ready(&self, name: &str, ready: bool) {
        let was = self.ready.swap(ready, Ordering::SeqCst);
        if ready && !was {
            tracing::info!(function = %name, replica = self.serial, "replica ready");
            self.ready_changed.notify_waiters();
        }
    }

    /// Takes the replica out of service and tells its task to stop it.
    fn retire(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.stop.cancel();
    }
}

/// What a provider's `start` gets for each replica to add.
#[derive(Debug)]
pub struct NewReplica {
    /// The function's key (`NAME.NAMESPACE`).
    pub key: String,
    /// The spec to run.
    pub spec: Arc<FunctionDeployment>,
    /// The replica's shared state.
    pub replica: Arc<Replica>,
    /// Replicas of the previous spec, stopping; some providers wait for them to be gone.
    pub replaced: Vec<Arc<Replica>>,
}

/// One function's replicas.
#[derive(Debug)]
struct Replicas {
    /// The spec they run.
    spec: Arc<FunctionDeployment>,
    /// In start order.
    replicas: Vec<Arc<Replica>>,
    /// Round-robin position.
    next: AtomicUsize,
    /// Woken whenever one of them becomes ready.
    ready_changed: Arc<Notify>,
    /// Number of the next replica.
    serial: u64,
}

/// The replica sets of every deployed function, by key.
#[derive(Debug)]
pub struct ReplicaSets {
    /// The functions.
    functions: Mutex<HashMap<String, Replicas>>,
    /// Parent of every replica's stop token.
    stop_all: CancellationToken,
}

impl ReplicaSets {
    /// Empty sets; `stop_all` stops every replica when cancelled.
    pub fn new(stop_all: CancellationToken) -> Self {
        ReplicaSets {
            functions: Mutex::new(HashMap::new()),
            stop_all,
        }
    }

    /// Makes `spec` run with `count` replicas: a changed spec retires every replica at once (no
    /// request after the change reaches the old spec) and starts new ones; a new count retires
    /// the newest or adds replicas. `start` runs each replica to add; when it fails, the
    /// replica is dropped and the error returned.
    pub fn apply(
        &self,
        spec: &Arc<FunctionDeployment>,
        count: u64,
        mut start: impl FnMut(NewReplica) -> Result<(), ProviderError>,
    ) -> Result<(), ProviderError> {
        self.apply_with(spec, count, &mut start, |_| None)
    }

    /// Like [`ReplicaSets::apply`], for a function that is not in the sets yet: `first_serial`
    /// gives its first replica number (a provider that adopts running replicas numbers the new
    /// ones after them).
    pub fn apply_with(
        &self,
        spec: &Arc<FunctionDeployment>,
        count: u64,
        start: &mut dyn FnMut(NewReplica) -> Result<(), ProviderError>,
        first_serial: impl FnOnce(&str) -> Option<u64>,
    ) -> Result<(), ProviderError> {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let key = spec.key();
        let mut functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let set = functions.entry(key.clone()).or_insert_with(|| Replicas {
            spec: Arc::clone(spec),
            replicas: Vec::new(),
            next: AtomicUsize::new(0),
            ready_changed: Arc::new(Notify::new()),
            serial: first_serial(&key).unwrap_or(0),
        });
        let mut replaced = Vec::new();
        if set.spec != *spec {
            for old in set.replicas.drain(..) {
                old.retire();
                replaced.push(old);
            }
            set.spec = Arc::clone(spec);
        }
        while set.replicas.len() > count {
            if let Some(extra) = set.replicas.pop() {
                extra.retire();
            }
        }
        while set.replicas.len() < count {
            let replica = Arc::new(Replica {
                serial: set.serial,
                addr: Mutex::new(None),
                ready: AtomicBool::new(false),
                stop: self.stop_all.child_token(),
                gone: CancellationToken::new(),
                pid: AtomicI32::new(0),
                ready_changed: Arc::clone(&set.ready_changed),
            });
            set.serial += 1;
            start(NewReplica {
                key: key.clone(),
                spec: Arc::clone(spec),
                replica: Arc::clone(&replica),
                replaced: replaced.clone(),
            })?;
            set.replicas.push(replica);
        }
        Ok(())
    }

    /// Retires every replica of function `key` and forgets it.
    pub fn remove(&self, key: &str) {
        let removed = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        for replica in removed.into_iter().flat_map(|f| f.replicas) {
            replica.retire();
        }
    }

    /// Whether function `key` is in the sets.
    pub fn contains(&self, key: &str) -> bool {
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    /// How many replicas of function `key` are ready.
    pub fn available(&self, key: &str) -> u64 {
        let functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        functions.get(key).map_or(0, |f| {
            f.replicas.iter().filter(|r| r.is_ready()).count() as u64
        })
    }

    /// The replicas of function `key` now in service (ready or starting).
    pub fn replicas(&self, key: &str) -> Vec<Arc<Replica>> {
        let functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        functions
            .get(key)
            .map(|f| f.replicas.clone())
            .unwrap_or_default()
    }

    /// A ready replica of function `key` (round-robin), waiting up to `wait` for one.
    pub fn endpoint<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFuture<'a, Endpoint> {
        Box::pin(async move {
            let deadline = Instant::now() + wait;
            loop {
                let (pick, notify) = {
                    let functions = self
                        .functions
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let Some(function) = functions.get(key) else {
                        return Endpoint::Unavailable(format!("function {key} was removed"));
                    };
                    if function.replicas.is_empty() {
                        return Endpoint::Unavailable(format!(
                            "function {key} is scaled to zero replicas"
                        ));
                    }
                    let ready: Vec<&Arc<Replica>> =
                        function.replicas.iter().filter(|r| r.is_ready()).collect();
                    let pick = if ready.is_empty() {
                        None
                    } else {
                        let i = function.next.fetch_add(1, Ordering::Relaxed) % ready.len();
                        ready[i].uri()
                    };
                    (pick, Arc::clone(&function.ready_changed))
                };
                if let Some(uri) = pick {
                    return Endpoint::Ready(uri);
                }
                let notified = notify.notified();
                if Instant::now() >= deadline {
                    return Endpoint::Unavailable(format!(
                        "no replica of {key} became ready within {}",
                        humantime::format_duration(wait)
                    ));
                }
                // Re-check in a while even without a notification (a replica may have become
                // ready between the check and the registration).
                let wake = (Instant::now() + Duration::from_millis(50)).min(deadline);
                let _ = tokio::time::timeout_at(wake, notified).await;
            }
        })
    }
}

/// What a replica's watchdog is asked to tell whether it takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/_/ready`: fwatchdog's (and of-watchdog's) readiness, which also reflects
    /// `max_inflight` and an http-mode upstream's `ready_path`. For replicas known to run
    /// fwatchdog.
    Ready,
    /// `/_/health`: what every OpenFaaS watchdog serves (and what OpenFaaS's own orchestration
    /// probes). For images that may hold any watchdog: OpenFaaS's classic watchdog has no
    /// `/_/ready`, and would run the function for each probe of it.
    Health,
}

impl Probe {
    /// The path probed.
    pub fn path(self) -> &'static str {
        match self {
            Probe::Ready => "/_/ready",
            Probe::Health => "/_/health",
        }
    }
}

/// Keeps `replica`'s ready flag current by probing `addr` (`kind` says which path): quickly
/// while it starts, every few seconds once ready. Never returns; callers race it against the
/// replica's exit or stop.
pub async fn watch_readiness(
    client: &proxy::Client,
    name: &str,
    replica: &Replica,
    addr: SocketAddr,
    kind: Probe,
) {
    replica.set_addr(Some(addr));
    let mut delay = PROBE_DELAYS.0;
    loop {
        let ready = probe(client, addr, kind).await;
        replica.set_ready(name, ready);
        if ready {
            tokio::time::sleep(RECHECK).await;
        } else {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(PROBE_DELAYS.1);
        }
    }
}

/// Whether the replica at `addr` says it can take traffic (200, or 429: busy but alive).
pub async fn probe(client: &proxy::Client, addr: SocketAddr, kind: Probe) -> bool {
    let Ok(uri) = format!("http://{addr}{}", kind.path()).parse::<http::Uri>() else {
        return false;
    };
    let Ok(req) =
        Request::get(uri).body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync())
    else {
        return false;
    };
    match tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) => matches!(
            resp.status(),
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_ask_for_their_path_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut head = vec![0; 1024];
                let n = conn.read(&mut head).await.unwrap();
                let line = String::from_utf8_lossy(&head[..n])
                    .lines()
                    .next()
                    .unwrap()
                    .to_string();
                seen.push(line);
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK",
                )
                .await
                .unwrap();
            }
            seen
        });
        let client = proxy::client();
        assert!(probe(&client, addr, Probe::Health).await);
        assert!(probe(&client, addr, Probe::Ready).await);
        assert_eq!(
            server.await.unwrap(),
            ["GET /_/health HTTP/1.1", "GET /_/ready HTTP/1.1"]
        );
    }

    fn spec(process: &str) -> Arc<FunctionDeployment> {
        Arc::new(FunctionDeployment {
            service: "f".into(),
            env_process: Some(process.into()),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_new_spec_retires_every_replica_and_counts_follow_the_request() {
        let sets = ReplicaSets::new(CancellationToken::new());
        let mut started = Vec::new();
        let one = spec("cat");
        sets.apply(&one, 2, |r| {
            started.push(Arc::clone(&r.replica));
            Ok(())
        })
        .unwrap();
        assert_eq!(started.len(), 2);
        assert_eq!(sets.replicas("f.openfaas-fn").len(), 2);

        let mut replaced = 0;
        sets.apply(&spec("wc"), 1, |r| {
            replaced = r.replaced.len();
            started.push(Arc::clone(&r.replica));
            Ok(())
        })
        .unwrap();
        assert_eq!(replaced, 2, "the new replica knows the old ones");
        assert!(started[0].stop.is_cancelled() && started[1].stop.is_cancelled());
        assert_eq!(started[2].serial, 2, "serials are never reused");

        started[2].set_addr(Some(SocketAddr::from(([127, 0, 0, 1], 9))));
        started[2].set_ready("f", true);
        assert_eq!(sets.available("f.openfaas-fn"), 1);
        match sets.endpoint("f.openfaas-fn", Duration::ZERO).await {
            Endpoint::Ready(uri) => assert_eq!(uri.to_string(), "http://127.0.0.1:9/"),
            other => panic!("{other:?}"),
        }
        sets.remove("f.openfaas-fn");
        assert!(started[2].stop.is_cancelled());
        assert!(!sets.contains("f.openfaas-fn"));
    }

    #[tokio::test]
    async fn a_failed_start_leaves_no_replica() {
        let sets = ReplicaSets::new(CancellationToken::new());
        let err = sets.apply(&spec("cat"), 1, |_| {
            Err(ProviderError::Invalid("no".into()))
        });
        assert!(err.is_err());
        assert!(sets.replicas("f.openfaas-fn").is_empty());
        match sets.endpoint("f.openfaas-fn", Duration::ZERO).await {
            Endpoint::Unavailable(why) => assert!(why.contains("zero"), "{why}"),
            other => panic!("no replica exists, yet: {other:?}"),
        }
    }
}
