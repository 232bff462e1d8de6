//! From a [`FunctionDeployment`] to the container the engine creates for one replica: its
//! environment, labels (the function's own, plus ours that identify the gateway, function,
//! namespace, replica and a hash of the spec), resource limits, secrets mount, read-only root
//! and the published port.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::RestartPolicyNameEnum;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy};
use sha2::{Digest, Sha256};

use crate::gateway::provider::local::SECRETS_MOUNT;
use crate::gateway::types::FunctionDeployment;

/// Label: the gateway that owns the container (its data directory's id).
pub const GATEWAY_LABEL: &str = "com.fgateway.gateway";
/// Label: the function's name.
pub const FUNCTION_LABEL: &str = "com.fgateway.function";
/// Label: the function's namespace.
pub const NAMESPACE_LABEL: &str = "com.fgateway.namespace";
/// Label: the replica's number.
pub const REPLICA_LABEL: &str = "com.fgateway.replica";
/// Label: the hash of the spec the container runs.
pub const SPEC_LABEL: &str = "com.fgateway.spec";

/// The port fwatchdog serves on inside the container.
pub const CONTAINER_PORT: &str = "8080/tcp";

/// Bumped when the way a spec becomes a container changes, so containers made the old way are
/// replaced rather than adopted.
const LAYOUT_VERSION: &str = "1";

/// A hash of everything that shapes a function's containers: a container whose label differs
/// runs another configuration.
pub fn spec_hash(spec: &FunctionDeployment) -> String {
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION.as_bytes());
    // Field order is fixed and every map is a BTreeMap: the encoding is stable.
    hasher.update(serde_json::to_vec(spec).unwrap_or_default());
    hex::encode(&hasher.finalize()[..12])
}

/// Memory and CPU settings for the engine, from the spec's `limits` and `requests`.
#[derive(Debug, Default, PartialEq)]
pub struct Resources {
    /// Hard memory limit, bytes.
    pub memory: Option<i64>,
    /// Memory reservation (soft limit), bytes.
    pub memory_reservation: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Relative CPU weight (1024 = one CPU requested).
    pub cpu_shares: Option<i64>,
}

impl Resources {
    /// Reads the spec's quantities; an error names the field and the accepted forms. Whether the
    /// engine can run them (its minimum memory, the CPUs it has) is the engine's to say: see
    /// `ContainerReplica::trial`.
    pub fn of(spec: &FunctionDeployment) -> Result<Resources, String> {
        let field = |value: Option<&String>, name: &str, parse: fn(&str) -> Option<f64>| {
            value
                .map(|v| {
                    parse(v).ok_or_else(|| {
                        format!(
                            "function {}: {name} {v:?} is not a quantity (memory: bytes or with a suffix, 128Mi, 1G; cpu: cores, 0.5, or millicores, 500m)",
                            spec.service
                        )
                    })
                })
                .transpose()
        };
        let limits = spec.limits.clone().unwrap_or_default();
        let requests = spec.requests.clone().unwrap_or_default();
        let memory = field(limits.memory.as_ref(), "limits.memory", memory_bytes)?;
        let reservation = field(requests.memory.as_ref(), "requests.memory", memory_bytes)?;
        let cpu = field(limits.cpu.as_ref(), "limits.cpu", cpus)?;
        let cpu_request = field(requests.cpu.as_ref(), "requests.cpu", cpus)?;
        Ok(Resources {
            memory: memory.map(|b| b as i64),
            memory_reservation: reservation.map(|b| b as i64),
            nano_cpus: cpu.map(|c| (c * 1e9) as i64),
            cpu_shares: cpu_request.map(|c| ((c * 1024.0) as i64).max(2)),
        })
    }
}

/// A memory quantity in bytes: plain bytes, or with a Kubernetes suffix (Ki, Mi, Gi, Ti; k, M,
/// G, T) or Docker's (b, k, m, g).
pub fn memory_bytes(value: &str) -> Option<f64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match unit {
        "" | "b" | "B" => 1.0,
        "Ki" | "KiB" | "kb" => 1024.0,
        "Mi" | "MiB" | "mb" => 1024.0 * 1024.0,
        "Gi" | "GiB" | "gb" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0_f64.powi(4),
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        // Docker's single-letter forms are binary.
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && bytes > 0.0).then_some(bytes)
}

/// A CPU quantity in cores: `0.5`, `2`, or millicores, `500m`.
pub fn cpus(value: &str) -> Option<f64> {
    let value = value.trim();
    let cores = match value.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => value.parse::<f64>().ok()?,
    };
    (cores.is_finite() && cores > 0.0).then_some(cores)
}

