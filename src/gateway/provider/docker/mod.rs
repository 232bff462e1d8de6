//! The docker provider: every replica of a function is a container of the function's `image`,
//! run through the Docker Engine API (Docker's daemon, or Podman's `podman system service`),
//! publishing its port 8080 on a free loopback port of the gateway's host.
//!
//! - [`spec`]: what a spec becomes (environment, labels, limits, secrets, read-only root).
//! - `images`: the pull policy, checked before a deployment is stored.
//! - `replica`: one replica's task (create or adopt, start, log, readiness, restart, stop).
//!
//! The replica sets themselves (counts, updates, round-robin, waiting for a ready replica) are
//! [`super::replicas`], shared with the local provider.
//!
//! Containers are labelled with the gateway's id (kept in its data directory), the function,
//! its namespace, the replica number and a hash of the spec. A gateway that starts finds the
//! containers of its id: a function it restores adopts the running ones whose hash matches (up
//! to its replica count) and replaces the rest; what no deployed function claims is removed
//! once every function is restored. On exit the gateway leaves containers running for the next
//! gateway to adopt, or stops them ([`OnExit`]).

mod images;
mod replica;
pub mod spec;

pub use images::PullPolicy;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::replicas::{NewReplica, ReplicaSets, stop_grace};
use super::{BoxFuture, Endpoint, Provider, ProviderError};
use crate::gateway::logs::FunctionLogs;
use crate::gateway::types::{FunctionDeployment, function_key};
use crate::http::proxy;
use replica::{ContainerReplica, short, stop_and_remove};
use spec::{FUNCTION_LABEL, GATEWAY_LABEL, NAMESPACE_LABEL, REPLICA_LABEL, SPEC_LABEL};

/// What happens to the containers when the gateway exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Leave them running: calls in flight finish, and the next gateway with the same data
    /// directory adopts them.
    Keep,
    /// Stop and remove them (SIGTERM, then SIGKILL after each function's grace).
    Stop,
}

/// Why the provider cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `--docker-host` is not an address the client understands.
    #[error("{0}")]
    Host(String),
    /// The engine (or the data directory) cannot be used.
    #[error("{0}")]
    Engine(String),
}

/// How to reach the engine and run containers.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The engine's address (`unix:///var/run/docker.sock`, `tcp://host:2375`); `None` reads
    /// `DOCKER_HOST`, else the default socket.
    pub host: Option<String>,
    /// When images are pulled.
    pub pull: PullPolicy,
    /// What happens to containers when the gateway exits.
    pub on_exit: OnExit,
    /// The gateway's data directory (its id lives there).
    pub data_dir: PathBuf,
    /// Where each function's secret files are (`DIR/NAMESPACE/FUNCTION`).
    pub secrets_dir: PathBuf,
}

/// What every replica task shares.
#[derive(Debug)]
pub(super) struct Shared {
    /// The engine.
    docker: Docker,
    /// Readiness probes.
    client: proxy::Client,
    /// Where the containers' log lines go.
    logs: Arc<FunctionLogs>,
    /// Where functions' secret files are.
    secrets_dir: PathBuf,
    /// The gateway's id, on every container's labels.
    gateway_id: String,
    /// Set at shutdown when containers are to be left running.
    keep_on_exit: AtomicBool,
}

/// A container found at start-up, not yet adopted or removed.
#[derive(Debug, Clone)]
struct Found {
    /// Its id.
    id: String,
    /// Its replica number.
    serial: u64,
    /// The hash of the spec it runs.
    hash: String,
    /// Whether it runs.
    running: bool,
}

/// The docker provider.
#[derive(Debug)]
pub struct DockerProvider {
    /// What replica tasks share.
    shared: Arc<Shared>,
    /// The functions' replicas.
    sets: ReplicaSets,
    /// Every replica task.
    tasks: TaskTracker,
    /// Stops every replica.
    stop_all: CancellationToken,
    /// When images are pulled.
    pull: PullPolicy,
    /// What happens to containers on exit.
    on_exit: OnExit,
    /// Containers of an earlier gateway, by function key, until adopted or removed.
    found: Mutex<HashMap<String, Vec<Found>>>,
}

