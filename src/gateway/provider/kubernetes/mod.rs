//! Functions on a Kubernetes cluster: each is a Deployment and a Service in its namespace
//! ([`objects`]), and the cluster holds what is deployed. The provider watches the functions'
//! Deployments (so the registry lists what the cluster has, whoever deployed it) and their
//! Endpoints ([`routes`]), and sends calls straight to ready pods' IPs, round robin, over the
//! gateway's pooled connections.
//!
//! The client is configured as kubectl's is: inside a pod, from its service account; outside,
//! from `KUBECONFIG` or `~/.kube/config`.

pub mod api_proxy;
pub mod coordination;
pub mod namespaces;
pub mod objects;
pub mod pod_logs;
pub mod routes;
pub mod scales;
pub mod secrets;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};

use super::{
    BoxFuture, Endpoint, HeldNamespaces, HeldSecrets, Observed, ObservedFunction, Provider,
    ProviderError,
};
use crate::gateway::types::{FUNCTION_NAME_LABEL, FunctionDeployment, split_function_key};
pub use api_proxy::RouteKind;
pub use objects::{ProbeKind, Shape};
use routes::Routes;

/// The field manager our server-side applies are made as.
const MANAGER: &str = "fgateway";

/// How long one request to the API server may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// The Kubernetes provider.
pub struct KubernetesProvider {
    /// The API client.
    client: Client,
    /// How objects are built.
    shape: Shape,
    /// Ready pods per function, from the watched Endpoints.
    routes: Arc<Routes>,
    /// The functions' Deployments, as the registry should list them.
    observed: Observed,
    /// Replica counts being written.
    scales: Arc<scales::Scales>,
    /// The system API's secrets, as the cluster's.
    secrets: secrets::ClusterSecrets,
    /// The function namespaces, as the cluster's.
    namespaces: namespaces::ClusterNamespaces,
    /// This gateway among the others on the cluster (who autoscales, everyone's calls).
    coordination: Arc<coordination::Coordination>,
    /// The watches.
    tasks: tokio_util::task::AbortOnDropHandle<()>,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// Why the provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No usable client configuration.
    #[error(
        "cannot configure a Kubernetes client (in a pod: its service account; outside: KUBECONFIG or ~/.kube/config)"
    )]
    Config(#[source] kube::config::InferConfigError),
    /// The client could not be built from it.
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// The API server did not answer the first listing.
    #[error(
        "cannot list functions on the cluster (is the API server reachable, and may this account list and watch Deployments and Endpoints?)"
    )]
    List(#[source] kube::Error),
}

impl KubernetesProvider {
    /// Connects with the inferred configuration, starts the watches and waits for their first
    /// listing.
    pub async fn connect(
        shape: Shape,
        route: RouteKind,
        logs: Arc<crate::gateway::logs::FunctionLogs>,
        metrics: Arc<crate::gateway::metrics::GatewayMetrics>,
    ) -> Result<KubernetesProvider, KubernetesError> {
        let mut config = kube::Config::infer()
            .await
            .map_err(KubernetesError::Config)?;
        // No read timeout: it would cut watches and log follows, which stay quiet for minutes;
        // single requests are bounded one by one (API_TIMEOUT).
        config.connect_timeout = Some(Duration::from_secs(10));
        let proxy = match route {
            RouteKind::Direct => None,
            RouteKind::Proxy => Some(api_proxy::ApiProxy::new(&config)?),
        };
        let client = Client::try_from(config).map_err(KubernetesError::Client)?;
        // One listing now, so that a cluster that cannot be reached (or an account that may
        // not list) stops start-up with its reason.
        let deployments: Api<Deployment> = Api::all(client.clone());
        deployments
            .list_metadata(
                &kube::api::ListParams::default()
                    .labels(FUNCTION_NAME_LABEL)
                    .limit(1),
            )
            .await
            .map_err(KubernetesError::List)?;
        let routes = Arc::new(proxy.map_or_else(Routes::default, Routes::through));
        let (observed_tx, observed) = tokio::sync::watch::channel(None);
        let watches = routes::watch(client.clone(), Arc::clone(&routes), observed_tx);
        let followed = pod_logs::follow(client.clone(), logs);
        let coordination = Arc::new(coordination::Coordination::new(
            client.clone(),
            coordination::lease_namespace(),
        ));
        let coordinated = Arc::clone(&coordination).run(metrics);
        let namespaces = namespaces::ClusterNamespaces::new(client.clone());
        let namespaced = namespaces.clone().watch();
        let tasks = tokio::spawn(async move {
            tokio::join!(watches, followed, coordinated, namespaced);
        });
        let mut first = observed.clone();
        // The registry starts from the cluster's set.
        let _ = first.wait_for(Option::is_some).await;
        Ok(KubernetesProvider {
            scales: Arc::default(),
            coordination,
            namespaces,
            secrets: secrets::ClusterSecrets {
                client: client.clone(),
            },
            client,
            shape,
            routes,
            observed,
            tasks: tokio_util::task::AbortOnDropHandle::new(tasks),
        })
    }

