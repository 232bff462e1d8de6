//! Replica counts written to functions' Deployments: only `spec.replicas` (a merge patch), one
//! write per function at a time, and when counts are set faster than the cluster takes them, only
//! the latest is written. A write that fails for a reason that may pass (no answer, the API
//! server's own error, a conflict) is tried again, with a growing pause, until it lands or a
//! newer count replaces it: otherwise the watch would bring the old count back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
            let mut pause = RETRY_PAUSE;
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
                let retry = match written {
                    Ok(Ok(_)) => {
                        pause = RETRY_PAUSE;
                        continue;
                    }
                    Ok(Err(e)) => {
                        let retry = transient(&e);
                        tracing::error!(function = %name, namespace, replicas = next, error = %e, retry, "cannot scale the function's Deployment");
                        retry
                    }
                    Err(_) => {
                        tracing::error!(function = %name, namespace, replicas = next, "the cluster did not answer a scale within {API_TIMEOUT:?}; trying again");
                        true
                    }
                };
                if retry {
                    // The same count again (the patch is idempotent), unless a newer one was
                    // asked for meanwhile.
                    scales
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(key.clone())
                        .or_default()
                        .get_or_insert(next);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
            }
        });
    }
}

/// The first pause before a failed scale is written again; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between attempts at one scale.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Whether a failed write may succeed later: the API server's own failures, throttling and
/// conflicts, and errors reaching it; not a Deployment that is gone or a count it refuses.
fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 409 || status.code == 429 || status.code >= 500,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::transient;
    use kube::core::Status;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("refused", "Test").with_code(code).boxed())
    }

    #[test]
    fn only_failures_that_may_pass_are_tried_again() {
        for code in [409, 429, 500, 503, 504] {
            assert!(transient(&api(code)), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!transient(&api(code)), "{code}");
        }
    }
}
