//! Where a function's calls go: the ready addresses of its core/v1 Endpoints (which every
//! Kubernetes version serves), watched; and the watch of the functions' Deployments that the
//! registry follows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Endpoints;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Client, ResourceExt};

use super::api_proxy::ApiProxy;
use super::objects::FUNCTION_PORT;
use super::observed_functions;
use crate::gateway::provider::{Endpoint, ObservedFunction};
use crate::gateway::types::FUNCTION_NAME_LABEL;

/// A function on the cluster: `(namespace, name)`.
type Name = (String, String);

/// How long a pod address that a call could not reach is passed over while others are ready:
/// about as long as the cluster takes to mark a crashed container's pod not ready.
const AVOID_FOR: Duration = Duration::from_secs(3);

/// A ready pod of a function.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    /// `ip:port`.
    address: String,
    /// The pod's name, when the Endpoints say (for the API server's proxy).
    pod: Option<String>,
    /// The function's port.
    port: i32,
}

/// Ready pod addresses per function.
#[derive(Debug, Default)]
pub struct Routes {
    /// Each ready pod.
    ready: RwLock<HashMap<Name, Arc<Vec<Target>>>>,
    /// Calls go through the API server's proxy instead of straight to pods (`--kube-route
    /// proxy`).
    through: Option<ApiProxy>,
    /// Bumped on every change, to wake calls waiting for a pod.
    changed: tokio::sync::watch::Sender<u64>,
    /// Round robin.
    next: AtomicUsize,
    /// During a (re)listing: the objects listed so far (what is not listed is gone).
    listing: std::sync::Mutex<Option<std::collections::HashSet<Name>>>,
    /// Pod addresses calls could not reach lately (`host:port`), until when they are avoided.
    avoided: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
    /// Whether `avoided` may hold anything (read on every pick, locked only then).
    avoiding: AtomicBool,
}

impl Routes {
    /// Routes whose calls go through the API server's proxy.
    pub fn through(proxy: ApiProxy) -> Routes {
        Routes {
            through: Some(proxy),
            ..Routes::default()
        }
    }

    /// How many pods of the function are ready.
    pub fn ready(&self, namespace: &str, name: &str) -> usize {
        self.addresses(namespace, name).map_or(0, |a| a.len())
    }

