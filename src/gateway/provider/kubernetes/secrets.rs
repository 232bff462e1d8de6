//! The system API's secrets as Kubernetes Secrets in the function's namespace: Opaque, labelled
//! as faas-netes labels its own, one key named after the secret (so the function reads
//! `/var/openfaas/secrets/NAME`). Only Secrets with that label are listed or changed.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

use super::objects::MANAGED_BY;
use crate::gateway::provider::{BoxFuture, HeldSecrets};
use crate::gateway::secrets::{Secret, SecretError, listing, validate_secret_name};
use crate::gateway::types::validate_name;

/// Secrets on the cluster.
#[derive(Clone)]
pub struct ClusterSecrets {
    /// The API client.
    pub client: Client,
}

/// The selector of our Secrets.
fn ours() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

fn is_ours(s: &KubeSecret) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// The cluster's error as a secret error.
fn failed(secret: &str, namespace: &str, e: kube::Error) -> SecretError {
    match &e {
        kube::Error::Api(s)
            if s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
        {
            SecretError::Invalid(format!("namespace {namespace} not found"))
        }
        kube::Error::Api(s) if s.code == 404 => SecretError::NotFound {
            name: secret.to_string(),
            namespace: namespace.to_string(),
        },
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            SecretError::Exists {
                name: secret.to_string(),
                namespace: namespace.to_string(),
            }
        }
        kube::Error::Api(s) if s.code == 409 => SecretError::Unavailable(format!(
            "secret {secret} in namespace {namespace} changed meanwhile; try again"
        )),
        kube::Error::Api(s)
            if (400..500).contains(&s.code) && ![401, 403, 429].contains(&s.code) =>
        {
            SecretError::Invalid(format!(
                "the cluster refused secret {secret} in namespace {namespace}: {}",
                s.message
            ))
        }
        _ => SecretError::Unavailable(format!(
            "cannot reach the cluster for secret {secret} in namespace {namespace}: {}",
            crate::http::proxy::error_chain(&e)
        )),
    }
}

impl ClusterSecrets {
    fn api(&self, namespace: &str) -> Api<KubeSecret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The Secret object for `secret`.
    fn object(secret: &Secret) -> Result<KubeSecret, SecretError> {
        validate_secret_name(&secret.name).map_err(SecretError::Invalid)?;
        validate_name(secret.namespace())
            .map_err(|e| SecretError::Invalid(format!("namespace: {e}")))?;
        let bytes = secret.bytes()?;
        Ok(KubeSecret {
            metadata: kube::api::ObjectMeta {
                name: Some(secret.name.clone()),
                namespace: Some(secret.namespace().to_string()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_string(),
                    MANAGED_BY.1.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(secret.name.clone(), ByteString(bytes))])),
            ..KubeSecret::default()
        })
    }

    /// Whether Secret `name` exists in `namespace` (ours or not: a function may name one made
    /// with kubectl, as faas-netes allows).
    pub async fn exists(&self, namespace: &str, name: &str) -> Result<bool, SecretError> {
        match self.api(namespace).get_opt(name).await {
            Ok(found) => Ok(found.is_some()),
            Err(e) => Err(failed(name, namespace, e)),
        }
    }

    /// Whether our Secret `name` exists in `namespace`.
    async fn exists_ours(&self, namespace: &str, name: &str) -> Result<bool, SecretError> {
        match self.api(namespace).get_opt(name).await {
            Ok(found) => Ok(found.is_some_and(|s| is_ours(&s))),
            Err(e) => Err(failed(name, namespace, e)),
        }
    }
}

impl HeldSecrets for ClusterSecrets {
    fn create<'a>(&'a self, secret: &'a Secret) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            let object = Self::object(secret)?;
            self.api(secret.namespace())
                .create(&PostParams::default(), &object)
                .await
                .map(drop)
                .map_err(|e| failed(&secret.name, secret.namespace(), e))
        })
    }

    fn update<'a>(&'a self, secret: &'a Secret) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            let mut object = Self::object(secret)?;
            let api = self.api(secret.namespace());
            let current = api
                .get(&secret.name)
                .await
                .map_err(|e| failed(&secret.name, secret.namespace(), e))?;
            if !is_ours(&current) {
                return Err(SecretError::NotFound {
                    name: secret.name.clone(),
                    namespace: secret.namespace().to_string(),
                });
            }
            // Replaced at the version read: a change in between fails rather than being lost.
            object.metadata.resource_version = current.metadata.resource_version;
            api.replace(&secret.name, &PostParams::default(), &object)
                .await
                .map(drop)
                .map_err(|e| failed(&secret.name, secret.namespace(), e))
        })
    }

    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            if !self.exists_ours(namespace, name).await? {
                return Err(SecretError::NotFound {
                    name: name.to_string(),
                    namespace: namespace.to_string(),
                });
            }
            self.api(namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map(drop)
                .map_err(|e| failed(name, namespace, e))
        })
    }

    fn list<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<Secret>, SecretError>> {
        Box::pin(async move {
            validate_name(namespace)
                .map_err(|e| SecretError::Invalid(format!("namespace: {e}")))?;
            let listed = self
                .api(namespace)
                .list(&ListParams::default().labels(&ours()))
                .await
                .map_err(|e| failed("*", namespace, e))?;
            let names = listed
                .items
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect();
            Ok(listing(namespace, names))
        })
    }
}
