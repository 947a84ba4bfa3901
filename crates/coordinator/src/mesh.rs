//! Cluster meshes: who is in each cluster's WireGuard overlay, and the relay.
//!
//! A node's worker reports the node's public key when its interface is up
//! ([`WorkerMessage::MeshJoined`](flotilla_proto::wire::WorkerMessage)); the node then
//! registers with the relay (UDP on the tunnel port), which learns the address its packets
//! come from, as a STUN server would. Every node of the cluster is sent the whole peer list
//! again whenever a key or an address changes. Nodes try each other directly at those
//! addresses (both sides sending opens NATs that allow it) and fall back to the relay, which
//! passes WireGuard packets between nodes of one cluster only. The relay sees ciphertext.
//!
//! The state is memory only: after a restart, workers report their nodes' keys again when
//! they are next ordered to run them, and nodes register again every few seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use flotilla_proto::mesh::{
    MeshPeer, RELAY_DATAGRAM_BYTES_MAX, RELAY_TOKEN_BYTES, RelayPacket, node_address,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::AppState;

/// Members of all meshes at once; joins past it are refused (the node runs without peers).
pub const MESH_MEMBERS_MAX: usize = 100_000;

type Token = [u8; RELAY_TOKEN_BYTES];

#[derive(Debug, Default)]
pub struct Meshes {
    state: Mutex<State>,
    /// Give nodes no direct endpoints: everything goes through the relay.
    relay_only: bool,
}

#[derive(Debug, Default)]
struct State {
    clusters: HashMap<String, ClusterMesh>,
    /// Cluster and rank of each member's run.
    runs: HashMap<String, (String, u32)>,
    /// The run of each member's relay token.
    tokens: HashMap<Token, String>,
}

#[derive(Debug, Default)]
struct ClusterMesh {
    /// Grows with every change, so sessions send each node a list once per change.
    version: u64,
    members: BTreeMap<u32, Member>,
}

#[derive(Debug, Clone)]
struct Member {
    run_id: String,
    worker_id: String,
    public_key: String,
    token: Token,
    /// Where the relay last saw the node's packets come from.
    endpoint: Option<SocketAddr>,
}

/// What a join or a departure changed: the workers whose nodes need the new list.
pub type Affected = Vec<String>;