    /// Server-side applies `spec`'s Service and Deployment, within [`API_TIMEOUT`].
    async fn put(
        client: Client,
        spec: Arc<FunctionDeployment>,
        replicas: u64,
        shape: Shape,
    ) -> Result<(), ProviderError> {
        let key = spec.key();
        tokio::time::timeout(API_TIMEOUT, Self::put_now(client, spec, replicas, shape))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Unavailable(format!(
                    "the cluster did not answer within {API_TIMEOUT:?} for function {key}"
                )))
            })
    }

    async fn put_now(
        client: Client,
        spec: Arc<FunctionDeployment>,
        replicas: u64,
        shape: Shape,
    ) -> Result<(), ProviderError> {
        let deployment =
            objects::deployment(&spec, replicas, shape).map_err(ProviderError::Invalid)?;
        let service = objects::service(&spec);
        let ns = spec.namespace();
        let params = PatchParams::apply(MANAGER).force();
        let services: Api<Service> = Api::namespaced(client.clone(), ns);
        services
            .patch(&spec.service, &params, &Patch::Apply(&service))
            .await
            .map_err(|e| refused(&spec, e))?;
        let deployments: Api<Deployment> = Api::namespaced(client, ns);
        deployments
            .patch(&spec.service, &params, &Patch::Apply(&deployment))
            .await
            .map_err(|e| refused(&spec, e))?;
        Ok(())
    }
}

impl KubernetesProvider {
    /// Deletes a function's Deployment (its pods go in the background), then its Service.
    async fn delete_objects(client: Client, key: &str) -> Result<(), ProviderError> {
        let (name, ns) = split_function_key(key);
        let params = DeleteParams::background();
        let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
        let spec = FunctionDeployment {
            service: name.to_string(),
            namespace: Some(ns.to_string()),
            ..FunctionDeployment::default()
        };
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        match tokio::time::timeout(API_TIMEOUT, deployments.delete(name, &params)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if gone(&e) => {}
            Ok(Err(e)) => return Err(refused(&spec, e)),
            Err(_) => {
                return Err(ProviderError::Unavailable(format!(
                    "the cluster did not answer within {API_TIMEOUT:?} for function {key}"
                )));
            }
        }
        let services: Api<Service> = Api::namespaced(client, ns);
        match tokio::time::timeout(API_TIMEOUT, services.delete(name, &params)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if gone(&e) => {}
            Ok(Err(e)) => {
                tracing::warn!(function = %key, error = %e, "cannot delete the function's Service");
            }
            Err(_) => {
                tracing::warn!(function = %key, "the cluster did not answer the Service's delete");
            }
        }
        Ok(())
    }
}

