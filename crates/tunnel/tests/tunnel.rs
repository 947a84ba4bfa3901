//! The tunnel end to end over loopback TCP (or in-memory pipes where the clock is paused):
//! handshake outcomes, many streams, a large transfer, corruption, closing and idle peers.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use flotilla_tunnel::{
    Hello, Session, StaticKeypair, Stream, TUNNEL_PROTOCOL_VERSION, TunnelError, accept, connect,
    x25519_public_from_ed25519,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WORKER_ID: &str = "wrk_test0000000000000000";
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

struct Keys {
    server: StaticKeypair,
    worker_signing: SigningKey,
}

fn keys() -> Keys {
    Keys {
        server: StaticKeypair::generate().unwrap(),
        worker_signing: SigningKey::from_bytes(&[7; 32]),
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap().0);
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

/// The coordinator's side as the real one will run it: accept only the enrolled worker key.
async fn serve<S>(io: S, keys: &Keys) -> Result<Session, TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let enrolled = x25519_public_from_ed25519(&keys.worker_signing.verifying_key());
    let (hello, remote, pending) = accept(io, &keys.server).await?;
    if remote != enrolled || hello.worker_id != WORKER_ID {
        pending.refuse("worker key is not enrolled").await?;
        return Err(TunnelError::Refused {
            reason: "test refused".into(),
        });
    }
    pending.finish().await
}

/// A connected (server, client) session pair over `server_io` and `client_io`.
async fn sessions_over<A, B>(server_io: A, client_io: B, keys: &Keys) -> (Session, Session)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let worker = StaticKeypair::from_ed25519(&keys.worker_signing);
    let hello = Hello::new(WORKER_ID);
    let (server, client) = tokio::join!(
        serve(server_io, keys),
        connect(client_io, &worker, keys.server.public(), &hello)
    );
    (server.unwrap(), client.unwrap())
}

async fn sessions(keys: &Keys) -> (Session, Session) {
    let (client_io, server_io) = tcp_pair().await;
    sessions_over(server_io, client_io, keys).await
}

/// Accepts every stream the peer opens and echoes it back until end of file.
fn spawn_echo(mut session: Session) -> tokio::task::JoinHandle<Session> {
    tokio::spawn(async move {
        while let Some(stream) = session.accept_stream().await {
            tokio::spawn(echo(stream));
        }
        session
    })
}

async fn echo(stream: Stream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes `data` and reads the echo concurrently (the windows would stall a sequential round).
async fn round_trip(stream: Stream, data: Vec<u8>) -> Vec<u8> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writing = tokio::spawn(async move {
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
        writer
    });
    let mut echoed = Vec::new();
    reader.read_to_end(&mut echoed).await.unwrap();
    writing.await.unwrap();
    echoed
}

#[tokio::test]
async fn handshake_with_the_right_keys_works() {
    let keys = keys();
    let (client_io, server_io) = tcp_pair().await;
    let worker = StaticKeypair::from_ed25519(&keys.worker_signing);
    let server_key = *keys.server.public();
    let client = tokio::spawn(async move {
        connect(client_io, &worker, &server_key, &Hello::new(WORKER_ID)).await
    });
    let (hello, remote, pending) = accept(server_io, &keys.server).await.unwrap();
    assert_eq!(hello, Hello::new(WORKER_ID));
    assert_eq!(hello.protocol_version, TUNNEL_PROTOCOL_VERSION);
    assert_eq!(
        remote,
        x25519_public_from_ed25519(&keys.worker_signing.verifying_key())
    );
    let server = pending.finish().await.unwrap();
    let client = client.await.unwrap().unwrap();
    assert!(!server.is_ended() && !client.is_ended());
}

