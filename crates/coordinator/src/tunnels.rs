//! The tunnel listener: each worker holds a few encrypted, multiplexed connections here, its
//! lanes (`flotilla_tunnel`: Noise XX, then its streams), apart from its control session so bulk
//! bytes never delay heartbeats. A new stream goes on the worker's lane with the fewest live
//! streams, so parallel connections spread over the lanes' reading tasks and cores. The worker
//! proves it is the enrolled worker by its Noise static key, which is its ed25519 key's X25519
//! twin; the coordinator's own static key derives from its ledger key, so it survives restarts
//! without storage and workers learn it from `Welcome`.
//!
//! A renter's connection to a node's port (`api/tunnel.rs`) becomes one stream on the node's
//! worker's tunnel: the coordinator writes a [`StreamOpen`] line, the worker checks that the
//! run is live there and the port declared, dials it, and answers [`StreamOpened`]; then bytes
//! flow both ways.
//!
//! Every stream to a node holds one of that node's slots ([`NodeSlot`]), at most
//! `tunnel_connections_per_node_max` at once, so one node's connections (a renter's forgotten
//! tabs, or a flood) cannot take the whole of its worker's [`flotilla_tunnel::STREAMS_MAX`] and
//! lock out the other nodes on the same machine, which may be other renters'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flotilla_proto::wire::{STREAM_LINE_BYTES_MAX, StreamOpen, StreamOpened, TunnelOffer};
use flotilla_store::RunRow;
use flotilla_tunnel::{Hello, StaticKeypair, Stream, StreamOpener};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::AppState;
use crate::traffic::{Metered, TrafficRecord};

/// Handshakes in progress at once; more wait (a flood of half-open connections costs little).
const HANDSHAKES_IN_FLIGHT_MAX: usize = 64;
/// How long a worker has to answer a stream's open line.
const STREAM_OPEN_TIMEOUT_MS: u64 = 10_000;
/// The default for `tunnel_connections_per_node_max`: a worker's [`flotilla_tunnel::STREAMS_MAX`]
/// streams then hold eight nodes at their limit, a full eight-GPU machine of one-GPU nodes.
/// Far above interactive use (a browser opens six connections to a host, `flotilla connect`
/// keeps two standing by).
pub const TUNNEL_CONNECTIONS_PER_NODE_MAX_DEFAULT: usize = flotilla_tunnel::STREAMS_MAX / 8;

/// Why a stream to a node could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the node's worker has no tunnel open")]
    WorkerAway,
    #[error("the node's worker refused: {0}")]
    Refused(String),
    #[error("tunnel: {0}")]
    Tunnel(String),
    #[error("the node already has as many connections open as one node may ({connections_max})")]
    NodeFull { connections_max: usize },
}

struct Entry {
    id: u64,
    lane: u8,
    opener: StreamOpener,
    /// Firing (or dropping) it ends the task that holds the session.
    _replaced: oneshot::Sender<()>,
}

/// The workers' tunnels, by worker id: an entry per lane, at most [`flotilla_tunnel::LANES_MAX`].
pub struct Tunnels {
    key: StaticKeypair,
    port: u16,
    sessions: Mutex<HashMap<String, Vec<Entry>>>,
    next_id: AtomicU64,
    /// Where ended connections' figures go.
    traffic: mpsc::Sender<TrafficRecord>,
    /// Streams open to each node, by run id; a node without any has no entry.
    node_streams: NodeStreams,
    connections_per_node_max: usize,
}

