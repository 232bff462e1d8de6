//! Who may call what: basic auth on the system API, the UI and async results ([`auth`]), and
//! the refusal of state-changing browser requests from other sites ([`csrf`]).

pub mod auth;
pub mod csrf;
