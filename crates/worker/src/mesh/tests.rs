use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;
use crate::netns::{NodeNetwork, NodeNetworks};

/// A relay like the coordinator's, for the nodes of one test: tokens to ranks.
fn relay(tokens: HashMap<[u8; RELAY_TOKEN_BYTES], u32>) -> (SocketAddr, Arc<AtomicBool>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let address = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut endpoints: HashMap<u32, SocketAddr> = HashMap::new();
        let mut buffer = [0u8; 4096];
        let mut out = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let Ok((length, from)) = socket.recv_from(&mut buffer) else {
                continue;
            };
            match RelayPacket::parse(&buffer[..length]) {
                Some(RelayPacket::Register { token }) => {
                    endpoints.insert(tokens[&token], from);
                    RelayPacket::Registered.write(&mut out);
                    socket.send_to(&out, from).unwrap();
                }
                Some(RelayPacket::ToPeer {
                    token,
                    rank,
                    packet,
                }) => {
                    let Some(to) = endpoints.get(&rank) else {
                        continue;
                    };
                    let from_rank = tokens[&token];
                    RelayPacket::FromPeer {
                        rank: from_rank,
                        packet,
                    }
                    .write(&mut out);
                    socket.send_to(&out, to).unwrap();
                }
                _ => {}
            }
        }
    });
    (address, stop)
}

struct Node {
    network: NodeNetwork,
    mesh: MeshNode,
    rank: u32,
}

impl Node {
    fn peer(&self, direct: bool) -> MeshPeer {
        MeshPeer {
            rank: self.rank,
            address: self.mesh.address(),
            public_key: self.mesh.public_key(),
            endpoint: direct.then(|| format!("127.0.0.1:{}", self.mesh.port())),
        }
    }
}

fn node(networks: &NodeNetworks, rank: u32, address: Ipv4Addr, relay: SocketAddr) -> Node {
    let suffix = hex::encode(std::process::id().to_le_bytes());
    let network = networks
        .create(&format!("run_mesh{rank}{address}{suffix}").replace('.', ""))
        .unwrap()
        .unwrap();
    let order = MeshOrder {
        address,
        relay_port: relay.port(),
        relay_token: hex::encode([rank as u8; RELAY_TOKEN_BYTES]),
    };
    let mesh = MeshNode::start(&network.path(), network.name(), &order, relay).unwrap();
    Node {
        network,
        mesh,
        rank,
    }
}

/// Serves one connection on `port` of every address inside `network`, answering `reply`.
fn serve_once(network: &NodeNetwork, port: u16, reply: &'static [u8]) {
    let namespace = network.path();
    let (bound, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&namespace);
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
        bound.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(reply).unwrap();
    });
    ready.recv().unwrap();
}

fn enter(namespace: &Path) {
    let file = File::open(namespace).unwrap();
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}

/// Connects from inside `network` to `address:port` and reads to the end.
fn fetch(network: &NodeNetwork, address: Ipv4Addr, port: u16) -> std::io::Result<Vec<u8>> {
    fetch_within(network, address, port, Duration::from_secs(8))
}

