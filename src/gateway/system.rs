//! The system API (`/system/*`), with OpenFaaS's routes and JSON shapes.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Gateway;
use super::invoke::text;
use super::provider::ProviderError;
use super::registry::RegistryError;
use super::secrets::{Secret, SecretError};
use super::types::{
    DEFAULT_NAMESPACE, DeleteFunctionRequest, FunctionDeployment, FunctionNamespace,
    ScaleServiceRequest,
};
use crate::http::body::{self, ResponseBody};

/// The largest system API request body.
const MAX_BODY: usize = 1024 * 1024;

/// Answers one `/system/...` request (authentication already checked).
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/system/functions", Method::GET) => {
            let namespace = query_namespace(req.uri().query());
            let mut list = gateway.registry.list(namespace.as_deref());
            gateway.metrics.fill_counts(&mut list);
            json(StatusCode::OK, &list)
        }
        ("/system/functions", Method::POST | Method::PUT) => {
            let replace_only = req.method() == Method::PUT;
            match read_json::<FunctionDeployment>(gateway, req).await {
                Err(resp) => resp,
                Ok(spec) => {
                    if let Some(why) = super::triggers::subjects::refusal(gateway, &spec) {
                        return failure(&RegistryError::Invalid(why));
                    }
                    let name = spec.service.clone();
                    let deployed = spec.clone();
                    match gateway.registry.deploy(spec, replace_only).await {
                        Ok(()) => {
                            gateway.warn_timeouts(&deployed);
                            tracing::info!(function = %name, "deployed");
                            accepted(&format!("Function {name} deployed.\n"))
                        }
                        Err(e) => failure(&e),
                    }
                }
            }
        }
        ("/system/functions", Method::DELETE) => {
            match read_json::<DeleteFunctionRequest>(gateway, req).await {
                Err(resp) => resp,
                Ok(del) => match gateway
                    .registry
                    .remove(&del.function_name, del.namespace.as_deref())
                    .await
                {
                    Ok(spec) => {
                        gateway.logs.remove(&spec.service, spec.namespace());
                        tracing::info!(function = %del.function_name, "removed");
                        accepted(&format!("Function {} removed.\n", del.function_name))
                    }
                    Err(e) => failure(&e),
                },
            }
        }
        ("/system/info", Method::GET) => json(StatusCode::OK, &info(gateway)),
        ("/system/triggers", Method::GET) => {
            json(StatusCode::OK, &super::triggers::listing(gateway).await)
        }
        ("/system/logs", Method::GET) => logs(gateway, req.uri().query()),
        ("/system/namespaces", Method::GET) => match gateway.registry.namespaces() {
            Ok(names) => json(StatusCode::OK, &names),
            Err(e) => failure(&e),
        },
        (p, method) if p.starts_with("/system/namespace/") => {
            let name = p["/system/namespace/".len()..].to_string();
            namespace(gateway, method, name, req).await
        }
        ("/system/secrets", Method::GET) => {
            let namespace = query_namespace(req.uri().query());
            let namespace = namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let listed = match gateway.registry.provider().secrets() {
                Some(held) => held.list(namespace).await,
                None => gateway.secrets.list(namespace),
            };
            match listed {
                Ok(list) => json(StatusCode::OK, &list),
                Err(e) => secret_failure(&e),
            }
        }
        ("/system/secrets", Method::POST | Method::PUT | Method::DELETE) => {
            let method = req.method().clone();
            match read_json::<Secret>(gateway, req).await {
                Err(resp) => resp,
                Ok(secret) => change_secret(gateway, &method, &secret).await,
            }
        }
        (p, Method::GET) if p.starts_with("/system/function/") => {
            let name = &p["/system/function/".len()..];
            let namespace = query_namespace(req.uri().query());
            match gateway.registry.status(name, namespace.as_deref()) {
                Some(mut status) => {
                    gateway
                        .metrics
                        .fill_counts(std::slice::from_mut(&mut status));
                    json(StatusCode::OK, &status)
                }
                None => failure(&RegistryError::NotFound(name.to_string())),
            }
        }
        (p, Method::POST) if p.starts_with("/system/scale-function/") => {
            let name = p["/system/scale-function/".len()..].to_string();
            let req_query = req.uri().query().map(str::to_string);
            match read_json::<ScaleServiceRequest>(gateway, req).await {
                Err(resp) => resp,
                Ok(scale) if !scale.service_name.is_empty() && scale.service_name != name => text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "serviceName {:?} does not match the path's function {name:?}\n",
                        scale.service_name
                    ),
                ),
                Ok(scale) => match gateway.registry.scale(
                    &name,
                    scale
                        .service_namespace
                        .as_deref()
                        .or(query_namespace(req_query.as_deref()).as_deref()),
                    scale.replicas,
                ) {
                    Ok(set) => {
                        tracing::info!(function = %name, replicas = set, "scaled");
                        if set == scale.replicas {
                            accepted(&format!("Function {name} scaled to {set}.\n"))
                        } else {
                            accepted(&format!(
                                "Function {name} scaled to {set}: {} asked for is outside its com.openfaas.scale.min/max range.\n",
                                scale.replicas
                            ))
                        }
                    }
                    Err(e) => failure(&e),
                },
            }
        }
        (
            "/system/functions" | "/system/info" | "/system/logs" | "/system/secrets"
            | "/system/namespaces" | "/system/triggers",
            _,
        ) => method_not_allowed(),
        (p, _)
            if p.starts_with("/system/function/") || p.starts_with("/system/scale-function/") =>
        {
            method_not_allowed()
        }
        _ => text(StatusCode::NOT_FOUND, "No such system endpoint.\n".into()),
    }
}

