//! The function registry: what is deployed (kept in the [`Store`], so it survives restarts) and
//! the provider that runs it. Every system API change goes through here: it is applied to the
//! provider, then persisted; a new function that fails either step is removed from the provider
//! again, so nothing runs that the store does not know about.
//!
//! With a provider that holds the deployed set itself (a cluster), the registry keeps no store
//! of functions and follows the provider instead (`held.rs`). Namespaces are in `namespaces.rs`.

mod held;
mod namespaces;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::provider::{Endpoint, Provider, ProviderError};
use super::scaling::ScalePolicy;
use super::secrets::{SecretError, SecretStore};
use super::types::{
    DEFAULT_NAMESPACE, FunctionDeployment, FunctionStatus, display_name, function_key,
};
use store::{Store, StoreError, StoredFunction};

/// The most replicas a function may be scaled to.
pub const MAX_REPLICAS: u64 = 100;

/// Why a registry operation failed; the system API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// No such function (404).
    #[error("function {0} not found")]
    NotFound(String),
    /// No such namespace (404).
    #[error("namespace {0} not found")]
    NoNamespace(String),
    /// The change conflicts with what exists (409).
    #[error("{0}")]
    Conflict(String),
    /// The provider refused or failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The state could not be saved.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a request for a function goes.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// No function by that name (in that namespace).
    Unknown,
    /// Known, but no replica can take the request.
    Unavailable(String),
    /// Send it to `uri`; `label` names the function in metrics and messages.
    Ready {
        /// Where.
        uri: http::Uri,
        /// How, when not through the gateway's own connection pool.
        via: Option<crate::gateway::provider::Via>,
        /// The function's name, with `.NAMESPACE` outside the default namespace.
        label: String,
        /// The function's key (`NAME.NAMESPACE`), to report an unreachable `uri` with
        /// [`Registry::unreachable`].
        key: String,
        /// When this request woke the function from zero replicas: how long it took to get a
        /// ready one.
        cold_start: Option<Duration>,
    },
}

/// One deployed function.
#[derive(Debug, Clone)]
struct Entry {
    /// What was deployed.
    spec: Arc<FunctionDeployment>,
    /// Replicas asked for.
    replicas: u64,
    /// When it was deployed.
    created_at: String,
    /// When its replica count last changed (a cold start, a scale): the autoscaler leaves a
    /// function alone for a while after that.
    changed_at: std::time::Instant,
}

/// The deployed functions and their provider.
#[derive(Debug)]
pub struct Registry {
    /// Durable copy of the deployed set.
    store: Arc<Store>,
    /// Runs the functions.
    provider: Arc<dyn Provider>,
    /// The deployed set, by key (`NAME.NAMESPACE`).
    functions: RwLock<BTreeMap<String, Entry>>,
    /// Serialises changes so the store and the provider see them in the same order.
    changes: Mutex<()>,
    /// Secrets, copied for each function that names them.
    secrets: Arc<SecretStore>,
    /// Calls waiting for a replica, by function key (they are load, not yet in flight).
    waiting: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    /// With a provider that holds the deployed set: this gateway's own recent changes, by
    /// function key (when, and whether it was a delete), which an observation older than them
    /// must not undo.
    recent: Mutex<std::collections::HashMap<String, (std::time::Instant, bool)>>,
    /// Counts changes of the deployed set (a function deployed, updated or removed; not a
    /// replica count), for those who follow it ([`Registry::watch_changes`]).
    revision: tokio::sync::watch::Sender<u64>,
}

/// Counts a call as waiting for a replica of a function while it lives.
struct Waiting {
    /// The counts.
    counts: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    /// The function.
    key: String,
}