impl Meshes {
    pub fn new(relay_only: bool) -> Meshes {
        Meshes {
            state: Mutex::default(),
            relay_only,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `run_id`'s node (rank `rank` of `cluster_id`) into its mesh, replacing whatever
    /// run held the rank before. `None` when the meshes are full.
    pub fn join(
        &self,
        cluster_id: &str,
        rank: u32,
        run_id: &str,
        worker_id: &str,
        public_key: String,
        token: Token,
    ) -> Option<Affected> {
        let mut state = self.lock();
        if state.runs.len() >= MESH_MEMBERS_MAX && !state.runs.contains_key(run_id) {
            return None;
        }
        let rejoined = state
            .clusters
            .get(cluster_id)
            .and_then(|mesh| mesh.members.get(&rank))
            .is_some_and(|m| m.run_id == run_id && m.public_key == public_key);
        if rejoined {
            // A worker's new session reports its nodes again: nothing changed.
            return Some(Vec::new());
        }
        let member = Member {
            run_id: run_id.to_owned(),
            worker_id: worker_id.to_owned(),
            public_key,
            token,
            endpoint: None,
        };
        let mesh = state.clusters.entry(cluster_id.to_owned()).or_default();
        let replaced = mesh.members.insert(rank, member);
        mesh.version += 1;
        if let Some(old) = replaced {
            state.runs.remove(&old.run_id);
            state.tokens.remove(&old.token);
        }
        state
            .runs
            .insert(run_id.to_owned(), (cluster_id.to_owned(), rank));
        state.tokens.insert(token, run_id.to_owned());
        Some(workers_of(&state.clusters[cluster_id]))
    }

    /// Drops an ended run's node; its cluster's mesh goes with its last member.
    pub fn leave(&self, run_id: &str) -> Affected {
        let mut state = self.lock();
        let Some((cluster_id, rank)) = state.runs.remove(run_id) else {
            return Vec::new();
        };
        let Some(mesh) = state.clusters.get_mut(&cluster_id) else {
            return Vec::new();
        };
        let Some(member) = mesh.members.remove(&rank) else {
            return Vec::new();
        };
        mesh.version += 1;
        let affected = workers_of(mesh);
        if mesh.members.is_empty() {
            state.clusters.remove(&cluster_id);
        }
        state.tokens.remove(&member.token);
        affected
    }

    /// The relay heard from the node with `token` at `from`. When that is news, the workers
    /// of its cluster need the new list.
    fn observe(&self, token: &Token, from: SocketAddr) -> Option<Affected> {
        let mut state = self.lock();
        let run_id = state.tokens.get(token)?.clone();
        let (cluster_id, rank) = state.runs.get(&run_id)?.clone();
        let mesh = state.clusters.get_mut(&cluster_id)?;
        let member = mesh.members.get_mut(&rank)?;
        if member.endpoint == Some(from) {
            return Some(Vec::new());
        }
        member.endpoint = Some(from);
        mesh.version += 1;
        Some(workers_of(mesh))
    }

    /// Where a relayed packet from the node with `token` to `rank` of its cluster goes, and
    /// the sender's rank; `None` when either is unknown.
    fn route(&self, token: &Token, rank: u32) -> Option<(u32, SocketAddr)> {
        let state = self.lock();
        let run_id = state.tokens.get(token)?;
        let (cluster_id, from_rank) = state.runs.get(run_id)?;
        let to = state
            .clusters
            .get(cluster_id)?
            .members
            .get(&rank)?
            .endpoint?;
        Some((*from_rank, to))
    }

    /// The list for `run_id`'s node if its mesh changed since `seen` (then `seen` moves on).
    pub fn peers_if_changed(&self, run_id: &str, seen: &mut u64) -> Option<Vec<MeshPeer>> {
        let state = self.lock();
        let (cluster_id, own_rank) = state.runs.get(run_id)?;
        let mesh = state.clusters.get(cluster_id)?;
        if mesh.version == *seen {
            return None;
        }
        *seen = mesh.version;
        let peers = mesh
            .members
            .iter()
            .filter(|(rank, _)| *rank != own_rank)
            .map(|(&rank, member)| MeshPeer {
                rank,
                address: node_address(cluster_id, rank),
                public_key: member.public_key.clone(),
                endpoint: member
                    .endpoint
                    .filter(|_| !self.relay_only)
                    .map(|e| e.to_string()),
            })
            .collect();
        Some(peers)
    }
}

fn workers_of(mesh: &ClusterMesh) -> Affected {
    let mut workers: Vec<String> = mesh.members.values().map(|m| m.worker_id.clone()).collect();
    workers.sort();
    workers.dedup();
    workers
}

/// The relay token of a run: derived from the coordinator's key and the run id, so the order
/// can be sent again without storing it.
pub fn relay_token(app: &AppState, run_id: &str) -> Token {
    let secret = crate::clusters::run_secret(app, b"flotilla/mesh-relay-token/v1\0", run_id);
    secret[..RELAY_TOKEN_BYTES]
        .try_into()
        .expect("a SHA-256 digest is longer than a token")
}

/// Serves the relay on `socket` until shutdown: registrations, and packets between nodes of
/// one cluster. One datagram in, at most one out; nothing is queued.
pub async fn relay(app: AppState, socket: UdpSocket, mut shutdown: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; RELAY_DATAGRAM_BYTES_MAX];
    let mut out = Vec::with_capacity(RELAY_DATAGRAM_BYTES_MAX);
    loop {
        let (length, from) = tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "mesh relay receive failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Some(reply) = relay_one(&app, &buffer[..length], from, &mut out) else {
            continue;
        };
        if let Err(error) = socket.send_to(&out, reply).await {
            tracing::debug!(%error, %reply, "mesh relay send failed");
        }
    }
}

