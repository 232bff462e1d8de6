//! The system API's JSON documents, with OpenFaaS's field names so `faas-cli`-style clients work,
//! and the rules for function names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The namespace functions live in when none is given.
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// Annotation naming the local provider's working directory for a function (the stack file's
/// `handler`).
pub const HANDLER_ANNOTATION: &str = "com.fgateway.handler";

/// Annotation giving a static-provider function a fixed upstream URL.
pub const UPSTREAM_ANNOTATION: &str = "com.fgateway.upstream";

/// `POST`/`PUT /system/functions`: a function to deploy or update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    /// The function's name.
    pub service: String,
    /// Container image (kept and reported; the local provider runs `envProcess` instead).
    #[serde(default)]
    pub image: String,
    /// Namespace; [`DEFAULT_NAMESPACE`] when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The handler command (`fprocess`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    /// Environment for the function (fwatchdog's variables included: `mode`, timeouts, ...).
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Placement constraints (kept and reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Secret names (kept and reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Resource limits (kept and reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Resources>,
    /// Resource requests (kept and reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Resources>,
    /// Read-only root filesystem flag (kept and reported).
    #[serde(default)]
    pub read_only_root_filesystem: bool,
}

/// CPU and memory amounts, as strings (`"128Mi"`, `"0.5"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

impl FunctionDeployment {
    /// The namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The function's identity, `NAME.NAMESPACE`: one name in two namespaces is two functions.
    pub fn key(&self) -> String {
        function_key(&self.service, self.namespace())
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The replica count to start with: the `com.openfaas.scale.min` label, else 1.
    pub fn initial_replicas(&self) -> u64 {
        super::scaling::ScalePolicy::of(self).map_or(1, |p| p.min)
    }

    /// Checks the name, namespace, scaling labels and trigger annotations; the error says what
    /// is wrong.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.service).map_err(|e| format!("service: {e}"))?;
        validate_name(self.namespace()).map_err(|e| format!("namespace: {e}"))?;
        super::scaling::ScalePolicy::of(self)?;
        super::triggers::TriggerSpec::of(self)?;
        Ok(())
    }
}

/// `GET /system/functions` and `GET /system/function/NAME`: a deployed function, with
/// faas-provider's field names and its omissions: an empty map, list or string, a zero count
/// and a false flag are left out, as Go's `omitempty` leaves them out. Two fields are always
/// there, as OpenFaaS providers send them: `labels`, which carries
/// [`FUNCTION_NAME_LABEL`], and `annotations` (`{}` when there are none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The function's name.
    pub name: String,
    /// Image, as deployed.
    pub image: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The handler command.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub env_process: Option<String>,
    /// Environment, as deployed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Constraints, as deployed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Secrets, as deployed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Labels, as deployed, plus [`FUNCTION_NAME_LABEL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations, as deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Limits, as deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Resources>,
    /// Requests, as deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Resources>,
    /// Read-only root filesystem flag, as deployed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    /// Invocations through this gateway since it started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub invocation_count: f64,
    /// Replicas asked for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas: u64,
    /// Replicas ready to take traffic.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_replicas: u64,
    /// When the function was (last) deployed, RFC 3339.
    #[serde(default)]
    pub created_at: String,
}

/// The label every listed function carries, naming it (as OpenFaaS providers label their
/// functions' workloads).
pub const FUNCTION_NAME_LABEL: &str = "faas_function";

/// For `skip_serializing_if`: an absent or empty string.
fn is_none_or_empty(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(str::is_empty)
}

/// For `skip_serializing_if`: a zero count.
fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl FunctionStatus {
    /// The status of `spec` with the given replica counts.
    pub fn of(spec: &FunctionDeployment, replicas: u64, available: u64, created_at: &str) -> Self {
        let mut labels = spec.labels.clone().unwrap_or_default();
        labels.insert(FUNCTION_NAME_LABEL.to_string(), spec.service.clone());
        FunctionStatus {
            name: spec.service.clone(),
            image: spec.image.clone(),
            namespace: spec.namespace().to_string(),
            env_process: spec.env_process.clone(),
            env_vars: spec.env_vars.clone(),
            constraints: spec.constraints.clone(),
            secrets: spec.secrets.clone(),
            labels: Some(labels),
            annotations: Some(spec.annotations.clone().unwrap_or_default()),
            limits: spec.limits.clone(),
            requests: spec.requests.clone(),
            read_only_root_filesystem: spec.read_only_root_filesystem,
            invocation_count: 0.0,
            replicas,
            available_replicas: available,
            created_at: created_at.to_string(),
        }
    }
}

/// A namespace (faas-provider's `FunctionNamespace`), for `/system/namespace/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionNamespace {
    /// The name: a DNS label.
    #[serde(default)]
    pub name: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `POST /system/scale-function/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleServiceRequest {
    /// The function (must match the path when given).
    #[serde(default)]
    pub service_name: String,
    /// Its namespace.
    #[serde(default)]
    pub service_namespace: Option<String>,
    /// The replica count wanted.
    pub replicas: u64,
}

/// `DELETE /system/functions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFunctionRequest {
    /// The function.
    pub function_name: String,
    /// Its namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A function's identity from its name and namespace: `NAME.NAMESPACE` (both are DNS labels,
/// so the dot is unambiguous).
pub fn function_key(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// A function key's name and namespace (the reverse of [`function_key`]; names hold no `.`).
pub fn split_function_key(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or((key, DEFAULT_NAMESPACE))
}

/// What metrics and queue messages call a function: its name in the default namespace, else
/// `NAME.NAMESPACE` (as `/function/NAME.NAMESPACE` routes it).
pub fn display_name(name: &str, namespace: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        name.to_string()
    } else {
        function_key(name, namespace)
    }
}

/// Checks a function or namespace name: a DNS label (RFC 1123) of 1 to 63 characters, lower-case
/// letters, digits and `-`, starting and ending with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters long"));
    }
    if !name.chars().all(ok_char) || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{name:?} must be lower-case letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "echo", "my-fn-2", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a/b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deployment_reads_openfaas_json() {
        let json = r#"{"service":"echo","image":"ghcr.io/x/echo:1","envProcess":"cat",
            "envVars":{"mode":"streaming"},"labels":{"com.openfaas.scale.min":"3"},
            "annotations":{"com.fgateway.handler":"./echo"},"limits":{"memory":"128Mi"}}"#;
        let d: FunctionDeployment = serde_json::from_str(json).unwrap();
        assert_eq!(d.service, "echo");
        assert_eq!(d.namespace(), DEFAULT_NAMESPACE);
        assert_eq!(d.env_process.as_deref(), Some("cat"));
        assert_eq!(d.initial_replicas(), 3);
        assert_eq!(d.annotation(HANDLER_ANNOTATION), Some("./echo"));
        let status = FunctionStatus::of(&d, 3, 2, "2026-01-01T00:00:00Z");
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["name"], "echo");
        assert_eq!(v["availableReplicas"], 2);
        assert_eq!(v["envVars"]["mode"], "streaming");
        assert_eq!(v["labels"][FUNCTION_NAME_LABEL], "echo");
    }

    #[test]
    fn status_omits_what_faas_provider_omits() {
        let d: FunctionDeployment =
            serde_json::from_str(r#"{"service":"bare","image":"x:1","labels":null}"#).unwrap();
        let v = serde_json::to_value(FunctionStatus::of(&d, 0, 0, "2026-01-01T00:00:00Z")).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "annotations",
                "createdAt",
                "image",
                "labels",
                "name",
                "namespace"
            ],
            "{v}"
        );
        assert_eq!(v["labels"], serde_json::json!({ "faas_function": "bare" }));
        assert_eq!(v["annotations"], serde_json::json!({}));
        // What was sent comes back as sent.
        let d: FunctionDeployment = serde_json::from_str(
            r#"{"service":"m","image":"x:1","envProcess":"env","limits":{"memory":"5Mi","cpu":"100m"},
                "readOnlyRootFilesystem":true}"#,
        )
        .unwrap();
        let v = serde_json::to_value(FunctionStatus::of(&d, 2, 1, "2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(
            v["limits"],
            serde_json::json!({ "memory": "5Mi", "cpu": "100m" })
        );
        assert_eq!(v["envProcess"], "env");
        assert_eq!(v["readOnlyRootFilesystem"], true);
        assert_eq!(
            (v["replicas"].as_u64(), v["availableReplicas"].as_u64()),
            (Some(2), Some(1))
        );
        assert!(
            v.get("requests").is_none() && v.get("envVars").is_none(),
            "{v}"
        );
    }
}
