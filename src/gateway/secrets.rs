//! Secrets: stored under the data directory, handed to functions as files.
//!
//! `DATA_DIR/secrets/NAMESPACE/NAME` holds each value (directories mode 0700, files 0600). A
//! function that names secrets gets a directory of its own,
//! `DATA_DIR/function-secrets/NAMESPACE/FUNCTION/`, holding copies of just those secrets; its
//! replicas find it through `secret_mount_path` (which the OpenFaaS function SDKs read), and,
//! when the gateway runs as root, also at `/var/openfaas/secrets` inside a private mount
//! namespace. Every write is a new file renamed over the old one, so a reader sees the old
//! value or the new one, never a mix; updating a secret rewrites the copies of every function
//! that uses it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::types::{DEFAULT_NAMESPACE, validate_name};

/// faas-provider's `Secret`: a value (`value` text, or `rawValue` base64 bytes) under a name
/// in a namespace. Listing returns names and namespaces only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// The name: a DNS subdomain (lower-case letters, digits, `-`, `.`).
    pub name: String,
    /// The namespace; [`DEFAULT_NAMESPACE`] when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The value as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value as bytes (base64 in JSON); wins over `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
}

impl Secret {
    /// The namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The value's bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, SecretError> {
        match (&self.raw_value, &self.value) {
            (Some(raw), _) => base64::engine::general_purpose::STANDARD
                .decode(raw.trim())
                .map_err(|e| SecretError::Invalid(format!("rawValue is not base64: {e}"))),
            (None, Some(text)) => Ok(text.clone().into_bytes()),
            (None, None) => Err(SecretError::Invalid(
                "a secret needs a value (text) or rawValue (base64)".into(),
            )),
        }
    }
}

/// What a listing of `namespace`'s secrets answers: their names only, sorted.
pub fn listing(namespace: &str, mut names: Vec<String>) -> Vec<Secret> {
    names.sort();
    names
        .into_iter()
        .map(|name| Secret {
            name,
            namespace: Some(namespace.to_string()),
            ..Secret::default()
        })
        .collect()
}

