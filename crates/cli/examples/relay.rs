//! `cargo run --release -p flotilla-cli --example relay`: what `flotilla connect`'s local-port
//! relay costs, carried with `splice(2)` (the relay for an `http://` coordinator) against
//! `flotilla_tunnel::carry`'s read and write (the relay over TLS, and before splice), in one
//! run: a client sends [`TRANSFER_BYTES`] through each relay to a sink, all on loopback, in
//! alternating rounds. The last line is JSON with `splice_vs_carry`, the median ratio.

#[path = "../src/splice.rs"]
mod splice;

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TRANSFER_BYTES: usize = 2 << 30;
const CHUNK_BYTES: usize = 256 * 1024;
const ROUNDS: usize = 5;

async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (dialled, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    (dialled.unwrap(), accepted.unwrap().0)
}

/// Gbit/s through one relay.
async fn through_relay(use_splice: bool) -> f64 {
    let (mut client, mut relay_in) = socket_pair().await;
    let (mut relay_out, mut sink) = socket_pair().await;
    let relay = tokio::spawn(async move {
        if use_splice {
            splice::carry(&relay_in, &relay_out).await
        } else {
            flotilla_tunnel::carry(&mut relay_in, &mut relay_out).await
        }
    });
    let sinking = tokio::spawn(async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut received_bytes = 0;
        loop {
            match sink.read(&mut buffer).await.unwrap() {
                0 => return received_bytes,
                read => received_bytes += read,
            }
        }
    });
    let chunk = vec![0x5a_u8; CHUNK_BYTES];
    let started = Instant::now();
    for _ in 0..TRANSFER_BYTES / CHUNK_BYTES {
        client.write_all(&chunk).await.unwrap();
    }
    client.shutdown().await.unwrap();
    assert_eq!(sinking.await.unwrap(), TRANSFER_BYTES);
    let seconds = started.elapsed().as_secs_f64();
    drop(client);
    relay.await.unwrap().unwrap();
    (TRANSFER_BYTES * 8) as f64 / seconds / 1e9
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let carry_gbit_s = through_relay(false).await;
        let splice_gbit_s = through_relay(true).await;
        ratios.push(splice_gbit_s / carry_gbit_s);
        eprintln!(
            "round {round}: carry {carry_gbit_s:.2} Gbit/s, splice {splice_gbit_s:.2} Gbit/s"
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "{{\"bench\":\"relay\",\"transfer_bytes\":{TRANSFER_BYTES},\"rounds\":{ROUNDS},\"splice_vs_carry\":{median:.3}}}"
    );
}
