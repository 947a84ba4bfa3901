//! The worker's end of the tunnel: a few encrypted, multiplexed connections (lanes) to the
//! coordinator's tunnel listener (`flotilla_tunnel`), apart from the control session, each kept
//! open with backoff for as long as the worker runs. One lane carries about one core's worth
//! of bytes (its session's one reading task opens every message), so a worker has a lane per
//! core up to [`TUNNEL_LANES_DEFAULT_MAX`], and the coordinator spreads streams over them. The
//! coordinator opens a stream per renter connection; its first line names a run and a port
//! ([`StreamOpen`]). The worker reaches only ports that a run live here declared
//! ([`PortTable`]), dials it, answers [`StreamOpened`], and carries bytes both ways until
//! either side closes. A standby stream is answered before the
//! dial, which waits for the renter's go byte.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use flotilla_proto::wire::{
    STANDBY_GO, STANDBY_WAIT_MS_MAX, STREAM_LINE_BYTES_MAX, StreamOpen, StreamOpened, TunnelOffer,
};
use flotilla_tunnel::{Hello, StaticKeypair, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::runs::PortTable;

/// First reconnect delay; doubles per failure up to [`RECONNECT_DELAY_MS_MAX`].
const RECONNECT_DELAY_MS_MIN: u64 = 200;
const RECONNECT_DELAY_MS_MAX: u64 = 30_000;
/// How long dialing the coordinator, or a node's port, may take.
const DIAL_TIMEOUT_MS: u64 = 10_000;
/// How long the coordinator has to send a stream's first line.
const OPEN_LINE_TIMEOUT_MS: u64 = 10_000;

/// Lanes a worker holds unless told: one per core, at most this many.
pub const TUNNEL_LANES_DEFAULT_MAX: u8 = 4;

/// One lane per core this process may use, 1 to [`TUNNEL_LANES_DEFAULT_MAX`].
pub fn tunnel_lanes_default() -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    u8::try_from(cores).map_or(TUNNEL_LANES_DEFAULT_MAX, |cores| {
        cores.clamp(1, TUNNEL_LANES_DEFAULT_MAX)
    })
}

/// What the tunnel needs to know about this worker.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub coordinator_url: String,
    pub worker_id: String,
    pub key: SigningKey,
    pub ports: PortTable,
}

