//! The local provider: every replica of a function is an `fwatchdog` child process listening on a
//! loopback port it picks itself (`port=0`; the port is read from its `listening addr=` line).
//!
//! Each replica has a supervisor task: start the child in its own process group (with a
//! parent-death signal, so children never outlive the gateway), forward its log, probe
//! `/_/ready` until it answers 200, and restart it with exponential backoff when it exits. A
//! replica takes traffic only while ready; requests are spread round-robin over ready replicas.
//! Stopping a replica is SIGTERM to its group (fwatchdog drains), then SIGKILL after a grace
//! period.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod supervisor;

use supervisor::Supervisor;

use super::replicas::{NewReplica, ReplicaSets, stop_grace};
use super::{BoxFuture, Endpoint, Provider, ProviderError};
use crate::gateway::logs::FunctionLogs;
use crate::gateway::types::{FunctionDeployment, HANDLER_ANNOTATION};
use crate::http::proxy;
use crate::process::ProcessTable;
use crate::process::spawn::{self, BaseEnv, Program};

/// The local provider.
#[derive(Debug)]
pub struct LocalProvider {
    /// The `fwatchdog` executable.
    fwatchdog: Arc<Program>,
    /// The environment every child inherits (the gateway's own).
    base_env: Arc<BaseEnv>,
    /// Our children, for group kills at shutdown.
    table: Arc<ProcessTable>,
    /// Per-replica temp directories (each holds its replica's lock file).
    run_dir: PathBuf,
    /// Client for readiness probes.
    client: proxy::Client,
    /// The functions' replicas.
    sets: ReplicaSets,
    /// Every replica supervisor.
    tasks: TaskTracker,
    /// Numbers replica directories, unique for the provider's life (a redeployed function
    /// must never share a directory with a replica of its previous deployment).
    next_dir: std::sync::atomic::AtomicU64,
    /// Stops every replica at shutdown.
    stop_all: CancellationToken,
    /// Where replicas' log lines go.
    logs: Arc<FunctionLogs>,
    /// Where each function's secret files are (`DIR/NAMESPACE/FUNCTION`).
    secrets_dir: PathBuf,
    /// When running as root: `unshare`, to give replicas with secrets a private mount
    /// namespace with their secrets at `/var/openfaas/secrets`.
    unshare: Option<PathBuf>,
}

/// Where the OpenFaaS convention puts a function's secrets.
pub const SECRETS_MOUNT: &str = "/var/openfaas/secrets";