/// `GET /system/logs?name=&namespace=&instance=&since=&tail=&follow=`: the function's recent
/// log lines as NDJSON, then new ones while `follow` holds.
fn logs(gateway: &Gateway, query: Option<&str>) -> Response<ResponseBody> {
    let query = match super::logs::parse_query(query) {
        Ok(q) => q,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let Some(spec) = gateway
        .registry
        .spec(&query.name, query.namespace.as_deref())
    else {
        return failure(&RegistryError::NotFound(query.name));
    };
    gateway.logs.respond(&query, spec.namespace())
}

/// `/system/namespace/NAME`: `GET` one, `POST` (also to `/system/namespace/` with the name in
/// the body, as faas-cli sends it) creates, `PUT` updates, `DELETE` removes.
async fn namespace(
    gateway: &Gateway,
    method: Method,
    name: String,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    if method == Method::GET {
        return match gateway.registry.namespace(&name) {
            Ok(ns) => json(StatusCode::OK, &ns),
            Err(e) => failure(&e),
        };
    }
    let held = gateway.registry.provider().namespaces();
    if method == Method::DELETE {
        let removed = match held {
            Some(held) => match gateway.registry.removable_namespace(&name) {
                Ok(()) => held.delete(&name).await,
                Err(e) => Err(e),
            },
            None => gateway.registry.delete_namespace(&name),
        };
        return match removed {
            Ok(()) => accepted(&format!("Namespace {name} removed.\n")),
            Err(e) => failure(&e),
        };
    }
    if method != Method::POST && method != Method::PUT {
        return method_not_allowed();
    }
    let mut ns = match read_json::<FunctionNamespace>(gateway, req).await {
        Ok(ns) => ns,
        Err(resp) => return resp,
    };
    match (name.is_empty(), ns.name.is_empty()) {
        (true, true) => {
            return text(
                StatusCode::BAD_REQUEST,
                "The namespace needs a name.\n".into(),
            );
        }
        (false, true) => ns.name = name,
        (false, false) if ns.name != name => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("The body names {:?}, the path {name:?}.\n", ns.name),
            );
        }
        _ => {}
    }
    let result = if let Some(held) = held {
        match crate::gateway::types::validate_name(&ns.name) {
            Err(e) => Err(RegistryError::Invalid(format!("namespace: {e}"))),
            Ok(()) if method == Method::POST => {
                held.create(&ns).await.map(|()| StatusCode::CREATED)
            }
            Ok(()) => held.update(&ns).await.map(|()| StatusCode::ACCEPTED),
        }
    } else if method == Method::POST {
        gateway
            .registry
            .create_namespace(&ns)
            .map(|()| StatusCode::CREATED)
    } else {
        gateway
            .registry
            .update_namespace(&ns)
            .map(|()| StatusCode::ACCEPTED)
    };
    match result {
        Ok(status) => text(status, format!("Namespace {}: done.\n", ns.name)),
        Err(e) => failure(&e),
    }
}

/// The `namespace` of a query string, when given.
fn query_namespace(query: Option<&str>) -> Option<String> {
    super::logs::form_pairs(query.unwrap_or_default())
        .into_iter()
        .find(|(k, v)| k == "namespace" && !v.is_empty())
        .map(|(_, v)| v)
}

