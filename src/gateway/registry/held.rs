//! The registry with a provider that holds the deployed set (a cluster): deploys and deletes
//! wait for the provider, and the registry follows what the provider shows, letting its own
//! recent changes win over observations that may predate them.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::{Entry, Registry, RegistryError, not_found, now};
use crate::gateway::provider::ObservedFunction;
use crate::gateway::types::FunctionDeployment;

/// How long this gateway's own change of a function wins over what the provider shows: its
/// watch normally catches up in milliseconds.
const OWN_CHANGE_WINS: Duration = Duration::from_secs(5);

impl Registry {
    /// [`Registry::deploy`] to a provider that holds the deployed set: the provider's answer
    /// is awaited (outside the change lock), then the function is listed at once (its own
    /// observation follows).
    pub(super) async fn deploy_held(
        &self,
        spec: Arc<FunctionDeployment>,
        replicas: u64,
    ) -> Result<(), RegistryError> {
        self.provider.deploy(&spec, replicas).await?;
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let key = spec.key();
        self.changed_here(&key, false);
        let created_at = self.entry(&key).map_or_else(now, |e| e.created_at);
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                key,
                Entry {
                    spec,
                    replicas,
                    created_at,
                    changed_at: std::time::Instant::now(),
                },
            );
        self.bump_revision();
        Ok(())
    }

    /// Follows the deployed set a provider holds: functions it no longer has are dropped, new
    /// ones added, changed ones updated (a spec or count unchanged keeps its identity and the
    /// time its count last changed, which the autoscaler reads).
    pub fn observe(&self, seen: &[ObservedFunction]) {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|_, (at, _)| at.elapsed() < OWN_CHANGE_WINS);
        let mut functions = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let keys: std::collections::HashSet<String> = seen.iter().map(|f| f.spec.key()).collect();
        // Gone from the provider, unless this gateway deployed it a moment ago (the
        // observation may predate it).
        let count = functions.len();
        functions.retain(|k, _| keys.contains(k) || recent.get(k).is_some_and(|(_, del)| !del));
        let mut changed = functions.len() != count;
        for f in seen {
            let key = f.spec.key();
            match recent.get(&key) {
                // Deleted here a moment ago: an older observation still has it.
                Some((_, true)) => continue,
                // Changed here a moment ago: this gateway's version stands until the moment
                // has passed.
                Some((_, false)) if functions.contains_key(&key) => continue,
                _ => {}
            }
            changed |= functions.get(&key).is_none_or(|e| *e.spec != f.spec);
            let entry = match functions.get(&key) {
                Some(e) if *e.spec == f.spec && e.replicas == f.replicas => continue,
                Some(e) => Entry {
                    spec: if *e.spec == f.spec {
                        Arc::clone(&e.spec)
                    } else {
                        Arc::new(f.spec.clone())
                    },
                    replicas: f.replicas,
                    created_at: f.created_at.clone(),
                    changed_at: if e.replicas == f.replicas {
                        e.changed_at
                    } else {
                        std::time::Instant::now()
                    },
                },
                None => Entry {
                    spec: Arc::new(f.spec.clone()),
                    replicas: f.replicas,
                    created_at: f.created_at.clone(),
                    changed_at: std::time::Instant::now(),
                },
            };
            functions.insert(key, entry);
        }
        drop(functions);
        if changed {
            self.bump_revision();
        }
    }

    /// Notes a change this gateway made to function `key` (see [`Registry::observe`]).
    pub(super) fn changed_here(&self, key: &str, deleted: bool) {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string(), (std::time::Instant::now(), deleted));
    }

    /// Removes a function; returns what was deployed. A provider that holds the deployed set
    /// is waited for (its refusal is the caller's answer).
    pub async fn remove(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<Arc<FunctionDeployment>, RegistryError> {
        if !self.provider.holds_state() {
            return self.delete(name, namespace);
        }
        let Some((key, entry)) = self.find(name, namespace) else {
            return Err(not_found(name, namespace));
        };
        self.provider.undeploy(&key).await?;
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed_here(&key, true);
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        self.bump_revision();
        Ok(entry.spec)
    }
}
