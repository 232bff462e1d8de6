//! The function registry: what is deployed (kept in the [`Store`], so it survives restarts) and
//! the provider that runs it. Every system API change goes through here: it is applied to the
//! provider, then persisted; a new function that fails either step is removed from the provider
//! again, so nothing runs that the store does not know about.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::provider::{Endpoint, Provider, ProviderError};
use super::scaling::ScalePolicy;
use super::secrets::SecretStore;
use super::store::{Store, StoreError, StoredFunction};
use super::types::{FunctionDeployment, FunctionStatus};

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
    /// Send it here.
    Ready(http::Uri),
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
}

/// The deployed functions and their provider.
#[derive(Debug)]
pub struct Registry {
    /// Durable copy of the deployed set.
    store: Arc<Store>,
    /// Runs the functions.
    provider: Arc<dyn Provider>,
    /// The deployed set, by name.
    functions: RwLock<BTreeMap<String, Entry>>,
    /// Serialises changes so the store and the provider see them in the same order.
    changes: Mutex<()>,
    /// Secrets, copied for each function that names them.
    secrets: Arc<SecretStore>,
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
        for stored in store.functions()? {
            let spec = Arc::new(stored.spec);
            if let Err(e) = secrets.mount_dir(spec.namespace(), &spec.service, &spec.secrets) {
                tracing::error!(function = %spec.service, error = %e, "cannot start stored function");
            } else if let Err(e) = provider.apply(&spec, stored.replicas) {
                tracing::error!(function = %spec.service, error = %e, "cannot start stored function");
            } else {
                tracing::info!(function = %spec.service, replicas = stored.replicas, "restored function");
            }
            functions.insert(
                spec.service.clone(),
                Entry {
                    spec,
                    replicas: stored.replicas,
                    created_at: stored.created_at,
                },
            );
        }
        Ok(Registry {
            store,
            provider,
            functions: RwLock::new(functions),
            changes: Mutex::new(()),
            secrets,
        })
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// Deploys `spec`, replacing a function of the same name. `replace_only` makes a missing
    /// function an error (the `PUT` semantics).
    pub fn deploy(
        &self,
        spec: FunctionDeployment,
        replace_only: bool,
    ) -> Result<(), RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let existing = self.entry(&spec.service);
        if replace_only && existing.is_none() {
            return Err(RegistryError::NotFound(spec.service));
        }
        // New functions start at their minimum; updated ones keep their count, brought into
        // the new [min, max].
        let policy = ScalePolicy::of(&spec).map_err(RegistryError::Invalid)?;
        let replicas = existing
            .as_ref()
            .map_or(policy.min, |e| policy.clamp(e.replicas));
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
                self.provider.remove(&spec.service);
                self.secrets
                    .forget_function(spec.namespace(), &spec.service);
            }
            return Err(e.into());
        }
        let entry = Entry {
            spec,
            replicas,
            created_at: now(),
        };
        if let Err(e) = self.persist(&entry) {
            if is_new {
                self.provider.remove(&entry.spec.service);
            }
            return Err(e.into());
        }
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entry.spec.service.clone(), entry);
        Ok(())
    }

    /// Removes a function; returns what was deployed.
    pub fn delete(&self, name: &str) -> Result<Arc<FunctionDeployment>, RegistryError> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = self.entry(name) else {
            return Err(RegistryError::NotFound(name.to_string()));
        };
        self.store.remove(name)?;
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.provider.remove(name);
        self.secrets
            .forget_function(entry.spec.namespace(), &entry.spec.service);
        Ok(entry.spec)
    }

    /// Sets a function's replica count: 0 (scaled to zero), or a count brought into the
    /// function's [min, max] (its `com.openfaas.scale.*` labels). Returns the count set.
    pub fn scale(&self, name: &str, replicas: u64) -> Result<u64, RegistryError> {
        if replicas > MAX_REPLICAS {
            return Err(RegistryError::Invalid(format!(
                "replicas must be at most {MAX_REPLICAS}, not {replicas}"
            )));
        }
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entry = self
            .entry(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let policy = ScalePolicy::of(&entry.spec).map_err(RegistryError::Invalid)?;
        let replicas = if replicas == 0 {
            0
        } else {
            policy.clamp(replicas)
        };
        entry.replicas = replicas;
        self.provider.apply(&entry.spec, replicas)?;
        self.persist(&entry)?;
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), entry);
        Ok(replicas)
    }

    /// Every function's status.
    pub fn list(&self) -> Vec<FunctionStatus> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        functions.values().map(|e| self.status_of(e)).collect()
    }

    /// One function's status.
    pub fn status(&self, name: &str) -> Option<FunctionStatus> {
        self.entry(name).map(|e| self.status_of(&e))
    }

    /// A function's spec.
    pub fn spec(&self, name: &str) -> Option<Arc<FunctionDeployment>> {
        self.entry(name).map(|e| e.spec)
    }

    /// Where a request for `name` (in `namespace`, when the caller named one) goes, waiting up
    /// to `wait` for a replica to become ready.
    pub async fn resolve(&self, name: &str, namespace: Option<&str>, wait: Duration) -> Resolved {
        let Some(entry) = self.entry(name) else {
            return Resolved::Unknown;
        };
        if namespace.is_some_and(|ns| ns != entry.spec.namespace()) {
            return Resolved::Unknown;
        }
        match self.provider.endpoint(name, wait).await {
            Endpoint::Ready(uri) => Resolved::Ready(uri),
            Endpoint::Unavailable(why) => Resolved::Unavailable(why),
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
        let available = self.provider.available(&e.spec.service);
        FunctionStatus::of(&e.spec, e.replicas, available, &e.created_at)
    }

    fn persist(&self, e: &Entry) -> Result<(), StoreError> {
        self.store.save(&StoredFunction {
            spec: (*e.spec).clone(),
            replicas: e.replicas,
            created_at: e.created_at.clone(),
        })
    }
}

/// The current time, RFC 3339.
fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