/// `POST` (create), `PUT` (update) or `DELETE /system/secrets`.
async fn change_secret(
    gateway: &Gateway,
    method: &Method,
    secret: &Secret,
) -> Response<ResponseBody> {
    let (name, namespace) = (&secret.name, secret.namespace());
    let result = if let Some(held) = gateway.registry.provider().secrets() {
        // Kept by the provider (a cluster's Secrets).
        match *method {
            Method::POST => held.create(secret).await.map(|()| StatusCode::CREATED),
            Method::PUT => held.update(secret).await.map(|()| StatusCode::OK),
            _ => match gateway.registry.secret_users(namespace, name) {
                Err(e) => Err(e),
                Ok(()) => held.delete(namespace, name).await.map(|()| StatusCode::OK),
            },
        }
    } else {
        match *method {
            Method::POST => gateway.secrets.create(secret).map(|()| StatusCode::CREATED),
            Method::PUT => gateway.secrets.update(secret).map(|()| StatusCode::OK),
            _ => gateway
                .registry
                .delete_secret(namespace, name)
                .map(|()| StatusCode::OK),
        }
    };
    match result {
        Ok(status) => {
            tracing::info!(secret = %name, namespace, method = %method, "secret changed");
            text(status, format!("Secret {name} in {namespace}: done.\n"))
        }
        Err(e) => secret_failure(&e),
    }
}

/// The reply for a failed secret operation.
fn secret_failure(e: &SecretError) -> Response<ResponseBody> {
    let status = match e {
        SecretError::Invalid(_) => StatusCode::BAD_REQUEST,
        SecretError::Exists { .. } | SecretError::InUse { .. } => StatusCode::CONFLICT,
        SecretError::NotFound { .. } => StatusCode::NOT_FOUND,
        SecretError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        SecretError::Io { .. } => {
            tracing::error!(error = %crate::http::proxy::error_chain(e), "secret store failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    text(status, format!("{e}\n"))
}

/// `/system/info`.
#[derive(Debug, Serialize)]
struct Info {
    /// The provider.
    provider: ProviderInfo,
    /// The gateway's version.
    version: VersionInfo,
    /// CPU architecture.
    arch: &'static str,
}

/// The provider part of `/system/info`.
#[derive(Debug, Serialize)]
struct ProviderInfo {
    /// Provider name.
    provider: String,
    /// Orchestration: how functions run.
    orchestration: &'static str,
    /// Provider version.
    version: VersionInfo,
}

/// A version and commit.
#[derive(Debug, Serialize)]
struct VersionInfo {
    /// Release.
    release: &'static str,
    /// Commit.
    sha: &'static str,
}

fn info(gateway: &Gateway) -> Info {
    let version = || VersionInfo {
        release: crate::VERSION,
        sha: crate::GIT_SHA,
    };
    let provider = gateway.registry.provider().name();
    Info {
        provider: ProviderInfo {
            provider: format!("fgateway-{provider}"),
            orchestration: provider,
            version: version(),
        },
        version: version(),
        arch: std::env::consts::ARCH,
    }
}

/// Reads a JSON request body (at most [`MAX_BODY`]); a bad body is already the 400 reply.
async fn read_json<T: DeserializeOwned>(
    gateway: &Gateway,
    req: Request<Incoming>,
) -> Result<T, Response<ResponseBody>> {
    let bytes = match super::invoke::read_body(req.into_body(), MAX_BODY, &gateway.config).await {
        Ok(bytes) => bytes,
        Err(super::invoke::ReadBodyError::TooLarge) => {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body is larger than {MAX_BODY} bytes.\n"),
            ));
        }
        Err(super::invoke::ReadBodyError::Client(reply)) => return Err(reply),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("Invalid JSON: {e}\n")))
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(body::full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Cannot encode the response: {e}\n"),
        ),
    }
}

fn accepted(message: &str) -> Response<ResponseBody> {
    text(StatusCode::ACCEPTED, message.to_string())
}

fn method_not_allowed() -> Response<ResponseBody> {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed on this endpoint.\n".into(),
    )
}

/// The one mapping from registry errors to status codes.
fn failure(e: &RegistryError) -> Response<ResponseBody> {
    let status = match e {
        RegistryError::Invalid(_) | RegistryError::Provider(ProviderError::Invalid(_)) => {
            StatusCode::BAD_REQUEST
        }
        RegistryError::NotFound(_) | RegistryError::NoNamespace(_) => StatusCode::NOT_FOUND,
        RegistryError::Conflict(_) => StatusCode::CONFLICT,
        RegistryError::Provider(ProviderError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Provider(ProviderError::Start { .. }) | RegistryError::Store(_) => {
            tracing::error!(error = %crate::http::proxy::error_chain(e), "system API call failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    text(status, format!("{}\n", crate::http::proxy::error_chain(e)))
}
