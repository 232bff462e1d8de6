//! `mode=static`: files from `static_path`, served by `hyper-staticfile` (content types, ranges,
//! conditional requests, `index.html`, directory redirects).
//!
//! The crate already confines `..` and percent-encoded traversal to the root. On top of that,
//! every resolved path is canonicalized and must stay inside the canonical root, so a symlink
//! that points outside the root answers 403 instead of leaking the file.

use std::io;
use std::path::{Path, PathBuf};

use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper_staticfile::{ResolveResult, Resolver, ResponseBuilder};

use crate::http::body::{self, BoxError};
use crate::watchdog::invocation::Reply;

/// The static file server for one root.
#[derive(Clone)]
pub struct StaticFiles {
    /// Resolves request paths under the root.
    resolver: Resolver,
}

impl std::fmt::Debug for StaticFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticFiles").finish_non_exhaustive()
    }
}

impl StaticFiles {
    /// A server for the directory `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        let root = root.canonicalize()?;
        let mut resolver = Resolver::new(root.clone());
        resolver.set_rewrite(move |params| {
            let root = root.clone();
            async move {
                let mut target = root.join(&params.path);
                if params.is_dir_request {
                    target.push("index.html");
                }
                confine(&root, &target).await?;
                Ok(params)
            }
        });
        Ok(StaticFiles { resolver })
    }

    /// Serves one request (only `GET` and `HEAD`; other methods get 405).
    pub async fn serve<B>(&self, req: &Request<B>) -> Reply {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut reply = Reply::text((
                StatusCode::METHOD_NOT_ALLOWED,
                b"Static files answer GET and HEAD only.\n".to_vec(),
            ));
            reply
                .headers
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return reply;
        }
        let result = match self.resolver.resolve_request(req).await {
            Ok(result) => result,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                ResolveResult::PermissionDenied
            }
            Err(e) => {
                tracing::warn!(path = req.uri().path(), error = %e, "cannot serve file");
                return Reply::text((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    b"The file could not be read.\n".to_vec(),
                ));
            }
        };
        let response = match ResponseBuilder::new().request(req).build(result) {
            Ok(response) => response,
            Err(e) => {
                return Reply::text((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Cannot build the response: {e}\n").into_bytes(),
                ));
            }
        };
        let (parts, file_body) = response.into_parts();
        let mut reply = Reply::new(parts.status, body::empty());
        reply.headers = parts.headers;
        reply.body = file_body.map_err(BoxError::from).boxed_unsync();
        reply
    }
}

/// Fails with `PermissionDenied` when `target` exists and resolves (through symlinks) to a path
/// outside `root`. Missing files pass: the resolver answers 404 for them.
async fn confine(root: &Path, target: &PathBuf) -> io::Result<()> {
    match tokio::fs::canonicalize(target).await {
        Ok(real) if real.starts_with(root) => Ok(()),
        Ok(real) => {
            tracing::warn!(
                requested = %target.display(),
                resolves_to = %real.display(),
                "refused a path that leaves static_path"
            );
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "path leaves static_path",
            ))
        }
        Err(_) => Ok(()),
    }
}