/// The file in the data directory holding the gateway's id.
const GATEWAY_ID_FILE: &str = "gateway-id";

impl DockerProvider {
    /// Connects to the engine (failing when it cannot be reached) and lists the containers an
    /// earlier gateway with the same data directory left.
    pub async fn connect(
        config: DockerConfig,
        logs: Arc<FunctionLogs>,
    ) -> Result<DockerProvider, ConnectError> {
        let host = config
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let docker = Docker::connect_with_host(&host).map_err(|e| {
            ConnectError::Host(format!(
                "invalid --docker-host (DOCKER_HOST) {host:?}: {e}; accepted: unix:///PATH, tcp://HOST:PORT, http://HOST:PORT"
            ))
        })?;
        let version = docker.version().await.map_err(|e| {
            ConnectError::Engine(format!(
                "cannot reach the container engine at {host} (--docker-host, DOCKER_HOST): {}; start Docker, or `podman system service --time=0 unix:///run/podman/podman.sock`",
                images::reason(&e)
            ))
        })?;
        tracing::info!(
            %host,
            engine = version.platform.map(|p| p.name).unwrap_or_default(),
            version = version.version.unwrap_or_default(),
            api = version.api_version.unwrap_or_default(),
            "docker provider"
        );
        let gateway_id = gateway_id(&config.data_dir).map_err(|e| {
            ConnectError::Engine(format!(
                "{}: {e}",
                config.data_dir.join(GATEWAY_ID_FILE).display()
            ))
        })?;
        let stop_all = CancellationToken::new();
        let provider = DockerProvider {
            shared: Arc::new(Shared {
                docker,
                client: proxy::client(),
                logs,
                secrets_dir: config.secrets_dir,
                gateway_id,
                keep_on_exit: AtomicBool::new(false),
            }),
            sets: ReplicaSets::new(stop_all.clone()),
            tasks: TaskTracker::new(),
            stop_all,
            pull: config.pull,
            on_exit: config.on_exit,
            found: Mutex::new(HashMap::new()),
        };
        let found = provider.list_ours().await.map_err(ConnectError::Engine)?;
        let count: usize = found.values().map(Vec::len).sum();
        if count > 0 {
            tracing::info!(
                containers = count,
                "found containers of an earlier run; adopting those that match"
            );
        }
        *provider
            .found
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = found;
        Ok(provider)
    }

    /// The containers labelled with this gateway's id, by function key.
    async fn list_ours(&self) -> Result<HashMap<String, Vec<Found>>, String> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{GATEWAY_LABEL}={}", self.shared.gateway_id)],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .shared
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("cannot list containers: {}", images::reason(&e)))?;
        let mut found: HashMap<String, Vec<Found>> = HashMap::new();
        for container in list {
            let (Some(id), Some(labels)) = (container.id, container.labels) else {
                continue;
            };
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let key = function_key(&label(FUNCTION_LABEL), &label(NAMESPACE_LABEL));
            let running = container
                .state
                .is_some_and(|s| s.to_string().eq_ignore_ascii_case("running"));
            found.entry(key).or_default().push(Found {
                id,
                serial: label(REPLICA_LABEL).parse().unwrap_or(0),
                hash: label(SPEC_LABEL),
                running,
            });
        }
        Ok(found)
    }

    /// Takes the containers found at start-up for `key`: those that run `hash` (to adopt,
    /// lowest replica number first) are returned; the others are removed in the background.
    fn claim(&self, key: &str, hash: &str, grace: Duration) -> Vec<Found> {
        let Some(found) = self
            .found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
        else {
            return Vec::new();
        };
        let (mut adopt, stale): (Vec<Found>, Vec<Found>) =
            found.into_iter().partition(|f| f.running && f.hash == hash);
        adopt.sort_by_key(|f| f.serial);
        for old in stale {
            tracing::info!(function = %key, container = %short(&old.id), "replacing container of an earlier run");
            let docker = self.shared.docker.clone();
            self.tasks
                .spawn(async move { stop_and_remove(&docker, &old.id, grace).await });
        }
        adopt
    }
}