/// Keeps lane `lane` of the tunnel open while `offers` holds the coordinator's offer, until
/// shutdown.
pub async fn run(
    config: TunnelConfig,
    lane: u8,
    mut offers: watch::Receiver<Option<TunnelOffer>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let keypair = StaticKeypair::from_ed25519(&config.key);
    let mut delay_ms = RECONNECT_DELAY_MS_MIN;
    loop {
        let offer = offers.borrow_and_update().clone();
        let ended = match offer {
            Some(offer) => {
                tokio::select! {
                    outcome = session(&config, &keypair, lane, &offer) => outcome,
                    _ = offers.changed() => Ok(()),
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            None => {
                tokio::select! {
                    changed = offers.changed() => if changed.is_err() { return },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                continue;
            }
        };
        match ended {
            Ok(()) => delay_ms = RECONNECT_DELAY_MS_MIN,
            Err(reason) => {
                tracing::warn!(%reason, lane, retry_in_ms = delay_ms, "tunnel down");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                delay_ms = (delay_ms * 2).min(RECONNECT_DELAY_MS_MAX);
            }
        }
    }
}

/// The host part of the coordinator's URL, where its tunnel listener also is.
fn coordinator_host(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("coordinator url {url}: {e}"))?;
    parsed
        .host_str()
        .map(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
        .ok_or_else(|| format!("coordinator url {url} has no host"))
}

/// One tunnel session: connect, then serve the coordinator's streams until it ends. `Ok`
/// when it ended after being up (reconnect at once), `Err` when it could not come up.
async fn session(
    config: &TunnelConfig,
    keypair: &StaticKeypair,
    lane: u8,
    offer: &TunnelOffer,
) -> Result<(), String> {
    let mut server_public = [0u8; 32];
    hex::decode_to_slice(&offer.public_key, &mut server_public)
        .map_err(|_| "the coordinator's tunnel key is not 32 hex bytes".to_owned())?;
    let host = coordinator_host(&config.coordinator_url)?;
    let dial = tokio::net::TcpStream::connect((host.as_str(), offer.port));
    let tcp = tokio::time::timeout(Duration::from_millis(DIAL_TIMEOUT_MS), dial)
        .await
        .map_err(|_| format!("dialing {host}:{} timed out", offer.port))?
        .map_err(|e| format!("dialing {host}:{}: {e}", offer.port))?;
    let _ = tcp.set_nodelay(true);
    let hello = Hello::new(config.worker_id.clone()).on_lane(lane);
    let mut session = flotilla_tunnel::connect(tcp, keypair, &server_public, &hello)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%host, port = offer.port, lane, "tunnel open");
    while let Some(stream) = session.accept_stream().await {
        tokio::spawn(serve(stream, config.ports.clone()));
    }
    tracing::info!(lane, "tunnel closed by the coordinator");
    Ok(())
}

async fn answer(stream: &mut Stream, opened: &StreamOpened) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(opened).expect("answers serialize");
    line.push(b'\n');
    stream.write_all(&line).await
}

/// One renter connection: check, dial, answer, carry.
async fn serve(mut stream: Stream, ports: PortTable) {
    let line = tokio::time::timeout(
        Duration::from_millis(OPEN_LINE_TIMEOUT_MS),
        flotilla_tunnel::read_line(&mut stream, STREAM_LINE_BYTES_MAX),
    )
    .await;
    let Ok(Ok(line)) = line else {
        return;
    };
    let open = match serde_json::from_str::<StreamOpen>(&line) {
        Ok(open) => open,
        Err(error) => {
            let refused = StreamOpened {
                ok: false,
                error: format!("malformed open line: {error}"),
            };
            let _ = answer(&mut stream, &refused).await;
            return;
        }
    };
    if open.standby {
        return serve_standby(stream, ports, open).await;
    }
    let mut node = match dial(&ports, &open).await {
        Ok(node) => node,
        Err(error) => return refuse(&mut stream, &open, error).await,
    };
    if answer(&mut stream, &StreamOpened::ok()).await.is_err() {
        return;
    }
    let _ = flotilla_tunnel::carry(&mut stream, &mut node).await;
}

/// A standby stream: checked and answered now, dialled when the renter's go byte arrives.
async fn serve_standby(mut stream: Stream, ports: PortTable, open: StreamOpen) {
    if let Err(error) = ports.target(&open.run_id, open.port) {
        return refuse(&mut stream, &open, error).await;
    }
    if answer(&mut stream, &StreamOpened::ok()).await.is_err() {
        return;
    }
    let wait = Duration::from_millis(STANDBY_WAIT_MS_MAX);
    let go = tokio::time::timeout(wait, stream.read_u8()).await;
    if !matches!(go, Ok(Ok(STANDBY_GO))) {
        return;
    }
    // The run may have stopped while the stream waited: `dial` checks it again.
    match dial(&ports, &open).await {
        Ok(mut node) => {
            let _ = flotilla_tunnel::carry(&mut stream, &mut node).await;
        }
        Err(error) => {
            tracing::info!(run_id = %open.run_id, port = open.port, %error, "standby connection's port did not answer");
        }
    }
}

async fn refuse(stream: &mut Stream, open: &StreamOpen, error: String) {
    tracing::info!(run_id = %open.run_id, port = open.port, %error, "tunnelled connection refused");
    let _ = answer(stream, &StreamOpened { ok: false, error }).await;
}

async fn dial(ports: &PortTable, open: &StreamOpen) -> Result<tokio::net::TcpStream, String> {
    let target = ports.target(&open.run_id, open.port)?;
    let dial = async {
        match &target.namespace {
            Some(namespace) => namespace.dial(target.port).await,
            None => tokio::net::TcpStream::connect(("127.0.0.1", target.port)).await,
        }
    };
    let node = tokio::time::timeout(Duration::from_millis(DIAL_TIMEOUT_MS), dial)
        .await
        .map_err(|_| format!("port {} did not answer", open.port))?
        .map_err(|e| format!("port {}: {e}", open.port))?;
    let _ = node.set_nodelay(true);
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_dials_the_coordinators_host() {
        assert_eq!(
            coordinator_host("http://127.0.0.1:7700").unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            coordinator_host("https://coord.example/").unwrap(),
            "coord.example"
        );
        assert_eq!(coordinator_host("http://[::1]:7700").unwrap(), "::1");
        assert!(coordinator_host("not a url").is_err());
    }
}
