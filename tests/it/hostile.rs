//! Clients that misbehave or merely differ from curl, against both binaries: clients that send
//! the whole body before reading, both framings at once, oversized heads, stalled and malformed
//! bodies, too many connections; and what the proxies send upstream for empty bodies and how
//! long they keep idle upstream connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{DEADLINE, Gateway, Watchdog};

/// A request sent the way Python's `http.client` and many others do it: the head and the whole
/// body are written first, and only then is the answer read. Returns the raw answer (head and
/// body, lossily decoded), or the error the client saw.
async fn write_all_then_read(
    addr: SocketAddr,
    head: String,
    body_len: usize,
) -> Result<String, std::io::Error> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_write_timeout(Some(DEADLINE))?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.write_all(head.as_bytes())?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            stream.write_all(&chunk[..n])?;
            left -= n;
        }
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    })
    .await
    .unwrap()
}

/// The status code of a raw answer.
fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// The body of a raw answer.
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Sends raw bytes and reads the answer until the server closes or `DEADLINE` passes.
async fn raw(addr: SocketAddr, request: Vec<u8>) -> String {
    write_all_then_read(addr, String::from_utf8(request).unwrap(), 0)
        .await
        .unwrap_or_else(|e| panic!("raw request: {e}"))
}

/// A POST head with a declared length.
fn post_head(path: &str, len: usize, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len}\r\n{extra}\r\n")
}

/// What [`RawUpstream`] saw.
#[derive(Debug)]
enum Seen {
    /// A request head.
    Head(String),
    /// A connection closed by its client.
    Closed,
}

/// An upstream that records each request head, answers `200 ok` with keep-alive, and reports
/// when the proxy closes a connection.
struct RawUpstream {
    port: u16,
    seen: mpsc::Receiver<Seen>,
}

impl RawUpstream {
    fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || serve_raw(stream, &tx));
            }
        });
        RawUpstream { port, seen }
    }

    /// The next event, within `DEADLINE`.
    async fn next(&self) -> Seen {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(s) = self.seen.try_recv() {
                return s;
            }
            assert!(std::time::Instant::now() < end, "the upstream saw nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn serve_raw(stream: TcpStream, tx: &mpsc::Sender<Seen>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Seen::Closed);
                    return;
                }
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            let _ = tx.send(Seen::Closed);
            return;
        }
        let _ = tx.send(Seen::Head(head));
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// A stack file with `echo` served by a static upstream at `port`.
fn static_stack(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("stack.yml");
    let yaml = format!("functions:\n  echo:\n    upstream: http://127.0.0.1:{port}\n");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn static_gateway(data: &Path, port: u16, extra: &[&str]) -> Gateway {
    let stack = static_stack(data, port);
    let mut args = vec!["--provider", "static", "-f", stack.to_str().unwrap()];
    args.extend_from_slice(extra);
    Gateway::start(data, &args, &[]).await
}

const NINE_MIB: usize = 9 * 1024 * 1024;

#[tokio::test]
async fn clients_that_write_everything_first_read_the_gateways_early_answers() {
    let data = tempfile::tempdir().unwrap();
    let secrets = data.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("basic-auth-user"), "admin\n").unwrap();
    std::fs::write(secrets.join("basic-auth-password"), "secret\n").unwrap();
    let gw = static_gateway(
        data.path(),
        9,
        &[
            "--basic-auth",
            "--secret-mount-path",
            secrets.to_str().unwrap(),
        ],
    )
    .await;
    for (path, expected) in [
        ("/async-function/echo", 413),
        ("/function/nope", 404),
        ("/async-function/nope", 404),
        ("/system/functions", 401),
    ] {
        let answer = write_all_then_read(gw.addr, post_head(path, NINE_MIB, ""), NINE_MIB)
            .await
            .unwrap_or_else(|e| panic!("{path}: the client saw {e} instead of {expected}"));
        assert_eq!(status(&answer), expected, "{path}: {answer}");
    }
}

#[tokio::test]
async fn clients_that_write_everything_first_read_a_handler_that_did_not_read_stdin() {
    let wd = Watchdog::start(&[("fprocess", "echo early")]).await;
    let answer = write_all_then_read(wd.addr, post_head("/", NINE_MIB, ""), NINE_MIB)
        .await
        .unwrap_or_else(|e| panic!("the client saw {e}"));
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(body(&answer), "early\n");
}

#[tokio::test]
async fn both_framings_at_once_are_refused_by_both_binaries() {
    let request = b"POST /function/echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\
Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        .to_vec();
    let wd = Watchdog::start(&[("fprocess", "cat")]).await;
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(data.path(), 9, &[]).await;
    for addr in [wd.addr, gw.addr] {
        let answer = raw(addr, request.clone()).await;
        assert_eq!(status(&answer), 400, "{answer}");
        assert!(body(&answer).contains("Content-Length and Transfer-Encoding"));
    }
}

