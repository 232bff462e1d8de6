//! The README's quick start, run as written: from the repository root, with the default data
//! directory (relative), so a path that means one thing to the gateway and another to its
//! replicas (which run in their handler directories) shows up here.

use std::path::Path;
use std::process::Command;

use crate::harness::{DEADLINE, KillOnDrop, eventually, fgateway_bin, launch, post};

/// The README's quick-start section: the `fgateway ... up` command's arguments, and the first
/// `curl -d BODY URL` with the output the README shows for it.
struct QuickStart {
    up_args: Vec<String>,
    body: String,
    path: String,
    expected: String,
}

fn quick_start() -> QuickStart {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Quick start section");
    let lines: Vec<&str> = section.lines().collect();
    let up = lines
        .iter()
        .find(|l| l.contains("fgateway") && l.contains(" up "))
        .expect("an fgateway up command");
    let words = shell_words::split(up).expect("shell words");
    let at = words.iter().position(|w| w == "up").expect("up");
    let up_args = words[at + 1..].to_vec();
    let (index, curl) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.starts_with("curl -d"))
        .expect("a curl -d command");
    let words = shell_words::split(curl).expect("shell words");
    let body = words[2].clone();
    let url = words[3].clone();
    let path = url
        .split_once("127.0.0.1:8080")
        .map(|(_, p)| p.to_string())
        .expect("a URL on 127.0.0.1:8080");
    let expected: Vec<&str> = lines[index + 1..]
        .iter()
        .take_while(|l| l.starts_with("# "))
        .map(|l| &l[2..])
        .collect();
    QuickStart {
        up_args,
        body,
        path,
        expected: expected.join("\n"),
    }
}

/// Runs `fgateway up` with the README's arguments from the repository root. Only the port
/// differs: `port=0` (the documented way to pick a free one) instead of 8080.
async fn start(
    program: &Path,
    path_var: &str,
    args: &[String],
) -> (KillOnDrop, std::net::SocketAddr, crate::harness::Log) {
    let mut cmd = Command::new(program);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", path_var)
        .env("port", "0")
        .arg("up")
        .args(args);
    let (child, log, addr) = launch(cmd, "fgateway", "fwatchdog::gateway: listening addr=").await;
    (KillOnDrop(child), addr, log)
}

#[tokio::test]
async fn the_readme_quick_start_works_from_the_repository_root() {
    let qs = quick_start();
    assert!(
        !qs.up_args.iter().any(|a| a == "--data-dir"),
        "the quick start uses the default (relative) data directory"
    );
    let (_gateway, addr, log) = start(
        &fgateway_bin(),
        &std::env::var("PATH").unwrap_or_default(),
        &qs.up_args,
    )
    .await;
    let reply = post(addr, &qs.path, qs.body.clone()).await;
    assert_eq!(reply.status(), 200, "{}\n{}", reply.text(), log.text());
    assert_eq!(reply.text().trim_end(), qs.expected);
    assert!(
        !log.text().contains("cannot write lock file"),
        "{}",
        log.text()
    );
}

#[tokio::test]
async fn fgateway_alone_runs_replicas_as_its_own_watchdog() {
    // What `cargo run --bin fgateway` leaves: fgateway built, no fwatchdog beside it or on PATH.
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("fgateway");
    std::fs::copy(fgateway_bin(), &lonely).unwrap();
    let data = dir.path().join("data");
    let args: Vec<String> = [
        "-f",
        "examples/stack.yml",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let (_gateway, addr, log) = start(&lonely, "/usr/local/bin:/usr/bin:/bin", &args).await;
    let reply = post(addr, "/function/echo/x", "hi").await;
    assert_eq!(reply.status(), 200, "{}\n{}", reply.text(), log.text());
    assert_eq!(reply.text(), "method=POST path=/x query=\nhi");
    eventually("the fallback named in the log", DEADLINE, || {
        log.text()
            .contains(&format!("fwatchdog={} watchdog", lonely.display()))
            .then_some(())
    })
    .await;
}