#[tokio::test]
async fn a_wrong_server_key_is_refused_by_the_worker() {
    let keys = keys();
    let impostor = StaticKeypair::generate().unwrap();
    let (client_io, server_io) = tcp_pair().await;
    let worker = StaticKeypair::from_ed25519(&keys.worker_signing);
    let hello = Hello::new(WORKER_ID);
    let (server, client) = tokio::join!(
        accept(server_io, &impostor),
        connect(client_io, &worker, keys.server.public(), &hello)
    );
    assert!(
        matches!(client, Err(TunnelError::WrongServerKey { .. })),
        "{client:?}"
    );
    // The worker stopped before revealing its identity.
    assert!(
        matches!(server, Err(TunnelError::HandshakeClosed)),
        "{server:?}"
    );
}

#[tokio::test]
async fn a_wrong_worker_key_is_refused_by_the_coordinator() {
    let keys = keys();
    let stranger = StaticKeypair::from_ed25519(&SigningKey::from_bytes(&[9; 32]));
    let (client_io, server_io) = tcp_pair().await;
    let hello = Hello::new(WORKER_ID);
    let (server, client) = tokio::join!(
        serve(server_io, &keys),
        connect(client_io, &stranger, keys.server.public(), &hello)
    );
    assert!(server.is_err());
    match client {
        Err(TunnelError::Refused { reason }) => assert_eq!(reason, "worker key is not enrolled"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_version_mismatch_is_refused_on_both_sides() {
    let keys = keys();
    let (client_io, server_io) = tcp_pair().await;
    let worker = StaticKeypair::from_ed25519(&keys.worker_signing);
    let future_hello = Hello {
        protocol_version: TUNNEL_PROTOCOL_VERSION + 1,
        ..Hello::new(WORKER_ID)
    };
    let (server, client) = tokio::join!(
        accept(server_io, &keys.server),
        connect(client_io, &worker, keys.server.public(), &future_hello)
    );
    match client {
        Err(TunnelError::VersionMismatch { local, remote }) => {
            assert_eq!(
                (local, remote),
                (TUNNEL_PROTOCOL_VERSION + 1, TUNNEL_PROTOCOL_VERSION)
            );
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    match server {
        Err(error @ TunnelError::VersionMismatch { .. }) => {
            assert_eq!(
                error.to_string(),
                format!(
                    "tunnel protocol version {} of the peer is not supported; this side speaks {}",
                    TUNNEL_PROTOCOL_VERSION + 1,
                    TUNNEL_PROTOCOL_VERSION
                )
            );
        }
        other => panic!("expected a version mismatch, got {:?}", other.map(|r| r.0)),
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_the_handshake() {
    let keys = keys();
    let worker = StaticKeypair::from_ed25519(&keys.worker_signing);
    let (client_io, _silent_server) = tokio::io::duplex(1024);
    let (server_io, _silent_client) = tokio::io::duplex(1024);
    let hello = Hello::new(WORKER_ID);
    let (client, server) = tokio::join!(
        connect(client_io, &worker, keys.server.public(), &hello),
        accept(server_io, &keys.server)
    );
    assert!(matches!(client, Err(TunnelError::HandshakeTimeout { .. })));
    assert!(matches!(server, Err(TunnelError::HandshakeTimeout { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parallel_streams_echo() {
    const STREAMS: usize = 100;
    let keys = keys();
    let (server, client) = sessions(&keys).await;
    let _echo = spawn_echo(client);
    let mut transfers = Vec::new();
    for index in 0..STREAMS {
        let opener = server.opener();
        transfers.push(tokio::spawn(async move {
            let stream = opener.open_stream().await.unwrap();
            // Sizes from empty to several frames, so small and split writes both occur.
            let data = pattern(index as u64, index * 3001);
            let echoed = round_trip(stream, data.clone()).await;
            if echoed != data {
                let first = echoed.iter().zip(&data).position(|(a, b)| a != b);
                panic!(
                    "stream {index} echoed {} of {} bytes, first difference at {first:?}",
                    echoed.len(),
                    data.len()
                );
            }
        }));
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        for transfer in transfers {
            transfer.await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(server.streams_live(), 0);
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_transfer_arrives_intact() {
    const TRANSFER_BYTES: usize = 100 * 1024 * 1024;
    const CHUNK_BYTES: usize = 256 * 1024;
    let keys = keys();
    let (server, mut client) = sessions(&keys).await;
    let receiving = tokio::spawn(async move {
        let mut stream = client.accept_stream().await.unwrap();
        let mut digest = Sha256::new();
        let mut buf = vec![0; CHUNK_BYTES];
        let mut received = 0;
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            received += n;
        }
        stream.write_all(&digest.finalize()).await.unwrap();
        stream.shutdown().await.unwrap();
        (received, client)
    });
    let mut stream = server.open_stream().await.unwrap();
    let mut digest = Sha256::new();
    let chunk = pattern(1, CHUNK_BYTES);
    tokio::time::timeout(TEST_TIMEOUT, async {
        for round in 0..TRANSFER_BYTES / CHUNK_BYTES {
            // Vary the bytes per chunk cheaply so a reordering would change the digest.
            let mut chunk = chunk.clone();
            chunk[..8].copy_from_slice(&(round as u64).to_le_bytes());
            digest.update(&chunk);
            stream.write_all(&chunk).await.unwrap();
        }
        stream.shutdown().await.unwrap();
        let mut theirs = Vec::new();
        stream.read_to_end(&mut theirs).await.unwrap();
        let (received, _client) = receiving.await.unwrap();
        assert_eq!(received, TRANSFER_BYTES);
        assert_eq!(theirs, digest.finalize().to_vec());
    })
    .await
    .unwrap();
}

/// What a man in the middle does to the frames of one direction.
#[derive(Clone, Default)]
struct Tamper {
    /// When set, flips a bit in the body of the next frame (then clears itself).
    corrupt_next: Arc<AtomicBool>,
    /// After this many frames, sends these bytes instead of the rest and hangs up.
    garbage_after: Option<(usize, Vec<u8>)>,
    /// When set, stops forwarding (keeps the connection open, silent).
    frozen: Arc<AtomicBool>,
}

/// Forwards `[u16 length][body]` frames from `from` to `to`, tampering as told.
async fn forward_frames<R, W>(mut from: R, mut to: W, tamper: Tamper)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    for index in 0.. {
        if let Some((after, garbage)) = &tamper.garbage_after
            && index == *after
        {
            let _ = to.write_all(garbage).await;
            let _ = to.shutdown().await;
            return;
        }
        let mut prefix = [0u8; 2];
        if from.read_exact(&mut prefix).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
        let mut body = vec![0; usize::from(u16::from_be_bytes(prefix))];
        if from.read_exact(&mut body).await.is_err() {
            return;
        }
        if tamper.corrupt_next.swap(false, Ordering::SeqCst) {
            body[0] ^= 1;
        }
        if tamper.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&prefix).await.is_err() || to.write_all(&body).await.is_err() {
            return;
        }
    }
}

/// Client and server connected through a frame-aware man in the middle.
async fn sessions_through_tamper(
    keys: &Keys,
    to_server: Tamper,
    to_client: Tamper,
) -> (Result<Session, TunnelError>, Result<Session, TunnelError>) {
    let (client_io, client_far) = tokio::io::duplex(256 * 1024);
    let (server_io, server_far) = tokio::io::duplex(256 * 1024);
    let (client_far_read, client_far_write) = tokio::io::split(client_far);
    let (server_far_read, server_far_write) = tokio::io::split(server_far);
    tokio::spawn(forward_frames(client_far_read, server_far_write, to_server));
    tokio::spawn(forward_frames(server_far_read, client_far_write, to_client));
    let worker = StaticKeypair::from_ed25519(&keys.worker_signing);
    let hello = Hello::new(WORKER_ID);
    tokio::join!(
        serve(server_io, keys),
        connect(client_io, &worker, keys.server.public(), &hello)
    )
}

#[tokio::test]
async fn a_corrupted_frame_closes_the_session_with_an_error() {
    let keys = keys();
    let to_server = Tamper::default();
    let corrupt_next = Arc::clone(&to_server.corrupt_next);
    let (server, client) = sessions_through_tamper(&keys, to_server, Tamper::default()).await;
    let (server, client) = (server.unwrap(), client.unwrap());
    let _echo = spawn_echo(client);
    let mut stream = server.open_stream().await.unwrap();
    let mut buf = [0; 5];
    stream.write_all(b"hello").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();

    // The next frame from the worker (the echo, or a keepalive) arrives with a flipped bit.
    corrupt_next.store(true, Ordering::SeqCst);
    let outcome = tokio::time::timeout(TEST_TIMEOUT, async {
        stream.write_all(b"again").await?;
        stream.read_exact(&mut buf).await
    })
    .await
    .unwrap();
    assert_eq!(outcome.unwrap_err().kind(), ErrorKind::ConnectionAborted);
    assert!(server.is_ended());
    assert!(matches!(
        server.open_stream().await,
        Err(TunnelError::Closed)
    ));
    let error = server.close().await.unwrap_err();
    assert!(error.to_string().contains("authentication"), "{error}");
}

#[tokio::test]
async fn closing_a_session_fails_its_open_streams() {
    let keys = keys();
    let (server, client) = sessions(&keys).await;
    let echo = spawn_echo(client);
    let stream = server.open_stream().await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    reader.read_exact(&mut buf).await.unwrap();
    // A reader parked on the stream must be woken, not left hanging.
    let parked = tokio::spawn(async move { reader.read(&mut [0; 16]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.close().await.unwrap();
    let read = tokio::time::timeout(TEST_TIMEOUT, parked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.unwrap_err().kind(), ErrorKind::ConnectionAborted);
    assert_eq!(
        writer.write_all(b"more").await.unwrap_err().kind(),
        ErrorKind::ConnectionAborted
    );
    // The worker's side sees the end too, and its accept loop finishes.
    let client = tokio::time::timeout(TEST_TIMEOUT, echo)
        .await
        .unwrap()
        .unwrap();
    assert!(client.is_ended());
}

#[tokio::test]
async fn a_vanished_peer_fails_open_streams() {
    let keys = keys();
    let (server, mut client) = sessions(&keys).await;
    let mut stream = server.open_stream().await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let _accepted = client.accept_stream().await.unwrap();
    drop(client);
    let read = tokio::time::timeout(TEST_TIMEOUT, stream.read(&mut [0; 16]))
        .await
        .unwrap();
    assert!(read.is_err(), "{read:?}");
    assert!(
        matches!(
            server.open_stream().await,
            Err(TunnelError::Closed | TunnelError::Protocol { .. })
        ),
        "opening on an ended session must fail"
    );
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let keys = keys();
    let (server, mut client) = sessions(&keys).await;
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(stream) = client.accept_stream().await {
            held.push(stream);
        }
        held.len()
    });
    let mut opened = Vec::new();
    for _ in 0..flotilla_tunnel::STREAMS_MAX {
        let mut stream = server.open_stream().await.unwrap();
        stream.write_all(b"x").await.unwrap();
        opened.push(stream);
    }
    assert!(matches!(
        server.open_stream().await,
        Err(TunnelError::TooManyStreams { .. })
    ));
    opened.pop();
    let mut again = server.open_stream().await.unwrap();
    again.write_all(b"y").await.unwrap();
    drop(opened);
    drop(again);
    server.close().await.unwrap();
    let held = tokio::time::timeout(TEST_TIMEOUT, holding)
        .await
        .unwrap()
        .unwrap();
    // The worker still held the stream the coordinator dropped, so it refused the new one
    // by its own count: each side enforces the limit on the streams it holds.
    assert_eq!(held, flotilla_tunnel::STREAMS_MAX);
}

#[tokio::test]
async fn a_slow_reader_slows_only_its_own_stream() {
    let keys = keys();
    let (server, mut client) = sessions(&keys).await;
    let mut stalled = server.open_stream().await.unwrap();
    let flowing = server.open_stream().await.unwrap();
    let mut unread = client.accept_stream().await.unwrap();
    tokio::spawn(echo(client.accept_stream().await.unwrap()));
    // The stalled stream takes a window's worth, then its writer waits for its reader.
    let window = vec![1u8; flotilla_tunnel::STREAM_RECEIVE_WINDOW_BYTES];
    stalled.write_all(&window).await.unwrap();
    let past_the_window = tokio::time::timeout(Duration::from_millis(300), stalled.write_all(&[2]));
    assert!(
        past_the_window.await.is_err(),
        "a write past the window waits"
    );
    // Meanwhile the other stream moves 4 MiB both ways.
    let data = pattern(5, 4 << 20);
    let echoed = tokio::time::timeout(TEST_TIMEOUT, round_trip(flowing, data.clone()))
        .await
        .unwrap();
    assert_eq!(echoed, data);
    // Once the reader reads, the writer goes on.
    let mut received = vec![0u8; window.len()];
    unread.read_exact(&mut received).await.unwrap();
    assert_eq!(received, window);
    tokio::time::timeout(TEST_TIMEOUT, stalled.write_all(&[3]))
        .await
        .unwrap()
        .unwrap();
    let mut last = [0u8; 1];
    unread.read_exact(&mut last).await.unwrap();
    // The byte the timed-out write had queued, or the one written after.
    assert!(last == [2] || last == [3], "{last:?}");
}

#[tokio::test(start_paused = true)]
async fn keepalives_hold_an_idle_tunnel_and_silence_ends_it() {
    let keys = keys();
    let frozen = Arc::new(AtomicBool::new(false));
    let tamper = Tamper {
        frozen: Arc::clone(&frozen),
        ..Tamper::default()
    };
    let (server, client) = sessions_through_tamper(&keys, tamper.clone(), tamper).await;
    let (server, client) = (server.unwrap(), client.unwrap());

    // Idle for ten keepalive intervals: keepalives keep both ends up.
    tokio::time::sleep(Duration::from_millis(
        10 * flotilla_tunnel::KEEPALIVE_INTERVAL_MS,
    ))
    .await;
    assert!(!server.is_ended() && !client.is_ended());

    // Silence (a dead NAT mapping): both ends give up after the idle timeout.
    frozen.store(true, Ordering::SeqCst);
    let limit = Duration::from_millis(2 * flotilla_tunnel::IDLE_TIMEOUT_MS);
    tokio::time::timeout(limit, async {
        tokio::join!(server.ended(), client.ended())
    })
    .await
    .unwrap();
    let error = client.close().await.unwrap_err();
    assert!(error.to_string().contains("idle timeout"), "{error}");
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..2048);
    // Well-formed length prefixes get past framing to the decryption.
    let framed = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8)
        .prop_map(|frames| {
            let mut out = Vec::new();
            for frame in frames {
                out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
                out.extend_from_slice(&frame);
            }
            out
        });
    prop_oneof![raw, framed]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn garbage_frames_after_the_handshake_never_panic_the_server(bytes in garbage()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let keys = keys();
            let to_server = Tamper {
                garbage_after: Some((2, bytes)),
                ..Tamper::default()
            };
            let (server, _client) = sessions_through_tamper(&keys, to_server, Tamper::default()).await;
            let server = server.unwrap();
            tokio::time::timeout(TEST_TIMEOUT, server.ended()).await.unwrap();
            // An error or a clean end; a panic would resurface from `close`.
            let _ = server.close().await;
        });
    }
}
