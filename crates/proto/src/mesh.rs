//! The cluster mesh: a private WireGuard overlay per cluster. What both sides must agree on
//! lives here: each cluster's addresses, the orders and peer lists of the control protocol,
//! and the framing of the coordinator's relay, which carries WireGuard packets between nodes
//! that cannot reach each other directly.
//!
//! Relay datagrams start with [`RELAY_MAGIC`], which no WireGuard packet does (their first
//! byte is a message type of 1 to 4), so one UDP socket on a node carries both.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Clusters' overlay networks are /24s carved from the shared address space 100.64.0.0/10,
/// which no supplier's own network should use.
const MESH_NETWORK_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
/// /24s in 100.64.0.0/10.
const MESH_NETWORKS: u32 = 1 << 14;
/// Prefix length of one cluster's network.
pub const MESH_PREFIX_LEN: u8 = 24;
/// Nodes one cluster's network addresses (a /24 less its network and broadcast addresses).
pub const MESH_NODES_MAX: u32 = 253;
/// The overlay interface's MTU: a 1500-byte path less WireGuard's 80 bytes of overhead over
/// IPv6 (60 over IPv4), as wg-quick chooses.
pub const MESH_MTU_BYTES: u32 = 1420;

/// A cluster's network (its /24's first address). Derived from the id, so the coordinator
/// stores nothing; two clusters may draw the same /24, which isolation does not depend on:
/// a node has keys for its own cluster's peers only.
pub fn cluster_network(cluster_id: &str) -> Ipv4Addr {
    let digest = Sha256::digest(cluster_id.as_bytes());
    let index = u32::from(u16::from_be_bytes([digest[0], digest[1]])) % MESH_NETWORKS;
    Ipv4Addr::from(MESH_NETWORK_BASE + (index << 8))
}

/// The overlay address of the node of `rank` (`.1` for rank 0).
pub fn node_address(cluster_id: &str, rank: u32) -> Ipv4Addr {
    assert!(
        rank < MESH_NODES_MAX,
        "rank {rank} is past the mesh's nodes"
    );
    Ipv4Addr::from(u32::from(cluster_network(cluster_id)) + rank + 1)
}

/// A node's part in its cluster's mesh, in its order.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshOrder {
    /// The node's overlay address; its network is the /[`MESH_PREFIX_LEN`] around it.
    pub address: Ipv4Addr,
    /// The coordinator's relay: UDP on this port of the host the worker reaches it at.
    pub relay_port: u16,
    /// Hex of [`RELAY_TOKEN_BYTES`]: names this node to the relay. Secret.
    pub relay_token: String,
}

impl std::fmt::Debug for MeshOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshOrder")
            .field("address", &self.address)
            .field("relay_port", &self.relay_port)
            .field("relay_token", &"***")
            .finish()
    }
}

/// One other node of the cluster, as the coordinator last knew it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshPeer {
    pub rank: u32,
    pub address: Ipv4Addr,
    /// Hex of its 32-byte X25519 WireGuard public key.
    pub public_key: String,
    /// Where the relay saw its packets come from (`ip:port`): the address to try directly.
    /// None: not seen yet, or the coordinator relays everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The Ray release `ray` clusters run, installed from PyPI as `ray[default]`.
pub const RAY_VERSION: &str = "2.60.0";
/// Ray's ports on the head node: the cluster's GCS, and the dashboard (with the job API).
pub const RAY_GCS_PORT: u16 = 6379;
pub const RAY_DASHBOARD_PORT: u16 = 8265;
/// The JupyterLab release a `ray` cluster's head may serve, from PyPI, in Ray's environment.
pub const JUPYTERLAB_VERSION: &str = "4.6.6";
/// JupyterLab's port on the head node.
pub const JUPYTER_PORT: u16 = 8888;

/// A node's part in a Ray cluster: the worker starts Ray itself, the head on rank 0 and a
/// Ray worker joining the head's overlay address on the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RayOrder {
    pub head_address: Ipv4Addr,
    /// On the head of a cluster with Jupyter: the path JupyterLab serves under, its public
    /// `/t/CLUSTER/0/8888/` (the coordinator hands it requests with that path whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jupyter_base_url: Option<String>,
}

/// Bytes of a relay token.
pub const RELAY_TOKEN_BYTES: usize = 16;
/// The first bytes of every relay datagram.
pub const RELAY_MAGIC: [u8; 2] = *b"FM";
/// Largest datagram the relay forwards: a WireGuard packet of an MTU-sized packet and headers.
pub const RELAY_DATAGRAM_BYTES_MAX: usize = 2048;

const KIND_REGISTER: u8 = 1;
const KIND_REGISTERED: u8 = 2;
const KIND_TO_PEER: u8 = 3;
const KIND_FROM_PEER: u8 = 4;
/// Magic, kind and a reserved byte.
const HEADER_BYTES: usize = 4;

