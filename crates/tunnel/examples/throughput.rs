//! Loopback micro-benchmark: raw TCP against one tunnel stream, in one run.
//!
//! `cargo run --release -p flotilla-tunnel --example throughput [-- TRANSFER_MIB]`
//!
//! Prints the Noise ciphers' sealing speed, bulk throughput and round-trip latency for raw TCP
//! and for one tunnel stream, and the memory an idle tunnelled stream costs (both ends, as the
//! growth of this process's live heap), then one JSON line with the ratios.

// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use flotilla_tunnel::{Hello, Session, StaticKeypair, accept, connect};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK_BYTES: usize = 256 * 1024;
const TRANSFER_MIB_DEFAULT: usize = 2048;
const PING_ROUNDS: usize = 2000;
const IDLE_STREAMS: usize = 200;
const SEAL_BYTES: usize = 512 * 1024 * 1024;

/// Bytes allocated and not yet freed, by the whole process.
static HEAP_LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

struct CountingAllocator;

// SAFETY: every call forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            HEAP_LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(pointer, layout) };
        HEAP_LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() {
    let transfer_mib = std::env::args().nth(1).map_or(TRANSFER_MIB_DEFAULT, |arg| {
        arg.parse().expect("TRANSFER_MIB")
    });
    for cipher in ["AESGCM", "ChaChaPoly"] {
        let gbit_s = seal_gbit_per_s(&format!("Noise_XX_25519_{cipher}_SHA256"));
        println!("seal {cipher}: {gbit_s:.1} Gbit/s (one core, 65 519-byte frames)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(transfer_mib * 1024 * 1024));
}

async fn run(transfer_bytes: usize) {
    let (raw_a, raw_b) = tcp_pair().await;
    let raw_gbit_s = throughput_gbit_per_s(raw_a, raw_b, transfer_bytes).await;
    println!("raw tcp: {raw_gbit_s:.2} Gbit/s");

    let (server, mut client) = sessions().await;
    let sending = server.open_stream().await.unwrap();
    let receiving = client.accept_stream().await.unwrap();
    let tunnel_gbit_s = throughput_gbit_per_s(sending, receiving, transfer_bytes).await;
    println!("tunnel stream: {tunnel_gbit_s:.2} Gbit/s");

    let (raw_a, raw_b) = tcp_pair().await;
    let raw_p50_us = ping_p50_us(raw_a, raw_b).await;
    let ping = server.open_stream().await.unwrap();
    let pong = client.accept_stream().await.unwrap();
    let tunnel_p50_us = ping_p50_us(ping, pong).await;
    println!("round trip p50: raw {raw_p50_us:.1} us, tunnel {tunnel_p50_us:.1} us");

    let idle_bytes = idle_stream_bytes(&server, &mut client).await;
    println!("idle stream: {idle_bytes} bytes (both ends)");

    println!(
        "{{\"raw_tcp_gbit_s\":{raw_gbit_s:.3},\"tunnel_gbit_s\":{tunnel_gbit_s:.3},\
         \"throughput_vs_raw_tcp\":{:.3},\"added_latency_p50_us\":{:.1},\
         \"idle_stream_bytes_both_ends\":{idle_bytes}}}",
        tunnel_gbit_s / raw_gbit_s,
        tunnel_p50_us - raw_p50_us
    );
}

fn seal_gbit_per_s(params: &str) -> f64 {
    let params: snow::params::NoiseParams = params.parse().unwrap();
    let initiator_key = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let responder_key = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut initiator = snow::Builder::new(params.clone())
        .local_private_key(&initiator_key.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut responder = snow::Builder::new(params)
        .local_private_key(&responder_key.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let mut message = vec![0; 65_535];
    let mut payload = vec![0; 65_535];
    let len = initiator.write_message(&[], &mut message).unwrap();
    responder
        .read_message(&message[..len], &mut payload)
        .unwrap();
    let len = responder.write_message(&[], &mut message).unwrap();
    initiator
        .read_message(&message[..len], &mut payload)
        .unwrap();
    let len = initiator.write_message(&[], &mut message).unwrap();
    responder
        .read_message(&message[..len], &mut payload)
        .unwrap();
    let mut transport = initiator.into_transport_mode().unwrap();
    let plain = vec![0x5a; 65_519];
    let started = Instant::now();
    for _ in 0..SEAL_BYTES / plain.len() {
        transport.write_message(&plain, &mut message).unwrap();
    }
    gbit_per_s(SEAL_BYTES, started.elapsed())
}

fn gbit_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(address), listener.accept());
    let (a, b) = (a.unwrap(), b.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

async fn sessions() -> (Session, Session) {
    let server_key = StaticKeypair::generate().unwrap();
    let worker_key = StaticKeypair::from_ed25519(&SigningKey::from_bytes(&[1; 32]));
    let (client_io, server_io) = tcp_pair().await;
    let hello = Hello::new("wrk_bench");
    let (server, client) = tokio::join!(
        async {
            let (_, _, pending) = accept(server_io, &server_key).await.unwrap();
            pending.finish().await.unwrap()
        },
        connect(client_io, &worker_key, server_key.public(), &hello)
    );
    (server, client.unwrap())
}

async fn throughput_gbit_per_s<W, R>(mut writer: W, mut reader: R, bytes: usize) -> f64
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let started = Instant::now();
    let sink = tokio::spawn(async move {
        let mut buf = vec![0; CHUNK_BYTES];
        let mut received = 0;
        while received < bytes {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended after {received} bytes");
            received += n;
        }
        reader
    });
    let chunk = vec![0xa5; CHUNK_BYTES];
    for _ in 0..bytes / CHUNK_BYTES {
        writer.write_all(&chunk).await.unwrap();
    }
    sink.await.unwrap();
    gbit_per_s(bytes, started.elapsed())
}

async fn ping_p50_us<A, B>(mut ping: A, pong: B) -> f64
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let echo = tokio::spawn(async move {
        let mut pong = pong;
        let mut byte = [0; 1];
        for _ in 0..PING_ROUNDS {
            pong.read_exact(&mut byte).await.unwrap();
            pong.write_all(&byte).await.unwrap();
        }
    });
    let mut rounds_us = Vec::with_capacity(PING_ROUNDS);
    let mut byte = [7; 1];
    for _ in 0..PING_ROUNDS {
        let started = Instant::now();
        ping.write_all(&byte).await.unwrap();
        ping.read_exact(&mut byte).await.unwrap();
        rounds_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    echo.await.unwrap();
    rounds_us.sort_by(f64::total_cmp);
    rounds_us[PING_ROUNDS / 2]
}

async fn idle_stream_bytes(server: &Session, client: &mut Session) -> i64 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = HEAP_LIVE_BYTES.load(Ordering::Relaxed);
    let mut held = Vec::with_capacity(2 * IDLE_STREAMS);
    for _ in 0..IDLE_STREAMS {
        held.push(server.open_stream().await.unwrap());
        held.push(client.accept_stream().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = HEAP_LIVE_BYTES.load(Ordering::Relaxed);
    drop(held);
    (after - before) / IDLE_STREAMS as i64
}
