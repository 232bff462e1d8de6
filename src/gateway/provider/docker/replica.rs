//! One container replica's task: create the container (or adopt a running one), start it, learn
//! its published port, forward its log, probe `/_/health` (which every OpenFaaS watchdog
//! serves) until it takes traffic, notice when it exits (however it was stopped: the engine's
//! restart policies miss `kill`) and start it again with exponential backoff, and at the end
//! stop it (SIGTERM, then SIGKILL after the function's grace) and remove it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::Shared;
use super::images::{is_connection, is_not_found, reason, unreachable_engine};
use super::spec::{CONTAINER_PORT, ContainerIdentity, container_body, container_name};
use crate::gateway::provider::ProviderError;
use crate::gateway::provider::replica_log::ReplicaLog;
use crate::gateway::provider::replicas::{Probe, Replica, watch_readiness};
use crate::gateway::types::FunctionDeployment;

/// First and longest pause before starting a replica that exited.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// A replica that ran this long before exiting restarts without delay growth.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// One replica's task.
pub(super) struct ContainerReplica {
    /// What every replica shares.
    pub(super) shared: Arc<Shared>,
    /// The spec it runs.
    pub(super) spec: Arc<FunctionDeployment>,
    /// The spec's hash.
    pub(super) hash: String,
    /// Its shared state.
    pub(super) replica: Arc<Replica>,
    /// A running container of this spec to take over instead of creating one.
    pub(super) adopt: Option<String>,
    /// How long the container gets after SIGTERM.
    pub(super) stop_grace: Duration,
}

impl ContainerReplica {
    /// Runs the replica until it is stopped, then stops and removes its container (unless the
    /// gateway is exiting with its containers kept).
    pub(super) async fn run(mut self) {
        let name = self.spec.service.clone();
        let mut container = self.adopt.take();
        let mut backoff = RESTART_BACKOFF.0;
        while !self.replica.stop.is_cancelled() {
            let started = Instant::now();
            match self.run_once(&mut container).await {
                Ok(()) => break,
                Err(why) => {
                    self.replica.set_ready(&name, false);
                    self.replica.set_addr(None);
                    if started.elapsed() >= HEALTHY_RUN {
                        backoff = RESTART_BACKOFF.0;
                    }
                    tracing::warn!(
                        function = %name,
                        replica = self.replica.serial,
                        container = container.as_deref().map_or("-", short),
                        delay = %humantime::format_duration(backoff),
                        "{why}; restarting"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.replica.stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(RESTART_BACKOFF.1);
                }
            }
        }
        self.replica.set_ready(&name, false);
        if let Some(id) = container {
            if self.shared.keep_on_exit.load(Ordering::SeqCst) {
                tracing::info!(function = %name, container = %short(&id), "left running for the next gateway");
            } else {
                stop_and_remove(&self.shared.docker, &id, self.stop_grace).await;
            }
        }
        self.replica.gone.cancel();
    }

    /// Creates (when `container` is `None`) and starts the container, then serves until it is
    /// stopped (`Ok`) or exits (`Err`, saying how).
    async fn run_once(&self, container: &mut Option<String>) -> Result<(), String> {
        let docker = &self.shared.docker;
        let id = match container.clone() {
            Some(id) => id,
            None => {
                let id = self.create().await?;
                *container = Some(id.clone());
                id
            }
        };
        let inspect = match docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => {
                *container = None;
                return Err("container was removed".to_string());
            }
            Err(e) => return Err(format!("cannot inspect container: {}", reason(&e))),
        };
        let running = inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        // Log lines from this moment on (a restarted container keeps its earlier output).
        let since = unix_now();
        if !running && let Err(e) = docker.start_container(&id, None).await {
            if is_not_found(&e) {
                *container = None;
            }
            return Err(format!("cannot start container: {}", reason(&e)));
        }
        let addr = self.published_port(&id).await?;
        self.forward_log(&id, since);
        let exited = async {
            loop {
                let wait = WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build();
                match docker.wait_container(&id, Some(wait)).next().await {
                    Some(Ok(done)) => {
                        return format!("container exited with status {}", done.status_code);
                    }
                    Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => {
                        return if error.is_empty() {
                            format!("container exited with status {code}")
                        } else {
                            format!("container exited with status {code}: {error}")
                        };
                    }
                    Some(Err(_)) | None => {
                        // The wait itself ended (engine restarted, request timed out): look.
                        let state = docker
                            .inspect_container(&id, None::<InspectContainerOptions>)
                            .await;
                        match state {
                            Ok(i) if i.state.as_ref().and_then(|s| s.running) == Some(true) => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Ok(_) => return "container exited".to_string(),
                            Err(e) if is_not_found(&e) => {
                                return "container was removed".to_string();
                            }
                            Err(e) => {
                                tracing::warn!(function = %self.spec.service, error = %reason(&e), "cannot reach the container engine");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                }
            }
        };
        tokio::select! {
            why = exited => Err(why),
            _ = self.replica.stop.cancelled() => Ok(()),
            _ = watch_readiness(&self.shared.client, &self.spec.service, &self.replica, addr, Probe::Health) => {
                Err("readiness watch ended".to_string())
            }
        }
    }

    /// Creates this replica's container.
    async fn create(&self) -> Result<String, String> {
        let secrets = (!self.spec.secrets.is_empty()).then(|| {
            self.shared
                .secrets_dir
                .join(self.spec.namespace())
                .join(&self.spec.service)
        });
        if let Some(dir) = &secrets {
            super::share_secrets(dir);
        }
        let resources = super::spec::Resources::of(&self.spec)?;
        let id = ContainerIdentity {
            gateway: &self.shared.gateway_id,
            serial: self.replica.serial,
            hash: &self.hash,
        };
        let body = container_body(
            &self.spec,
            &id,
            &resources,
            secrets.as_deref(),
            self.stop_grace,
        );
        let options = CreateContainerOptionsBuilder::default()
            .name(&container_name(&self.spec, self.replica.serial))
            .build();
        let created = self
            .shared
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| format!("cannot create container: {}", reason(&e)))?;
        for warning in created.warnings {
            tracing::warn!(function = %self.spec.service, container = %short(&created.id), "{warning}");
        }
        tracing::info!(function = %self.spec.service, replica = self.replica.serial, container = %short(&created.id), "container created");
        Ok(created.id)
    }

    /// Has the engine create (and at once remove) a container of `spec`, so that what the engine
    /// refuses in it, such as a memory limit below its minimum, is refused at deployment with
    /// the engine's own reason instead of failing every replica later.
    pub(super) async fn trial(
        shared: &Shared,
        spec: &FunctionDeployment,
    ) -> Result<(), ProviderError> {
        let resources = super::spec::Resources::of(spec).map_err(ProviderError::Invalid)?;
        let id = ContainerIdentity {
            gateway: &shared.gateway_id,
            serial: 0,
            hash: "trial",
        };
        // Labelled as the gateway's, with a hash no spec has: should the gateway die before
        // removing it, the next one removes it with the other stale containers.
        let body = container_body(spec, &id, &resources, None, Duration::ZERO);
        let options = CreateContainerOptionsBuilder::default()
            .name(&format!("{}-trial", container_name(spec, 0)))
            .build();
        let created = match shared.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) if is_connection(&e) => return Err(unreachable_engine(&e)),
            Err(e) => {
                return Err(ProviderError::Invalid(format!(
                    "function {}: the container engine refused its container: {}",
                    spec.service,
                    reason(&e)
                )));
            }
        };
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = shared
            .docker
            .remove_container(&created.id, Some(remove))
            .await
        {
            tracing::warn!(function = %spec.service, container = %short(&created.id), error = %reason(&e), "cannot remove trial container");
        }
        Ok(())
    }