/// Everything that names one replica's container.
#[derive(Debug)]
pub struct ContainerIdentity<'a> {
    /// The gateway's id.
    pub gateway: &'a str,
    /// The replica's number.
    pub serial: u64,
    /// The spec's hash.
    pub hash: &'a str,
}

/// How long a replica's watchdog keeps serving after SIGTERM before it drains and exits
/// (`healthcheck_interval`). Short, since the gateway routes around a replica it stops, but
/// not zero: OpenFaaS's watchdogs wait forever after SIGTERM when it is zero.
pub const STOP_DRAIN: &str = "1s";

/// The environment of a replica's container: the function's variables, `fprocess` from
/// `envProcess`, and ours (the port we publish, a short health grace after SIGTERM
/// ([`STOP_DRAIN`]), unprefixed handler lines for the log buffer).
pub fn container_env(spec: &FunctionDeployment) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![
        ("healthcheck_interval".into(), STOP_DRAIN.into()),
        ("prefix_logs".into(), "false".into()),
    ];
    env.retain(|(k, _)| !spec.env_vars.contains_key(k));
    env.extend(spec.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(process) = &spec.env_process {
        env.retain(|(k, _)| k != "fprocess");
        env.push(("fprocess".into(), process.clone()));
    }
    env.retain(|(k, _)| k != "port");
    env.push(("port".into(), "8080".into()));
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The labels of a replica's container: the function's labels and annotations, then ours.
pub fn container_labels(
    spec: &FunctionDeployment,
    id: &ContainerIdentity<'_>,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = HashMap::new();
    for map in [&spec.labels, &spec.annotations].into_iter().flatten() {
        labels.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    labels.insert(GATEWAY_LABEL.into(), id.gateway.into());
    labels.insert(FUNCTION_LABEL.into(), spec.service.clone());
    labels.insert(NAMESPACE_LABEL.into(), spec.namespace().into());
    labels.insert(REPLICA_LABEL.into(), id.serial.to_string());
    labels.insert(SPEC_LABEL.into(), id.hash.into());
    labels
}

/// The create request for one replica's container. `secrets` is the host directory holding the
/// function's secret files, mounted read-only at [`SECRETS_MOUNT`]; `stop_timeout` is how long
/// the engine waits after SIGTERM before SIGKILL.
pub fn container_body(
    spec: &FunctionDeployment,
    id: &ContainerIdentity<'_>,
    resources: &Resources,
    secrets: Option<&Path>,
    stop_timeout: std::time::Duration,
) -> ContainerCreateBody {
    let binding = PortBinding {
        host_ip: Some("127.0.0.1".into()),
        // Empty: the engine picks a free port.
        host_port: Some(String::new()),
    };
    let tmpfs = spec
        .read_only_root_filesystem
        // Podman adds a writable /tmp to read-only containers, Docker does not: ask for it.
        .then(|| HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,mode=1777".to_string())]));
    let binds = secrets.map(|dir| vec![format!("{}:{SECRETS_MOUNT}:ro", dir.display())]);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(container_env(spec)),
        labels: Some(container_labels(spec, id)),
        exposed_ports: Some(vec![CONTAINER_PORT.into()]),
        stop_signal: Some("SIGTERM".into()),
        stop_timeout: Some(i64::try_from(stop_timeout.as_secs()).unwrap_or(i64::MAX)),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                CONTAINER_PORT.to_string(),
                Some(vec![binding]),
            )])),
            memory: resources.memory,
            memory_reservation: resources.memory_reservation,
            nano_cpus: resources.nano_cpus,
            cpu_shares: resources.cpu_shares,
            readonly_rootfs: Some(spec.read_only_root_filesystem),
            tmpfs,
            binds,
            // The provider restarts replicas itself (an engine's policy misses `kill`).
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's name: function, namespace, replica, and a random suffix (a replica of an
/// earlier deployment may still be stopping under the same number).
pub fn container_name(spec: &FunctionDeployment, serial: u64) -> String {
    let suffix: u32 = rand::random();
    format!(
        "fgw-{}-{}-{serial}-{:06x}",
        spec.service,
        spec.namespace(),
        suffix & 0xff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::types::Resources as Quantities;

    fn spec() -> FunctionDeployment {
        let mut spec = FunctionDeployment {
            service: "echo".into(),
            image: "example/echo:1".into(),
            env_process: Some("cat".into()),
            limits: Some(Quantities {
                memory: Some("128Mi".into()),
                cpu: Some("500m".into()),
            }),
            requests: Some(Quantities {
                memory: Some("64M".into()),
                cpu: Some("0.25".into()),
            }),
            read_only_root_filesystem: true,
            ..Default::default()
        };
        spec.env_vars.insert("port".into(), "9000".into());
        spec.env_vars.insert("fprocess".into(), "wc".into());
        spec.env_vars
            .insert("healthcheck_interval".into(), "3s".into());
        spec.labels = Some([("team".to_string(), "a".to_string())].into());
        spec.annotations = Some(
            [
                ("topic".to_string(), "x".to_string()),
                (FUNCTION_LABEL.to_string(), "spoofed".to_string()),
            ]
            .into(),
        );
        spec
    }

    #[test]
    fn quantities_in_kubernetes_and_docker_forms() {
        assert_eq!(memory_bytes("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(memory_bytes("1G"), Some(1e9));
        assert_eq!(memory_bytes("64m"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(memory_bytes("4096"), Some(4096.0));
        assert_eq!(memory_bytes("lots"), None);
        assert_eq!(memory_bytes("12Qi"), None);
        assert_eq!(cpus("500m"), Some(0.5));
        assert_eq!(cpus("2"), Some(2.0));
        assert_eq!(cpus("-1"), None);
        let r = Resources::of(&spec()).unwrap();
        assert_eq!(r.memory, Some(128 * 1024 * 1024));
        assert_eq!(r.memory_reservation, Some(64_000_000));
        assert_eq!(r.nano_cpus, Some(500_000_000));
        assert_eq!(r.cpu_shares, Some(256));
        let mut bad = spec();
        bad.limits = Some(Quantities {
            memory: Some("big".into()),
            cpu: None,
        });
        let err = Resources::of(&bad).unwrap_err();
        assert!(
            err.contains("limits.memory") && err.contains("128Mi"),
            "{err}"
        );
    }

    #[test]
    fn the_container_carries_the_spec_and_our_labels() {
        let spec = spec();
        let id = ContainerIdentity {
            gateway: "g1",
            serial: 3,
            hash: &spec_hash(&spec),
        };
        let body = container_body(
            &spec,
            &id,
            &Resources::of(&spec).unwrap(),
            Some(Path::new("/data/s/echo")),
            std::time::Duration::from_secs(37),
        );
        let env = body.env.unwrap();
        assert!(
            env.contains(&"fprocess=cat".to_string()),
            "envProcess wins: {env:?}"
        );
        assert!(env.contains(&"port=8080".to_string()));
        assert!(!env.contains(&"port=9000".to_string()));
        assert!(env.contains(&"healthcheck_interval=3s".to_string()));
        assert!(env.contains(&"prefix_logs=false".to_string()));
        let labels = body.labels.unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels["topic"], "x");
        assert_eq!(labels[FUNCTION_LABEL], "echo", "ours cannot be overridden");
        assert_eq!(labels[NAMESPACE_LABEL], "openfaas-fn");
        assert_eq!(labels[REPLICA_LABEL], "3");
        assert_eq!(labels[GATEWAY_LABEL], "g1");
        let host = body.host_config.unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(
            host.binds.unwrap(),
            vec!["/data/s/echo:/var/openfaas/secrets:ro".to_string()]
        );
        assert_eq!(host.memory, Some(128 * 1024 * 1024));
        assert_eq!(body.stop_timeout, Some(37));
        let ports = host.port_bindings.unwrap();
        let bound = ports[CONTAINER_PORT].as_ref().unwrap();
        assert_eq!(bound[0].host_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn replicas_drain_briefly_unless_the_function_says_otherwise() {
        let env = container_env(&FunctionDeployment::default());
        assert!(
            env.contains(&format!("healthcheck_interval={STOP_DRAIN}")),
            "{env:?}"
        );
        // Both OpenFaaS watchdogs take a Go duration or whole seconds; zero hangs them.
        assert!(
            STOP_DRAIN != "0"
                && crate::config::parse::duration(STOP_DRAIN)
                    .ok()
                    .flatten()
                    .is_some()
        );
    }

    #[test]
    fn the_hash_follows_the_spec() {
        let a = spec();
        let mut b = spec();
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.env_vars.insert("x".into(), "1".into());
        assert_ne!(spec_hash(&a), spec_hash(&b));
        assert!(container_name(&a, 2).starts_with("fgw-echo-openfaas-fn-2-"));
    }
}