/// Handles one datagram; where `out` goes, if anywhere.
fn relay_one(
    app: &AppState,
    datagram: &[u8],
    from: SocketAddr,
    out: &mut Vec<u8>,
) -> Option<SocketAddr> {
    let meshes = &app.meshes;
    match RelayPacket::parse(datagram)? {
        RelayPacket::Register { token } => {
            for worker_id in meshes.observe(&token, from)? {
                app.fleet.nudge(&worker_id);
            }
            RelayPacket::Registered.write(out);
            Some(from)
        }
        RelayPacket::ToPeer {
            token,
            rank,
            packet,
        } => {
            let (from_rank, to) = meshes.route(&token, rank)?;
            RelayPacket::FromPeer {
                rank: from_rank,
                packet,
            }
            .write(out);
            Some(to)
        }
        RelayPacket::Registered | RelayPacket::FromPeer { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_tells_each_node_of_the_others_once_per_change() {
        let meshes = Meshes::new(false);
        let affected = meshes
            .join("cls_a", 0, "run_a0", "wrk_1", "k0".into(), [0; 16])
            .unwrap();
        assert_eq!(affected, vec!["wrk_1".to_owned()]);
        meshes
            .join("cls_a", 1, "run_a1", "wrk_2", "k1".into(), [1; 16])
            .unwrap();
        let mut seen = 0;
        let peers = meshes.peers_if_changed("run_a0", &mut seen).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!((peers[0].rank, peers[0].endpoint.as_deref()), (1, None));
        assert_eq!(meshes.peers_if_changed("run_a0", &mut seen), None);
        let from: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert_eq!(
            meshes.observe(&[1; 16], from).unwrap(),
            vec!["wrk_1".to_owned(), "wrk_2".to_owned()]
        );
        assert_eq!(
            meshes.observe(&[1; 16], from).unwrap(),
            Vec::<String>::new()
        );
        let peers = meshes.peers_if_changed("run_a0", &mut seen).unwrap();
        assert_eq!(peers[0].endpoint.as_deref(), Some("10.0.0.2:5000"));
        assert_eq!(meshes.route(&[0; 16], 1), Some((0, from)));
        assert_eq!(meshes.route(&[1; 16], 0), None, "rank 0 has not registered");
        // The same node reported again (a worker's new session) changes nothing.
        let again = meshes.join("cls_a", 1, "run_a1", "wrk_2", "k1".into(), [1; 16]);
        assert_eq!(again, Some(Vec::new()));
        assert_eq!(meshes.peers_if_changed("run_a0", &mut seen), None);
        assert_eq!(meshes.route(&[0; 16], 1), Some((0, from)));
    }

    #[test]
    fn the_relay_joins_nodes_of_one_cluster_only() {
        let meshes = Meshes::new(false);
        meshes.join("cls_a", 0, "run_a0", "w", "k".into(), [0; 16]);
        meshes.join("cls_b", 1, "run_b1", "w", "k".into(), [2; 16]);
        meshes.observe(&[2; 16], "10.0.0.3:1".parse().unwrap());
        assert_eq!(meshes.route(&[0; 16], 1), None);
        assert_eq!(meshes.route(&[9; 16], 1), None, "unknown token");
    }

    #[test]
    fn a_replacement_takes_the_rank_and_the_old_token_dies() {
        let meshes = Meshes::new(true);
        meshes.join("cls_a", 0, "run_a0", "w1", "k0".into(), [0; 16]);
        meshes.join("cls_a", 1, "run_a1", "w2", "old".into(), [1; 16]);
        meshes.observe(&[1; 16], "10.0.0.2:1".parse().unwrap());
        meshes.join("cls_a", 1, "run_a1b", "w3", "new".into(), [3; 16]);
        assert_eq!(
            meshes.observe(&[1; 16], "10.0.0.2:1".parse().unwrap()),
            None
        );
        meshes.observe(&[3; 16], "10.0.0.4:1".parse().unwrap());
        let mut seen = 0;
        let peers = meshes.peers_if_changed("run_a0", &mut seen).unwrap();
        assert_eq!(peers[0].public_key, "new");
        assert_eq!(peers[0].endpoint, None, "relay only gives no endpoints");
        assert_eq!(meshes.leave("run_a1b"), vec!["w1".to_owned()]);
        assert_eq!(meshes.leave("run_a0"), Vec::<String>::new());
        assert!(meshes.lock().clusters.is_empty() && meshes.lock().tokens.is_empty());
    }
}
