//! `--kube-route proxy`: calls reach pods through the API server's proxy
//! (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/...`), for a gateway outside the cluster's
//! network (a laptop with a kubeconfig). The same ready pods are chosen as on the direct
//! route; each call is one request to the API server, over TLS, with the kubeconfig's
//! credentials (certificates, tokens, exec plugins: what the kube client itself uses), on
//! pooled connections.

use std::sync::Arc;

use futures_util::TryFutureExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use super::KubernetesError;
use crate::gateway::provider::{BoxFuture, ProxiedRequest, Via, ViaResult};
use crate::http::body::ResponseBody;
use crate::http::proxy::{SendError, error_chain};

/// How calls reach function pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteKind {
    /// Straight to ready pod IPs: the gateway runs in the cluster's network.
    Direct,
    /// Through the API server's proxy to the same pods: a gateway outside the cluster, with a
    /// kubeconfig. Every call is a request to the API server (slower, and counted by it).
    Proxy,
}

/// The API server's proxy to pods.
#[derive(Debug, Clone)]
pub struct ApiProxy {
    /// The API server's URL, without a trailing `/`.
    base: String,
    /// Sends a request there with the credentials.
    via: Via,
}

impl ApiProxy {
    /// A sender for the cluster of `config`.
    pub fn new(config: &kube::Config) -> Result<ApiProxy, KubernetesError> {
        let https = config
            .rustls_https_connector()
            .map_err(KubernetesError::Client)?;
        let pool = Client::builder(TokioExecutor::new()).build::<_, ResponseBody>(https);
        let service = ServiceBuilder::new()
            .option_layer(config.auth_layer().map_err(KubernetesError::Client)?)
            .layer(
                config
                    .extra_headers_layer()
                    .map_err(KubernetesError::Client)?,
            )
            // Both kinds of credentials' layers must fail with the same error type.
            .map_err(boxed)
            .service(pool);
        let service = tower::util::BoxCloneSyncService::new(service);
        let send = move |req: ProxiedRequest| -> BoxFuture<'static, ViaResult> {
            Box::pin(service.clone().oneshot(req).map_err(send_error))
        };
        Ok(ApiProxy {
            base: config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_string(),
            via: Via(Arc::new(send)),
        })
    }

    /// The proxy's URL for port `port` of pod `pod` in `namespace`: a request's path goes
    /// after it.
    pub fn pod_url(&self, namespace: &str, pod: &str, port: i32) -> String {
        format!(
            "{}/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy",
            self.base
        )
    }

    /// The sender.
    pub fn via(&self) -> Via {
        self.via.clone()
    }
}

/// The pool's error, as the credentials' layers fail.
fn boxed(e: hyper_util::client::legacy::Error) -> BoxError {
    Box::new(e)
}

/// A connection that could not be made, or an exchange that failed.
fn send_error(e: BoxError) -> SendError {
    match e.downcast_ref::<hyper_util::client::legacy::Error>() {
        Some(client) if client.is_connect() => SendError::Connect(error_chain(client)),
        _ => SendError::Failed(error_chain(e.as_ref())),
    }
}
