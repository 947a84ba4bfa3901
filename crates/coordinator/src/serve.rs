//! The coordinator's HTTP connection loop: HTTP/1.1 with upgrades (worker sessions, tunnels,
//! WebSockets) over plain TCP or [`crate::tls`], each connection in its own task.
//!
//! Its own rather than `axum::serve`, for two limits an internet-facing listener needs and
//! that one cannot set: a connection must send a request's whole head within
//! `http_header_read_timeout_ms` (a client that connects and says nothing, or dribbles its
//! head, is cut off instead of holding a task and a descriptor for ever), and at most
//! [`HTTP_CONNECTIONS_MAX`] connections are served at once; past it, new ones wait in the
//! kernel's accept queue. Upgraded connections have left this loop and do not count.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// HTTP connections served at once (not counting upgraded ones).
pub const HTTP_CONNECTIONS_MAX: usize = 16_384;
/// Time in-flight requests get to finish once the coordinator stops.
const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Serves `router` on `listener` until `shutdown` says stop; then lets in-flight requests
/// finish, for at most [`SHUTDOWN_GRACE_MS`].
pub async fn serve_http<L>(
    mut listener: L,
    router: axum::Router,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut connections = JoinSet::new();
    loop {
        let room = connections.len() < HTTP_CONNECTIONS_MAX;
        let (io, peer) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept(), if room => accepted,
        };
        let connection = serve_connection(
            io,
            peer,
            router.clone(),
            header_read_timeout,
            shutdown.clone(),
        );
        connections.spawn(connection);
    }
    drop(listener);
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            left = connections.len(),
            "http connections still open at shutdown"
        );
    }
}

/// One connection: requests until the client closes it, its head is late, or shutdown.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: axum::Router,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` gives handlers: the client's address.
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        tower_service::Service::call(&mut router, request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut connection = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let stopping = tokio::select! {
        served = connection.as_mut() => {
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "http connection ended");
            }
            false
        }
        _ = shutdown.wait_for(|stop| *stop) => true,
    };
    if stopping {
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }
}
