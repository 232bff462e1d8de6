//! The real single-node Kubernetes the Kubernetes provider's tests share (`tests/k8s/cluster.sh`:
//! v1.20.2 in a network namespace of its own, reachable from the host), a function image built
//! FROM scratch with the static fwatchdog under test, and a namespace per test.
//!
//! The first test that needs the cluster starts it (building it first if this machine has no
//! build cached) unless one is up already; a cluster this process started is stopped when the
//! process exits, leaving nothing on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::json;

/// The function image every test deploys: the static fwatchdog and a static busybox.
pub const IMAGE: &str = "localhost/fwatchdog-k8s-test:latest";

/// The same, run as user 12000 (not root).
pub const NONROOT_IMAGE: &str = "localhost/fwatchdog-k8s-test:nonroot";

/// Tests that share the cluster hold it for reading (through their [`Namespace`]); a test that
/// runs gateways watching every namespace of it (the gateway deployed into the cluster) holds
/// it alone, so that no other test's gateway and functions meet it.
static IN_USE: RwLock<()> = RwLock::new(());

/// The running cluster.
pub struct Kube {
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The API server, `https://IP:6443`.
    pub server: String,
    /// Its CA certificate.
    ca: PathBuf,
    /// The admin token.
    token: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/cluster.sh")
}

fn run_script(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cluster.sh: {e}"))
}

/// Stops the cluster this process started, at exit.
extern "C" fn stop_cluster() {
    let _ = Command::new("bash").arg(script()).arg("down").output();
}

/// The cluster, started (and the test image loaded) on first use.
pub fn kube() -> &'static Kube {
    static KUBE: OnceLock<Kube> = OnceLock::new();
    KUBE.get_or_init(|| {
        if !run_script(&["status"]).status.success() {
            let up = run_script(&["up"]);
            assert!(
                up.status.success(),
                "cannot start the test cluster: {}",
                String::from_utf8_lossy(&up.stderr)
            );
            // SAFETY: registers a plain function with no captured state, run once at exit.
            unsafe {
                libc::atexit(stop_cluster);
            }
        }
        let run = PathBuf::from(
            std::env::var("FGW_K8S_RUN").unwrap_or_else(|_| "/var/tmp/fwatchdog-k8s".into()),
        );
        let fwatchdog = crate::podman::static_fwatchdog();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("a static busybox (Debian package busybox-static)");
        for (name, user) in [(IMAGE, None), (NONROOT_IMAGE, Some("--user=12000"))] {
            let mut args = vec![
                "image".to_string(),
                name.into(),
                "/fwatchdog".into(),
                format!("{}:/fwatchdog", fwatchdog.display()),
            ];
            for applet in ["sh", "cat", "hostname", "echo", "sleep", "ls", "env", "id"] {
                args.push(format!("{busybox}:/bin/{applet}"));
            }
            args.extend(user.map(String::from));
            args.extend(["--env".into(), "PATH=/bin".into(), "fprocess=cat".into()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let image = run_script(&args);
            assert!(
                image.status.success(),
                "cannot load the test image {name}: {}",
                String::from_utf8_lossy(&image.stderr)
            );
        }
        Kube {
            kubeconfig: run.join("admin.kubeconfig"),
            server: "https://10.250.0.1:6443".into(),
            ca: run.join("pki/ca.crt"),
            token: std::fs::read_to_string(run.join("pki/admin.token")).unwrap(),
        }
    })
}

impl Kube {
    /// A request to the API server with the admin token: its status and JSON body.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-H", "Content-Type: application/json"]);
        if let Some(body) = body {
            cmd.args(["--data-binary", &body.to_string()]);
        }
        let out = cmd.arg(format!("{}{path}", self.server)).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// A namespace of the test's own, labelled as function namespaces are; removed on drop.
    /// Waits while a test has the cluster alone ([`Kube::alone`]).
    pub fn namespace(&'static self, test: &str) -> Namespace {
        let shared = IN_USE.read().unwrap_or_else(|e| e.into_inner());
        self.make_namespace(test, Some(shared))
    }

    /// Like [`Kube::namespace`], for a test that has the cluster alone.
    pub fn namespace_alone(
        &'static self,
        test: &str,
        _alone: &RwLockWriteGuard<'static, ()>,
    ) -> Namespace {
        self.make_namespace(test, None)
    }

    fn make_namespace(
        &'static self,
        test: &str,
        shared: Option<RwLockReadGuard<'static, ()>>,
    ) -> Namespace {
        let name = format!(
            "t-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let (code, body) = self.api(
            "POST",
            "/api/v1/namespaces",
            Some(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"openfaas": "1"}},
            })),
        );
        assert_eq!(code, 201, "cannot create namespace {name}: {body}");
        Namespace {
            kube: self,
            name,
            _shared: shared,
        }
    }

    /// The cluster for this test alone, until the guard drops: waits for the tests sharing it.
    pub fn alone(&'static self) -> RwLockWriteGuard<'static, ()> {
        IN_USE.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs kubectl as the cluster's admin; panics, with its output, unless it succeeds.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = run_script(&[&["kubectl"], args].concat());
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packs `files` (each `(source, path in the image)`) into a FROM-scratch image `name`
    /// with `entrypoint`, run as `user`, and loads it.
    pub fn load_image(&self, name: &str, entrypoint: &str, files: &[(&Path, &str)], user: u32) {
        let mut args = vec!["image".to_string(), name.into(), entrypoint.into()];
        args.extend(
            files
                .iter()
                .map(|(src, dest)| format!("{}:{dest}", src.display())),
        );
        args.push(format!("--user={user}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_script(&args);
        assert!(
            out.status.success(),
            "cannot load the image {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A test's namespace.
pub struct Namespace {
    kube: &'static Kube,
    /// Its name.
    pub name: String,
    /// The cluster, shared with other tests while this lives (none when the test has it
    /// alone).
    _shared: Option<RwLockReadGuard<'static, ()>>,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self
            .kube
            .api("DELETE", &format!("/api/v1/namespaces/{}", self.name), None);
    }
}