fn fetch_within(
    network: &NodeNetwork,
    address: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let namespace = network.path();
    std::thread::spawn(move || {
        enter(&namespace);
        let target = SocketAddr::from((address, port));
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .join()
    .unwrap()
}

fn stop(nodes: Vec<Node>) {
    for node in nodes {
        node.mesh.stop();
        node.network.remove();
    }
}

/// Two nodes reach each other's overlay address directly and through the relay; a node
/// whose key its target does not hold gets nothing through, though it knows the target's key
/// and address.
#[test]
fn nodes_reach_each_other_directly_and_through_the_relay_and_strangers_do_not() {
    if !crate::sandbox::running_as_root() {
        eprintln!("skipped: meshes take root");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let networks = NodeNetworks::detect(data.path());
    let base = u32::from(flotilla_proto::mesh::cluster_network("cls_mesh_test"));
    let address = |host: u32| Ipv4Addr::from(base + host);
    let tokens = (0..3).map(|r| ([r as u8; RELAY_TOKEN_BYTES], r)).collect();
    let (relay_address, relay_stop) = relay(tokens);
    let a = node(&networks, 0, address(1), relay_address);
    let b = node(&networks, 1, address(2), relay_address);
    a.mesh.set_peers(&[b.peer(true)]);
    b.mesh.set_peers(&[a.peer(true)]);
    serve_once(&b.network, 9000, b"direct");
    assert_eq!(fetch(&a.network, address(2), 9000).unwrap(), b"direct");

    // The same pair with no endpoints: only the relay joins them.
    a.mesh.set_peers(&[]);
    b.mesh.set_peers(&[]);
    a.mesh.set_peers(&[b.peer(false)]);
    b.mesh.set_peers(&[a.peer(false)]);
    serve_once(&b.network, 9001, b"relayed");
    assert_eq!(fetch(&a.network, address(2), 9001).unwrap(), b"relayed");

    // A third node that knows a's key and address, but whom a does not know.
    let stranger = node(&networks, 2, address(3), relay_address);
    stranger.mesh.set_peers(&[a.peer(true)]);
    serve_once(&a.network, 9002, b"secret");
    let reached = fetch_within(&stranger.network, address(1), 9002, Duration::from_secs(3));
    assert!(reached.is_err(), "a stranger got through: {reached:?}");
    // a itself still serves the cluster: b fetches what the stranger could not.
    assert_eq!(fetch(&b.network, address(1), 9002).unwrap(), b"secret");
    relay_stop.store(true, Ordering::Relaxed);
    stop(vec![a, b, stranger]);
}

/// Why a peer without a session is sent new initiations: once both ends' first initiations
/// are lost, WireGuard sends none again for 5 s of its own accord; a forced one completes the
/// handshake at once.
#[test]
fn a_forced_initiation_meets_a_peer_whose_first_one_was_lost() {
    let (a_secret, b_secret) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    let (a_public, b_public) = (PublicKey::from(&a_secret), PublicKey::from(&b_secret));
    let mut a = Tunn::new(a_secret, b_public, None, None, 0, None);
    let mut b = Tunn::new(b_secret, a_public, None, None, 1, None);
    let (mut out, mut answer, mut done) = (vec![0u8; 2048], vec![0u8; 2048], vec![0u8; 2048]);
    // Both first initiations go nowhere (each end's peer did not know it yet).
    assert!(matches!(
        a.format_handshake_initiation(&mut out, false),
        TunnResult::WriteToNetwork(_)
    ));
    assert!(matches!(
        b.format_handshake_initiation(&mut out, false),
        TunnResult::WriteToNetwork(_)
    ));
    assert!(
        matches!(
            a.format_handshake_initiation(&mut out, false),
            TunnResult::Done
        ),
        "WireGuard does not repeat an initiation in flight"
    );
    let TunnResult::WriteToNetwork(initiation) = a.format_handshake_initiation(&mut out, true)
    else {
        panic!("a forced initiation is sent");
    };
    let TunnResult::WriteToNetwork(response) = b.decapsulate(None, initiation, &mut answer) else {
        panic!("the peer answers a forced initiation");
    };
    let _ = a.decapsulate(None, response, &mut done);
    assert!(
        a.time_since_last_handshake().is_some(),
        "no session after the answer"
    );
}

#[test]
fn initiations_repeat_each_second_at_first_and_at_the_switch_to_the_relay() {
    let ms = Duration::from_millis;
    assert!(!initiation_due(ms(500), ms(500), false));
    assert!(initiation_due(ms(1_200), ms(HANDSHAKE_RETRY_MS), false));
    assert!(initiation_due(ms(DIRECT_PATIENCE_MS), ms(100), true));
    assert!(!initiation_due(
        ms(FIRST_HANDSHAKE_FAST_MS),
        ms(10 * HANDSHAKE_RETRY_MS),
        false
    ));
}
