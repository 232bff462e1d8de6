//! Function namespaces as the cluster's: the Kubernetes namespaces labelled `openfaas: "1"` (as
//! OpenFaaS labels the namespaces it may deploy to), watched; created, relabelled and deleted
//! through the system API as such namespaces.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use crate::gateway::provider::{BoxFuture, HeldNamespaces};
use crate::gateway::registry::RegistryError;
use crate::gateway::types::FunctionNamespace;

/// The label of function namespaces.
pub const LABEL: (&str, &str) = ("openfaas", "1");

/// The function namespaces on the cluster.
#[derive(Clone)]
pub struct ClusterNamespaces {
    /// The API client.
    client: Client,
    /// What the watch saw, by name.
    seen: Arc<RwLock<BTreeMap<String, FunctionNamespace>>>,
}

/// A Kubernetes namespace as a function namespace (our label left out).
fn function_namespace(ns: &Namespace) -> FunctionNamespace {
    let mut labels = ns.labels().clone();
    labels.remove(LABEL.0);
    FunctionNamespace {
        name: ns.name_any(),
        labels,
        annotations: ns.annotations().clone(),
    }
}

/// The cluster's error as a registry error.
fn failed(name: &str, e: kube::Error) -> RegistryError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => RegistryError::NoNamespace(name.to_string()),
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            RegistryError::Conflict(format!("namespace {name} already exists"))
        }
        kube::Error::Api(s) if s.code == 409 => {
            RegistryError::Conflict(format!("namespace {name} changed meanwhile; try again"))
        }
        kube::Error::Api(s)
            if (400..500).contains(&s.code) && ![401, 403, 429].contains(&s.code) =>
        {
            RegistryError::Invalid(format!(
                "the cluster refused namespace {name}: {}",
                s.message
            ))
        }
        _ => RegistryError::Provider(crate::gateway::provider::ProviderError::Unavailable(
            format!(
                "cannot reach the cluster for namespace {name}: {}",
                crate::http::proxy::error_chain(&e)
            ),
        )),
    }
}

impl ClusterNamespaces {
    /// Empty until [`ClusterNamespaces::watch`] runs.
    pub fn new(client: Client) -> ClusterNamespaces {
        ClusterNamespaces {
            client,
            seen: Arc::default(),
        }
    }

    /// Keeps the list current until aborted.
    pub async fn watch(self) {
        let api = self.api();
        let selector = format!("{}={}", LABEL.0, LABEL.1);
        let mut listing = BTreeMap::new();
        let mut events = std::pin::pin!(
            watcher::watcher(api, watcher::Config::default().labels(&selector)).default_backoff()
        );
        while let Some(event) = events.next().await {
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            match event {
                Ok(Event::Apply(ns)) => {
                    seen.insert(ns.name_any(), function_namespace(&ns));
                }
                Ok(Event::Delete(ns)) => {
                    seen.remove(&ns.name_any());
                }
                Ok(Event::Init) => listing.clear(),
                Ok(Event::InitApply(ns)) => {
                    listing.insert(ns.name_any(), function_namespace(&ns));
                }
                Ok(Event::InitDone) => *seen = std::mem::take(&mut listing),
                Err(e) => tracing::warn!(error = %e, "watching the function namespaces"),
            }
        }
    }

    fn api(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    /// The Namespace object for `ns`.
    fn object(ns: &FunctionNamespace) -> Namespace {
        let mut labels = ns.labels.clone();
        labels.insert(LABEL.0.into(), LABEL.1.into());
        Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(ns.name.clone()),
                labels: Some(labels),
                annotations: (!ns.annotations.is_empty()).then(|| ns.annotations.clone()),
                ..Default::default()
            },
            ..Namespace::default()
        }
    }
}

impl HeldNamespaces for ClusterNamespaces {
    fn list(&self) -> Vec<FunctionNamespace> {
        self.seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn create<'a>(&'a self, ns: &'a FunctionNamespace) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            let api = self.api();
            api.create(&PostParams::default(), &Self::object(ns))
                .await
                .map(drop)
                .map_err(|e| failed(&ns.name, e))
        })
    }

    fn update<'a>(&'a self, ns: &'a FunctionNamespace) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            let api = self.api();
            let mut current = api.get(&ns.name).await.map_err(|e| failed(&ns.name, e))?;
            if current.labels().get(LABEL.0).map(String::as_str) != Some(LABEL.1) {
                return Err(RegistryError::NoNamespace(ns.name.clone()));
            }
            let wanted = Self::object(ns);
            current.metadata.labels = wanted.metadata.labels;
            current.metadata.annotations = wanted.metadata.annotations;
            // At the version read: a change in between fails rather than being lost.
            api.replace(&ns.name, &PostParams::default(), &current)
                .await
                .map(drop)
                .map_err(|e| failed(&ns.name, e))
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            let api = self.api();
            let current = api.get(name).await.map_err(|e| failed(name, e))?;
            if current.labels().get(LABEL.0).map(String::as_str) != Some(LABEL.1) {
                return Err(RegistryError::NoNamespace(name.to_string()));
            }
            api.delete(name, &DeleteParams::default())
                .await
                .map(drop)
                .map_err(|e| failed(name, e))
        })
    }
}
