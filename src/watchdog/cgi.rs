//! The request as the handler sees it: `Http_*` environment variables (CGI style) and the
//! optional JSON envelope of `marshal_request`.

use std::collections::BTreeMap;

use http::request::Parts;
use http::{HeaderMap, header};

/// Variables the watchdog sets itself; a client header can never produce one of these names.
const RESERVED: [&str; 7] = [
    "Http_Method",
    "Http_ContentLength",
    "Http_Content_Length",
    "Http_Transfer_Encoding",
    "Http_Query",
    "Http_Path",
    "Http_Host",
];

/// A header name in Go's canonical form (`x-custom-id` → `X-Custom-Id`), or `None` when it has
/// characters outside `[A-Za-z0-9-]` (such names could alias other headers once `-` becomes `_`).
pub fn canonical_header_name(name: &str) -> Option<String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let mut upper = true;
    Some(
        name.chars()
            .map(|c| {
                let out = if upper {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                };
                upper = c == '-';
                out
            })
            .collect(),
    )
}

/// The request's body length as the handler is told it: the declared length, `-1` when the body
/// is chunked (length unknown), `0` when there is none.
pub fn content_length(headers: &HeaderMap) -> i64 {
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if chunked {
        return -1;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The `Http_*` variables for a request.
pub fn request_env(parts: &Parts) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(parts.headers.keys_len() + RESERVED.len());
    for name in parts.headers.keys() {
        let Some(canonical) = canonical_header_name(name.as_str()) else {
            continue;
        };
        let var = format!("Http_{}", canonical.replace('-', "_"));
        if RESERVED.contains(&var.as_str()) {
            continue;
        }
        // First value only, as OpenFaaS does.
        if let Some(value) = parts.headers.get(name) {
            env.push((var, String::from_utf8_lossy(value.as_bytes()).into_owned()));
        }
    }
    let length = content_length(&parts.headers).to_string();
    env.push(("Http_Method".into(), parts.method.as_str().into()));
    env.push(("Http_ContentLength".into(), length.clone()));
    env.push(("Http_Content_Length".into(), length));
    if let Some(te) = parts.headers.get(header::TRANSFER_ENCODING) {
        env.push((
            "Http_Transfer_Encoding".into(),
            String::from_utf8_lossy(te.as_bytes()).into_owned(),
        ));
    }
    if let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) {
        env.push(("Http_Query".into(), query.into()));
    }
    env.push(("Http_Path".into(), parts.uri.path().into()));
    let host = parts
        .headers
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_string()));
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        env.push(("Http_Host".into(), host));
    }
    env
}

/// The opening of the `marshal_request` JSON envelope, up to where the base64 body starts:
/// `{"header":{"Name":["value"]},"body":{"raw":"`.
pub fn marshal_prefix(headers: &HeaderMap) -> Vec<u8> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name == header::HOST {
            continue;
        }
        let Some(canonical) = canonical_header_name(name.as_str()) else {
            continue;
        };
        map.entry(canonical)
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let mut out = b"{\"header\":".to_vec();
    // A map of strings always serializes.
    out.extend_from_slice(serde_json::to_string(&map).unwrap_or_default().as_bytes());
    out.extend_from_slice(b",\"body\":{\"raw\":\"");
    out
}

/// The closing of the `marshal_request` envelope.
pub const MARSHAL_SUFFIX: &[u8] = b"\"}}";

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_header_name("x-custom-id").as_deref(),
            Some("X-Custom-Id")
        );
        assert_eq!(
            canonical_header_name("CONTENT-TYPE").as_deref(),
            Some("Content-Type")
        );
        assert_eq!(canonical_header_name("x_under"), None);
        assert_eq!(canonical_header_name("x.dot"), None);
        assert_eq!(canonical_header_name(""), None);
    }

    #[test]
    fn request_variables() -> Result<(), http::Error> {
        let p = parts(
            Request::post("http://fn.example/some/path?a=1&b=2")
                .header("Host", "fn.example")
                .header("Content-Length", "5")
                .header("X-Custom", "one")
                .header("X-Custom", "two")
                .body(())?,
        );
        let env = request_env(&p);
        assert_eq!(get(&env, "Http_Method"), Some("POST"));
        assert_eq!(get(&env, "Http_ContentLength"), Some("5"));
        assert_eq!(get(&env, "Http_Content_Length"), Some("5"));
        assert_eq!(get(&env, "Http_Query"), Some("a=1&b=2"));
        assert_eq!(get(&env, "Http_Path"), Some("/some/path"));
        assert_eq!(get(&env, "Http_Host"), Some("fn.example"));
        assert_eq!(get(&env, "Http_X_Custom"), Some("one"));
        assert_eq!(get(&env, "Http_Transfer_Encoding"), None);
        Ok(())
    }

    #[test]
    fn headers_cannot_override_watchdog_values() -> Result<(), http::Error> {
        let p = parts(
            Request::get("/p")
                .header("Query", "injected")
                .header("Path", "/etc")
                .header("Method", "DELETE")
                .header("X_Sneaky", "1")
                .body(())?,
        );
        let env = request_env(&p);
        assert_eq!(get(&env, "Http_Query"), None);
        assert_eq!(get(&env, "Http_Path"), Some("/p"));
        assert_eq!(get(&env, "Http_Method"), Some("GET"));
        assert_eq!(get(&env, "Http_X_Sneaky"), None);
        assert_eq!(env.iter().filter(|(k, _)| k == "Http_Path").count(), 1);
        Ok(())
    }

    #[test]
    fn chunked_length_is_minus_one() -> Result<(), http::Error> {
        let p = parts(
            Request::post("/")
                .header("Transfer-Encoding", "chunked")
                .body(())?,
        );
        let env = request_env(&p);
        assert_eq!(get(&env, "Http_ContentLength"), Some("-1"));
        assert_eq!(get(&env, "Http_Content_Length"), Some("-1"));
        assert_eq!(get(&env, "Http_Transfer_Encoding"), Some("chunked"));
        Ok(())
    }

    #[test]
    fn marshal_envelope() -> Result<(), Box<dyn std::error::Error>> {
        let p = parts(
            Request::post("/")
                .header("x-a", "1")
                .header("x-a", "2")
                .body(())?,
        );
        let mut json = marshal_prefix(&p.headers);
        json.extend_from_slice(b"aGk=");
        json.extend_from_slice(MARSHAL_SUFFIX);
        let v: serde_json::Value = serde_json::from_slice(&json)?;
        assert_eq!(v["header"]["X-A"], serde_json::json!(["1", "2"]));
        assert_eq!(v["body"]["raw"], "aGk=");
        Ok(())
    }
}