    /// The loopback address the engine published the container's port 8080 on.
    async fn published_port(&self, id: &str) -> Result<SocketAddr, String> {
        let inspect = self
            .shared
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| format!("cannot inspect container: {}", reason(&e)))?;
        let port = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|ports| ports.get(CONTAINER_PORT).cloned().flatten())
            .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| format!("container publishes no host port for {CONTAINER_PORT}"))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Feeds the container's stdout and stderr, from `since` (seconds since the epoch; 0 for
    /// all), to the function's log, line by line, until the container stops.
    fn forward_log(&self, id: &str, since: i32) {
        let docker = self.shared.docker.clone();
        let sink = ReplicaLog {
            logs: Arc::clone(&self.shared.logs),
            name: self.spec.service.clone(),
            namespace: self.spec.namespace().to_string(),
            instance: format!("{}-{}", self.spec.service, self.replica.serial),
        };
        let id = id.to_string();
        tokio::spawn(async move {
            let options = LogsOptionsBuilder::default()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .since(since)
                .build();
            let mut stream = docker.logs(&id, Some(options));
            let mut lines = [Vec::new(), Vec::new()];
            while let Some(Ok(chunk)) = stream.next().await {
                let (which, bytes) = match chunk {
                    LogOutput::StdErr { message } => (1, message),
                    LogOutput::StdOut { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message } => (0, message),
                };
                let buffer = &mut lines[which];
                buffer.extend_from_slice(&bytes);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line[..end]);
                    sink.pass_on(text.trim_end_matches('\r'));
                }
            }
            for rest in lines.iter().filter(|b| !b.is_empty()) {
                sink.pass_on(&String::from_utf8_lossy(rest));
            }
        });
    }
}

/// Seconds since the epoch, for the engine's `since`.
fn unix_now() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// The short form of a container id, as the engines print it.
pub(super) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Stops a container (SIGTERM, then SIGKILL after `grace`) and removes it.
pub(super) async fn stop_and_remove(docker: &Docker, id: &str, grace: Duration) {
    let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
    let stop = StopContainerOptionsBuilder::default().t(secs).build();
    if let Err(e) = docker.stop_container(id, Some(stop)).await
        && !is_not_found(&e)
    {
        tracing::debug!(container = %short(id), error = %reason(&e), "stop");
    }
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(id, Some(remove)).await {
        Ok(()) => tracing::info!(container = %short(id), "container removed"),
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            tracing::warn!(container = %short(id), error = %reason(&e), "cannot remove container")
        }
    }
}