impl LocalProvider {
    /// A provider that runs `fwatchdog` (a command: the executable, then its arguments) for
    /// each replica, with temp directories under `run_dir`.
    pub fn new(
        fwatchdog: &[String],
        run_dir: PathBuf,
        logs: Arc<FunctionLogs>,
        secrets_dir: PathBuf,
    ) -> std::io::Result<Self> {
        // Replicas run in their handler directories: every path they get must be absolute.
        let mut command = fwatchdog.to_vec();
        if let Some(exe) = command.first_mut()
            && Path::new(exe).components().count() > 1
        {
            *exe = std::path::absolute(Path::new(exe))?.display().to_string();
        }
        let run_dir = std::path::absolute(&run_dir)?;
        let program = Program::new(&command, None)?;
        if let Err(e) = std::fs::remove_dir_all(&run_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %run_dir.display(), error = %e, "cannot clear old run directory");
        }
        std::fs::create_dir_all(&run_dir)?;
        let stop_all = CancellationToken::new();
        Ok(LocalProvider {
            fwatchdog: Arc::new(program),
            base_env: Arc::new(BaseEnv::capture()),
            table: ProcessTable::new(),
            run_dir,
            client: proxy::client(),
            sets: ReplicaSets::new(stop_all.clone()),
            tasks: TaskTracker::new(),
            next_dir: std::sync::atomic::AtomicU64::new(0),
            stop_all,
            logs,
            secrets_dir,
            unshare: nix::unistd::geteuid()
                .is_root()
                .then(|| on_path("unshare"))
                .flatten(),
        })
    }

    /// The replica command run in a private mount namespace where `secrets` is bind-mounted at
    /// [`SECRETS_MOUNT`] (root only; `unshare` makes mounts private to the new namespace).
    fn in_mount_namespace(&self, unshare: &Path, secrets: &Path) -> std::io::Result<Program> {
        let script = format!(
            "mkdir -p {SECRETS_MOUNT} && mount --bind \"$1\" {SECRETS_MOUNT} && shift && exec \"$@\""
        );
        let mut argv = vec![
            unshare.display().to_string(),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            script,
            "sh".into(),
            secrets.display().to_string(),
        ];
        argv.extend(self.fwatchdog.argv_strings());
        Program::new(&argv, std::env::var_os("PATH").as_deref())
    }

    /// The command that runs a replica: the `fwatchdog` next to the running executable, else
    /// the one on `PATH`, else the running executable itself as `fgateway watchdog`.
    pub fn find_fwatchdog() -> Vec<String> {
        let exe = std::env::current_exe().ok();
        let sibling = exe
            .as_ref()
            .map(|exe| exe.with_file_name("fwatchdog"))
            .filter(|p| p.is_file());
        match sibling.or_else(|| on_path("fwatchdog")) {
            Some(path) => vec![path.display().to_string()],
            None => match exe {
                Some(exe) => vec![exe.display().to_string(), "watchdog".to_string()],
                None => vec!["fwatchdog".to_string()],
            },
        }
    }

    /// Starts the supervisor of one new replica.
    fn start_replica(&self, new: NewReplica) -> Result<(), ProviderError> {
        let NewReplica {
            spec,
            replica,
            replaced,
            ..
        } = new;
        let name = spec.service.as_str();
        let start_error = |source| ProviderError::Start {
            name: name.to_string(),
            source,
        };
        let unique = self.next_dir.fetch_add(1, Ordering::Relaxed);
        let dir = self.run_dir.join(format!("{name}-{unique}"));
        std::fs::create_dir_all(&dir).map_err(start_error)?;
        let cwd = match handler_dir(&spec) {
            None => None,
            Some(dir) => Some(spawn::directory(&dir).map_err(start_error)?),
        };
        let secrets = (!spec.secrets.is_empty())
            .then(|| self.secrets_dir.join(spec.namespace()).join(&spec.service));
        let fwatchdog = match (&secrets, &self.unshare) {
            (Some(dir), Some(unshare)) => {
                Arc::new(self.in_mount_namespace(unshare, dir).map_err(start_error)?)
            }
            _ => Arc::clone(&self.fwatchdog),
        };
        let supervisor = Supervisor {
            name: name.to_string(),
            namespace: spec.namespace().to_string(),
            logs: Arc::clone(&self.logs),
            env: child_env(&spec, &dir, secrets.as_deref()),
            cwd,
            replica,
            fwatchdog,
            base_env: Arc::clone(&self.base_env),
            table: Arc::clone(&self.table),
            client: self.client.clone(),
            dir,
            after: replaced,
            stop_grace: stop_grace(&spec),
        };
        self.tasks.spawn(supervisor.run());
        Ok(())
    }
}

