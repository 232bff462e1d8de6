//! Basic authentication for `/system/*`: credentials read once from the files `basic-auth-user`
//! and `basic-auth-password` in the secret mount path, compared in constant time.

use std::path::{Path, PathBuf};

use base64::Engine;
use http::HeaderMap;
use subtle::ConstantTimeEq;

/// The user file's name.
pub const USER_FILE: &str = "basic-auth-user";
/// The password file's name.
pub const PASSWORD_FILE: &str = "basic-auth-password";

/// A credential file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("basic_auth is on but {path} cannot be read")]
pub struct AuthError {
    /// The file.
    path: PathBuf,
    /// Why.
    #[source]
    source: std::io::Error,
}

/// The accepted credentials.
pub struct BasicAuth {
    /// User name.
    user: Vec<u8>,
    /// Password.
    password: Vec<u8>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicAuth { .. }")
    }
}

/// Reads a secret file (a mounted Kubernetes or Docker secret), without its trailing line
/// breaks.
pub fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    Ok(secret)
}

impl BasicAuth {
    /// Credentials from their values.
    pub fn new(user: Vec<u8>, password: Vec<u8>) -> Self {
        BasicAuth { user, password }
    }

    /// Reads the credential files in `dir` (trailing line breaks are ignored).
    pub fn load(dir: &Path) -> Result<Self, AuthError> {
        let read = |name: &str| {
            let path = dir.join(name);
            read_secret(&path).map_err(|source| AuthError { path, source })
        };
        Ok(BasicAuth {
            user: read(USER_FILE)?,
            password: read(PASSWORD_FILE)?,
        })
    }

    /// Whether the request's `Authorization` header carries the right credentials.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(encoded) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, credentials)| credentials)
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        // Both comparisons always run, so timing says nothing about which part was wrong.
        let user_ok = user.ct_eq(&self.user);
        let password_ok = password.ct_eq(&self.password);
        (user_ok & password_ok).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_both_parts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(USER_FILE), "admin\n").unwrap();
        std::fs::write(dir.path().join(PASSWORD_FILE), "s3cret").unwrap();
        let auth = BasicAuth::load(dir.path()).unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            let b64 = base64::engine::general_purpose::STANDARD.encode(v);
            h.insert("authorization", format!("Basic {b64}").parse().unwrap());
            h
        };
        assert!(auth.allows(&with("admin:s3cret")));
        let mut lower = HeaderMap::new();
        let b64 = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
        lower.insert("authorization", format!("basic {b64}").parse().unwrap());
        assert!(auth.allows(&lower));
        assert!(!auth.allows(&with("admin:wrong")));
        assert!(!auth.allows(&with("root:s3cret")));
        assert!(!auth.allows(&with("admin")));
        assert!(!auth.allows(&HeaderMap::new()));
        assert!(BasicAuth::load(Path::new("/nonexistent")).is_err());
    }
}
