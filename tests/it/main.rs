//! Integration tests: the real binaries on ephemeral ports, real handler processes, real HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "tests fail loudly and are not public API"
)]

mod async_listing;
mod autoscale;
mod callback;
mod examples;
mod fuzz_corpora;
mod gateway;
mod gateway_async;
mod gateway_jetstream;
mod harness;
mod hostile;
mod jetstream_cluster;
mod kube_cluster;
mod kube_deploy;
mod kube_failover;
mod kube_route;
mod kubernetes;
mod nats_cluster;
mod podman;
mod provider_docker;
mod quick_start;
mod system_api;
mod system_secrets;
mod triggers;
mod triggers_nats;
mod ui_browser;
mod watchdog_classic;
mod watchdog_config;
mod watchdog_http;
mod watchdog_lifecycle;
mod watchdog_modes;
mod watchdog_static;