/// The cluster's refusal as a provider error: what it refuses for the request's sake (a
/// missing namespace, an invalid object) is the deployment's fault; the rest is unavailability.
fn refused(spec: &FunctionDeployment, e: kube::Error) -> ProviderError {
    match &e {
        kube::Error::Api(status)
            if (400..500).contains(&status.code) && ![401, 403, 429].contains(&status.code) =>
        {
            ProviderError::Invalid(format!(
                "the cluster refused function {} in namespace {}: {}",
                spec.service,
                spec.namespace(),
                status.message
            ))
        }
        _ => ProviderError::Unavailable(format!(
            "cannot reach the cluster to deploy function {}: {}",
            spec.service,
            crate::http::proxy::error_chain(&e)
        )),
    }
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn prepare<'a>(
        &'a self,
        spec: &'a FunctionDeployment,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            // What the cluster could not take is refused before anything is written.
            objects::deployment(spec, 1, self.shape).map_err(ProviderError::Invalid)?;
            // A missing secret would leave the pods waiting for it: refused now, as faas-netes
            // refuses it.
            for name in &spec.secrets {
                match self.secrets.exists(spec.namespace(), name).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(ProviderError::Invalid(format!(
                            "secret {name} not found in namespace {}: create it first (POST /system/secrets, faas-cli secret create)",
                            spec.namespace()
                        )));
                    }
                    Err(e) => return Err(ProviderError::Unavailable(e.to_string())),
                }
            }
            Ok(())
        })
    }

    fn apply(&self, spec: &Arc<FunctionDeployment>, replicas: u64) -> Result<(), ProviderError> {
        // A scale (the API, the autoscaler, a cold start): only the Deployment's replicas are
        // written (a gateway whose view is behind must not undo another's deploy), in the
        // background, one write per function at a time and the latest count winning; the watch
        // brings the result back.
        self.scales.set(&self.client, spec, replicas);
        Ok(())
    }

    fn deploy<'a>(
        &'a self,
        spec: &'a Arc<FunctionDeployment>,
        replicas: u64,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(Self::put(
            self.client.clone(),
            Arc::clone(spec),
            replicas,
            self.shape,
        ))
    }

    fn holds_state(&self) -> bool {
        true
    }

    fn observe(&self) -> Option<Observed> {
        Some(self.observed.clone())
    }

    fn secrets(&self) -> Option<&dyn HeldSecrets> {
        Some(&self.secrets)
    }

    fn namespaces(&self) -> Option<&dyn HeldNamespaces> {
        Some(&self.namespaces)
    }

    fn remove(&self, key: &str) {
        let (client, key) = (self.client.clone(), key.to_string());
        tokio::spawn(async move {
            if let Err(e) = Self::delete_objects(client, &key).await {
                tracing::warn!(function = %key, error = %e, "cannot delete the function");
            }
        });
    }

    fn undeploy<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(Self::delete_objects(self.client.clone(), key))
    }

    fn available(&self, key: &str) -> u64 {
        let (name, ns) = split_function_key(key);
        self.routes.ready(ns, name) as u64
    }

    fn endpoint<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFuture<'a, Endpoint> {
        Box::pin(async move {
            let (name, ns) = split_function_key(key);
            self.routes.pick(ns, name, wait).await
        })
    }

    fn unreachable(&self, _key: &str, uri: &http::Uri) {
        if let Some(authority) = uri.authority() {
            self.routes.avoid(authority.as_str());
        }
    }

    fn leads(&self) -> bool {
        self.coordination.leads()
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        // Functions keep running: the cluster holds them, not this process.
        Box::pin(async move {
            self.tasks.abort();
            self.coordination.leave().await;
        })
    }
}

/// Turns watched Deployments into the registry's view.
pub(crate) fn observed_functions(deployments: &[Arc<Deployment>]) -> Vec<ObservedFunction> {
    deployments
        .iter()
        .filter_map(|d| objects::observe(d))
        .map(|o| ObservedFunction {
            spec: o.spec,
            replicas: o.replicas,
            created_at: o.created_at,
        })
        .collect()
}
