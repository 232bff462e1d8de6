//! Start-up: invalid configuration stops the process with exit code 64 and a message that names
//! the variable; flags.

use std::process::{Command, Stdio};

use crate::harness::{Watchdog, base_env, fwatchdog_bin, get};

/// Runs fwatchdog with `vars` and returns (exit code, stderr).
fn run_expecting_exit(vars: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut env = base_env(tmp.path());
    for (k, v) in vars {
        env.insert(k.to_string(), v.to_string());
    }
    let out = Command::new(fwatchdog_bin())
        .args(args)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn invalid_values_exit_64_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("fprocess", "cat"), ("exec_timeout", "abc")],
            "exec_timeout=\"abc\"",
        ),
        (
            &[("fprocess", "cat"), ("read_timeout", "-5")],
            "read_timeout=\"-5\"",
        ),
        (
            &[("fprocess", "cat"), ("write_timeout", "10 parsecs")],
            "write_timeout=",
        ),
        (&[("fprocess", "cat"), ("port", "80808")], "port=\"80808\""),
        (
            &[("fprocess", "cat"), ("max_inflight", "many")],
            "max_inflight=\"many\"",
        ),
        (
            &[("fprocess", "cat"), ("cgi_headers", "maybe")],
            "cgi_headers=\"maybe\"",
        ),
        (&[("fprocess", "cat"), ("mode", "turbo")], "mode=\"turbo\""),
        (
            &[("fprocess", "cat"), ("content_type", "text/plain\u{7f}")],
            "content_type=",
        ),
        (&[], "fprocess is not set"),
    ];
    for (vars, needle) in cases {
        let (code, stderr) = run_expecting_exit(vars, &[]);
        assert_eq!(code, Some(64), "{vars:?}: {stderr}");
        assert!(stderr.contains(needle), "{vars:?}: {stderr}");
        assert!(
            stderr.contains("expected") || stderr.contains("not set"),
            "{stderr}"
        );
    }
}

#[test]
fn http_and_static_modes_check_their_settings_at_start_up() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("fprocess", "cat"), ("mode", "http")],
            "upstream_url is not set",
        ),
        (
            &[
                ("fprocess", "cat"),
                ("mode", "http"),
                ("upstream_url", "https://127.0.0.1:1"),
            ],
            "upstream_url=\"https://127.0.0.1:1\"",
        ),
        (
            &[("mode", "static"), ("static_path", "/no/such/dir")],
            "static_path=\"/no/such/dir\"",
        ),
    ];
    for (vars, needle) in cases {
        let (code, stderr) = run_expecting_exit(vars, &[]);
        assert_eq!(code, Some(64), "{vars:?}: {stderr}");
        assert!(stderr.contains(needle), "{vars:?}: {stderr}");
    }
}

#[test]
fn version_flag_in_both_forms() {
    for flag in ["-version", "--version"] {
        let (code, out) = run_expecting_exit(&[], &[flag]);
        assert_eq!(code, Some(0));
        assert!(out.starts_with("Version: "), "{out}");
    }
}

#[tokio::test]
async fn run_healthcheck_follows_the_lock_file() {
    let wd = Watchdog::start(&[("fprocess", "cat")]).await;
    let tmp = wd.tmp.path().display().to_string();
    assert!(wd.lock_path().exists());
    let (code, _) = run_expecting_exit(&[("TMPDIR", &tmp)], &["-run-healthcheck"]);
    assert_eq!(code, Some(0));
    std::fs::remove_file(wd.lock_path()).unwrap();
    let (code, err) = run_expecting_exit(&[("TMPDIR", &tmp)], &["--run-healthcheck"]);
    assert_eq!(code, Some(1), "{err}");
    // Deleting the lock file also takes the HTTP health check down.
    assert_eq!(get(wd.addr, "/_/health").await.status(), 503);
}

#[tokio::test]
async fn suppress_lock_means_no_lock_file_and_still_healthy() {
    let wd = Watchdog::start(&[("fprocess", "cat"), ("suppress_lock", "true")]).await;
    assert!(!wd.lock_path().exists());
    let r = get(wd.addr, "/_/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text(), "OK");
    let port = wd.addr.port().to_string();
    let (code, err) = run_expecting_exit(
        &[("suppress_lock", "true"), ("port", &port)],
        &["-run-healthcheck"],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn a_taken_metrics_port_is_a_start_up_error() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run_expecting_exit(&[("fprocess", "cat"), ("metrics_port", &port)], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("metrics_port {port}")), "{stderr}");
}
