//! Providers run (or locate) the deployed functions. The [`super::registry`] owns what is
//! deployed; a provider makes it so and says where to send a function's requests.
//!
//! - [`local`]: each function runs as `fwatchdog` child processes on loopback ports.
//! - [`docker`]: each function runs as containers of its image, through the Docker Engine API
//!   (Docker or Podman).
//! - [`replicas`]: the replica sets both local and docker use; [`replica_log`]: the lines
//!   their replicas write, passed on once.
//! - [`upstreams`]: functions that already run elsewhere, at a fixed URL or at a URL made from a
//!   template such as `http://{name}.{namespace}.svc.cluster.local:8080`.
//! - [`kubernetes`]: each function is a Deployment and a Service on a Kubernetes cluster, which
//!   holds what is deployed (the registry follows it); calls go straight to ready pods.

pub mod docker;
pub mod kubernetes;
pub mod local;
pub mod replica_log;
pub mod replicas;
pub mod upstreams;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::registry::RegistryError;
use super::secrets::{Secret, SecretError};
use super::types::{FunctionDeployment, FunctionNamespace};

/// A boxed future, for the provider trait's async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A deployment the provider cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The deployment lacks something this provider needs, or has a bad value.
    #[error("{0}")]
    Invalid(String),
    /// What the provider relies on (the container engine) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// Starting the function failed.
    #[error("cannot start function {name}")]
    Start {
        /// The function.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where a function's requests go.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Send them here.
    Ready(http::Uri),
    /// Send them here through the provider's own sender (a route the gateway's pool cannot
    /// take, such as the Kubernetes API server's authenticated proxy).
    Through(http::Uri, Via),
    /// The function has no replica ready (scaled to zero, starting, or crashing).
    Unavailable(String),
}

/// A provider's own way of sending a request (see [`Endpoint::Through`]): the response head,
/// or why there is none.
#[derive(Clone)]
pub struct Via(pub Arc<dyn Fn(ProxiedRequest) -> BoxFuture<'static, ViaResult> + Send + Sync>);

/// A request as the gateway forwards it.
pub type ProxiedRequest = http::Request<crate::http::body::ResponseBody>;

/// What a [`Via`] answers.
pub type ViaResult = Result<http::Response<hyper::body::Incoming>, crate::http::proxy::SendError>;

impl std::fmt::Debug for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Via(..)")
    }
}

/// A function as the place that holds the deployed set sees it (see [`Provider::holds_state`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedFunction {
    /// What is deployed.
    pub spec: FunctionDeployment,
    /// Replicas asked for.
    pub replicas: u64,
    /// When it was created, RFC 3339.
    pub created_at: String,
}

/// The deployed set as it changes, from a provider that holds it.
pub type Observed = tokio::sync::watch::Receiver<Option<Arc<Vec<ObservedFunction>>>>;

/// Secrets kept by a provider (a cluster's), for the system API.
pub trait HeldSecrets: Send + Sync {
    /// Stores a new secret; [`SecretError::Exists`] when it does.
    fn create<'a>(&'a self, secret: &'a Secret) -> BoxFuture<'a, Result<(), SecretError>>;
    /// Replaces a secret's value; [`SecretError::NotFound`] when there is none.
    fn update<'a>(&'a self, secret: &'a Secret) -> BoxFuture<'a, Result<(), SecretError>>;
    /// Removes a secret (the caller checked that no function uses it).
    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), SecretError>>;
    /// The secrets of `namespace` (names only), sorted.
    fn list<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<Secret>, SecretError>>;
}

/// Function namespaces kept by a provider (a cluster's), for the system API.
pub trait HeldNamespaces: Send + Sync {
    /// Every function namespace, as last seen.
    fn list(&self) -> Vec<FunctionNamespace>;
    /// Creates one; [`RegistryError::Conflict`] when it exists.
    fn create<'a>(&'a self, ns: &'a FunctionNamespace) -> BoxFuture<'a, Result<(), RegistryError>>;
    /// Replaces its labels and annotations.
    fn update<'a>(&'a self, ns: &'a FunctionNamespace) -> BoxFuture<'a, Result<(), RegistryError>>;
    /// Removes one (the caller checked that it holds no function).
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RegistryError>>;
}

/// Runs or locates functions. Implementations are cheap to call from request handlers.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The provider's name, for `/system/info` and logs.
    fn name(&self) -> &'static str;

    /// Checks, before `spec` is stored, what the provider needs in place to run it (for
    /// containers: the image, pulled according to the pull policy). An error refuses the
    /// deployment and leaves nothing behind.
    fn prepare<'a>(
        &'a self,
        spec: &'a FunctionDeployment,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let _ = spec;
        Box::pin(async { Ok(()) })
    }

    /// Called once at start-up, after every stored function was applied: a provider whose
    /// replicas outlive the gateway removes those of functions no longer deployed.
    fn restored(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Makes `spec` run with `replicas` replicas: starts it, or reconfigures it when it already
    /// runs (a changed spec replaces every replica; a new count adds or stops replicas).
    fn apply(&self, spec: &Arc<FunctionDeployment>, replicas: u64) -> Result<(), ProviderError>;

    /// [`Provider::apply`] for a deployment: returns once the change is accepted where it is
    /// kept (a provider that writes to a cluster waits for the cluster's answer).
    fn deploy<'a>(
        &'a self,
        spec: &'a Arc<FunctionDeployment>,
        replicas: u64,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { self.apply(spec, replicas) })
    }

    /// [`Provider::remove`], returning once the removal is accepted where the deployed set is
    /// kept (a cluster's refusal is an error).
    fn undeploy<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            self.remove(key);
            Ok(())
        })
    }

    /// Whether the deployed set lives with the provider (a cluster) rather than in the
    /// gateway's store: the registry then keeps no copy of its own and follows
    /// [`Provider::observe`].
    fn holds_state(&self) -> bool {
        false
    }

    /// The deployed set as the provider sees it, updated on every change (`None` until first
    /// known), when the provider holds it.
    fn observe(&self) -> Option<Observed> {
        None
    }

    /// Whether this gateway runs the autoscaler (with several gateways on one cluster, one at
    /// a time does).
    fn leads(&self) -> bool {
        true
    }

    /// The function namespaces, when the provider keeps them (else the gateway's store does).
    fn namespaces(&self) -> Option<&dyn HeldNamespaces> {
        None
    }

    /// The secrets, when the provider keeps them (else the gateway's own store does).
    fn secrets(&self) -> Option<&dyn HeldSecrets> {
        None
    }

    /// Stops a function and forgets it. Functions are named by their key, `NAME.NAMESPACE`
    /// ([`FunctionDeployment::key`]).
    fn remove(&self, key: &str);

    /// How many replicas of function `key` are ready now.
    fn available(&self, key: &str) -> u64;

    /// Where to send a request for function `key`, waiting up to `wait` for a replica to
    /// become ready.
    fn endpoint<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFuture<'a, Endpoint>;

    /// A call could not reach `uri`, an endpoint of function `key` given by
    /// [`Provider::endpoint`]: endpoints should avoid it for a while if others are ready.
    fn unreachable(&self, key: &str, uri: &http::Uri) {
        let _ = (key, uri);
    }

    /// CPU seconds used so far by the running replicas of function `key` (for the `cpu`
    /// scaling type), when the provider can tell.
    fn cpu_seconds(&self, key: &str) -> Option<f64> {
        let _ = key;
        None
    }

    /// Stops everything this provider started, waiting at most `grace` for it to exit.
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()>;
}
