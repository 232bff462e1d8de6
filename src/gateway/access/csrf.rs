//! Cross-site request forgery: a browser sends stored basic-auth credentials with requests that
//! another site's page makes (a form posted to `/system/functions`, say). Requests that change
//! state on the system API are refused when the browser says they come from another site:
//! `Sec-Fetch-Site` other than `same-origin` or `none` (a typed URL), or, from browsers that do
//! not send it, an `Origin` other than the gateway's own. Clients that are not browsers
//! (faas-cli, curl) send neither header and are not affected.

use http::{HeaderMap, Method, header};

/// Whether a request with `method` and `headers` changes state and comes from another site.
pub fn refused(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("");
    // "scheme://host[:port]"; "null" (sandboxed pages, some redirects) is never ours.
    let Some((_, authority)) = origin.split_once("://") else {
        return true;
    };
    let ours = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    !authority.eq_ignore_ascii_case(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_cross_site_browser_writes_are_refused() {
        let post = Method::POST;
        assert!(!refused(&post, &headers(&[])), "curl, faas-cli");
        assert!(!refused(
            &Method::GET,
            &headers(&[("origin", "http://evil.example")])
        ));
        assert!(refused(
            &post,
            &headers(&[("sec-fetch-site", "cross-site")])
        ));
        assert!(refused(&post, &headers(&[("sec-fetch-site", "same-site")])));
        assert!(!refused(
            &post,
            &headers(&[("sec-fetch-site", "same-origin")])
        ));
        let host = ("host", "127.0.0.1:8080");
        assert!(refused(
            &post,
            &headers(&[host, ("origin", "http://evil.example")])
        ));
        assert!(refused(
            &Method::DELETE,
            &headers(&[host, ("origin", "null")])
        ));
        assert!(!refused(
            &post,
            &headers(&[host, ("origin", "http://127.0.0.1:8080")])
        ));
    }
}