/// Why a secret operation failed; the system API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Bad name or value (400).
    #[error("{0}")]
    Invalid(String),
    /// Already exists (409 on create).
    #[error("secret {name} already exists in namespace {namespace}")]
    Exists {
        /// The secret.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// No such secret (404).
    #[error("secret {name} not found in namespace {namespace}")]
    NotFound {
        /// The secret.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// Functions use it (409 on delete).
    #[error("secret {name} is used by {functions}: remove it from them first")]
    InUse {
        /// The secret.
        name: String,
        /// The functions that name it.
        functions: String,
    },
    /// Where secrets are kept (a cluster) cannot be reached now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The files could not be read or written (500).
    #[error("cannot store secrets under {dir}")]
    Io {
        /// Where.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The folder of the data directory holding each function's secret copies.
pub const MOUNTS_DIR: &str = "function-secrets";

/// The secrets of a gateway.
#[derive(Debug)]
pub struct SecretStore {
    /// `DATA_DIR/secrets`.
    values: PathBuf,
    /// `DATA_DIR/function-secrets`.
    mounts: PathBuf,
    /// Serialises writes (a secret update and a deploy copying it).
    writes: Mutex<()>,
}

/// Checks a secret name: a DNS subdomain of at most 253 characters (as `faas-cli secret create`
/// and Kubernetes require), so never a path.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if name.is_empty() || name.len() > 253 || !labels_ok {
        return Err(format!(
            "invalid secret name {name:?}: expected lower-case letters, digits, '-' and '.' (a DNS subdomain, at most 253 characters)"
        ));
    }
    Ok(())
}

impl SecretStore {
    /// The store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SecretStore, SecretError> {
        let store = SecretStore {
            values: data_dir.join("secrets"),
            mounts: data_dir.join(MOUNTS_DIR),
            writes: Mutex::new(()),
        };
        private_dir(&store.values)?;
        private_dir(&store.mounts)?;
        Ok(store)
    }

    fn path(&self, namespace: &str, name: &str) -> Result<PathBuf, SecretError> {
        validate_secret_name(name).map_err(SecretError::Invalid)?;
        validate_name(namespace).map_err(|e| SecretError::Invalid(format!("namespace: {e}")))?;
        Ok(self.values.join(namespace).join(name))
    }

    /// Stores a new secret; [`SecretError::Exists`] when it does.
    pub fn create(&self, secret: &Secret) -> Result<(), SecretError> {
        let path = self.path(secret.namespace(), &secret.name)?;
        let bytes = secret.bytes()?;
        let _w = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if path.exists() {
            return Err(SecretError::Exists {
                name: secret.name.clone(),
                namespace: secret.namespace().to_string(),
            });
        }
        write_private(&path, &bytes)
    }

    /// Replaces an existing secret's value, in the store and in every function's copy.
    pub fn update(&self, secret: &Secret) -> Result<(), SecretError> {
        let path = self.path(secret.namespace(), &secret.name)?;
        let bytes = secret.bytes()?;
        let _w = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if !path.exists() {
            return Err(self.not_found(secret.namespace(), &secret.name));
        }
        write_private(&path, &bytes)?;
        let functions = self.mounts.join(secret.namespace());
        for entry in std::fs::read_dir(&functions)
            .into_iter()
            .flatten()
            .flatten()
        {
            let copy = entry.path().join(&secret.name);
            if copy.exists() {
                write_private(&copy, &bytes)?;
            }
        }
        Ok(())
    }

    /// Removes a secret (the caller checked that no function uses it).
    pub fn delete(&self, namespace: &str, name: &str) -> Result<(), SecretError> {
        let path = self.path(namespace, name)?;
        let _w = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.not_found(namespace, name))
            }
            Err(source) => Err(SecretError::Io {
                dir: self.values.clone(),
                source,
            }),
        }
    }

    /// Whether a secret exists.
    pub fn exists(&self, namespace: &str, name: &str) -> bool {
        self.path(namespace, name).is_ok_and(|p| p.is_file())
    }

    /// The secrets of `namespace` (names only), sorted.
    pub fn list(&self, namespace: &str) -> Result<Vec<Secret>, SecretError> {
        validate_name(namespace).map_err(|e| SecretError::Invalid(format!("namespace: {e}")))?;
        let names: Vec<String> = std::fs::read_dir(self.values.join(namespace))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_secret_name(n).is_ok())
            .collect();
        Ok(listing(namespace, names))
    }

    /// Makes the directory of function `function` in `namespace` hold exactly copies of
    /// `secrets`; returns it, or `None` when the function names none.
    pub fn mount_dir(
        &self,
        namespace: &str,
        function: &str,
        secrets: &[String],
    ) -> Result<Option<PathBuf>, SecretError> {
        let dir = self.mounts.join(namespace).join(function);
        let _w = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if secrets.is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(None);
        }
        private_dir(&dir)?;
        for name in secrets {
            let from = self.path(namespace, name)?;
            let bytes = std::fs::read(&from).map_err(|_| self.not_found(namespace, name))?;
            write_private(&dir.join(name), &bytes)?;
        }
        // Copies of secrets the function no longer names go.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let keep = entry
                .file_name()
                .to_str()
                .is_some_and(|n| secrets.iter().any(|s| s == n));
            if !keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Some(dir))
    }

    /// Removes a deleted function's copies.
    pub fn forget_function(&self, namespace: &str, function: &str) {
        let _ = std::fs::remove_dir_all(self.mounts.join(namespace).join(function));
    }

    fn not_found(&self, namespace: &str, name: &str) -> SecretError {
        SecretError::NotFound {
            name: name.to_string(),
            namespace: namespace.to_string(),
        }
    }
}

/// Creates `dir` (and its parents) with mode 0700.
fn private_dir(dir: &Path) -> Result<(), SecretError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SecretError::Io {
            dir: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file renamed over it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    private_dir(dir)?;
    let io = |source| SecretError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(name: &str, value: &str) -> Secret {
        Secret {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_with_private_files_and_function_copies() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path()).unwrap();
        store.create(&secret("api-key", "one")).unwrap();
        assert!(matches!(
            store.create(&secret("api-key", "again")),
            Err(SecretError::Exists { .. })
        ));
        let path = dir.path().join("secrets/openfaas-fn/api-key");
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);

        let mount = store
            .mount_dir("openfaas-fn", "fn", &["api-key".to_string()])
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(mount.join("api-key")).unwrap(), b"one");
        store.update(&secret("api-key", "two")).unwrap();
        assert_eq!(std::fs::read(mount.join("api-key")).unwrap(), b"two");
        let listed = store.list("openfaas-fn").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].value, None);
        store.delete("openfaas-fn", "api-key").unwrap();
        assert!(matches!(
            store.update(&secret("api-key", "x")),
            Err(SecretError::NotFound { .. })
        ));
    }

    #[test]
    fn names_are_dns_subdomains_never_paths() {
        for good in ["a", "api-key", "db.password", "x1"] {
            assert!(validate_secret_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "..",
            ".a",
            "a.",
            "A",
            "a_b",
            "-a",
            &"x".repeat(254),
        ] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn raw_values_are_base64() {
        let raw = Secret {
            name: "b".into(),
            raw_value: Some("AAEC".into()),
            value: Some("ignored".into()),
            ..Default::default()
        };
        assert_eq!(raw.bytes().unwrap(), [0, 1, 2]);
        let bad = Secret {
            raw_value: Some("%%%".into()),
            ..raw
        };
        assert!(bad.bytes().is_err());
    }
}
