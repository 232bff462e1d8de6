//! Replica counts written to functions' Deployments: only `spec.replicas` (a merge patch), one
//! write per function at a time, and when counts are set faster than the cluster takes them, only
//! the latest is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::API_TIMEOUT;
use crate::gateway::types::FunctionDeployment;

/// Counts waiting to be written, by function key; a writer task runs per key while its entry
/// exists.
#[derive(Debug, Default)]
pub struct Scales {
    /// The latest count asked for each function whose writer runs.
    pending: Mutex<HashMap<String, Option<u64>>>,
}

impl Scales {
    /// Asks for `replicas` replicas of `spec`'s function.
    pub fn set(self: &Arc<Self>, client: &Client, spec: &FunctionDeployment, replicas: u64) {
        let key = spec.key();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = pending.get_mut(&key) {
                // A writer runs: it writes this count next.
                *slot = Some(replicas);
                return;
            }
            pending.insert(key.clone(), Some(replicas));
        }
        let (scales, name, namespace) = (
            Arc::clone(self),
            spec.service.clone(),
            spec.namespace().to_string(),
        );
        let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
        tokio::spawn(async move {
            loop {
                let next = {
                    let mut pending = scales
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    match pending.get_mut(&key).and_then(Option::take) {
                        Some(n) => n,
                        None => {
                            pending.remove(&key);
                            return;
                        }
                    }
                };
                let patch = serde_json::json!({"spec": {"replicas": next}});
                let written = tokio::time::timeout(
                    API_TIMEOUT,
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await;
                match written {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(function = %name, namespace, replicas = next, error = %e, "cannot scale the function's Deployment");
                    }
                    Err(_) => {
                        tracing::error!(function = %name, namespace, replicas = next, "the cluster did not answer a scale within {API_TIMEOUT:?}");
                    }
                }
            }
        });
    }
}
