//! `flotilla connect`'s local port carried inside the kernel: between the local connection and
//! the coordinator's upgraded socket (an `http://` coordinator's), bytes go from one TCP socket
//! into a pipe and on to the other with `splice(2)`, never copied into this process. That
//! relay is the one hop the local port adds to the tunnel's own path; with read and write it
//! copied every byte in and out of this process.

use std::io;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe each direction asks for; one splice moves at most what the pipe holds. A 1 MiB
/// pipe carried no faster (`examples/relay.rs`), and an unprivileged user's pipes share a
/// 64 MiB budget (`pipe-user-pages-soft`), past which new pipes are cut to a page or two.
const PIPE_BYTES: usize = 256 * 1024;

/// Carries bytes both ways until both sides have ended (each end's shutdown is passed on);
/// the bytes carried from `a` to `b` and from `b` to `a`. An error on either side ends both.
pub async fn carry(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

/// From `from` to `to` through a pipe of this direction's own, until `from` ends; then shuts
/// `to`'s sending side.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_out, pipe_in) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // The kernel may refuse (past the user's pipe budget); whatever the pipe holds still works.
    let pipe_bytes = rustix::pipe::fcntl_setpipe_size(&pipe_in, PIPE_BYTES).unwrap_or(64 * 1024);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut carried_bytes = 0u64;
    loop {
        // The pipe is empty here, so a read that would block is the socket's to wait for.
        let filled = from
            .async_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(
                    from, None, &pipe_in, None, pipe_bytes, flags,
                )?)
            })
            .await?;
        if filled == 0 {
            rustix::net::shutdown(to, rustix::net::Shutdown::Write)?;
            return Ok(carried_bytes);
        }
        let mut in_pipe = filled;
        while in_pipe > 0 {
            let sent = to
                .async_io(Interest::WRITABLE, || {
                    Ok(rustix::pipe::splice(
                        &pipe_out, None, to, None, in_pipe, flags,
                    )?)
                })
                .await?;
            in_pipe -= sent;
            carried_bytes += sent as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two connected loopback sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (dialled.unwrap(), accepted.unwrap().0)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Sends `bytes` and then its end over `stream` while reading what comes back to its end.
    async fn send_then_read_to_end(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        let (mut reader, mut writer) = stream.split();
        let sending = async {
            writer.write_all(bytes).await.unwrap();
            writer.shutdown().await.unwrap();
        };
        let mut received = Vec::new();
        let ((), read) = tokio::join!(sending, reader.read_to_end(&mut received));
        read.unwrap();
        received
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_ways_arrive_whole_and_each_end_is_passed_on() {
        // client <-> (relay_a <-> relay_b) <-> server
        let (mut client, relay_a) = socket_pair().await;
        let (relay_b, mut server) = socket_pair().await;
        let relay = tokio::spawn(async move { carry(&relay_a, &relay_b).await });
        let up = pattern(8 << 20, 1);
        let down = pattern(3 << 20, 7);
        let (at_client, at_server) = tokio::join!(
            send_then_read_to_end(&mut client, &up),
            send_then_read_to_end(&mut server, &down)
        );
        assert!(at_server == up, "the client's bytes arrive whole");
        assert!(at_client == down, "the server's bytes arrive whole");
        let carried = relay.await.unwrap().unwrap();
        assert_eq!(carried, (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_an_error() {
        let (client, relay_a) = socket_pair().await;
        let (relay_b, server) = socket_pair().await;
        let relay = tokio::spawn(async move { carry(&relay_a, &relay_b).await });
        // Linger 0: closing sends a reset instead of an end.
        client.set_zero_linger().unwrap();
        drop(client);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), relay).await;
        assert!(ended.expect("the relay ends").unwrap().is_err());
        drop(server);
    }
}
