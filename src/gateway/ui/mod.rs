//! The web UI at `/ui/`: plain HTML, CSS and JavaScript modules compiled into the binary (no
//! build step, nothing fetched from elsewhere). The pages call the same APIs as faas-cli
//! (`/system/*`, `/function/*`, `/async-function/*`), behind the same basic auth; every value
//! they show is inserted as text, never as markup.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::gateway::invoke::text;
use crate::http::body::{self, ResponseBody};

/// The files: path under `/ui/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dom.js"),
    ),
    (
        "functions.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/functions.js"),
    ),
    (
        "function.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/function.js"),
    ),
    (
        "calls.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/calls.js"),
    ),
    (
        "queue.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/queue.js"),
    ),
    (
        "triggers.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/triggers.js"),
    ),
];

/// Total bytes of the UI's files.
pub fn asset_bytes() -> usize {
    ASSETS.iter().map(|(_, _, text)| text.len()).sum()
}

/// Whether a request for `/` comes from a browser (it asks for HTML).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// A redirect to `location`.
pub fn redirect(location: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    resp
}

/// Answers `GET /ui[/...]`.
pub fn serve(path: &str) -> Response<ResponseBody> {
    if path == "/ui" {
        return redirect("/ui/");
    }
    let name = path.strip_prefix("/ui/").unwrap_or("");
    let Some((_, content_type, content)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return text(StatusCode::NOT_FOUND, "No such page.\n".into());
    };
    let mut resp = Response::new(body::full(Bytes::from_static(content.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_served_with_a_strict_policy() {
        let resp = serve("/ui/");
        assert_eq!(resp.status(), StatusCode::OK);
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'"));
        assert_eq!(serve("/ui").status(), StatusCode::FOUND);
        assert_eq!(serve("/ui/nope.js").status(), StatusCode::NOT_FOUND);
        assert!(
            asset_bytes() < 60_000,
            "the UI stays small: {} bytes",
            asset_bytes()
        );
    }
}
