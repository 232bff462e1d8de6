//! The `fgateway` command line. Every option can also come from an environment variable with
//! the option's name in lower snake case (`--upstream-timeout` ↔ `upstream_timeout`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::parse;

/// fgateway: a lightweight function gateway.
#[derive(Debug, Parser)]
#[command(name = "fgateway", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with its function provider.
    Up(UpArgs),
}

/// Where functions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Each function runs as fwatchdog child processes of the gateway, on loopback ports.
    Local,
    /// Functions run elsewhere, at a fixed URL (stack file `upstream:`) or at the URL made from
    /// --upstream-template.
    Static,
}

/// Options of `fgateway up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Stack file (OpenFaaS stack.yml format) whose functions are deployed at start-up, on top of
    /// those restored from the data directory.
    #[arg(
        short = 'f',
        long = "file",
        env = "stack_file",
        value_name = "STACK_YML"
    )]
    pub file: Option<PathBuf>,

    /// Port to serve on; 0 picks a free port (the chosen address is logged as `listening addr=`).
    #[arg(long, env = "port", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "bind_address", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Directory for the gateway's state (deployed functions, in fgateway.db) and the local
    /// provider's per-replica temp directories.
    #[arg(long, env = "data_dir", default_value = "fgateway-data")]
    pub data_dir: PathBuf,

    /// Where functions run.
    #[arg(long, env = "provider", value_enum, default_value_t = ProviderKind::Local)]
    pub provider: ProviderKind,

    /// Static provider: URL of functions without a fixed upstream, with {name} and {namespace}
    /// filled in, e.g. http://{name}.{namespace}.svc.cluster.local:8080.
    #[arg(long, env = "upstream_template", value_name = "URL")]
    pub upstream_template: Option<String>,

    /// Local provider: the fwatchdog executable [default: the one next to fgateway, else PATH].
    #[arg(long, env = "fwatchdog", value_name = "PATH")]
    pub fwatchdog: Option<PathBuf>,

    /// Longest a function call may take, response body included; past it the caller gets 504
    /// (or, once the response started, an aborted body). Seconds ("60") or a duration ("90s").
    #[arg(long, env = "upstream_timeout", default_value = "60s", value_parser = duration)]
    pub upstream_timeout: Duration,

    /// Longest a client may take to send request headers. Seconds or a duration.
    #[arg(long, env = "read_timeout", default_value = "60s", value_parser = duration)]
    pub read_timeout: Duration,

    /// On SIGTERM/SIGINT, how long in-flight requests get to finish before functions are stopped.
    #[arg(long, env = "shutdown_timeout", default_value = "30s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// Require basic authentication on /system/* (credentials from --secret-mount-path).
    #[arg(
        long,
        env = "basic_auth",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        value_parser = boolean
    )]
    pub basic_auth: bool,

    /// Directory holding the files basic-auth-user and basic-auth-password.
    #[arg(
        long,
        env = "secret_mount_path",
        default_value = "/var/openfaas/secrets"
    )]
    pub secret_mount_path: PathBuf,
}

/// A duration option: seconds or a humantime duration; zero is refused (it would fail every call).
fn duration(value: &str) -> Result<Duration, String> {
    match parse::duration(value) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err("must be more than 0".to_string()),
        Err(expected) => Err(format!("expected {expected}")),
    }
}

/// A boolean option, in the forms fwatchdog accepts.
fn boolean(value: &str) -> Result<bool, String> {
    parse::boolean(value).map_err(|expected| format!("expected {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_up_with_defaults_and_flags() {
        let cli =
            Cli::try_parse_from(["fgateway", "up", "-f", "stack.yml", "--port", "0"]).unwrap();
        let Command::Up(up) = cli.command;
        assert_eq!(up.file, Some(PathBuf::from("stack.yml")));
        assert_eq!(up.port, 0);
        assert_eq!(up.upstream_timeout, Duration::from_secs(60));
        assert!(!up.basic_auth);
        assert_eq!(up.provider, ProviderKind::Local);

        let cli = Cli::try_parse_from([
            "fgateway",
            "up",
            "--basic-auth",
            "--upstream-timeout",
            "1m30s",
            "--provider",
            "static",
        ])
        .unwrap();
        let Command::Up(up) = cli.command;
        assert!(up.basic_auth);
        assert_eq!(up.upstream_timeout, Duration::from_secs(90));
        assert_eq!(up.provider, ProviderKind::Static);

        assert!(Cli::try_parse_from(["fgateway", "up", "--upstream-timeout", "soon"]).is_err());
        assert!(Cli::try_parse_from(["fgateway", "up", "--upstream-timeout", "0"]).is_err());
    }
}
