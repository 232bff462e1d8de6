//! A real container engine for the docker provider's tests: Podman (Debian's `podman` and
//! `runc`, which `.ci/run` installs) with storage under the target directory, a containers.conf
//! of the tests' own (pointed at by `CONTAINERS_CONF`, so nothing system-wide changes), and a
//! `podman system service` per test on a socket in the test's temp directory. Test images are
//! built `FROM scratch` with nothing but a static busybox and the fwatchdog under test built as
//! one static executable (as users are told to build it): no libc at all in the image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::DEADLINE;

/// Where the tests' Podman keeps everything (reused across runs: images build once).
fn podman_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("podman")
}

/// The containers.conf of the tests: runc (crun fails on a hybrid cgroup layout) and no
/// default ulimits (a sandbox may refuse to set them).
fn containers_conf() -> PathBuf {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let dir = podman_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("containers.conf");
        std::fs::write(
            &path,
            "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n",
        )
        .unwrap();
        path
    })
    .clone()
}

/// A `podman` command with the tests' storage and configuration.
pub fn podman() -> Command {
    let which = ["/usr/bin/podman", "/usr/local/bin/podman"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("podman is needed (Debian packages podman and runc; .ci/run installs them)");
    let mut cmd = Command::new(which);
    cmd.env("CONTAINERS_CONF", containers_conf())
        .arg("--root")
        .arg(podman_dir().join("root"))
        .arg("--runroot")
        .arg(podman_dir().join("run"));
    cmd
}

/// Runs `podman ARGS` and returns its standard output, panicking with its error output when it
/// fails.
pub fn podman_out(args: &[&str]) -> String {
    let out = podman().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A running `podman system service`, stopped on drop.
pub struct Service {
    /// The process.
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl Service {
    /// Starts the API service on a socket in `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> Service {
        let socket = dir.join("podman.sock");
        let child = podman()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let service = Service { child, socket };
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(&service.socket).await {
                drop(stream);
                break;
            }
            assert!(Instant::now() < end, "podman system service never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        service
    }

    /// The `--docker-host` value.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fwatchdog built as one static executable, as the README builds it for images (a static-pie
/// glibc build), in debug mode under `target/static`; built once per test run (cargo does
/// nothing when it is fresh). Panics unless the result links no shared library.
pub fn static_fwatchdog() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| static_binary("fwatchdog")).clone()
}

/// fgateway built the same way, as `Dockerfile.gateway` builds it for its image.
pub fn static_fgateway() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| static_binary("fgateway")).clone()
}

/// Builds binary `name` static (see [`static_fwatchdog`]) and checks it links nothing.
fn static_binary(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let target_dir = root.join("target/static");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--locked", "--bin", name, "--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "static {name} build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target_dir.join(&triple).join("debug").join(name);
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        !said.contains("=>") && !said.contains("ld-linux"),
        "{} links shared libraries: {said}",
        bin.display()
    );
    bin
}

/// Builds image `tag` from a scratch root holding only the static fwatchdog
/// ([`static_fwatchdog`]) and a static busybox (as `sh` and the usual tools), followed by
/// `lines` (ENV, CMD, ...), once per test run. The Docker format keeps HEALTHCHECK.
pub fn build_image(tag: &str, lines: &[String]) -> String {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    if built.iter().any(|t| t == tag) {
        return tag.to_string();
    }
    let ctx = tempfile::tempdir().unwrap();
    let root = ctx.path().join("rootfs");
    for dir in ["bin", "usr/bin", "tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    // As in any base image, /tmp is writable by every user.
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::copy(static_fwatchdog(), root.join("usr/bin/fwatchdog")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox is needed (Debian package busybox-static; .ci/run installs it)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for tool in [
        "sh", "cat", "echo", "sleep", "touch", "id", "ls", "wc", "ps", "grep", "tr",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    let mut dockerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
    for line in lines {
        dockerfile.push_str(line);
        dockerfile.push('\n');
    }
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    podman_out(&[
        "build",
        "--format",
        "docker",
        "-t",
        tag,
        ctx.path().to_str().unwrap(),
    ]);
    built.push(tag.to_string());
    tag.to_string()
}

/// The ids of the running containers of the gateway whose data directory is `data`.
pub fn containers_of(data: &Path) -> Vec<String> {
    let id = std::fs::read_to_string(data.join("gateway-id")).unwrap_or_default();
    let out = podman_out(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.fgateway.gateway={}", id.trim()),
    ]);
    let mut ids: Vec<String> = out.lines().map(str::to_string).collect();
    ids.sort();
    ids
}

/// Every container (running or not) of that gateway.
pub fn all_containers_of(data: &Path) -> Vec<String> {
    let id = std::fs::read_to_string(data.join("gateway-id")).unwrap_or_default();
    let out = podman_out(&[
        "ps",
        "-a",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.fgateway.gateway={}", id.trim()),
    ]);
    out.lines().map(str::to_string).collect()
}

/// Removes every container of that gateway (a failed test leaves none behind).
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in all_containers_of(&self.0) {
            let _ = podman().args(["rm", "-f", "-t", "0", &id]).output();
        }
    }
}