/// The gateway's id: read from the data directory, or made and stored there on first use.
fn gateway_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(GATEWAY_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) => Err(std::io::Error::other("empty gateway id file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&path, format!("{id}\n"))?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Lets any user inside the container read the function's secret files (images often run as
/// a non-root user). The directories above stay private to the gateway's user, so other users
/// of the host still cannot reach them.
fn share_secrets(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
    }
}

impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn prepare<'a>(
        &'a self,
        spec: &'a FunctionDeployment,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            if spec.image.trim().is_empty() {
                return Err(ProviderError::Invalid(format!(
                    "function {}: image is required by the docker provider",
                    spec.service
                )));
            }
            spec::Resources::of(spec).map_err(ProviderError::Invalid)?;
            images::ensure(&self.shared.docker, &spec.image, self.pull).await?;
            let limited = [&spec.limits, &spec.requests]
                .into_iter()
                .flatten()
                .any(|r| r.memory.is_some() || r.cpu.is_some());
            if limited {
                // In a task of its own: a deployment request given up on midway still removes
                // its trial container.
                let (shared, spec) = (Arc::clone(&self.shared), spec.clone());
                tokio::spawn(async move { ContainerReplica::trial(&shared, &spec).await })
                    .await
                    .map_err(|e| ProviderError::Unavailable(format!("trial container: {e}")))??;
            }
            Ok(())
        })
    }

    fn restored(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let leftovers: Vec<(String, Found)> = self
                .found
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain()
                .flat_map(|(key, found)| found.into_iter().map(move |f| (key.clone(), f)))
                .collect();
            for (key, old) in leftovers {
                tracing::info!(function = %key, container = %short(&old.id), "removing container of a function no longer deployed");
                stop_and_remove(&self.shared.docker, &old.id, Duration::from_secs(10)).await;
            }
        })
    }

    fn apply(&self, spec: &Arc<FunctionDeployment>, replicas: u64) -> Result<(), ProviderError> {
        if spec.image.trim().is_empty() {
            return Err(ProviderError::Invalid(format!(
                "function {}: image is required by the docker provider",
                spec.service
            )));
        }
        spec::Resources::of(spec).map_err(ProviderError::Invalid)?;
        let key = spec.key();
        let hash = spec::spec_hash(spec);
        let grace = stop_grace(spec);
        let mut adopt = if self.sets.contains(&key) {
            Vec::new()
        } else {
            self.claim(&key, &hash, grace)
        };
        let first_serial = adopt.iter().map(|f| f.serial + 1).max();
        // Adopted containers left over (more than the replica count) are removed.
        let mut surplus = adopt.split_off(adopt.len().min(replicas as usize));
        adopt.reverse();
        let mut start = |new: NewReplica| {
            let task = ContainerReplica {
                shared: Arc::clone(&self.shared),
                spec: new.spec,
                hash: hash.clone(),
                replica: new.replica,
                adopt: adopt.pop().map(|f| {
                    tracing::info!(function = %key, container = %short(&f.id), "adopted running container");
                    f.id
                }),
                stop_grace: grace,
            };
            self.tasks.spawn(task.run());
            Ok(())
        };
        let result = self
            .sets
            .apply_with(spec, replicas, &mut start, |_| first_serial);
        surplus.extend(adopt);
        for extra in surplus {
            let docker = self.shared.docker.clone();
            self.tasks
                .spawn(async move { stop_and_remove(&docker, &extra.id, grace).await });
        }
        result
    }

    fn remove(&self, key: &str) {
        self.sets.remove(key);
    }

    fn available(&self, key: &str) -> u64 {
        self.sets.available(key)
    }

    fn endpoint<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFuture<'a, Endpoint> {
        self.sets.endpoint(key, wait)
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let keep = self.on_exit == OnExit::Keep;
            self.shared.keep_on_exit.store(keep, Ordering::SeqCst);
            self.stop_all.cancel();
            self.tasks.close();
            // Stopping containers waits out each function's own grace; keeping them does not.
            let limit = if keep {
                grace
            } else {
                grace.max(Duration::from_secs(60))
            };
            if tokio::time::timeout(limit, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("containers did not stop in time; leaving the rest to the engine");
            }
        })
    }
}
