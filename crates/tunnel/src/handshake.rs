//! The Noise XX handshake, the hello payloads and the coordinator's verdict.
//!
//! ```text
//! worker (initiator)                          coordinator (responder)
//!   -> e
//!                                   <- e, ee, s, es   [server version u32]
//!   checks s == pinned coordinator key (else stops here, revealing nothing)
//!   -> s, se  [version u32][id len u8][worker id]
//!                                   the caller checks s against the enrolled worker key
//!                                   <- verdict (transport message): [0] or [1][reason]
//! ```
//!
//! Every message travels as `[u16 big-endian length][message]`. The verdict lets a refused
//! worker log why, instead of seeing the connection drop. The version mismatch is detected on
//! both sides: the worker still sends its hello, so the coordinator can log who is out of date.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::keys::StaticKeypair;
use crate::session::{Role, Session};
use crate::transport::{LENGTH_PREFIX_LEN, NOISE_MESSAGE_LEN_MAX};
use crate::{
    HANDSHAKE_TIMEOUT_MS, LANES_MAX, NOISE_PARAMS, REFUSAL_REASON_LEN_MAX, TUNNEL_PROTOCOL_VERSION,
    TunnelError, WORKER_ID_LEN_MAX,
};

/// Binds every handshake to this protocol, so a Noise peer of another application fails.
const PROLOGUE: &[u8] = b"flotilla-tunnel";

/// The largest handshake message either side accepts (the real ones are under 300 bytes).
const HANDSHAKE_MESSAGE_LEN_MAX: usize = 1024;

/// The coordinator's verdict is the first transport message, so it takes the first nonce of
/// its direction; the session goes on from the next.
const VERDICT_NONCE: u64 = 0;
const VERDICT_ACCEPTED: u8 = 0;
const VERDICT_REFUSED: u8 = 1;

/// What a worker tells the coordinator about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The tunnel protocol the worker speaks; [`Hello::new`] sets [`TUNNEL_PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The worker's id, printable ASCII of at most [`WORKER_ID_LEN_MAX`] bytes.
    pub worker_id: String,
    /// Which of the worker's tunnel connections this is, below [`LANES_MAX`]: a newer
    /// connection replaces the one on its own lane only.
    pub lane: u8,
}

impl Hello {
    /// A hello for this build's protocol version, on lane 0.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            protocol_version: TUNNEL_PROTOCOL_VERSION,
            worker_id: worker_id.into(),
            lane: 0,
        }
    }

    /// This hello on another lane.
    pub fn on_lane(self, lane: u8) -> Self {
        Self { lane, ..self }
    }

    fn encode(&self) -> Result<Vec<u8>, TunnelError> {
        check_worker_id(self.worker_id.as_bytes())?;
        let id_len = u8::try_from(self.worker_id.len()).map_err(|_| TunnelError::Malformed {
            what: "worker id too long",
        })?;
        check_lane(self.lane)?;
        let mut out = Vec::with_capacity(6 + self.worker_id.len());
        out.extend_from_slice(&self.protocol_version.to_be_bytes());
        out.push(id_len);
        out.extend_from_slice(self.worker_id.as_bytes());
        out.push(self.lane);
        Ok(out)
    }

    /// Parses an untrusted hello; never panics. A hello without a lane (version 2's) is on
    /// lane 0, so an older worker is refused for its version, not as malformed.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, TunnelError> {
        let (version, rest) = split_version(bytes)?;
        let Some((&id_len, rest)) = rest.split_first() else {
            return Err(TunnelError::Malformed {
                what: "hello without a worker id",
            });
        };
        let Some((id, lane)) = rest.split_at_checked(usize::from(id_len)) else {
            return Err(TunnelError::Malformed {
                what: "hello shorter than its worker id",
            });
        };
        let lane = match lane {
            [] => 0,
            [lane] => *lane,
            _ => {
                return Err(TunnelError::Malformed {
                    what: "hello longer than its worker id and lane",
                });
            }
        };
        check_worker_id(id)?;
        check_lane(lane)?;
        let worker_id = String::from_utf8(id.to_vec()).map_err(|_| TunnelError::Malformed {
            what: "worker id is not utf-8",
        })?;
        Ok(Self {
            protocol_version: version,
            worker_id,
            lane,
        })
    }
}

fn check_lane(lane: u8) -> Result<(), TunnelError> {
    if lane >= LANES_MAX {
        return Err(TunnelError::Malformed {
            what: "lane past the most a worker may hold",
        });
    }
    Ok(())
}

fn check_worker_id(id: &[u8]) -> Result<(), TunnelError> {
    if id.is_empty() || id.len() > WORKER_ID_LEN_MAX {
        return Err(TunnelError::Malformed {
            what: "worker id empty or too long",
        });
    }
    if !id.iter().all(u8::is_ascii_graphic) {
        return Err(TunnelError::Malformed {
            what: "worker id is not printable ascii",
        });
    }
    Ok(())
}