type NodeStreams = Arc<Mutex<HashMap<String, usize>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Tunnels {
    pub fn new(
        key: StaticKeypair,
        port: u16,
        traffic: mpsc::Sender<TrafficRecord>,
        connections_per_node_max: usize,
    ) -> Tunnels {
        assert!(connections_per_node_max >= 1, "validated with the config");
        Tunnels {
            key,
            port,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            traffic,
            node_streams: Arc::default(),
            connections_per_node_max,
        }
    }

    /// What `Welcome` tells a worker.
    pub fn offer(&self) -> TunnelOffer {
        TunnelOffer {
            port: self.port,
            public_key: hex::encode(self.key.public()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        lock(&self.sessions)
    }

    /// One of `run_id`'s node's slots, or NodeFull when it holds them all.
    fn claim(&self, run_id: &str) -> Result<NodeSlot, OpenError> {
        let mut streams = lock(&self.node_streams);
        let held = streams.entry(run_id.to_owned()).or_default();
        if *held >= self.connections_per_node_max {
            return Err(OpenError::NodeFull {
                connections_max: self.connections_per_node_max,
            });
        }
        *held += 1;
        Ok(NodeSlot {
            streams: Arc::clone(&self.node_streams),
            run_id: run_id.to_owned(),
        })
    }

    /// Opens a stream to port `port` of `run`'s node, counted for the node and its devices.
    pub async fn open(&self, run: &RunRow, port: u16) -> Result<Metered, OpenError> {
        let (stream, slot) = self.open_stream(run, port, false).await?;
        Ok(Metered::new(stream, slot, run, self.traffic.clone()))
    }

    /// Opens a standby stream (see [`StreamOpen::standby`]): checked by the worker, not yet
    /// dialled, not yet counted.
    pub async fn open_standby(&self, run: &RunRow, port: u16) -> Result<Standby, OpenError> {
        let (stream, slot) = self.open_stream(run, port, true).await?;
        Ok(Standby { stream, slot })
    }

    /// A stream counted from now on for `run`'s node and its devices.
    pub fn meter(&self, standby: Standby, run: &RunRow) -> Metered {
        Metered::new(standby.stream, standby.slot, run, self.traffic.clone())
    }

    async fn open_stream(
        &self,
        run: &RunRow,
        port: u16,
        standby: bool,
    ) -> Result<(Stream, NodeSlot), OpenError> {
        let slot = self.claim(&run.id)?;
        let opener = self
            .lock()
            .get(&run.worker_id)
            .and_then(|lanes| least_busy(lanes))
            .ok_or(OpenError::WorkerAway)?;
        let mut stream = opener
            .open_stream()
            .await
            .map_err(|e| OpenError::Tunnel(e.to_string()))?;
        let open = StreamOpen {
            run_id: run.id.clone(),
            port,
            standby,
        };
        let mut line = serde_json::to_vec(&open).expect("stream opens serialize");
        line.push(b'\n');
        let answer = async {
            stream.write_all(&line).await?;
            flotilla_tunnel::read_line(&mut stream, STREAM_LINE_BYTES_MAX).await
        };
        let answer = tokio::time::timeout(Duration::from_millis(STREAM_OPEN_TIMEOUT_MS), answer)
            .await
            .map_err(|_| OpenError::Tunnel("the worker did not answer".to_owned()))?
            .map_err(|e| OpenError::Tunnel(e.to_string()))?;
        let opened: StreamOpened = serde_json::from_str(&answer)
            .map_err(|e| OpenError::Tunnel(format!("malformed answer: {e}")))?;
        if !opened.ok {
            return Err(OpenError::Refused(opened.error));
        }
        Ok((stream, slot))
    }

    /// Whether a worker's tunnel is up (one lane or more).
    pub fn is_open(&self, worker_id: &str) -> bool {
        self.lock().contains_key(worker_id)
    }

    /// Tunnel connections open, every worker's lanes together.
    pub fn lanes_open(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Puts a new session on its worker's lane, replacing (and so ending) the one there.
    fn insert(&self, worker_id: &str, entry: Entry) {
        let mut sessions = self.lock();
        let lanes = sessions.entry(worker_id.to_owned()).or_default();
        lanes.retain(|held| held.lane != entry.lane);
        lanes.push(entry);
        debug_assert!(lanes.len() <= usize::from(flotilla_tunnel::LANES_MAX));
    }

    /// Takes an ended session off its lane, unless a newer one holds the lane already.
    fn remove(&self, worker_id: &str, id: u64) {
        let mut sessions = self.lock();
        let Some(lanes) = sessions.get_mut(worker_id) else {
            return;
        };
        lanes.retain(|held| held.id != id);
        if lanes.is_empty() {
            sessions.remove(worker_id);
        }
    }
}

/// The opener of the lane with the fewest live streams; the first of equals.
fn least_busy(lanes: &[Entry]) -> Option<StreamOpener> {
    lanes
        .iter()
        .min_by_key(|entry| entry.opener.streams_live())
        .map(|entry| entry.opener.clone())
}

/// One of a node's slots, given back when dropped.
pub struct NodeSlot {
    streams: NodeStreams,
    run_id: String,
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        let mut streams = lock(&self.streams);
        let held = streams
            .get_mut(&self.run_id)
            .expect("a held slot is counted");
        *held -= 1;
        if *held == 0 {
            streams.remove(&self.run_id);
        }
    }
}

/// A standby stream to a node (see [`StreamOpen::standby`]) and the node's slot it holds.
pub struct Standby {
    pub stream: Stream,
    slot: NodeSlot,
}

/// Accepts workers' tunnels until shutdown.
pub async fn serve(app: AppState, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let handshakes = std::sync::Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok((tcp, peer)) = accepted else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(reason) = admit(&app, tcp).await {
                tracing::info!(%peer, %reason, "tunnel refused");
            }
            drop(permit);
        });
    }
}

