//! Entry points for fuzzing every parser that takes outside input, shared by the `cargo fuzz`
//! targets in `fuzz/` and by the test that replays their corpora in `cargo test`.
//!
//! Each function takes arbitrary bytes, feeds them to one parser, and panics only when the
//! parser breaks a rule it promises (a valid call id with a forbidden character, a refused
//! address let through, a framing check that hands the server bytes it never received...).
//! Parsers returning errors is expected; panics, hangs and overflows are what fuzzing finds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HealthcheckConfig, WatchdogConfig, parse};
use crate::gateway::access::auth::BasicAuth;
use crate::gateway::types::{DeleteFunctionRequest, FunctionDeployment, ScaleServiceRequest};
use crate::queue::{Outcome, QueueRequest};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/NAME.rs` file and `fuzz/corpus/NAME`
/// folder) and its entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("env_config", env_config),
    ("cgi_headers", cgi_headers),
    ("marshal_request", marshal_request),
    ("stack_file", stack_file),
    ("system_json", system_json),
    ("queue_request", queue_request),
    ("call_id", call_id),
    ("authorization", authorization),
    ("retry_after", retry_after),
    ("static_path", static_path),
    ("framing", framing),
    ("callback_host", callback_host),
    ("logs_query", logs_query),
    ("scale_labels", scale_labels),
    ("secret_json", secret_json),
];

/// The longest duration any parser may return (the documented cap).
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600 + 3 * 24 * 3600);

/// Environment configuration: `NAME=value` lines become the environment of both config
/// readers, and every value goes through every typed parser.
pub fn env_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut env: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        env.insert(name.to_string(), value.to_string());
        if let Ok(Some(d)) = parse::duration(value) {
            assert!(d <= TEN_YEARS, "duration {value:?} = {d:?} past the cap");
        }
        let _ = parse::size(value);
        let _ = parse::boolean(value);
        let _ = parse::uint(value);
        let _ = parse::port(value);
    }
    if let Err(e) = WatchdogConfig::from_env(&env) {
        // Every error names what to fix.
        assert!(!e.to_string().is_empty());
    }
    let _ = HealthcheckConfig::from_env(&env);
}

/// Request headers (`name: value` lines, a request line first) as the handler's `Http_*`
/// variables.
pub fn cgi_headers(data: &[u8]) {
    let Some(parts) = request_parts(data) else {
        return;
    };
    let env = crate::watchdog::cgi::request_env(&parts);
    let mut seen = std::collections::HashSet::new();
    for (name, _) in &env {
        assert!(name.starts_with("Http_"), "{name}");
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{name}"
        );
        assert!(seen.insert(name.clone()), "{name} set twice");
    }
}

/// The `marshal_request` envelope: its opening and closing around a base64 body must be JSON
/// with the request's headers.
pub fn marshal_request(data: &[u8]) {
    let Some(parts) = request_parts(data) else {
        return;
    };
    let mut envelope = crate::watchdog::cgi::marshal_prefix(&parts.headers);
    envelope.extend_from_slice(b"aGVsbG8=");
    envelope.extend_from_slice(crate::watchdog::cgi::MARSHAL_SUFFIX);
    let parsed: serde_json::Value = match serde_json::from_slice(&envelope) {
        Ok(v) => v,
        Err(e) => panic!(
            "envelope is not JSON: {e}: {}",
            String::from_utf8_lossy(&envelope)
        ),
    };
    assert_eq!(parsed["body"]["raw"], "aGVsbG8=");
}

/// A stack file.
pub fn stack_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(functions) = crate::gateway::stack::parse(text, Path::new("/srv/functions"))
    {
        for f in functions {
            let _ = f.validate();
        }
    }
}

/// The system API's JSON bodies.
pub fn system_json(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<FunctionDeployment>(data) {
        let _ = spec.validate();
        let again = serde_json::to_vec(&spec).unwrap_or_default();
        assert!(serde_json::from_slice::<FunctionDeployment>(&again).is_ok());
    }
    let _ = serde_json::from_slice::<DeleteFunctionRequest>(data);
    let _ = serde_json::from_slice::<ScaleServiceRequest>(data);
}

/// A stored queue message (OpenFaaS's `QueueRequest`, callback URLs as Go URL objects too):
/// what parses must survive a round trip.
pub fn queue_request(data: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<QueueRequest>(data) {
        let again = serde_json::to_vec(&request).unwrap_or_default();
        match serde_json::from_slice::<QueueRequest>(&again) {
            Ok(back) => assert_eq!(
                serde_json::to_value(&back).ok(),
                serde_json::to_value(&request).ok()
            ),
            Err(e) => panic!("round trip failed: {e}"),
        }
    }
}

/// `X-Call-Id` and `Idempotency-Key` values as the gateway reads them.
pub fn call_id(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    if let Ok(id) = value.to_str()
        && crate::gateway::asynchronous::valid_call_id(id)
    {
        assert!(!id.is_empty() && id.len() <= 128);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        );
    }
}

/// The `Authorization` header against fixed credentials.
pub fn authorization(data: &[u8]) {
    let auth = BasicAuth::new(b"admin".to_vec(), b"s3cret".to_vec());
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    if auth.allows(&headers) {
        let text = String::from_utf8_lossy(data);
        let (scheme, rest) = text.split_once(' ').unwrap_or_default();
        assert!(scheme.eq_ignore_ascii_case("basic"));
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .unwrap_or_default();
        assert_eq!(decoded, b"admin:s3cret");
    }
}

/// A function's `Retry-After` header, as the retry policy reads it.
pub fn retry_after(data: &[u8]) {
    let outcome = Outcome {
        status: 503,
        headers: vec![(
            "Retry-After".to_string(),
            String::from_utf8_lossy(data).into_owned(),
        )],
        body: Vec::new(),
        duration: 0.0,
        error: None,
    };
    let _ = crate::queue::worker::retry_after(&outcome);
}

/// A request path for `mode=static`: nothing outside the root is ever served.
pub fn static_path(data: &[u8]) {
    /// The served root (with a file inside) beside a file that must never be served.
    struct Fixture {
        files: crate::watchdog::mode::static_files::StaticFiles,
        runtime: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    const SECRET: &[u8] = b"outside the root";
    let fixture = FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        let root = dir.path().join("public");
        std::fs::create_dir_all(root.join("sub")).ok()?;
        std::fs::write(root.join("index.html"), b"inside").ok()?;
        std::fs::write(dir.path().join("secret.txt"), SECRET).ok()?;
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).ok()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let files = runtime.block_on(async {
            crate::watchdog::mode::static_files::StaticFiles::new(&root).ok()
        })?;
        Some(Fixture {
            files,
            runtime,
            _dir: dir,
        })
    });
    let Some(fixture) = fixture else { return };
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let Ok(req) = http::Request::get(uri).body(()) else {
        return;
    };
    fixture.runtime.block_on(async {
        use http_body_util::BodyExt;
        let reply = fixture.files.serve(&req).await;
        let body = reply.body.collect().await.map(|b| b.to_bytes());
        if let Ok(body) = body {
            assert_ne!(&body[..], SECRET, "{:?} escaped the root", req.uri());
        }
    });
}

/// Bytes from a client through the connection guard: the server gets a prefix of them, in
/// order, and never more.
pub fn framing(data: &[u8]) {
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;
    let io = tokio::io::join(data, tokio::io::sink());
    let mut guarded = crate::http::connection::GuardedIo::new(io);
    let mut seen = Vec::new();
    match guarded.read_to_end(&mut seen).now_or_never() {
        Some(Ok(_)) => assert!(data.starts_with(&seen), "bytes changed"),
        Some(Err(e)) => panic!("reading from memory failed: {e}"),
        None => panic!("reading from memory did not finish"),
    }
}

/// A callback URL's host against the address policy: an address the policy refuses is never
/// let through, whatever its spelling.
pub fn callback_host(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for policy in [
        crate::http::egress::EgressPolicy::default(),
        crate::http::egress::EgressPolicy { deny_private: true },
    ] {
        let verdict = policy.check_host(&text);
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>()
            && policy.refusal(ip).is_some()
        {
            assert!(verdict.is_err(), "{text} let through");
        }
        if let Ok(uri) = format!("http://{text}/").parse::<http::Uri>()
            && let Some(host) = uri.host()
        {
            let _ = policy.check_host(host);
        }
    }
}

/// `GET /system/logs`'s query string: what parses keeps its promises.
pub fn logs_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(q) = crate::gateway::logs::parse_query(Some(&text)) {
        assert!(!q.name.is_empty());
        assert!(q.tail != Some(0), "tail 0 means all lines");
    }
}

/// `com.openfaas.scale.*` labels (`name=value` lines): a policy that parses is coherent.
pub fn scale_labels(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let labels = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (format!("com.openfaas.scale.{k}"), v.to_string())
        })
        .collect();
    let spec = FunctionDeployment {
        service: "f".into(),
        labels: Some(labels),
        ..Default::default()
    };
    if let Ok(p) = crate::gateway::scaling::ScalePolicy::of(&spec) {
        assert!(p.min <= p.max && p.max <= crate::gateway::registry::MAX_REPLICAS);
        assert!(p.target > 0.0 && p.proportion > 0.0 && p.proportion <= 1.0);
        for n in [0, 1, 7, u64::MAX] {
            let c = p.clamp(n);
            assert!(c >= p.min && c <= p.max);
        }
    }
}

/// A secret as the system API reads it: a name that validates is never a path.
pub fn secret_json(data: &[u8]) {
    if let Ok(secret) = serde_json::from_slice::<crate::gateway::secrets::Secret>(data)
        && crate::gateway::secrets::validate_secret_name(&secret.name).is_ok()
    {
        assert!(!secret.name.contains('/') && !secret.name.contains(".."));
        assert!(!secret.name.starts_with('.'));
    }
    let _ = serde_json::from_slice::<crate::gateway::types::FunctionNamespace>(data);
}

/// A request line and header lines (`name: value`) as request parts; `None` when the first line
/// is not a method and path.
fn request_parts(data: &[u8]) -> Option<http::request::Parts> {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next()?;
    let mut words = first.splitn(2, |b| *b == b' ');
    let method = http::Method::from_bytes(words.next()?).ok()?;
    let uri = http::Uri::try_from(words.next().unwrap_or(b"/")).ok()?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            builder = builder.header(n, v);
        }
    }
    Some(builder.body(()).ok()?.into_parts().0)
}