/// The function's handler directory, absolute: a relative one (from the system API) is taken
/// from the gateway's working directory, since the replica runs in the directory itself.
fn handler_dir(spec: &FunctionDeployment) -> Option<PathBuf> {
    let dir = Path::new(spec.annotation(HANDLER_ANNOTATION)?);
    Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// The environment of a replica: the function's variables over ours (fwatchdog's port,
/// loopback bind, no metrics port, its own TMPDIR, no health grace since the gateway routes
/// around replicas that are stopping, handler lines logged unprefixed).
fn child_env(
    spec: &FunctionDeployment,
    dir: &Path,
    secrets: Option<&Path>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("healthcheck_interval".into(), "0".into()),
        ("metrics_port".into(), "0".into()),
        // The function's own lines reach the log buffer as it wrote them.
        ("prefix_logs".into(), "false".into()),
    ];
    let mut vars: Vec<(String, String)> = spec
        .env_vars
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.retain(|(k, _)| !spec.env_vars.contains_key(k));
    env.append(&mut vars);
    if let Some(process) = &spec.env_process {
        env.push(("fprocess".into(), process.clone()));
    }
    let log = spec
        .env_vars
        .get("RUST_LOG")
        .map_or_else(|| "info".to_string(), Clone::clone);
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "port" | "bind_address" | "TMPDIR" | "RUST_LOG" | "log_format"
        )
    });
    env.push(("port".into(), "0".into()));
    // The gateway reads fwatchdog's own lines as JSON and writes them once, in its own format.
    env.push(("log_format".into(), "json".into()));
    env.push(("bind_address".into(), "127.0.0.1".into()));
    env.push(("TMPDIR".into(), dir.display().to_string()));
    if let Some(secrets) = secrets {
        // The variable the OpenFaaS function SDKs read their secrets from.
        env.retain(|(k, _)| k != "secret_mount_path");
        env.push(("secret_mount_path".into(), secrets.display().to_string()));
    }
    // The listening line must reach us whatever level the function asks for.
    env.push(("RUST_LOG".into(), format!("{log},fwatchdog::watchdog=info")));
    env
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn apply(&self, spec: &Arc<FunctionDeployment>, replicas: u64) -> Result<(), ProviderError> {
        let has_process = spec.env_process.is_some() || spec.env_vars.contains_key("fprocess");
        let is_static = spec.env_vars.get("mode").is_some_and(|m| m == "static");
        if !has_process && !is_static {
            return Err(ProviderError::Invalid(format!(
                "function {} has no envProcess (or fprocess in envVars): the local provider runs it with fwatchdog",
                spec.service
            )));
        }
        if let Some(dir) = handler_dir(spec)
            && !dir.is_dir()
        {
            return Err(ProviderError::Invalid(format!(
                "function {}: handler directory {} does not exist",
                spec.service,
                dir.display()
            )));
        }
        self.sets
            .apply(spec, replicas, |new| self.start_replica(new))
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

    fn cpu_seconds(&self, key: &str) -> Option<f64> {
        let pids: Vec<i32> = self
            .sets
            .replicas(key)
            .iter()
            .map(|r| r.pid.load(Ordering::SeqCst))
            .filter(|pid| *pid > 0)
            .collect();
        Some(pids.into_iter().filter_map(process_cpu_seconds).sum())
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop_all.cancel();
            self.tasks.close();
            if tokio::time::timeout(grace + Duration::from_secs(1), self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("function replicas did not stop in time; killing them");
            }
            self.table.kill_all();
        })
    }
}

/// CPU time of process `pid` and of its children it has waited for (its handlers), from
/// `/proc/PID/stat`.
fn process_cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = crate::process::reaper::stat_fields(&stat)?.collect();
    // utime, stime, cutime, cstime are fields 14 to 17 of the line: 12 to 15 after ')'.
    let ticks: f64 = fields
        .get(11..15)?
        .iter()
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks / per_second)
}

/// The executable `name` in the directories of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    spawn::resolve(name, std::env::var_os("PATH").as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_env_cannot_move_the_replica_off_loopback() {
        let mut spec = FunctionDeployment {
            service: "f".into(),
            env_process: Some("cat".into()),
            ..Default::default()
        };
        spec.env_vars.insert("port".into(), "9999".into());
        spec.env_vars.insert("exec_timeout".into(), "5s".into());
        spec.env_vars
            .insert("healthcheck_interval".into(), "2s".into());
        spec.env_vars
            .insert("secret_mount_path".into(), "/elsewhere".into());
        let env = child_env(&spec, Path::new("/tmp/x"), Some(Path::new("/data/s/f")));
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("port"), Some("0"));
        assert_eq!(get("bind_address"), Some("127.0.0.1"));
        assert_eq!(get("exec_timeout"), Some("5s"));
        assert_eq!(get("healthcheck_interval"), Some("2s"));
        assert_eq!(get("fprocess"), Some("cat"));
        assert_eq!(get("TMPDIR"), Some("/tmp/x"));
        assert_eq!(get("secret_mount_path"), Some("/data/s/f"));
        assert_eq!(get("prefix_logs"), Some("false"));
        assert_eq!(env.iter().filter(|(k, _)| k == "port").count(), 1);
    }
}