/// One relay datagram, parsed. Borrowed from the buffer it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayPacket<'a> {
    /// Node to relay: here I am (and keep my NAT mapping open).
    Register { token: [u8; RELAY_TOKEN_BYTES] },
    /// Relay to node: registered.
    Registered,
    /// Node to relay: pass `packet` to the node of `rank` in my cluster.
    ToPeer {
        token: [u8; RELAY_TOKEN_BYTES],
        rank: u32,
        packet: &'a [u8],
    },
    /// Relay to node: `packet` from the node of `rank` in your cluster.
    FromPeer { rank: u32, packet: &'a [u8] },
}

impl<'a> RelayPacket<'a> {
    /// Parses a datagram; `None` for anything that is not a well-formed relay datagram
    /// (WireGuard's own packets among them). Never panics.
    pub fn parse(datagram: &'a [u8]) -> Option<RelayPacket<'a>> {
        if datagram.len() < HEADER_BYTES || datagram[..2] != RELAY_MAGIC {
            return None;
        }
        let body = &datagram[HEADER_BYTES..];
        let token = |bytes: &[u8]| -> Option<[u8; RELAY_TOKEN_BYTES]> {
            bytes.get(..RELAY_TOKEN_BYTES)?.try_into().ok()
        };
        let rank_at = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
        };
        match datagram[2] {
            KIND_REGISTER if body.len() == RELAY_TOKEN_BYTES => Some(RelayPacket::Register {
                token: token(body)?,
            }),
            KIND_REGISTERED if body.is_empty() => Some(RelayPacket::Registered),
            KIND_TO_PEER => Some(RelayPacket::ToPeer {
                token: token(body)?,
                rank: rank_at(RELAY_TOKEN_BYTES)?,
                packet: body.get(RELAY_TOKEN_BYTES + 4..)?,
            }),
            KIND_FROM_PEER => Some(RelayPacket::FromPeer {
                rank: rank_at(0)?,
                packet: body.get(4..)?,
            }),
            _ => None,
        }
    }

    /// Appends the datagram's bytes to `out` (cleared first).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&RELAY_MAGIC);
        match self {
            RelayPacket::Register { token } => {
                out.extend_from_slice(&[KIND_REGISTER, 0]);
                out.extend_from_slice(token);
            }
            RelayPacket::Registered => out.extend_from_slice(&[KIND_REGISTERED, 0]),
            RelayPacket::ToPeer {
                token,
                rank,
                packet,
            } => {
                out.extend_from_slice(&[KIND_TO_PEER, 0]);
                out.extend_from_slice(token);
                out.extend_from_slice(&rank.to_be_bytes());
                out.extend_from_slice(packet);
            }
            RelayPacket::FromPeer { rank, packet } => {
                out.extend_from_slice(&[KIND_FROM_PEER, 0]);
                out.extend_from_slice(&rank.to_be_bytes());
                out.extend_from_slice(packet);
            }
        }
    }
}

/// Parses a hex relay token.
pub fn parse_relay_token(text: &str) -> Option<[u8; RELAY_TOKEN_BYTES]> {
    let mut token = [0u8; RELAY_TOKEN_BYTES];
    hex::decode_to_slice(text, &mut token).ok()?;
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_inside_the_clusters_network_and_distinct_by_rank() {
        let network = cluster_network("cls_a");
        assert_eq!(network.octets()[0], 100);
        assert!((64..128).contains(&network.octets()[1]));
        assert_eq!(network.octets()[3], 0);
        assert_eq!(
            node_address("cls_a", 0),
            Ipv4Addr::from(u32::from(network) + 1)
        );
        assert_eq!(node_address("cls_a", 252).octets()[3], 253);
        assert_ne!(cluster_network("cls_a"), cluster_network("cls_b"));
    }

    #[test]
    fn every_relay_packet_parses_back_to_itself() {
        let token = [9u8; RELAY_TOKEN_BYTES];
        let packets = [
            RelayPacket::Register { token },
            RelayPacket::Registered,
            RelayPacket::ToPeer {
                token,
                rank: 3,
                packet: b"\x04\0\0\0data",
            },
            RelayPacket::FromPeer {
                rank: 7,
                packet: b"",
            },
        ];
        let mut bytes = Vec::new();
        for packet in packets {
            packet.write(&mut bytes);
            assert_eq!(RelayPacket::parse(&bytes), Some(packet));
        }
    }

    #[test]
    fn wireguard_packets_and_truncated_ones_are_not_relay_packets() {
        assert_eq!(RelayPacket::parse(&[1, 0, 0, 0, 5, 6]), None);
        let mut bytes = Vec::new();
        RelayPacket::ToPeer {
            token: [1; RELAY_TOKEN_BYTES],
            rank: 1,
            packet: b"x",
        }
        .write(&mut bytes);
        for cut in 0..RELAY_TOKEN_BYTES + 8 {
            assert_eq!(RelayPacket::parse(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = RelayPacket::parse(&bytes);
        }
    }
}
