//! The control API: a Unix socket (`securevm run --api-socket PATH`)
//! speaking a small HTTP/1.1 + JSON protocol (docs/api.md, docs/api.yaml),
//! and its client, `securevm ctl`.
//!
//! - `protocol`: the JSON bodies and the errors with their statuses;
//! - `http`: request and response framing, limits and deadlines;
//! - `routes`: request to [`VmController`] call;
//! - `server`: socket creation, acceptor and bounded worker pool;
//! - `live`: [`VmController`] for a running VM;
//! - `client`: `securevm ctl`.

pub mod client;
pub mod controller;
pub mod http;
pub mod live;
pub mod protocol;
pub mod routes;
pub mod server;

#[cfg(test)]
mod tests;

pub use controller::VmController;
pub use live::{LiveVm, LiveVmParts, NetDevice, PowerButton};
pub use server::{ApiServer, BoundSocket, ServerConfig, SocketError};
