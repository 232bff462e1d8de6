//! The watchdog's configuration from environments given as maps: defaults, forms, errors.
use super::*;

fn config(pairs: &[(&'static str, &'static str)]) -> Result<WatchdogConfig, ConfigError> {
    let env: HashMap<&str, &str> = pairs.iter().copied().collect();
    WatchdogConfig::from_env(&env)
}

#[test]
fn defaults_match_the_contract() -> Result<(), ConfigError> {
    let c = config(&[("fprocess", "cat")])?;
    assert_eq!(c.fprocess, vec!["cat"]);
    assert_eq!(c.mode, Mode::Classic);
    assert_eq!(c.read_timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.write_timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.exec_timeout, None);
    assert_eq!(c.healthcheck_interval, Duration::from_secs(30));
    assert_eq!(c.port, 8080);
    assert_eq!(c.metrics_port, Some(8081));
    assert_eq!(c.max_inflight, None);
    assert!(c.cgi_headers && c.combine_output && c.prefix_logs);
    assert!(!c.marshal_request && !c.write_debug && !c.suppress_lock && !c.log_callid);
    assert!(c.log_requests);
    assert_eq!(c.log_format, crate::logging::LogFormat::Text);
    assert_eq!(c.log_buffer_size.get(), 65536);
    assert_eq!(c.lock_path, PathBuf::from("/tmp/.lock"));
    Ok(())
}

#[test]
fn of_watchdog_modes_default_exec_timeout() -> Result<(), ConfigError> {
    let c = config(&[("fprocess", "cat"), ("mode", "streaming")])?;
    assert_eq!(c.mode, Mode::Streaming);
    assert_eq!(c.exec_timeout, Some(Duration::from_secs(30)));
    let c = config(&[
        ("fprocess", "cat"),
        ("mode", "serializing"),
        ("exec_timeout", "0"),
    ])?;
    assert_eq!(c.exec_timeout, None);
    Ok(())
}

#[test]
fn values_and_aliases() -> Result<(), ConfigError> {
    let c = config(&[
        ("function_process", r#"python3 -c "print('hi there')""#),
        ("read_timeout", "500ms"),
        ("write_timeout", "1m30s"),
        ("exec_timeout", "10"),
        ("healthcheck_interval", "2s"),
        ("port", "0"),
        ("metrics_port", "0"),
        ("max_inflight", "4"),
        ("cgi_headers", "FALSE"),
        ("TMPDIR", "/var/tmp"),
        ("log_requests", "false"),
        ("log_format", "JSON"),
    ])?;
    assert!(!c.log_requests);
    assert_eq!(c.log_format, crate::logging::LogFormat::Json);
    assert_eq!(c.fprocess, vec!["python3", "-c", "print('hi there')"]);
    assert_eq!(c.read_timeout, Some(Duration::from_millis(500)));
    assert_eq!(c.write_timeout, Some(Duration::from_secs(90)));
    assert_eq!(c.exec_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.healthcheck_interval, Duration::from_secs(2));
    assert_eq!(c.port, 0);
    assert_eq!(c.metrics_port, None);
    assert_eq!(c.max_inflight.map(NonZeroUsize::get), Some(4));
    assert!(!c.cgi_headers);
    assert_eq!(c.lock_path, PathBuf::from("/var/tmp/.lock"));
    Ok(())
}

#[test]
fn errors_name_the_variable_value_and_form() {
    let table: &[(&[(&'static str, &'static str)], &str)] = &[
        (
            &[("fprocess", "cat"), ("exec_timeout", "abc")],
            "invalid exec_timeout=\"abc\"",
        ),
        (
            &[("fprocess", "cat"), ("read_timeout", "-1")],
            "invalid read_timeout=\"-1\"",
        ),
        (
            &[("fprocess", "cat"), ("port", "99999")],
            "invalid port=\"99999\"",
        ),
        (
            &[("fprocess", "cat"), ("max_inflight", "lots")],
            "invalid max_inflight",
        ),
        (
            &[("fprocess", "cat"), ("cgi_headers", "yes")],
            "invalid cgi_headers=\"yes\"",
        ),
        (
            &[("fprocess", "cat"), ("log_format", "xml")],
            "invalid log_format=\"xml\": expected text or json",
        ),
        (
            &[("fprocess", "cat"), ("log_requests", "maybe")],
            "invalid log_requests=\"maybe\"",
        ),
        (
            &[("fprocess", "cat"), ("mode", "turbo")],
            "invalid mode=\"turbo\"",
        ),
        (
            &[("fprocess", "cat"), ("mode", "http")],
            "upstream_url is not set",
        ),
        (
            &[
                ("fprocess", "cat"),
                ("mode", "http"),
                ("upstream_url", "ftp://x"),
            ],
            "invalid upstream_url=\"ftp://x\"",
        ),
        (
            &[
                ("fprocess", "cat"),
                ("mode", "http"),
                ("http_upstream_url", "127.0.0.1:5000"),
            ],
            "invalid http_upstream_url",
        ),
        (
            &[("mode", "static"), ("static_path", "/nonexistent/dir")],
            "invalid static_path=\"/nonexistent/dir\"",
        ),
        (
            &[("fprocess", "cat"), ("ready_path", "ready")],
            "invalid ready_path",
        ),
        (
            &[("mode", "http"), ("upstream_url", "http://x")],
            "fprocess is not set",
        ),
        (
            &[("fprocess", "cat"), ("log_buffer_size", "0")],
            "invalid log_buffer_size",
        ),
        (&[("fprocess", "cat 'unbalanced")], "invalid fprocess"),
        (&[], "fprocess is not set"),
        (&[("fprocess", "   ")], "fprocess is not set"),
    ];
    for (pairs, want) in table {
        match config(pairs) {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{pairs:?}: {msg}");
            }
        }
    }
    let msg = config(&[("fprocess", "cat"), ("exec_timeout", "abc")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains(r#"seconds ("10") or a duration"#), "{msg}");
}
