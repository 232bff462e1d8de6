//! A function as Kubernetes objects, mapped as OpenFaaS's faas-netes maps it: a Deployment and
//! a Service named after the function in its namespace, labelled `faas_function`; and back, so
//! that what the cluster holds (deployed through any gateway, or with kubectl under the same
//! labels) reads as the deployment it stands for.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SecretProjection,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::gateway::provider::docker::PullPolicy;
use crate::gateway::types::{FUNCTION_NAME_LABEL, FunctionDeployment, Resources};

/// The port every function's watchdog serves on.
pub const FUNCTION_PORT: i32 = 8080;

/// Where a function's secrets are mounted, as OpenFaaS mounts them.
pub const SECRETS_PATH: &str = "/var/openfaas/secrets";

/// The label our Secrets carry (as faas-netes labels its own).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "openfaas");

/// How a function's pods are probed for readiness and liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeKind {
    /// `GET /_/health` on port 8080 (OpenFaaS's watchdogs and fwatchdog serve it).
    Http,
    /// `cat /tmp/.lock` in the container (the lock file the watchdogs write when ready).
    Exec,
}

/// How the provider builds objects (from `fgateway up`'s options).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// The image pull policy.
    pub pull: PullPolicy,
    /// The probes.
    pub probe: ProbeKind,
}

/// The objects' labels: the function's name.
fn name_label(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(FUNCTION_NAME_LABEL.to_string(), name.to_string())])
}

/// The node selector a function's constraints ask for: each constraint is `key=value` (or
/// `key==value`, as OpenFaaS's Swarm constraints were written).
pub fn node_selector(constraints: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut selector = BTreeMap::new();
    for c in constraints {
        let (key, value) = c
            .split_once("==")
            .or_else(|| c.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                format!("constraint {c:?}: expected key=value (a node label and its value)")
            })?;
        selector.insert(key.to_string(), value.to_string());
    }
    Ok(selector)
}

/// A resource amount in Kubernetes' quantity form (a decimal number, then a binary suffix Ki
/// to Ei, a decimal one m, k, M to E, or an exponent), checked before the cluster sees it.
fn quantity(what: &str, value: &str) -> Result<Quantity, String> {
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    let number_ok = number.chars().any(|c| c.is_ascii_digit())
        && number.matches('.').count() <= 1
        && number.parse::<f64>().is_ok();
    let exponent = |s: &str| {
        s.strip_prefix(['e', 'E']).is_some_and(|e| {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
        })
    };
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || exponent(suffix);
    if number_ok && suffix_ok {
        Ok(Quantity(value.to_string()))
    } else {
        Err(format!(
            "{what} {value:?}: expected a Kubernetes quantity such as 128Mi, 1G, 0.5 or 500m"
        ))
    }
}

/// Resource amounts as Kubernetes takes them.
fn amounts(
    what: &str,
    r: Option<&Resources>,
) -> Result<Option<BTreeMap<String, Quantity>>, String> {
    let Some(r) = r else { return Ok(None) };
    let mut out = BTreeMap::new();
    if let Some(m) = r.memory.as_deref().filter(|m| !m.is_empty()) {
        out.insert(
            "memory".to_string(),
            quantity(&format!("{what}.memory"), m)?,
        );
    }
    if let Some(c) = r.cpu.as_deref().filter(|c| !c.is_empty()) {
        out.insert("cpu".to_string(), quantity(&format!("{what}.cpu"), c)?);
    }
    Ok((!out.is_empty()).then_some(out))
}

fn probe(kind: ProbeKind) -> Probe {
    let mut p = Probe {
        initial_delay_seconds: Some(0),
        timeout_seconds: Some(1),
        period_seconds: Some(2),
        success_threshold: Some(1),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    match kind {
        ProbeKind::Http => {
            p.http_get = Some(HTTPGetAction {
                path: Some("/_/health".into()),
                port: IntOrString::Int(FUNCTION_PORT),
                ..HTTPGetAction::default()
            });
        }
        ProbeKind::Exec => {
            p.exec = Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["cat".into(), "/tmp/.lock".into()]),
            });
        }
    }
    p
}

