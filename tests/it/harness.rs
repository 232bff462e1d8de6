//! Starting the real binaries on ephemeral ports, reading their logs, and talking HTTP to them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use tokio::net::TcpStream;

/// A generous bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until process `pid` no longer exists (or is a zombie), panicking with `what` after
/// [`DEADLINE`].
pub async fn wait_gone(pid: i32, what: &str) {
    eventually(what, DEADLINE, || process_gone(pid).then_some(())).await;
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the async `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually_async<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The log of a running binary, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn collect(&self, reader: impl std::io::Read + Send + 'static) {
        let lines = Arc::clone(&self.0);
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if std::env::var_os("FWATCHDOG_TEST_ECHO").is_some() {
                    eprintln!("| {line}");
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// The first value of `key=` on a line containing `needle`.
    pub fn find_field(&self, needle: &str, key: &str) -> Option<String> {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().filter(|l| l.contains(needle)).find_map(|l| {
            let start = l.find(&format!("{key}="))? + key.len() + 1;
            let rest = l[start..].strip_prefix('"').unwrap_or(&l[start..]);
            // Up to a space, or to the quote that ends it (a field's, or a JSON string's).
            let value: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            Some(value)
        })
    }
}

/// A running `fwatchdog`.
pub struct Watchdog {
    /// The process.
    pub child: Child,
    /// Where it serves requests.
    pub addr: SocketAddr,
    /// Where it serves metrics, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Its log (stdout and stderr).
    pub log: Log,
    /// Its TMPDIR (holds the lock file), removed on drop.
    pub tmp: tempfile::TempDir,
}

/// The environment every test watchdog starts from: nothing of the test process leaks in.
pub fn base_env(tmp: &Path) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_default(),
    );
    env.insert("TMPDIR".to_string(), tmp.display().to_string());
    env.insert("port".to_string(), "0".to_string());
    env.insert("metrics_port".to_string(), "0".to_string());
    env.insert("healthcheck_interval".to_string(), "0".to_string());
    env
}

/// The fwatchdog binary.
pub fn fwatchdog_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fwatchdog"))
}

impl Watchdog {
    /// Starts fwatchdog with `vars` on top of [`base_env`] and waits until it listens.
    pub async fn start(vars: &[(&str, &str)]) -> Watchdog {
        Self::start_with(vars, |cmd| cmd).await
    }

    /// Like [`Watchdog::start`], letting `wrap` change the command (to run it under another
    /// program, for example).
    pub async fn start_with(
        vars: &[(&str, &str)],
        wrap: impl FnOnce(Command) -> Command,
    ) -> Watchdog {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut env = base_env(tmp.path());
        for (k, v) in vars {
            env.insert(k.to_string(), v.to_string());
        }
        let mut cmd = Command::new(fwatchdog_bin());
        cmd.env_clear().envs(&env);
        let cmd = wrap(cmd);
        let (child, log, addr) = launch(cmd, "fwatchdog", "listening addr=").await;
        let metrics_addr = log
            .find_field("serving metrics", "addr")
            .map(|a| localize(&a));
        Watchdog {
            child,
            addr,
            metrics_addr,
            log,
            tmp,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The lock file path.
    pub fn lock_path(&self) -> PathBuf {
        self.tmp.path().join(".lock")
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal_child(&self.child, sig);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_child(&mut self.child, "fwatchdog", limit).await
    }
}

/// `127.0.0.1` with the port of a logged listening address (which may be `0.0.0.0:PORT`).
fn localize(a: &str) -> SocketAddr {
    let port = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    SocketAddr::from((
        [127, 0, 0, 1],
        port.unwrap_or_else(|| panic!("bad addr {a}")),
    ))
}

/// Spawns `cmd` with its output collected, and waits for its `listening addr=` line (the first
/// line containing `needle`).
pub async fn launch(cmd: Command, what: &str, needle: &str) -> (Child, Log, SocketAddr) {
    launch_within(cmd, what, needle, DEADLINE).await
}

/// [`launch`], waiting up to `limit` for the line.
pub async fn launch_within(
    mut cmd: Command,
    what: &str,
    needle: &str,
    limit: Duration,
) -> (Child, Log, SocketAddr) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let log = Log::default();
    if let Some(out) = child.stdout.take() {
        log.collect(out);
    }
    if let Some(err) = child.stderr.take() {
        log.collect(err);
    }
    let addr = eventually("the listening line", limit, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}:\n{}", log.text());
        }
        log.find_field(needle, "addr")
    })
    .await;
    (child, log, localize(&addr))
}

/// The fgateway binary.
pub fn fgateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fgateway"))
}

/// A running `fgateway up`.
pub struct Gateway {
    /// The process.
    pub child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its log.
    pub log: Log,
}

impl Gateway {
    /// Starts `fgateway up --port 0 --data-dir DATA ARGS...` from the repository root, with a
    /// clean environment plus `env`.
    pub async fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Self::start_with(data, args, env, |cmd| cmd).await
    }

    /// Like [`Gateway::start`], letting `wrap` change the command (to run it in another
    /// namespace, for example).
    pub async fn start_with(
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        wrap: impl FnOnce(Command) -> Command,
    ) -> Gateway {
        Self::launch(wrap(Self::command(data, args, env)), DEADLINE).await
    }

    /// Like [`Gateway::start`], waiting up to `limit` until it listens (a start-up that waits
    /// for a server).
    pub async fn start_within(data: &Path, args: &[&str], limit: Duration) -> Gateway {
        Self::launch(Self::command(data, args, &[]), limit).await
    }

    /// Spawns `cmd` and waits up to `limit` for its listening line.
    async fn launch(cmd: Command, limit: Duration) -> Gateway {
        let needle = "fwatchdog::gateway: listening addr=";
        let (child, log, addr) = launch_within(cmd, "fgateway", needle, limit).await;
        Gateway { child, addr, log }
    }

    /// `fgateway up --port 0 --data-dir DATA ARGS...` from the repository root, with a clean
    /// environment plus `env`.
    fn command(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(fgateway_bin());
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", data)
            // The log filter of the test run, if any (to debug a failure).
            .envs(std::env::var("RUST_LOG").map(|v| ("RUST_LOG", v)))
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data)
            .args(args)
            .envs(env.iter().copied());
        cmd
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal_child(&self.child, sig);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_child(&mut self.child, "fgateway", limit).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every descendant of `pid` (children, their children, ...), from /proc.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|v| v.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parents.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in parents.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response with its whole body.
pub struct Reply {
    /// Status, headers.
    pub head: http::response::Parts,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The status code as a number.
    pub fn status(&self) -> u16 {
        self.head.status.as_u16()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Sends `req` on a new connection and returns the response head with its body stream.
pub async fn send_streaming<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    connect(addr)
        .await
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("request: {e}"))
}

/// One keep-alive client connection: requests go one after another on the same socket.
pub struct KeepAlive {
    /// Sends on the connection.
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    /// Opens a connection to `addr`.
    pub async fn open(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            sender: connect(addr).await,
        }
    }

    /// POSTs `body` to `path` on this connection and collects the response.
    pub async fn post(&mut self, path: &str, body: &'static str) -> Reply {
        self.sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("connection not ready: {e}"));
        let req = Request::post(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let resp = self
            .sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request: {e}"));
        collect(resp).await
    }
}

/// Opens an HTTP/1.1 connection to `addr`, driven in a task of its own.
async fn connect<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("handshake: {e}"));
    tokio::spawn(conn);
    sender
}

/// A response with its whole body.
async fn collect(resp: Response<Incoming>) -> Reply {
    let (head, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("body: {e}"))
        .to_bytes();
    Reply { head, body }
}

/// Sends `req` and collects the whole response.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    collect(send_streaming(addr, req).await).await
}

/// Sends `req` on a new connection and collects the answer, or says why none came
/// (`connect: ...` when the connection was refused): for clients that expect failures.
pub async fn try_send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (head, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply { head, body })
}

/// [`try_send`], but an answer that has not come within `limit` is an error that starts with
/// "no answer".
pub async fn try_send_within(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
    limit: Duration,
) -> Result<Reply, String> {
    tokio::time::timeout(limit, try_send(addr, req))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// Sends `METHOD path` with `body`.
pub async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(body.into()))
        .unwrap_or_else(|e| panic!("request: {e}"));
    send(addr, req).await
}

/// POSTs `body` to `path`.
pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    request(addr, http::Method::POST, path, body).await
}

/// GETs `path`.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, http::Method::GET, path, Bytes::new()).await
}

/// Whether a process is gone (or a zombie, which no longer runs anything).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Reads a pid that a fixture handler wrote to `path`, waiting for it to appear.
pub async fn read_pid(path: &Path) -> i32 {
    eventually("a handler to record its pid", DEADLINE, || {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    })
    .await
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Streams `total` bytes of `x` as a chunked request body.
pub fn big_body(
    total: usize,
) -> StreamBody<
    impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
> {
    let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
    let n = total / chunk.len();
    StreamBody::new(futures_util::stream::iter(
        (0..n).map(move |_| Ok(hyper::body::Frame::data(chunk.clone()))),
    ))
}

/// A loopback port that was free a moment ago (for upstreams that need a fixed port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

/// Polls `path` until it answers `status`, or panics after [`DEADLINE`].
pub async fn wait_status(addr: SocketAddr, path: &str, status: u16) {
    let end = Instant::now() + DEADLINE;
    loop {
        if get(addr, path).await.status() == status {
            return;
        }
        assert!(Instant::now() < end, "{path} never answered {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts fwatchdog from the repository root, as the README and `examples/README.md` do.
pub async fn start_in_repo(vars: &[(&str, &str)]) -> Watchdog {
    Watchdog::start_with(vars, |mut cmd: Command| {
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        cmd
    })
    .await
}

/// Sends `sig` to a child process.
pub fn signal_child(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
        .unwrap_or_else(|e| panic!("signal: {e}"));
}

/// Waits up to `limit` for a child process to exit.
pub async fn wait_child(child: &mut Child, what: &str, limit: Duration) -> ExitStatus {
    eventually(&format!("{what} to exit"), limit, || {
        child.try_wait().ok().flatten()
    })
    .await
}

/// A helper process (a worker, a callback receiver) killed and reaped when the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `nats-server` binary: on `PATH`, or where Debian's package puts it.
pub fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .expect("nats-server is needed (Debian package nats-server; .ci/run installs it)")
}

/// A real `nats-server -js` on a loopback port with its store in a directory of the test's.
pub struct Nats {
    /// The running server, if it is up.
    child: Option<Child>,
    /// Its port (kept across restarts).
    pub port: u16,
    /// Its JetStream store.
    store: PathBuf,
}

impl Nats {
    /// Starts a server storing in `store`, and waits until it accepts connections.
    pub async fn start(store: &Path) -> Nats {
        let mut nats = Nats {
            child: None,
            port: free_port(),
            store: store.to_path_buf(),
        };
        nats.up().await;
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and store.
    pub async fn up(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = Command::new(nats_server_bin())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
        let end = Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < end, "nats-server never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it with `sig` and waits for it to exit.
    pub async fn down(&mut self, sig: nix::sys::signal::Signal) {
        let mut child = self.child.take().expect("nats-server is not running");
        signal_child(&child, sig);
        wait_child(&mut child, "nats-server", DEADLINE).await;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Opens a websocket at `path` (the python-http example's echo endpoint, directly or through
/// proxies), checks the handshake and that two messages come back, and returns the open
/// connection.
pub async fn websocket_echo(addr: SocketAddr, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for message in ["hello websocket", "second message"] {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | message.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).await.unwrap();
        let mut reply = vec![0u8; 2 + message.len()];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply[0], 0x81);
        assert_eq!(&reply[2..], message.as_bytes());
    }
    s
}
