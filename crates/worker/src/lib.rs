//! The worker agent: it makes and keeps the machine's key, enrolls once with a supplier's
//! token, detects the hardware, and holds one signed control session to the coordinator,
//! reconnecting with exponential backoff.
//!
//! Invariants:
//! - The private key never leaves the data directory and is never logged; the key file is
//!   created 0600 and refused if others can read it.
//! - Every message sent is sealed by `flotilla_proto::wire::Envelope` with a sequence number
//!   that grows by one per session.
//! - The worker dials out; it never listens, so it works behind NAT.
//! - Nodes outlive control sessions: the runner (`runs`) belongs to the agent, not a session,
//!   and a node runs only inside the sandbox (`sandbox`), limited by a cgroup (`cgroup`), or,
//!   when its order names an image, in a container of the machine's Docker engine
//!   (`container`), confined as tightly. A node ordered with a checkpoint has its checkpoint
//!   directory restored before it starts and uploaded while it runs and when it ends
//!   (`checkpoint`).

mod agent;
pub mod cgroup;
pub mod checkpoint;
pub mod container;
pub mod hardware;
pub mod identity;
pub mod mesh;
pub mod netns;
mod prover;
pub mod ray;
pub mod runs;
pub mod sandbox;
pub mod tunnel;

use std::path::{Path, PathBuf};

pub use agent::{WorkerConfig, run};

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} {problem}")]
    KeyFile { path: PathBuf, problem: String },
    #[error("{0}")]
    Config(String),
    #[error("enrollment failed: {0}")]
    Enroll(#[from] flotilla_client::ClientError),
    #[error("the coordinator refused this worker: {message} ({code})")]
    Refused { code: String, message: String },
}

impl WorkerError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> WorkerError {
        WorkerError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