#[tokio::test]
async fn oversized_heads_get_431_from_both_binaries() {
    let wd = Watchdog::start(&[("fprocess", "cat")]).await;
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(data.path(), 9, &[]).await;
    let big = format!(
        "GET /function/echo HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /function/echo HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    for addr in [wd.addr, gw.addr] {
        for request in [&big, &many] {
            let answer = raw(addr, request.clone().into_bytes()).await;
            assert_eq!(status(&answer), 431, "{}", &answer[..answer.len().min(200)]);
        }
    }
}

#[tokio::test]
async fn stalled_and_malformed_bodies_are_the_clients_fault_at_the_gateway() {
    let upstream = Watchdog::start(&[("fprocess", "cat")]).await;
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(
        data.path(),
        upstream.addr.port(),
        &["--read-idle-timeout", "1s"],
    )
    .await;
    for path in ["/function/echo", "/async-function/echo"] {
        // Ten bytes of a hundred, then nothing.
        let addr = gw.addr;
        let head = post_head(path, 100, "");
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&[b'x'; 10]).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await
        .unwrap();
        assert_eq!(status(&answer), 408, "{path}: {answer}");
        assert!(body(&answer).contains("read_idle_timeout"), "{answer}");
    }
    let malformed =
        b"POST /function/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n"
            .to_vec();
    let answer = raw(gw.addr, malformed).await;
    assert_eq!(status(&answer), 400, "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(data.path(), 9, &["--max-connections", "2"]).await;
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    let answer = crate::harness::eventually("a 503 for the third connection", DEADLINE, || {
        let mut stream = TcpStream::connect(gw.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    })
    .await;
    assert!(body(&answer).contains("Too many open connections"));
}

#[tokio::test]
async fn empty_posts_reach_upstreams_with_a_zero_length() {
    let upstream = RawUpstream::start();
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(data.path(), upstream.port, &[]).await;
    let wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", "sleep 3600"),
        (
            "upstream_url",
            &format!("http://127.0.0.1:{}", upstream.port),
        ),
    ])
    .await;
    for (addr, path) in [(gw.addr, "/function/echo/x"), (wd.addr, "/x")] {
        for method in ["POST", "PUT", "PATCH"] {
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let answer = raw(addr, request.into_bytes()).await;
            assert_eq!(status(&answer), 200, "{answer}");
            let head = loop {
                match upstream.next().await {
                    Seen::Head(h) => break h,
                    Seen::Closed => continue,
                }
            };
            assert!(
                head.to_ascii_lowercase().contains("content-length: 0"),
                "{method} via {addr}: {head}"
            );
        }
    }
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_on_time() {
    let upstream = RawUpstream::start();
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(data.path(), upstream.port, &[]).await;
    let answer = raw(
        gw.addr,
        b"GET /function/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(matches!(upstream.next().await, Seen::Head(_)));
    // No other request comes: the pool must close the idle connection by itself.
    assert!(matches!(upstream.next().await, Seen::Closed));
}

#[tokio::test]
async fn callbacks_to_link_local_and_metadata_addresses_are_refused() {
    let upstream = RawUpstream::start();
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(data.path(), upstream.port, &[]).await;
    let enqueue = |url: String| {
        let addr = gw.addr;
        async move {
            let req = http::Request::post("/async-function/echo")
                .header("x-callback-url", url)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
                .unwrap();
            crate::harness::send(addr, req).await
        }
    };
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://2852039166/",
        "http://[fe80::1]:8080/",
    ] {
        let r = enqueue(url.to_string()).await;
        assert_eq!(r.status(), 400, "{url}: {}", r.text());
        assert!(r.text().contains("may not reach"), "{}", r.text());
    }
    // Loopback stays allowed by default: callbacks chain functions through the gateway.
    let r = enqueue(format!("http://127.0.0.1:{}/function/echo", gw.addr.port())).await;
    assert_eq!(r.status(), 202, "{}", r.text());
}

#[tokio::test]
async fn with_deny_private_a_name_that_resolves_to_loopback_is_refused_when_delivering() {
    let upstream = RawUpstream::start();
    let data = tempfile::tempdir().unwrap();
    let gw = static_gateway(data.path(), upstream.port, &["--callback-deny-private"]).await;
    let req = http::Request::post("/async-function/echo")
        .header("x-callback-url", "http://127.0.0.1:9/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(crate::harness::send(gw.addr, req).await.status(), 400);
    // A host name passes at enqueue; what it resolves to is checked when connecting.
    let req = http::Request::post("/async-function/echo")
        .header("x-callback-url", "http://localhost:9/hook")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = crate::harness::send(gw.addr, req).await;
    assert_eq!(r.status(), 202, "{}", r.text());
    let id = r.header("x-call-id").unwrap();
    let status =
        crate::harness::eventually_async("the callback to be refused", DEADLINE, || async {
            let r = crate::harness::get(gw.addr, &format!("/async-function/status/{id}")).await;
            let v: serde_json::Value = serde_json::from_str(&r.text()).ok()?;
            (v["callback"] == "failed").then_some(v)
        })
        .await;
    let why = status["callbackError"].as_str().unwrap_or_default();
    assert!(
        why.contains("refused") && why.contains("loopback"),
        "{status}"
    );
    assert_eq!(
        status["callbackAttempts"], 1,
        "a refusal is not retried: {status}"
    );
}