fn split_version(bytes: &[u8]) -> Result<(u32, &[u8]), TunnelError> {
    let Some((version, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(TunnelError::Malformed {
            what: "payload without a protocol version",
        });
    };
    Ok((u32::from_be_bytes(*version), rest))
}

fn handshake_timeout() -> Duration {
    Duration::from_millis(HANDSHAKE_TIMEOUT_MS)
}

async fn with_timeout<T>(
    work: impl Future<Output = Result<T, TunnelError>>,
) -> Result<T, TunnelError> {
    tokio::time::timeout(handshake_timeout(), work)
        .await
        .map_err(|_| TunnelError::HandshakeTimeout {
            timeout_ms: HANDSHAKE_TIMEOUT_MS,
        })?
}

fn builder(local: &StaticKeypair) -> Result<snow::Builder<'_>, TunnelError> {
    Ok(snow::Builder::new(NOISE_PARAMS.parse()?)
        .local_private_key(local.private())?
        .prologue(PROLOGUE)?)
}

/// Runs the worker's side of the handshake on `io` and starts the session. Fails unless the
/// server's static key is `server_public`, both speak `hello.protocol_version`, and the
/// coordinator accepts this worker.
pub async fn connect<S>(
    io: S,
    local: &StaticKeypair,
    server_public: &[u8; 32],
    hello: &Hello,
) -> Result<Session, TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hello_bytes = hello.encode()?;
    with_timeout(async move {
        let mut io = io;
        let mut noise = builder(local)?.build_initiator()?;
        let mut message = vec![0; NOISE_MESSAGE_LEN_MAX];
        let mut payload = vec![0; NOISE_MESSAGE_LEN_MAX];

        let len = noise.write_message(&[], &mut message)?;
        write_frame(&mut io, &message[..len]).await?;

        let received = read_frame(&mut io, HANDSHAKE_MESSAGE_LEN_MAX).await?;
        let len = noise.read_message(&received, &mut payload)?;
        let actual = noise.get_remote_static().unwrap_or_default();
        if actual != server_public {
            return Err(TunnelError::WrongServerKey {
                expected: hex::encode(server_public),
                actual: hex::encode(actual),
            });
        }
        let (server_version, _) = split_version(&payload[..len])?;

        let len = noise.write_message(&hello_bytes, &mut message)?;
        write_frame(&mut io, &message[..len]).await?;
        let noise = noise.into_stateless_transport_mode()?;
        if server_version != hello.protocol_version {
            return Err(TunnelError::VersionMismatch {
                local: hello.protocol_version,
                remote: server_version,
            });
        }

        let received = read_frame(&mut io, HANDSHAKE_MESSAGE_LEN_MAX).await?;
        let len = noise.read_message(VERDICT_NONCE, &received, &mut payload)?;
        read_verdict(&payload[..len])?;
        Ok(Session::start(
            io,
            noise,
            Role::Client,
            (0, VERDICT_NONCE + 1),
        ))
    })
    .await
}

fn read_verdict(verdict: &[u8]) -> Result<(), TunnelError> {
    match verdict.split_first() {
        Some((&VERDICT_ACCEPTED, [])) => Ok(()),
        Some((&VERDICT_REFUSED, reason)) => Err(TunnelError::Refused {
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
        _ => Err(TunnelError::Malformed {
            what: "unknown verdict",
        }),
    }
}

/// A worker that finished the handshake and waits for the coordinator's verdict.
pub struct PendingSession<S> {
    io: S,
    noise: snow::StatelessTransportState,
}

impl<S> std::fmt::Debug for PendingSession<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSession").finish_non_exhaustive()
    }
}

/// Runs the coordinator's side of the handshake on `io`. Returns the worker's hello and its
/// X25519 static key, which the caller checks against its records before
/// [`PendingSession::finish`] or [`PendingSession::refuse`]. A worker speaking another
/// protocol version is refused here, with [`TunnelError::VersionMismatch`].
pub async fn accept<S>(
    io: S,
    local: &StaticKeypair,
) -> Result<(Hello, [u8; 32], PendingSession<S>), TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    with_timeout(async move {
        let mut io = io;
        let mut noise = builder(local)?.build_responder()?;
        let mut message = vec![0; NOISE_MESSAGE_LEN_MAX];
        let mut payload = vec![0; NOISE_MESSAGE_LEN_MAX];

        let received = read_frame(&mut io, HANDSHAKE_MESSAGE_LEN_MAX).await?;
        noise.read_message(&received, &mut payload)?;

        let len = noise.write_message(&TUNNEL_PROTOCOL_VERSION.to_be_bytes(), &mut message)?;
        write_frame(&mut io, &message[..len]).await?;

        let received = read_frame(&mut io, HANDSHAKE_MESSAGE_LEN_MAX).await?;
        let len = noise.read_message(&received, &mut payload)?;
        let hello = Hello::decode(&payload[..len])?;
        let remote: [u8; 32] = noise
            .get_remote_static()
            .and_then(|key| key.try_into().ok())
            .ok_or(TunnelError::Malformed {
                what: "no static key from the worker",
            })?;
        let mut pending = PendingSession {
            io,
            noise: noise.into_stateless_transport_mode()?,
        };
        if hello.protocol_version != TUNNEL_PROTOCOL_VERSION {
            let reason = format!(
                "tunnel protocol version {} is not supported; the coordinator speaks {}",
                hello.protocol_version, TUNNEL_PROTOCOL_VERSION
            );
            // Best effort: the worker detects the mismatch on its own too.
            let _ = pending
                .send_verdict(VERDICT_REFUSED, reason.as_bytes())
                .await;
            return Err(TunnelError::VersionMismatch {
                local: TUNNEL_PROTOCOL_VERSION,
                remote: hello.protocol_version,
            });
        }
        Ok((hello, remote, pending))
    })
    .await
}

