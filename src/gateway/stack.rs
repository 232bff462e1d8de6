//! OpenFaaS-style stack files (`stack.yml`): the functions `fgateway up -f` deploys.
//!
//! ```yaml
//! functions:
//!   echo:
//!     handler: ./echo            # working directory of the function (local provider)
//!     fprocess: sh handler.sh    # or environment.fprocess
//!     environment: {exec_timeout: 10s}
//!     labels: {com.openfaas.scale.min: "2"}
//! ```
//!
//! Other keys of OpenFaaS stack files (`version`, `provider`, `lang`, `build_args`, ...) are
//! accepted and ignored. Relative `handler` paths are taken from the stack file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::types::{FunctionDeployment, HANDLER_ANNOTATION, Resources, UPSTREAM_ANNOTATION};

/// A stack file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// Reading failed.
    #[error("cannot read stack file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not describe functions.
    #[error("stack file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        message: String,
    },
}

/// The parts of a stack file we use.
#[derive(Debug, Deserialize)]
struct StackFile {
    /// The functions, by name.
    #[serde(default)]
    functions: BTreeMap<String, StackFunction>,
}

/// One function in a stack file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StackFunction {
    /// Working directory (local provider).
    handler: Option<String>,
    /// Image, kept for reporting.
    image: Option<String>,
    /// The handler command.
    fprocess: Option<String>,
    /// Namespace.
    namespace: Option<String>,
    /// Fixed upstream URL (static provider).
    upstream: Option<String>,
    /// Environment.
    environment: BTreeMap<String, Scalar>,
    /// Labels.
    labels: BTreeMap<String, Scalar>,
    /// Annotations.
    annotations: BTreeMap<String, Scalar>,
    /// Secrets.
    secrets: Vec<String>,
    /// Constraints.
    constraints: Vec<String>,
    /// Limits.
    limits: Option<Resources>,
    /// Requests.
    requests: Option<Resources>,
    /// Read-only root filesystem.
    readonly_root_filesystem: bool,
}

/// A YAML scalar read as text (`exec_timeout: 10` and `exec_timeout: "10"` mean the same).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn texts(map: BTreeMap<String, Scalar>) -> BTreeMap<String, String> {
    map.into_iter().map(|(k, v)| (k, v.text())).collect()
}

/// Reads the functions of the stack file at `path`.
pub fn load(path: &Path) -> Result<Vec<FunctionDeployment>, StackError> {
    let text = std::fs::read_to_string(path).map_err(|source| StackError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Handler directories are relative to the stack file; make them absolute now, so a replica
    // that runs in its own working directory never sees a path meant for ours.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let base = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &base).map_err(|message| StackError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses stack file text; relative handler paths are joined to `base`.
pub fn parse(text: &str, base: &Path) -> Result<Vec<FunctionDeployment>, String> {
    let stack: StackFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (name, f) in stack.functions {
        let mut annotations = texts(f.annotations);
        if let Some(handler) = f.handler {
            let dir = base.join(handler);
            let dir = dir.canonicalize().unwrap_or(dir);
            annotations.insert(HANDLER_ANNOTATION.to_string(), dir.display().to_string());
        }
        if let Some(upstream) = f.upstream {
            annotations.insert(UPSTREAM_ANNOTATION.to_string(), upstream);
        }
        let mut env_vars = texts(f.environment);
        // The explicit key wins; either way fprocess is not left in the environment twice.
        let from_env = env_vars.remove("fprocess");
        let env_process = f.fprocess.or(from_env);
        let labels = texts(f.labels);
        let spec = FunctionDeployment {
            service: name.clone(),
            image: f.image.unwrap_or_default(),
            namespace: f.namespace,
            env_process,
            env_vars,
            constraints: f.constraints,
            secrets: f.secrets,
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            limits: f.limits,
            requests: f.requests,
            read_only_root_filesystem: f.readonly_root_filesystem,
        };
        spec.validate()
            .map_err(|e| format!("function {name}: {e}"))?;
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_openfaas_stack() {
        let yaml = r#"
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  echo:
    lang: dockerfile
    handler: ./echo
    image: echo:latest
    environment:
      fprocess: sh handler.sh
      exec_timeout: 10
      write_debug: true
    labels:
      com.openfaas.scale.min: 2
  remote:
    upstream: http://10.0.0.9:8080
"#;
        let fns = parse(yaml, Path::new("/srv/fns")).unwrap();
        assert_eq!(fns.len(), 2);
        let echo = &fns[0];
        assert_eq!(echo.service, "echo");
        assert_eq!(echo.env_process.as_deref(), Some("sh handler.sh"));
        assert_eq!(echo.env_vars["exec_timeout"], "10");
        assert_eq!(echo.env_vars["write_debug"], "true");
        assert_eq!(echo.initial_replicas(), 2);
        assert_eq!(echo.annotation(HANDLER_ANNOTATION), Some("/srv/fns/./echo"));
        assert_eq!(
            fns[1].annotation(UPSTREAM_ANNOTATION),
            Some("http://10.0.0.9:8080")
        );
    }

    #[test]
    fn bad_stacks_say_why() {
        assert!(parse("functions: [1, 2]", Path::new(".")).is_err());
        let err = parse(
            "functions:\n  Bad_Name:\n    fprocess: cat\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.contains("Bad_Name"), "{err}");
    }
}