    fn addresses(&self, namespace: &str, name: &str) -> Option<Arc<Vec<Target>>> {
        self.ready
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// A ready pod of the function, waiting up to `wait` for one.
    pub async fn pick(&self, namespace: &str, name: &str, wait: Duration) -> Endpoint {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(addresses) = self.addresses(namespace, name).filter(|a| !a.is_empty()) {
                let first = self.next.fetch_add(1, Ordering::Relaxed) % addresses.len();
                return self.endpoint(namespace, self.usable(&addresses, first));
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Endpoint::Unavailable(format!(
                        "no ready pod of {name} in namespace {namespace} within {wait:?}"
                    ));
                }
            }
        }
    }

    /// Where a call to `target` goes: the pod itself, or the API server's proxy to it.
    fn endpoint(&self, namespace: &str, target: &Target) -> Endpoint {
        let url = match (&self.through, &target.pod) {
            (None, _) => format!("http://{}", target.address),
            (Some(proxy), Some(pod)) => proxy.pod_url(namespace, pod, target.port),
            (Some(_), None) => {
                return Endpoint::Unavailable(format!(
                    "the Endpoints do not name the pod at {}, which the API server's proxy needs",
                    target.address
                ));
            }
        };
        match (url.parse(), &self.through) {
            (Ok(uri), None) => Endpoint::Ready(uri),
            (Ok(uri), Some(proxy)) => Endpoint::Through(uri, proxy.via()),
            (Err(e), _) => Endpoint::Unavailable(format!("bad pod address {url}: {e}")),
        }
    }

    /// The pod at `first`, or the next one round that no call failed to reach lately
    /// (`first` again when every one was).
    fn usable<'a>(&self, addresses: &'a [Target], first: usize) -> &'a Target {
        if !self.avoiding.load(Ordering::Relaxed) {
            return &addresses[first];
        }
        let now = tokio::time::Instant::now();
        let mut avoided = self.avoided.lock().unwrap_or_else(PoisonError::into_inner);
        avoided.retain(|_, until| *until > now);
        if avoided.is_empty() {
            self.avoiding.store(false, Ordering::Relaxed);
        }
        (0..addresses.len())
            .map(|k| &addresses[(first + k) % addresses.len()])
            .find(|a| !avoided.contains_key(&a.address))
            .unwrap_or(&addresses[first])
    }

    /// A call could not reach pod address `address` (`host:port`): pass it over for
    /// 3 s while others are ready.
    pub fn avoid(&self, address: &str) {
        let until = tokio::time::Instant::now() + AVOID_FOR;
        self.avoided
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address.to_string(), until);
        self.avoiding.store(true, Ordering::Relaxed);
    }

    /// Records one Endpoints object.
    fn set(&self, ep: &Endpoints) {
        let key = (ep.namespace().unwrap_or_default(), ep.name_any());
        let addresses: Vec<Target> = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| {
                let port = s
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some("http"))
                    .or_else(|| s.ports.iter().flatten().next())
                    .map_or(FUNCTION_PORT, |p| p.port);
                s.addresses.iter().flatten().map(move |a| Target {
                    address: format!("{}:{port}", a.ip),
                    pod: a
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name.clone()),
                    port,
                })
            })
            .collect();
        self.ready
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::new(addresses));
        self.changed.send_modify(|n| *n += 1);
    }

    /// A (re)listing begins.
    fn relist(&self) {
        *self.listing.lock().unwrap_or_else(PoisonError::into_inner) = Some(Default::default());
    }

    /// One object of a listing.
    fn listed(&self, ep: &Endpoints) {
        if let Some(seen) = self
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            seen.insert((ep.namespace().unwrap_or_default(), ep.name_any()));
        }
        self.set(ep);
    }

    /// A listing is complete: what it did not list was deleted while the watch was down.
    fn listed_all(&self) {
        let Some(seen) = self
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        self.ready
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| seen.contains(k));
        self.changed.send_modify(|n| *n += 1);
    }

    /// Forgets one Endpoints object.
    fn unset(&self, ep: &Endpoints) {
        let key = (ep.namespace().unwrap_or_default(), ep.name_any());
        self.ready
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Watches, until aborted, the functions' Endpoints into `routes` and their Deployments into
/// `observed`. A watch that fails is restarted with backoff (the watcher re-lists).
pub async fn watch(
    client: Client,
    routes: Arc<Routes>,
    observed: tokio::sync::watch::Sender<Option<Arc<Vec<ObservedFunction>>>>,
) {
    let config = watcher::Config::default().labels(FUNCTION_NAME_LABEL);
    let endpoints = {
        let api: Api<Endpoints> = Api::all(client.clone());
        let routes = Arc::clone(&routes);
        watcher::watcher(api, config.clone())
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(Event::Apply(ep)) => routes.set(&ep),
                    Ok(Event::Delete(ep)) => routes.unset(&ep),
                    Ok(Event::Init) => routes.relist(),
                    Ok(Event::InitApply(ep)) => routes.listed(&ep),
                    Ok(Event::InitDone) => routes.listed_all(),
                    Err(e) => tracing::warn!(error = %e, "watching the functions' Endpoints"),
                }
                std::future::ready(())
            })
    };
    let deployments = {
        let api: Api<Deployment> = Api::all(client);
        let (reader, writer) = reflector::store();
        reflector::reflector(writer, watcher::watcher(api, config).default_backoff()).for_each(
            move |event| {
                match event {
                    // Once the first listing is complete, and on every change after it.
                    Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => {
                        let functions = observed_functions(&reader.state());
                        observed.send_replace(Some(Arc::new(functions)));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watching the functions' Deployments"),
                }
                std::future::ready(())
            },
        )
    };
    tokio::join!(endpoints, deployments);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes_with(addresses: &[&str]) -> Routes {
        let routes = Routes::default();
        routes.ready.write().unwrap().insert(
            ("ns".into(), "f".into()),
            Arc::new(
                addresses
                    .iter()
                    .map(|a| Target {
                        address: a.to_string(),
                        pod: None,
                        port: 8080,
                    })
                    .collect(),
            ),
        );
        routes
    }

    async fn picks(routes: &Routes, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            match routes.pick("ns", "f", Duration::ZERO).await {
                Endpoint::Ready(uri) => out.push(uri.authority().unwrap().to_string()),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_pod_is_passed_over_for_a_while() {
        let routes = routes_with(&["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(
            picks(&routes, 4).await,
            [
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.1:8080",
                "10.0.0.2:8080"
            ]
        );
        routes.avoid("10.0.0.1:8080");
        assert_eq!(picks(&routes, 3).await, ["10.0.0.2:8080"; 3]);
        tokio::time::advance(AVOID_FOR).await;
        assert_eq!(picks(&routes, 2).await, ["10.0.0.2:8080", "10.0.0.1:8080"]);
        assert!(!routes.avoiding.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_pod_is_avoided_the_round_goes_on() {
        let routes = routes_with(&["10.0.0.1:8080", "10.0.0.2:8080"]);
        routes.avoid("10.0.0.1:8080");
        routes.avoid("10.0.0.2:8080");
        assert_eq!(picks(&routes, 2).await, ["10.0.0.1:8080", "10.0.0.2:8080"]);
    }
}