/// The Deployment that runs `spec` with `replicas` pods. An error names what Kubernetes could
/// not take (a constraint, a resource amount).
pub fn deployment(
    spec: &FunctionDeployment,
    replicas: u64,
    shape: Shape,
) -> Result<Deployment, String> {
    let name = &spec.service;
    let mut pod_labels = spec.labels.clone().unwrap_or_default();
    pod_labels.extend(name_label(name));
    let annotations = spec.annotations.clone().filter(|a| !a.is_empty());
    let mut env: Vec<EnvVar> = spec
        .env_vars
        .iter()
        // `envProcess` wins over an `fprocess` set in the environment, as OpenFaaS has it.
        .filter(|(k, _)| {
            k.as_str() != "fprocess" || spec.env_process.as_deref().is_none_or(str::is_empty)
        })
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            value_from: None,
        })
        .collect();
    if let Some(fprocess) = spec.env_process.as_deref().filter(|p| !p.is_empty()) {
        env.push(EnvVar {
            name: "fprocess".into(),
            value: Some(fprocess.to_string()),
            value_from: None,
        });
    }
    env.sort_by(|a, b| a.name.cmp(&b.name));
    let resources = ResourceRequirements {
        limits: amounts("limits", spec.limits.as_ref())?,
        requests: amounts("requests", spec.requests.as_ref())?,
        ..ResourceRequirements::default()
    };
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if spec.read_only_root_filesystem {
        volumes.push(Volume {
            name: "temp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "temp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        });
    }
    if !spec.secrets.is_empty() {
        let volume = format!("{name}-projected-secrets");
        volumes.push(Volume {
            name: volume.clone(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    spec.secrets
                        .iter()
                        .map(|s| VolumeProjection {
                            secret: Some(SecretProjection {
                                name: s.clone(),
                                ..SecretProjection::default()
                            }),
                            ..VolumeProjection::default()
                        })
                        .collect(),
                ),
                // Readable by a function that does not run as root.
                default_mode: Some(0o444),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: SECRETS_PATH.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let selector = node_selector(&spec.constraints)?;
    let container = Container {
        name: name.clone(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(pull_policy(shape.pull).into()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: FUNCTION_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        resources: Some(resources),
        readiness_probe: Some(probe(shape.probe)),
        liveness_probe: Some(probe(shape.probe)),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(spec.read_only_root_filesystem),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(spec.namespace().to_string()),
            labels: Some(name_label(name)),
            annotations: annotations.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(name_label(name)),
                ..LabelSelector::default()
            },
            // A rolling update that keeps serving: a new pod is ready before an old one goes.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            revision_history_limit: Some(10),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    node_selector: (!selector.is_empty()).then_some(selector),
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// The Service in front of a function's pods (for clients inside the cluster that use its
/// name; the gateway itself calls pods directly).
pub fn service(spec: &FunctionDeployment) -> Service {
    let name = &spec.service;
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(spec.namespace().to_string()),
            labels: Some(name_label(name)),
            annotations: spec.annotations.clone().filter(|a| !a.is_empty()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(name_label(name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: FUNCTION_PORT,
                target_port: Some(IntOrString::Int(FUNCTION_PORT)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Kubernetes' name for a pull policy.
fn pull_policy(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
}

/// What a function's Deployment says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The deployment it stands for.
    pub spec: FunctionDeployment,
    /// Replicas asked for.
    pub replicas: u64,
    /// Replicas available.
    pub available: u64,
    /// When it was created, RFC 3339.
    pub created_at: String,
}

/// Reads a function's Deployment back as the deployment it stands for; `None` when it is not a
/// function's (no `faas_function` label, or no container).
pub fn observe(d: &Deployment) -> Option<Observed> {
    let meta = &d.metadata;
    let name = meta.name.clone()?;
    meta.labels.as_ref()?.get(FUNCTION_NAME_LABEL)?;
    let spec = d.spec.as_ref()?;
    let template = spec.template.spec.as_ref()?;
    let container = template.containers.first()?;
    let mut env_vars = BTreeMap::new();
    let mut env_process = None;
    for e in container.env.iter().flatten() {
        let Some(value) = &e.value else { continue };
        if e.name == "fprocess" {
            env_process = Some(value.clone());
        } else {
            env_vars.insert(e.name.clone(), value.clone());
        }
    }
    let mut labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.remove(FUNCTION_NAME_LABEL);
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .filter(|a| !a.is_empty());
    let resources = |which: Option<&BTreeMap<String, Quantity>>| {
        let which = which?;
        let r = Resources {
            memory: which.get("memory").map(|q| q.0.clone()),
            cpu: which.get("cpu").map(|q| q.0.clone()),
        };
        (r != Resources::default()).then_some(r)
    };
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| resources(r.limits.as_ref()));
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| resources(r.requests.as_ref()));
    let secrets = template
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref().map(|s| s.name.clone()))
        .collect();
    let constraints = template
        .node_selector
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let read_only = container
        .security_context
        .as_ref()
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    let status = d.status.as_ref();
    Some(Observed {
        spec: FunctionDeployment {
            service: name,
            image: container.image.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            env_process,
            env_vars,
            constraints,
            secrets,
            labels: (!labels.is_empty()).then_some(labels),
            annotations,
            limits,
            requests,
            read_only_root_filesystem: read_only,
        },
        replicas: spec.replicas.map_or(1, |r| u64::try_from(r).unwrap_or(0)),
        available: status
            .and_then(|s| s.available_replicas)
            .map_or(0, |r| u64::try_from(r).unwrap_or(0)),
        created_at: meta
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            pull: PullPolicy::IfNotPresent,
            probe: ProbeKind::Http,
        }
    }

    fn full() -> FunctionDeployment {
        FunctionDeployment {
            service: "echo".into(),
            image: "localhost/echo:1".into(),
            namespace: Some("team".into()),
            env_process: Some("cat".into()),
            env_vars: BTreeMap::from([("write_debug".into(), "true".into())]),
            constraints: vec!["disktype=ssd".into()],
            secrets: vec!["api-key".into()],
            labels: Some(BTreeMap::from([(
                "com.openfaas.scale.min".into(),
                "2".into(),
            )])),
            annotations: Some(BTreeMap::from([("topic".into(), "orders".into())])),
            limits: Some(Resources {
                memory: Some("128Mi".into()),
                cpu: Some("0.5".into()),
            }),
            requests: Some(Resources {
                memory: Some("64Mi".into()),
                cpu: None,
            }),
            read_only_root_filesystem: true,
        }
    }

    #[test]
    fn a_deployment_reads_back_as_the_spec_it_was_made_from() {
        let spec = full();
        let d = deployment(&spec, 3, shape()).unwrap();
        let seen = observe(&d).unwrap();
        assert_eq!(seen.spec, spec);
        assert_eq!(seen.replicas, 3);
        let minimal = FunctionDeployment {
            service: "tiny".into(),
            image: "img".into(),
            ..FunctionDeployment::default()
        };
        let seen = observe(&deployment(&minimal, 1, shape()).unwrap()).unwrap();
        assert_eq!(
            seen.spec,
            FunctionDeployment {
                namespace: Some("openfaas-fn".into()),
                ..minimal
            }
        );
    }

    #[test]
    fn the_pod_is_shaped_as_faas_netes_shapes_it() {
        let d = deployment(&full(), 1, shape()).unwrap();
        let spec = d.spec.unwrap();
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["faas_function"], "echo");
        assert_eq!(labels["com.openfaas.scale.min"], "2");
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/_/health")
        );
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/tmp", SECRETS_PATH]);
        assert_eq!(pod.node_selector.unwrap()["disktype"], "ssd");
        let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["fprocess", "write_debug"]);
        let exec = deployment(
            &full(),
            1,
            Shape {
                probe: ProbeKind::Exec,
                ..shape()
            },
        )
        .unwrap();
        let probe = exec.spec.unwrap().template.spec.unwrap().containers[0]
            .liveness_probe
            .clone()
            .unwrap();
        assert_eq!(probe.exec.unwrap().command.unwrap(), ["cat", "/tmp/.lock"]);
    }

    #[test]
    fn what_kubernetes_cannot_take_is_refused_naming_it() {
        let mut bad = full();
        bad.constraints = vec!["no-value".into()];
        let e = deployment(&bad, 1, shape()).unwrap_err();
        assert!(e.contains("no-value") && e.contains("key=value"), "{e}");
        let mut bad = full();
        bad.limits = Some(Resources {
            memory: Some("lots".into()),
            cpu: None,
        });
        let e = deployment(&bad, 1, shape()).unwrap_err();
        assert!(e.contains("limits.memory") && e.contains("128Mi"), "{e}");
        for good in ["128Mi", "1G", "0.5", "500m", "1e3", "2"] {
            assert!(quantity("q", good).is_ok(), "{good}");
        }
        for bad in ["", "Mi", "1.2.3", "128mb", "1 G", "-1", "1e"] {
            assert!(quantity("q", bad).is_err(), "{bad}");
        }
        assert_eq!(
            node_selector(&["a == b".into(), "c=d".into()]).unwrap(),
            BTreeMap::from([("a".into(), "b".into()), ("c".into(), "d".into())])
        );
    }

    #[test]
    fn a_deployment_without_the_function_label_is_not_a_function() {
        let mut d = deployment(&full(), 1, shape()).unwrap();
        d.metadata.labels = None;
        assert!(observe(&d).is_none());
    }
}
