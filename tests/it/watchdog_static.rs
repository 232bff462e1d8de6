//! mode=static: files, content types, ranges, index.html, and refusing every way out of the root.

use std::io::{Read, Write};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::{Watchdog, get, post, send};

const SECRET: &str = "top secret outside the root";

/// A root with a few files, and a secret next to it that must never be served.
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("public");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(dir.path().join("private")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(root.join("style.css"), "body{}").unwrap();
    std::fs::write(root.join("data.json"), "{\"a\":1}").unwrap();
    std::fs::write(root.join("docs/index.html"), "<p>docs</p>").unwrap();
    std::fs::write(root.join("numbers.txt"), "0123456789").unwrap();
    std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
    std::fs::write(dir.path().join("private/secret.txt"), SECRET).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("private"), root.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(root.join("style.css"), root.join("inside.css")).unwrap();
    dir
}

async fn start(dir: &tempfile::TempDir) -> Watchdog {
    let root = dir.path().join("public");
    Watchdog::start(&[("mode", "static"), ("static_path", root.to_str().unwrap())]).await
}

#[tokio::test]
async fn serves_files_with_types_ranges_and_index() {
    let dir = site();
    let wd = start(&dir).await;

    let r = get(wd.addr, "/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "<h1>home</h1>");
    assert!(r.header("content-type").unwrap().starts_with("text/html"));

    let r = get(wd.addr, "/style.css").await;
    assert!(r.header("content-type").unwrap().starts_with("text/css"));
    let r = get(wd.addr, "/data.json").await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    // A symlink that stays inside the root is fine.
    assert_eq!(get(wd.addr, "/inside.css").await.text(), "body{}");

    let r = get(wd.addr, "/docs/").await;
    assert_eq!(r.text(), "<p>docs</p>");
    let r = get(wd.addr, "/docs").await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.header("location").as_deref(), Some("/docs/"));

    let req = Request::get("/numbers.txt")
        .header("range", "bytes=2-5")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(wd.addr, req).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.text(), "2345");
    assert_eq!(r.header("content-range").as_deref(), Some("bytes 2-5/10"));

    assert_eq!(get(wd.addr, "/missing.txt").await.status(), 404);
    let r = post(wd.addr, "/index.html", "x").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
}

/// Sends a raw request line (no client-side normalisation) and returns status and body.
fn raw_get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[tokio::test]
async fn no_way_out_of_the_root() {
    let dir = site();
    let wd = start(&dir).await;
    let addr = wd.addr;
    let attempts = [
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/secret.txt",
        "/docs/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/link.txt",
        "/linkdir/secret.txt",
        "/linkdir/",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
    ];
    for target in attempts {
        let (status, text) = tokio::task::spawn_blocking(move || raw_get(addr, target))
            .await
            .unwrap();
        assert!(
            status == 404 || status == 403 || status == 400,
            "{target}: {status}\n{text}"
        );
        assert!(!text.contains(SECRET), "{target} leaked the secret");
        assert!(!text.contains("root:"), "{target} leaked /etc/passwd");
    }
    assert_eq!(get(wd.addr, "/link.txt").await.status(), 403);
}