/// One worker's handshake: its hello names an enrolled worker whose key is the Noise static
/// key it showed, or it is refused.
async fn admit(app: &AppState, tcp: tokio::net::TcpStream) -> Result<(), String> {
    let tunnels = &app.tunnels;
    let (hello, remote_static, pending) = flotilla_tunnel::accept(tcp, &tunnels.key)
        .await
        .map_err(|e| e.to_string())?;
    let Hello {
        worker_id, lane, ..
    } = hello;
    let enrolled = app
        .store
        .worker_for_session(&worker_id)
        .await
        .map_err(|e| e.to_string())?;
    let expected = enrolled
        .as_ref()
        .and_then(|w| flotilla_proto::wire::parse_public_key(&w.public_key).ok())
        .map(|key| flotilla_tunnel::x25519_public_from_ed25519(&key));
    if expected != Some(remote_static) {
        let _ = pending.refuse("not an enrolled worker's key").await;
        return Err(format!("worker {worker_id} did not show its enrolled key"));
    }
    let session = pending.finish().await.map_err(|e| e.to_string())?;
    let id = tunnels.next_id.fetch_add(1, Ordering::Relaxed);
    let (replaced_tx, replaced) = oneshot::channel();
    let entry = Entry {
        id,
        lane,
        opener: session.opener(),
        _replaced: replaced_tx,
    };
    tunnels.insert(&worker_id, entry);
    tracing::info!(%worker_id, lane, "worker tunnel open");
    // The session lives here until it ends or a newer one on the same lane replaces it.
    tokio::select! {
        _ = session.ended() => {}
        _ = replaced => {}
    }
    tunnels.remove(&worker_id, id);
    tracing::info!(%worker_id, lane, "worker tunnel closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnels(connections_per_node_max: usize) -> Tunnels {
        let (traffic, _) = mpsc::channel(1);
        let key = StaticKeypair::from_private([7; 32]);
        Tunnels::new(key, 0, traffic, connections_per_node_max)
    }

    fn held(tunnels: &Tunnels, run_id: &str) -> Option<usize> {
        lock(&tunnels.node_streams).get(run_id).copied()
    }

    #[test]
    fn a_node_at_its_limit_is_refused_and_others_on_its_worker_are_not() {
        let tunnels = tunnels(2);
        let first = tunnels.claim("run_a").unwrap();
        let _second = tunnels.claim("run_a").unwrap();
        assert!(matches!(
            tunnels.claim("run_a"),
            Err(OpenError::NodeFull { connections_max: 2 })
        ));
        assert_eq!(held(&tunnels, "run_a"), Some(2), "a refusal holds nothing");
        let other = tunnels
            .claim("run_b")
            .expect("another node has its own slots");
        drop(first);
        assert_eq!(held(&tunnels, "run_a"), Some(1));
        let _again = tunnels
            .claim("run_a")
            .expect("a slot given back is free again");
        drop(other);
        assert_eq!(
            held(&tunnels, "run_b"),
            None,
            "a node without streams leaves no entry"
        );
    }
}
