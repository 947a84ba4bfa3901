//! One authenticated, encrypted, multiplexed connection between a worker and the coordinator.
//!
//! A worker dials the coordinator's tunnel listener and runs [`connect`]; the coordinator runs
//! [`accept`], checks the worker's static key against its records, then [`PendingSession::finish`]
//! (or [`PendingSession::refuse`]). Both sides then hold a [`Session`] that carries many byte
//! [`Stream`]s, each with its own flow control, so one slow reader slows only its own stream.
//! The coordinator opens a stream per renter connection; the worker accepts it and dials the
//! node's port. Either side may open streams.
//!
//! Layers, bottom up:
//! 1. **Handshake** (`handshake.rs`): `Noise_XX_25519_AESGCM_SHA256` via `snow` with ring's
//!    AES-GCM. Static keys are X25519; a worker's is derived from its ed25519 signing key
//!    ([`StaticKeypair::from_ed25519`]), so the coordinator compares the Noise static key with
//!    [`x25519_public_from_ed25519`] of the enrolled worker key. The server's static key is
//!    pinned by the client. Payloads carry [`TUNNEL_PROTOCOL_VERSION`], the worker id and the
//!    lane (below [`LANES_MAX`]); a version mismatch is refused on both sides.
//! 2. **Transport** (`transport.rs`): each direction is a sequence of messages
//!    `[u16 big-endian length][Noise ciphertext]`, with plaintexts of up to 65 519 bytes. A bad
//!    tag, a bad length, a truncated message or silence past [`IDLE_TIMEOUT_MS`] fails the
//!    whole connection; empty messages are keepalives.
//! 3. **Multiplexing** (`session.rs`): one frame per message (open, data, window, end, reset),
//!    with a receive window per stream. A stream's writer seals and sends its own frames; the
//!    session's one task, which the [`Session`] owns, reads and hands each frame to its stream.
//!    Dropping the session closes the tunnel.
//!
//! **Invariants.** Never plaintext after the first handshake message. Every buffer, queue and
//! count is bounded by a named constant below. Bytes from the network never panic the parser.
//! Once a session ends, every one of its streams fails (reads and writes return
//! `ConnectionAborted`) instead of hanging.

mod carry;
mod error;
mod handshake;
mod keys;
mod session;
mod transport;

pub use carry::{CARRY_BUFFER_BYTES, carry, carry_until_idle};
pub use error::TunnelError;
pub use handshake::{Hello, PendingSession, accept, connect};
pub use keys::{StaticKeypair, x25519_public_from_ed25519};
pub use session::{Session, Stream, StreamOpener};

/// The tunnel protocol version, carried in the handshake. Peers speaking another are refused.
/// Version 3 adds the lane to the worker's hello.
pub const TUNNEL_PROTOCOL_VERSION: u32 = 3;

/// Tunnel connections (lanes) one worker may hold at once, each its own session. One session's
/// single reading task opens every message of its streams, so one lane carries about one
/// core's worth; parallel streams spread over lanes add up on a machine with more cores.
pub const LANES_MAX: u8 = 8;

/// The Noise protocol. AES-GCM rather than ChaChaPoly: with ring's AES-NI code it seals about
/// twice as fast on these machines (see the crate README's measurements).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";

/// The whole handshake, from the first byte to the coordinator's verdict, must finish within this.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// A side that has sent nothing for this long sends an empty frame, so the peer and any NAT on
/// the way see the connection alive.
pub const KEEPALIVE_INTERVAL_MS: u64 = 15_000;

/// A connection on which nothing arrived for this long (three keepalive intervals) is dead.
pub const IDLE_TIMEOUT_MS: u64 = 45_000;

/// A graceful close flushes what is queued and says goodbye within this, then gives up.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 8_000;

/// Live streams per session, both directions together. Bounds memory: each stream may buffer
/// up to its receive window ([`STREAM_RECEIVE_WINDOW_BYTES`]) when its reader stalls, so a
/// session holds at most 64 MiB of unread data.
pub const STREAMS_MAX: usize = 256;

/// The bytes a stream may receive before its reader reads them. It is credit, not a buffer: an
/// idle stream allocates nothing for it. At 256 KiB a stream moves several Gbit/s on a path of
/// a few hundred microseconds; a reader grants more once it has read half of it.
pub const STREAM_RECEIVE_WINDOW_BYTES: usize = 256 * 1024;

/// Streams opened by the peer that wait for [`Session::accept_stream`]. Waiting streams count
/// as live, and the peer's streams past [`STREAMS_MAX`] live ones are reset, so a burst of
/// opens waits here instead of being refused. (tokio allocates the queue as it fills.)
pub const INBOUND_QUEUE_LEN: usize = STREAMS_MAX;

/// The longest worker id the handshake accepts, in bytes.
pub const WORKER_ID_LEN_MAX: usize = 64;

/// The longest refusal reason the coordinator sends, in bytes (longer ones are cut).
pub const REFUSAL_REASON_LEN_MAX: usize = 256;

/// Reads one line of at most `bytes_max` bytes (without its `\n`), a byte at a time: a stream's
/// opening line is followed by the connection's own bytes, none of which may be consumed.
pub async fn read_line<S>(stream: &mut S, bytes_max: usize) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        if line.len() == bytes_max {
            return Err(std::io::Error::other("the line is too long"));
        }
        line.push(byte);
    }
    String::from_utf8(line).map_err(std::io::Error::other)
}
