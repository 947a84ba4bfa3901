//! Wire types shared by the coordinator, the worker and the CLI.
//!
//! Everything that crosses a process boundary is defined here exactly once: the JSON bodies of
//! the HTTP API (`api`), the signed control protocol between a worker and the coordinator
//! (`wire`), the prefixed random ids (`id`), and the shared limits (`limits`). This crate does no
//! IO and holds no state, so every other crate can depend on it.

pub mod api;
pub mod device;
pub mod id;
pub mod limits;
pub mod mesh;
pub mod secret;
pub mod time;
pub mod wire;

/// The version of the worker control protocol. A coordinator refuses workers that speak another.
pub const PROTOCOL_VERSION: u32 = 1;

/// The version of this build, reported by the coordinator's health check and by workers.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
