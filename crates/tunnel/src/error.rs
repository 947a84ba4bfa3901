//! The one error type of this crate.

/// Why a handshake, a session or a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel io failed: {0}")]
    Io(#[from] std::io::Error),

    #[error("tunnel handshake did not finish within {timeout_ms} ms")]
    HandshakeTimeout { timeout_ms: u64 },

    #[error("noise protocol failed: {0}")]
    Noise(#[from] snow::Error),

    #[error("tunnel server key is {actual}, expected {expected}")]
    WrongServerKey { expected: String, actual: String },

    #[error(
        "tunnel protocol version {remote} of the peer is not supported; this side speaks {local}"
    )]
    VersionMismatch { local: u32, remote: u32 },

    #[error("tunnel refused by the coordinator: {reason}")]
    Refused { reason: String },

    #[error("malformed tunnel handshake: {what}")]
    Malformed { what: &'static str },

    #[error("tunnel peer closed the connection during the handshake")]
    HandshakeClosed,

    #[error("tunnel is closed")]
    Closed,

    #[error("tunnel already carries {streams_max} streams")]
    TooManyStreams { streams_max: usize },

    #[error("tunnel peer broke the stream protocol: {what}")]
    Protocol { what: &'static str },

    #[error("tunnel did not close within {timeout_ms} ms")]
    ShutdownTimeout { timeout_ms: u64 },
}
