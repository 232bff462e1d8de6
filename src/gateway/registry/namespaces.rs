//! Function namespaces: the default one, those created through the system API (kept in the
//! store, or by a provider that holds them), and those functions were deployed to.

use std::sync::PoisonError;

use super::{Registry, RegistryError};
use crate::gateway::types::{DEFAULT_NAMESPACE, FunctionNamespace, validate_name};

impl Registry {
    /// Every namespace: the default one, those created through the system API, and those
    /// functions were deployed to.
    pub fn namespaces(&self) -> Result<Vec<String>, RegistryError> {
        let kept = match self.provider.namespaces() {
            Some(held) => held.list(),
            None => self.store.namespaces()?,
        };
        let mut names: std::collections::BTreeSet<String> =
            kept.into_iter().map(|ns| ns.name).collect();
        names.insert(DEFAULT_NAMESPACE.to_string());
        names.extend(self.specs().iter().map(|s| s.namespace().to_string()));
        Ok(names.into_iter().collect())
    }

    /// One namespace.
    pub fn namespace(&self, name: &str) -> Result<FunctionNamespace, RegistryError> {
        let kept = match self.provider.namespaces() {
            Some(held) => held.list(),
            None => self.store.namespaces()?,
        };
        if let Some(ns) = kept.into_iter().find(|ns| ns.name == name) {
            return Ok(ns);
        }
        if self.namespaces()?.iter().any(|n| n == name) {
            return Ok(FunctionNamespace {
                name: name.to_string(),
                ..Default::default()
            });
        }
        Err(RegistryError::NoNamespace(name.to_string()))
    }

    /// Creates a namespace; 409 when it exists.
    pub fn create_namespace(&self, ns: &FunctionNamespace) -> Result<(), RegistryError> {
        validate_name(&ns.name).map_err(|e| RegistryError::Invalid(format!("namespace: {e}")))?;
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        if self.namespaces()?.contains(&ns.name) {
            return Err(RegistryError::Conflict(format!(
                "namespace {} already exists",
                ns.name
            )));
        }
        Ok(self.store.save_namespace(ns)?)
    }

    /// Replaces a namespace's labels and annotations; 404 when it does not exist.
    pub fn update_namespace(&self, ns: &FunctionNamespace) -> Result<(), RegistryError> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.namespaces()?.contains(&ns.name) {
            return Err(RegistryError::NoNamespace(ns.name.clone()));
        }
        Ok(self.store.save_namespace(ns)?)
    }

    /// Removes a namespace; 409 while functions are in it, and for the default namespace.
    pub fn delete_namespace(&self, name: &str) -> Result<(), RegistryError> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        self.removable_namespace(name)?;
        self.store.remove_namespace(name)?;
        Ok(())
    }

    /// Whether a namespace may be removed: it exists, is not the default one, and holds no
    /// function.
    pub fn removable_namespace(&self, name: &str) -> Result<(), RegistryError> {
        if !self.namespaces()?.iter().any(|n| n == name) {
            return Err(RegistryError::NoNamespace(name.to_string()));
        }
        if name == DEFAULT_NAMESPACE {
            return Err(RegistryError::Conflict(format!(
                "namespace {name} is the default namespace and cannot be removed"
            )));
        }
        let inside: Vec<String> = self
            .specs()
            .iter()
            .filter(|s| s.namespace() == name)
            .map(|s| s.service.clone())
            .collect();
        if !inside.is_empty() {
            return Err(RegistryError::Conflict(format!(
                "namespace {name} still holds functions: {}",
                inside.join(", ")
            )));
        }
        Ok(())
    }
}
