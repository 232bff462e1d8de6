//! HTTP plumbing shared by fwatchdog and fgateway; neither reaches into the other for it.
//!
//! - [`body`]: response body types (from memory, a spill file, a channel) and the wrappers that
//!   bound how long a body may take to send or to arrive.
//! - [`server`]: the accept loop: serving HTTP/1.1 connections with graceful shutdown.
//! - [`connection`]: what every accepted socket gets: requests framed by both `Content-Length`
//!   and `Transfer-Encoding` refused, and a lingering close so clients read early answers.
//! - [`egress`]: which addresses requests to caller-chosen URLs (callbacks) may reach.
//! - [`tunnels`]: upgraded connections (websockets) joined between client and upstream, counted
//!   and drained on shutdown.
//! - [`proxy`]: reverse proxying: the pooled client, hop-by-hop headers, upstream URLs and
//!   upgrade tunnels.
//! - [`pinned`]: upstream connections kept with one client connection, so its requests after
//!   the first skip the shared pool.
//! - [`reclaim`]: a request body taken back when the request could not be sent, to send it
//!   to another upstream.

pub mod body;
pub mod connection;
pub mod egress;
pub mod pinned;
pub mod proxy;
pub mod reclaim;
pub mod server;
pub mod tunnels;