impl Waiting {
    fn new(counts: &Arc<Mutex<std::collections::HashMap<String, usize>>>, key: &str) -> Self {
        *counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_string())
            .or_default() += 1;
        Waiting {
            counts: Arc::clone(counts),
            key: key.to_string(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Registry {
    /// Loads the stored functions and starts them with `provider`. A stored function the
    /// provider refuses is logged and kept (so it is not lost), but not started.
    pub fn open(
        store: Arc<Store>,
        provider: Arc<dyn Provider>,
        secrets: Arc<SecretStore>,
    ) -> Result<Registry, StoreError> {
        let mut functions = BTreeMap::new();
        // A provider that holds the deployed set (a cluster) is followed instead (see
        // [`Registry::observe`]).
        let stored = if provider.holds_state() {
            Vec::new()
        } else {
            store.functions()?
        };
        for stored in stored {
            let spec = Arc::new(stored.spec);
            if let Err(e) = secrets.mount_dir(spec.namespace(), &spec.service, &spec.secrets) {
                tracing::error!(function = %spec.service, error = %e, "cannot start stored function");
            } else if let Err(e) = provider.apply(&spec, stored.replicas) {
                tracing::error!(function = %spec.service, error = %e, "cannot start stored function");
            } else {
                tracing::info!(function = %spec.service, replicas = stored.replicas, "restored function");
            }
            functions.insert(
                spec.key(),
                Entry {
                    spec,
                    replicas: stored.replicas,
                    created_at: stored.created_at,
                    changed_at: std::time::Instant::now(),
                },
            );
        }
        Ok(Registry {
            store,
            provider,
            functions: RwLock::new(functions),
            changes: Mutex::new(()),
            secrets,
            waiting: Arc::default(),
            recent: Mutex::default(),
            revision: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// Sees a new value after each change of the deployed set: a function deployed, updated
    /// or removed (through this gateway, or observed in a provider that holds the set).
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Tells [`Registry::watch_changes`]'s receivers.
    pub(super) fn bump_revision(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    /// Deploys `spec`, replacing a function of the same name. `replace_only` makes a missing
    /// function an error (the `PUT` semantics).
    pub async fn deploy(
        &self,
        mut spec: FunctionDeployment,
        replace_only: bool,
    ) -> Result<(), RegistryError> {
        // Listings add the name label themselves: a status sent back as a deployment (GET, then
        // PUT) is the same spec, not a changed one.
        if let Some(labels) = spec.labels.as_mut() {
            labels.remove(super::types::FUNCTION_NAME_LABEL);
        }
        spec.validate().map_err(RegistryError::Invalid)?;
        self.provider.prepare(&spec).await?;
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let key = spec.key();
        let existing = self.entry(&key);
        if replace_only && existing.is_none() {
            return Err(RegistryError::NotFound(key));
        }
        // New functions start at their minimum; updated ones keep their count, brought into
        // the new [min, max].
        let policy = ScalePolicy::of(&spec).map_err(RegistryError::Invalid)?;
        let replicas = existing
            .as_ref()
            .map_or(policy.min, |e| policy.clamp(e.replicas));
        if self.provider.holds_state() {
            // The provider keeps the secrets too (and `prepare` checked them).
            drop(_change);
            return self.deploy_held(Arc::new(spec), replicas).await;
        }
        for name in &spec.secrets {
            if !self.secrets.exists(spec.namespace(), name) {
                return Err(RegistryError::Invalid(format!(
                    "secret {name} not found in namespace {}: create it first (POST /system/secrets, faas-cli secret create)",
                    spec.namespace()
                )));
            }
        }
        self.secrets
            .mount_dir(spec.namespace(), &spec.service, &spec.secrets)
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let spec = Arc::new(spec);
        let is_new = existing.is_none();
        if let Err(e) = self.provider.apply(&spec, replicas) {
            if is_new {
                // Nothing of a function that failed to deploy may keep running.
                self.provider.remove(&key);
                self.secrets
                    .forget_function(spec.namespace(), &spec.service);
            }
            return Err(e.into());
        }
        let entry = Entry {
            spec,
            replicas,
            created_at: now(),
            changed_at: std::time::Instant::now(),
        };
        if let Err(e) = self.persist(&entry) {
            if is_new {
                self.provider.remove(&key);
            }
            return Err(e.into());
        }
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, entry);
        self.bump_revision();
        Ok(())
    }

    /// [`Registry::remove`] of a function the store keeps; returns what was deployed.
    fn delete(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<Arc<FunctionDeployment>, RegistryError> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((key, entry)) = self.find(name, namespace) else {
            return Err(not_found(name, namespace));
        };
        self.store.remove(&key)?;
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        self.bump_revision();
        self.provider.remove(&key);
        self.secrets
            .forget_function(entry.spec.namespace(), &entry.spec.service);
        Ok(entry.spec)
    }

    /// Sets a function's replica count: 0 (scaled to zero), or a count brought into the
    /// function's [min, max] (its `com.openfaas.scale.*` labels). Returns the count set.
    pub fn scale(
        &self,
        name: &str,
        namespace: Option<&str>,
        replicas: u64,
    ) -> Result<u64, RegistryError> {
        if replicas > MAX_REPLICAS {
            return Err(RegistryError::Invalid(format!(
                "replicas must be at most {MAX_REPLICAS}, not {replicas}"
            )));
        }
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let (key, entry) = self
            .find(name, namespace)
            .ok_or_else(|| not_found(name, namespace))?;
        let policy = ScalePolicy::of(&entry.spec).map_err(RegistryError::Invalid)?;
        let replicas = if replicas == 0 {
            0
        } else {
            policy.clamp(replicas)
        };
        self.set_replicas(key, entry, replicas)?;
        Ok(replicas)
    }

    /// The status of every function, or of those in `namespace`.
    pub fn list(&self, namespace: Option<&str>) -> Vec<FunctionStatus> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        functions
            .values()
            .filter(|e| namespace.is_none_or(|ns| e.spec.namespace() == ns))
            .map(|e| self.status_of(e))
            .collect()
    }

    /// Every deployed spec.
    pub fn specs(&self) -> Vec<Arc<FunctionDeployment>> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        functions.values().map(|e| Arc::clone(&e.spec)).collect()
    }

    /// One function's status.
    pub fn status(&self, name: &str, namespace: Option<&str>) -> Option<FunctionStatus> {
        self.find(name, namespace).map(|(_, e)| self.status_of(&e))
    }

    /// A function's spec.
    pub fn spec(&self, name: &str, namespace: Option<&str>) -> Option<Arc<FunctionDeployment>> {
        self.find(name, namespace).map(|(_, e)| e.spec)
    }

    /// Where a request for `name` (in `namespace`, when the caller named one) goes, waiting up
    /// to `wait` for a replica to become ready.
    pub async fn resolve(&self, name: &str, namespace: Option<&str>, wait: Duration) -> Resolved {
        let deadline = tokio::time::Instant::now() + wait;
        let mut woke = None;
        // Twice at most: the autoscaler may scale the function to zero between the lookup and
        // the wait for a replica; the call then wakes it like any call to a function at zero.
        for _ in 0..2 {
            let Some((key, entry)) = self.find(name, namespace) else {
                return Resolved::Unknown;
            };
            let label = display_name(&entry.spec.service, entry.spec.namespace());
            let cold = entry.replicas == 0;
            // A cold call is counted as waiting before it wakes the function, so no autoscaler
            // round sees the function idle in between; later calls share the same replica.
            let waiting = cold.then(|| Waiting::new(&self.waiting, &key));
            if cold {
                match self.wake(&key) {
                    Ok(true) => woke = Some(std::time::Instant::now()),
                    Ok(false) => {}
                    Err(e) => return Resolved::Unavailable(format!("cannot start it: {e}")),
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let endpoint = self.provider.endpoint(&key, left).await;
            drop(waiting);
            match endpoint {
                Endpoint::Ready(uri) => {
                    return Resolved::Ready {
                        uri,
                        via: None,
                        label,
                        key,
                        cold_start: woke.map(|t| t.elapsed()),
                    };
                }
                Endpoint::Through(uri, via) => {
                    return Resolved::Ready {
                        uri,
                        via: Some(via),
                        label,
                        key,
                        cold_start: woke.map(|t| t.elapsed()),
                    };
                }
                Endpoint::Unavailable(_) if self.replicas(&key).is_some_and(|(n, _)| n == 0) => {
                    continue;
                }
                Endpoint::Unavailable(why) => return Resolved::Unavailable(why),
            }
        }
        Resolved::Unavailable(format!("function {name} was scaled to zero while starting"))
    }

    /// A call to function `key` could not reach `uri` (a replica that stopped or crashed):
    /// the provider avoids it for a while, when it can.
    pub fn unreachable(&self, key: &str, uri: &http::Uri) {
        self.provider.unreachable(key, uri);
    }

    /// Starts a function at zero replicas (its minimum, at least one); whether this call did.
    fn wake(&self, key: &str) -> Result<bool, RegistryError> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = self.entry(key) else {
            return Ok(false);
        };
        if entry.replicas > 0 {
            return Ok(false);
        }
        let replicas = ScalePolicy::of(&entry.spec).unwrap_or_default().min.max(1);
        tracing::info!(function = %key, replicas, "cold start: woken by a call");
        self.set_replicas(key.to_string(), entry, replicas)?;
        Ok(true)
    }

    /// Applies and records a new replica count (the caller holds `changes`).
    fn set_replicas(
        &self,
        key: String,
        mut entry: Entry,
        replicas: u64,
    ) -> Result<(), RegistryError> {
        entry.replicas = replicas;
        entry.changed_at = std::time::Instant::now();
        self.provider.apply(&entry.spec, replicas)?;
        if self.provider.holds_state() {
            self.changed_here(&key, false);
        }
        self.persist(&entry)?;
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, entry);
        Ok(())
    }

    /// Calls waiting for a replica of function `key` now.
    pub fn waiting(&self, key: &str) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The replicas asked for of function `key`, and when that count was set.
    pub fn replicas(&self, key: &str) -> Option<(u64, std::time::Instant)> {
        self.entry(key).map(|e| (e.replicas, e.changed_at))
    }

    /// Sets function `key` to `replicas` replicas (the autoscaler's decision, already within
    /// the function's policy); a function deleted or changed meanwhile is left alone.
    pub fn autoscale(
        &self,
        key: &str,
        spec: &Arc<FunctionDeployment>,
        replicas: u64,
    ) -> Result<(), RegistryError> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = self.entry(key) else {
            return Ok(());
        };
        if !Arc::ptr_eq(&entry.spec, spec) || entry.replicas == replicas {
            return Ok(());
        }
        if replicas == 0 && self.waiting(key) > 0 {
            // A call is waiting for this function: not idle after all.
            return Ok(());
        }
        self.set_replicas(key.to_string(), entry, replicas)
    }

    /// Deletes a secret unless a function names it, checked and done while no deploy runs (a
    /// deploy copying the secret cannot slip between the check and the delete).
    pub fn delete_secret(&self, namespace: &str, name: &str) -> Result<(), SecretError> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        self.secret_users(namespace, name)?;
        self.secrets.delete(namespace, name)
    }

    /// [`SecretError::InUse`] when a deployed function names the secret.
    pub fn secret_users(&self, namespace: &str, name: &str) -> Result<(), SecretError> {
        let users: Vec<String> = self
            .specs()
            .iter()
            .filter(|s| s.namespace() == namespace && s.secrets.iter().any(|x| x == name))
            .map(|s| s.service.clone())
            .collect();
        if !users.is_empty() {
            return Err(SecretError::InUse {
                name: name.to_string(),
                functions: users.join(", "),
            });
        }
        Ok(())
    }

    /// The function `name` in `namespace`; without a namespace, the one in the default
    /// namespace, else the only function of that name in any namespace.
    fn find(&self, name: &str, namespace: Option<&str>) -> Option<(String, Entry)> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let ns = namespace.filter(|ns| !ns.is_empty());
        let key = function_key(name, ns.unwrap_or(DEFAULT_NAMESPACE));
        if let Some(e) = functions.get(&key) {
            return Some((key, e.clone()));
        }
        if ns.is_some() {
            return None;
        }
        let mut same_name = functions.iter().filter(|(_, e)| e.spec.service == name);
        match (same_name.next(), same_name.next()) {
            (Some((k, e)), None) => Some((k.clone(), e.clone())),
            _ => None,
        }
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn status_of(&self, e: &Entry) -> FunctionStatus {
        let available = self.provider.available(&e.spec.key());
        FunctionStatus::of(&e.spec, e.replicas, available, &e.created_at)
    }

    fn persist(&self, e: &Entry) -> Result<(), StoreError> {
        if self.provider.holds_state() {
            return Ok(());
        }
        self.store.save(&StoredFunction {
            spec: (*e.spec).clone(),
            replicas: e.replicas,
            created_at: e.created_at.clone(),
        })
    }
}

/// The error for a function that is not there.
fn not_found(name: &str, namespace: Option<&str>) -> RegistryError {
    RegistryError::NotFound(match namespace {
        Some(ns) if !ns.is_empty() => function_key(name, ns),
        _ => name.to_string(),
    })
}

/// The current time, RFC 3339.
fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;
