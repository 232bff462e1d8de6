//! The static provider: functions that already run somewhere else. Each function's URL is its
//! `com.fgateway.upstream` annotation, or else the configured template with `{name}` and
//! `{namespace}` filled in, for example `http://{name}.{namespace}.svc.cluster.local:8080` for
//! functions running as Kubernetes services. This is how the gateway reaches functions on other
//! machines without an orchestrator of its own; replicas and load balancing are the platform's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{BoxFuture, Endpoint, Provider, ProviderError};
use crate::gateway::types::{FunctionDeployment, UPSTREAM_ANNOTATION};

/// The static provider.
#[derive(Debug)]
pub struct UpstreamsProvider {
    /// URL template for functions without a fixed URL.
    template: Option<String>,
    /// Each function's URL, or `None` while scaled to zero.
    functions: Mutex<HashMap<String, Option<http::Uri>>>,
}

impl UpstreamsProvider {
    /// A provider with an optional URL template (`{name}`, `{namespace}`).
    pub fn new(template: Option<String>) -> Self {
        UpstreamsProvider {
            template,
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// The URL of `spec`.
    fn url_of(&self, spec: &FunctionDeployment) -> Result<http::Uri, ProviderError> {
        let raw = match (spec.annotation(UPSTREAM_ANNOTATION), &self.template) {
            (Some(url), _) => url.to_string(),
            (None, Some(template)) => template
                .replace("{name}", &spec.service)
                .replace("{namespace}", spec.namespace()),
            (None, None) => {
                return Err(ProviderError::Invalid(format!(
                    "function {} has no {UPSTREAM_ANNOTATION} annotation and the gateway has no --upstream-template",
                    spec.service
                )));
            }
        };
        let uri: http::Uri = raw.parse().map_err(|e| {
            ProviderError::Invalid(format!(
                "function {}: bad upstream URL {raw:?}: {e}",
                spec.service
            ))
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ProviderError::Invalid(format!(
                "function {}: upstream URL {raw:?} must be http://HOST[:PORT]",
                spec.service
            )));
        }
        Ok(uri)
    }
}

impl Provider for UpstreamsProvider {
    fn name(&self) -> &'static str {
        "static"
    }

    fn apply(&self, spec: &Arc<FunctionDeployment>, replicas: u64) -> Result<(), ProviderError> {
        let url = self.url_of(spec)?;
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.key(), (replicas > 0).then_some(url));
        Ok(())
    }

    fn remove(&self, name: &str) {
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    fn available(&self, name: &str) -> u64 {
        let functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        u64::from(matches!(functions.get(name), Some(Some(_))))
    }

    fn endpoint<'a>(&'a self, name: &'a str, _wait: Duration) -> BoxFuture<'a, Endpoint> {
        let found = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        Box::pin(async move {
            match found {
                Some(Some(url)) => Endpoint::Ready(url),
                Some(None) => Endpoint::Unavailable(format!("function {name} is scaled to zero")),
                None => Endpoint::Unavailable(format!("function {name} was removed")),
            }
        })
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_come_from_the_annotation_or_the_template() {
        let p = UpstreamsProvider::new(Some("http://{name}.{namespace}.svc:8080".into()));
        let mut spec = FunctionDeployment {
            service: "echo".into(),
            ..Default::default()
        };
        assert_eq!(
            p.url_of(&spec).unwrap(),
            "http://echo.openfaas-fn.svc:8080/"
        );
        spec.annotations = Some(
            [(
                UPSTREAM_ANNOTATION.to_string(),
                "http://10.0.0.5:9000".to_string(),
            )]
            .into(),
        );
        assert_eq!(p.url_of(&spec).unwrap(), "http://10.0.0.5:9000/");
        spec.annotations = Some([(UPSTREAM_ANNOTATION.to_string(), "ftp://x".to_string())].into());
        assert!(p.url_of(&spec).is_err());
        let bare = UpstreamsProvider::new(None);
        spec.annotations = None;
        assert!(bare.url_of(&spec).is_err());
    }
}