impl<S> PendingSession<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Accepts the worker: tells it so and starts the session.
    pub async fn finish(mut self) -> Result<Session, TunnelError> {
        with_timeout(self.send_verdict(VERDICT_ACCEPTED, &[])).await?;
        Ok(Session::start(
            self.io,
            self.noise,
            Role::Server,
            (VERDICT_NONCE + 1, 0),
        ))
    }

    /// Refuses the worker with a reason it logs (cut to [`REFUSAL_REASON_LEN_MAX`] bytes),
    /// then closes the connection.
    pub async fn refuse(mut self, reason: &str) -> Result<(), TunnelError> {
        let reason = truncate_utf8(reason, REFUSAL_REASON_LEN_MAX);
        with_timeout(async {
            self.send_verdict(VERDICT_REFUSED, reason.as_bytes())
                .await?;
            self.io.shutdown().await?;
            Ok(())
        })
        .await
    }

    async fn send_verdict(&mut self, verdict: u8, reason: &[u8]) -> Result<(), TunnelError> {
        let mut plain = Vec::with_capacity(1 + reason.len());
        plain.push(verdict);
        plain.extend_from_slice(reason);
        let mut message = vec![0; plain.len() + crate::transport::TAG_LEN];
        let len = self
            .noise
            .write_message(VERDICT_NONCE, &plain, &mut message)?;
        write_frame(&mut self.io, &message[..len]).await
    }
}

fn truncate_utf8(text: &str, len_max: usize) -> &str {
    let mut end = text.len().min(len_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

async fn write_frame<S: AsyncWrite + Unpin>(io: &mut S, message: &[u8]) -> Result<(), TunnelError> {
    let len = u16::try_from(message.len()).map_err(|_| TunnelError::Malformed {
        what: "handshake message too long",
    })?;
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_LEN + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    io.write_all(&frame).await?;
    io.flush().await?;
    Ok(())
}

/// Reads exactly one frame, and not a byte more: what follows belongs to the transport.
async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    len_max: usize,
) -> Result<Vec<u8>, TunnelError> {
    let mut prefix = [0; LENGTH_PREFIX_LEN];
    read_exact(io, &mut prefix).await?;
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > len_max {
        return Err(TunnelError::Malformed {
            what: "handshake message too long",
        });
    }
    let mut message = vec![0; len];
    read_exact(io, &mut message).await?;
    Ok(message)
}

async fn read_exact<S: AsyncRead + Unpin>(io: &mut S, buf: &mut [u8]) -> Result<(), TunnelError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(TunnelError::HandshakeClosed)
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trips() {
        let hello = Hello::new("wrk_abcdefghijklmnopqrst");
        assert_eq!(Hello::decode(&hello.encode().unwrap()).unwrap(), hello);
        let laned = hello.on_lane(LANES_MAX - 1);
        assert_eq!(Hello::decode(&laned.encode().unwrap()).unwrap(), laned);
    }

    #[test]
    fn a_lane_past_the_most_is_refused_both_ways() {
        let hello = Hello::new("wrk_a");
        assert!(hello.clone().on_lane(LANES_MAX).encode().is_err());
        let mut bytes = hello.encode().unwrap();
        *bytes.last_mut().unwrap() = LANES_MAX;
        assert!(Hello::decode(&bytes).is_err());
        bytes.push(0);
        assert!(Hello::decode(&bytes).is_err(), "a byte past the lane");
    }

    #[test]
    fn a_version_2_hello_reads_as_lane_0() {
        let mut bytes = Hello::new("wrk_a").encode().unwrap();
        bytes.pop();
        let hello = Hello::decode(&bytes).unwrap();
        assert_eq!((hello.worker_id.as_str(), hello.lane), ("wrk_a", 0));
    }

    #[test]
    fn hello_refuses_bad_worker_ids() {
        assert!(Hello::new("").encode().is_err());
        assert!(Hello::new("a b").encode().is_err());
        assert!(
            Hello::new("x".repeat(WORKER_ID_LEN_MAX + 1))
                .encode()
                .is_err()
        );
        assert!(Hello::new("x".repeat(WORKER_ID_LEN_MAX)).encode().is_ok());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("hello", 10), "hello");
    }

    proptest! {
        #[test]
        fn hello_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Hello::decode(&bytes);
        }

        #[test]
        fn verdict_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = read_verdict(&bytes);
        }
    }
}
