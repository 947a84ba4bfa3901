//! A node's end of its cluster mesh: a TUN interface inside the node's network namespace,
//! carrying the cluster's overlay addresses, and a WireGuard data path in this process
//! (boringtun's protocol over one UDP socket in the worker's own network).
//!
//! Packets the node sends to a peer's overlay address are encrypted for that peer and sent to
//! its endpoint, or through the coordinator's relay when no direct handshake has completed in
//! [`DIRECT_PATIENCE_MS`]. Packets received are written to the interface only when they come
//! from the peer's own address and are for this node's: the overlay reaches the cluster's
//! nodes and nothing else (not the supplier's network, nor other clusters, whose keys a node
//! never has).
//!
//! Three threads per node: interface to network, network to interface, and WireGuard's
//! timers. Each wakes at least every [`POLL_MS`] to notice [`MeshNode::stop`], which must
//! come before the namespace is deleted: deleting a namespace under a live TUN file has
//! wedged processes in the kernel.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use flotilla_proto::mesh::{
    MESH_MTU_BYTES, MESH_PREFIX_LEN, MeshOrder, MeshPeer, RELAY_TOKEN_BYTES, RelayPacket,
    parse_relay_token,
};

/// The overlay interface's name inside the node's namespace (each node has its own).
pub const INTERFACE: &str = "flmesh0";
/// How long a thread waits for its file before checking whether to stop.
const POLL_MS: u64 = 200;
/// How often WireGuard's timers run (handshake retries, keepalives, expiry).
const TIMER_TICK_MS: u64 = 250;
/// How long a peer is tried directly before its packets go through the relay.
pub const DIRECT_PATIENCE_MS: u64 = 3_000;
/// A peer without a session is sent a new handshake initiation this often, for its first
/// [`FIRST_HANDSHAKE_FAST_MS`]. WireGuard's own retry waits 5 s: when a cluster's nodes start
/// together, each one's first initiation can reach the other before it knows its peer, and
/// both are dropped (a Ray worker then waited 5 s for its head).
const HANDSHAKE_RETRY_MS: u64 = 1_000;
const FIRST_HANDSHAKE_FAST_MS: u64 = 90_000;
/// Registration with the relay: every second until it answers, then this often (it keeps a
/// NAT's mapping for the node's socket open, too).
const REGISTER_RETRY_MS: u64 = 1_000;
const REGISTER_INTERVAL_MS: u64 = 15_000;
/// Keepalive of each WireGuard session, so NATs between nodes keep their mappings.
const PERSISTENT_KEEPALIVE_S: u16 = 15;
/// Largest packet read from the interface or the socket.
const PACKET_BYTES_MAX: usize = 65_536;
/// The interface's transmit queue: room for a burst while the outbound thread is preempted
/// (TUN's default of 500 drops packets that TCP then backs off for).
const TUN_QUEUE_PACKETS: u32 = 1_000;
/// The UDP socket's buffers, each way: a preempted inbound thread must not drop a window's
/// worth of datagrams (the default holds about 60).
const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;
/// WireGuard's overhead on a data packet, and its smallest buffer for handshakes.
const WIREGUARD_OVERHEAD_BYTES: usize = 32;
/// Peers one node has (a cluster's nodes less itself).
pub const PEERS_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot make the mesh interface: {0}")]
    Interface(std::io::Error),
    #[error("`{0}` failed: {1}")]
    Command(String, String),
    #[error("the relay token is not {RELAY_TOKEN_BYTES} hex-encoded bytes")]
    Token,
    #[error("mesh socket: {0}")]
    Socket(std::io::Error),
}

/// A running mesh endpoint for one node.
pub struct MeshNode {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNode")
            .field("address", &self.shared.address)
            .finish_non_exhaustive()
    }
}

struct Shared {
    address: Ipv4Addr,
    secret: StaticSecret,
    tun: File,
    socket: UdpSocket,
    relay: SocketAddr,
    token: [u8; RELAY_TOKEN_BYTES],
    peers: RwLock<Vec<Arc<Peer>>>,
    registered: AtomicBool,
    stop: AtomicBool,
}

struct Peer {
    rank: u32,
    address: Ipv4Addr,
    public_key: [u8; 32],
    /// The address the coordinator gave, then the one its packets last came from directly.
    endpoint: Mutex<Option<SocketAddr>>,
    via_relay: AtomicBool,
    since: Instant,
    /// When this end last sent a handshake initiation of its own accord.
    initiated_at: Mutex<Instant>,
    tunn: Mutex<Tunn>,
}

impl MeshNode {
    /// Makes the interface in the namespace at `namespace` (named `namespace_name` for `ip`),
    /// addresses it, binds the socket, and starts the threads. Blocks.
    pub fn start(
        namespace: &Path,
        namespace_name: &str,
        order: &MeshOrder,
        relay: SocketAddr,
    ) -> Result<MeshNode, MeshError> {
        let token = parse_relay_token(&order.relay_token).ok_or(MeshError::Token)?;
        let tun = open_tun_in(namespace).map_err(MeshError::Interface)?;
        let address = format!("{}/{MESH_PREFIX_LEN}", order.address);
        let mtu = MESH_MTU_BYTES.to_string();
        ip(namespace_name, &["addr", "add", &address, "dev", INTERFACE])?;
        let queue = TUN_QUEUE_PACKETS.to_string();
        ip(
            namespace_name,
            &[
                "link",
                "set",
                INTERFACE,
                "mtu",
                &mtu,
                "txqueuelen",
                &queue,
                "up",
            ],
        )?;
        let socket =
            UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(MeshError::Socket)?;
        enlarge_buffers(&socket);
        socket
            .set_read_timeout(Some(Duration::from_millis(POLL_MS)))
            .map_err(MeshError::Socket)?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system has a random source");
        let shared = Arc::new(Shared {
            address: order.address,
            secret: StaticSecret::from(secret),
            tun,
            socket,
            relay,
            token,
            peers: RwLock::new(Vec::new()),
            registered: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let spawn = |name: &str, body: fn(&Shared)| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || body(&shared))
                .map_err(MeshError::Socket)
        };
        let threads = vec![
            spawn("mesh-out", outbound)?,
            spawn("mesh-in", inbound)?,
            spawn("mesh-timers", timers)?,
        ];
        Ok(MeshNode {
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Hex of the node's WireGuard public key.
    pub fn public_key(&self) -> String {
        hex::encode(PublicKey::from(&self.shared.secret).as_bytes())
    }

    pub fn address(&self) -> Ipv4Addr {
        self.shared.address
    }

    /// The UDP port of the node's socket, on every address of the worker's network.
    pub fn port(&self) -> u16 {
        self.shared.socket.local_addr().map_or(0, |a| a.port())
    }

    /// Replaces the peer list. A peer whose key is unchanged keeps its session.
    pub fn set_peers(&self, peers: &[MeshPeer]) {
        let shared = &self.shared;
        let mut current = shared.peers.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::with_capacity(peers.len().min(PEERS_MAX));
        for peer in peers.iter().take(PEERS_MAX) {
            let Some(public_key) = parse_key(&peer.public_key) else {
                tracing::warn!(rank = peer.rank, "a mesh peer's key is malformed; skipped");
                continue;
            };
            let endpoint = peer.endpoint.as_deref().and_then(|e| e.parse().ok());
            let kept = current
                .iter()
                .find(|p| p.rank == peer.rank && p.public_key == public_key);
            match kept {
                Some(kept) => {
                    let mut known = kept.endpoint.lock().unwrap_or_else(PoisonError::into_inner);
                    if known.is_none() {
                        *known = endpoint;
                    }
                    next.push(kept.clone());
                }
                None => next.push(Arc::new(shared.new_peer(peer, public_key, endpoint))),
            }
        }
        *current = next;
    }

    /// Stops the threads and closes the interface's file. Blocks at most a few poll periods.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn new_peer(
        &self,
        peer: &MeshPeer,
        public_key: [u8; 32],
        endpoint: Option<SocketAddr>,
    ) -> Peer {
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(public_key),
            None,
            Some(PERSISTENT_KEEPALIVE_S),
            peer.rank,
            None,
        );
        let peer = Peer {
            rank: peer.rank,
            address: peer.address,
            public_key,
            endpoint: Mutex::new(endpoint),
            via_relay: AtomicBool::new(endpoint.is_none()),
            since: Instant::now(),
            initiated_at: Mutex::new(Instant::now()),
            tunn: Mutex::new(tunn),
        };
        // Both ends start a handshake at once: that is what opens NATs on the way.
        let mut out = vec![0u8; 256];
        let mut scratch = Vec::new();
        let started = peer
            .tunn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .format_handshake_initiation(&mut out, false);
        if let TunnResult::WriteToNetwork(bytes) = started {
            self.send(&peer, bytes, &mut scratch);
        }
        peer
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn peers(&self) -> Vec<Arc<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends a WireGuard packet to `peer` the way it is reached now.
    fn send(&self, peer: &Peer, packet: &[u8], scratch: &mut Vec<u8>) {
        let endpoint = *peer.endpoint.lock().unwrap_or_else(PoisonError::into_inner);
        let direct = endpoint.filter(|_| !peer.via_relay.load(Ordering::Relaxed));
        let sent = match direct {
            Some(endpoint) => self.socket.send_to(packet, endpoint),
            None => self.relay_to(peer.rank, packet, scratch),
        };
        if let Err(error) = sent {
            tracing::trace!(%error, rank = peer.rank, "mesh send failed");
        }
    }

    fn relay_to(&self, rank: u32, packet: &[u8], scratch: &mut Vec<u8>) -> std::io::Result<usize> {
        RelayPacket::ToPeer {
            token: self.token,
            rank,
            packet,
        }
        .write(scratch);
        self.socket.send_to(scratch, self.relay)
    }

    fn register(&self, scratch: &mut Vec<u8>) {
        RelayPacket::Register { token: self.token }.write(scratch);
        let _ = self.socket.send_to(scratch, self.relay);
    }
}

/// Interface to network: each packet for a peer's address, encrypted for that peer.
fn outbound(shared: &Shared) {
    let mut packet = vec![0u8; PACKET_BYTES_MAX];
    let mut out = vec![0u8; PACKET_BYTES_MAX + WIREGUARD_OVERHEAD_BYTES];
    let mut scratch = Vec::with_capacity(PACKET_BYTES_MAX);
    let mut tun = &shared.tun;
    while !shared.stopping() {
        // The interface is non-blocking: read first, and wait only when it is empty (one
        // system call per packet under load, not two).
        let length = match tun.read(&mut packet) {
            Ok(length) => length,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                readable(&shared.tun);
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(%error, "mesh interface read failed; the node's mesh stops");
                return;
            }
        };
        let Some(destination) = ipv4_destination(&packet[..length]) else {
            continue;
        };
        let peers = shared.peers.read().unwrap_or_else(PoisonError::into_inner);
        let Some(peer) = peers.iter().find(|p| p.address == destination).cloned() else {
            continue;
        };
        drop(peers);
        // The session's lock is held to encrypt only, not while sending, which on loopback
        // runs the receiver's whole path.
        let encrypted = peer
            .tunn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .encapsulate(&packet[..length], &mut out);
        if let TunnResult::WriteToNetwork(bytes) = encrypted {
            shared.send(&peer, bytes, &mut scratch);
        }
    }
}

/// Network to interface: relay answers, and WireGuard packets from peers.
fn inbound(shared: &Shared) {
    let mut datagram = vec![0u8; PACKET_BYTES_MAX];
    let mut out = vec![0u8; PACKET_BYTES_MAX];
    let mut scratch = Vec::with_capacity(PACKET_BYTES_MAX);
    while !shared.stopping() {
        let (length, from) = match shared.socket.recv_from(&mut datagram) {
            Ok(received) => received,
            Err(_) => continue,
        };
        let received = &datagram[..length];
        let (packet, rank, relayed) = if from == shared.relay {
            match RelayPacket::parse(received) {
                Some(RelayPacket::Registered) => {
                    shared.registered.store(true, Ordering::Relaxed);
                    continue;
                }
                Some(RelayPacket::FromPeer { rank, packet }) => (packet, Some(rank), true),
                _ => continue,
            }
        } else {
            (received, None, false)
        };
        let expected = |p: &Peer| match rank {
            Some(rank) => p.rank == rank,
            None => *p.endpoint.lock().unwrap_or_else(PoisonError::into_inner) == Some(from),
        };
        // The peer it should be from first; then, for a direct packet, every other peer (one
        // whose address changed, such as a NAT's new mapping).
        let first = shared
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|p| expected(p))
            .cloned();
        if let Some(peer) = &first
            && receive(shared, peer, packet, from, relayed, &mut out, &mut scratch)
        {
            continue;
        }
        if relayed {
            continue;
        }
        let others = shared.peers();
        let others = others
            .iter()
            .filter(|p| first.as_ref().is_none_or(|f| !Arc::ptr_eq(f, p)));
        for peer in others {
            if receive(shared, peer, packet, from, relayed, &mut out, &mut scratch) {
                break;
            }
        }
    }
}

/// Decrypts one packet as `peer`'s; whether it was theirs.
fn receive(
    shared: &Shared,
    peer: &Peer,
    packet: &[u8],
    from: SocketAddr,
    relayed: bool,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> bool {
    let reply = |shared: &Shared, bytes: &[u8], scratch: &mut Vec<u8>| {
        let sent = if relayed {
            shared.relay_to(peer.rank, bytes, scratch)
        } else {
            shared.socket.send_to(bytes, from)
        };
        if let Err(error) = sent {
            tracing::trace!(%error, "mesh reply failed");
        }
    };
    // The session's lock is held to decrypt only, not while writing to the interface, which
    // runs the node's TCP receive path inline.
    let decrypted = peer
        .tunn
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .decapsulate(Some(from.ip()), packet, out);
    match decrypted {
        TunnResult::Err(_) => return false,
        TunnResult::Done => {}
        TunnResult::WriteToNetwork(bytes) => {
            reply(shared, bytes, scratch);
            // Packets queued while the handshake was under way go now.
            let mut tunn = peer.tunn.lock().unwrap_or_else(PoisonError::into_inner);
            while let TunnResult::WriteToNetwork(bytes) = tunn.decapsulate(None, &[], out) {
                reply(shared, bytes, scratch);
            }
        }
        TunnResult::WriteToTunnelV4(bytes, source) => {
            let destination = ipv4_destination(bytes);
            if source == peer.address && destination == Some(shared.address) {
                let _ = (&shared.tun).write(bytes);
            }
        }
        TunnResult::WriteToTunnelV6(..) => {}
    }
    if !relayed {
        *peer.endpoint.lock().unwrap_or_else(PoisonError::into_inner) = Some(from);
        peer.via_relay.store(false, Ordering::Relaxed);
    }
    true
}

/// WireGuard's timers, the switch to the relay, and registration with it.
fn timers(shared: &Shared) {
    let mut out = vec![0u8; PACKET_BYTES_MAX];
    let mut scratch = Vec::with_capacity(PACKET_BYTES_MAX);
    let mut registered_at: Option<Instant> = None;
    while !shared.stopping() {
        let interval_ms = if shared.registered.load(Ordering::Relaxed) {
            REGISTER_INTERVAL_MS
        } else {
            REGISTER_RETRY_MS
        };
        if registered_at.is_none_or(|at| at.elapsed() >= Duration::from_millis(interval_ms)) {
            shared.register(&mut scratch);
            registered_at = Some(Instant::now());
        }
        for peer in shared.peers() {
            tick(shared, &peer, &mut out, &mut scratch);
        }
        std::thread::sleep(Duration::from_millis(TIMER_TICK_MS));
    }
}

/// One timer tick of `peer`: WireGuard's own timers; and while it has no session, the switch
/// to the relay once direct handshakes had their time, and a new initiation at each switch
/// and every [`HANDSHAKE_RETRY_MS`] of its first [`FIRST_HANDSHAKE_FAST_MS`].
fn tick(shared: &Shared, peer: &Peer, out: &mut [u8], scratch: &mut Vec<u8>) {
    let mut tunn = peer.tunn.lock().unwrap_or_else(PoisonError::into_inner);
    if tunn.time_since_last_handshake().is_none() {
        let age = peer.since.elapsed();
        let mut initiated_at = peer
            .initiated_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let switched = age >= Duration::from_millis(DIRECT_PATIENCE_MS)
            && !peer.via_relay.swap(true, Ordering::Relaxed);
        if switched {
            tracing::info!(
                rank = peer.rank,
                "no direct handshake with a mesh peer: using the relay"
            );
        }
        if initiation_due(age, initiated_at.elapsed(), switched) {
            if let TunnResult::WriteToNetwork(bytes) = tunn.format_handshake_initiation(out, true) {
                shared.send(peer, bytes, scratch);
            }
            *initiated_at = Instant::now();
        }
    }
    if let TunnResult::WriteToNetwork(bytes) = tunn.update_timers(out) {
        shared.send(peer, bytes, scratch);
    }
}

/// Whether this end sends a peer without a session a new handshake initiation now, `age`
/// after the peer was added and `since_initiated` after its last one: at the switch to the
/// relay, and every [`HANDSHAKE_RETRY_MS`] of the peer's first [`FIRST_HANDSHAKE_FAST_MS`].
fn initiation_due(age: Duration, since_initiated: Duration, switched: bool) -> bool {
    switched
        || (age < Duration::from_millis(FIRST_HANDSHAKE_FAST_MS)
            && since_initiated >= Duration::from_millis(HANDSHAKE_RETRY_MS))
}

/// Whether `file` has a packet within a poll period.
fn readable(file: &File) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(file, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: (POLL_MS * 1_000_000) as _,
    };
    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

/// The destination of an IPv4 packet; none for anything else.
fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let bytes: [u8; 4] = packet[16..20].try_into().ok()?;
    Some(Ipv4Addr::from(bytes))
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).ok()?;
    Some(key)
}

fn ip(namespace_name: &str, args: &[&str]) -> Result<(), MeshError> {
    let output = std::process::Command::new("ip")
        .args(["-n", namespace_name])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output();
    let command = || format!("ip -n {namespace_name} {}", args.join(" "));
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(MeshError::Command(
            command(),
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        )),
        Err(error) => Err(MeshError::Command(command(), error.to_string())),
    }
}

/// Opens a TUN interface named [`INTERFACE`] inside the namespace at `namespace`, from a
/// thread that enters it and ends, so no thread of the worker stays in a node's network.
fn open_tun_in(namespace: &Path) -> std::io::Result<File> {
    let namespace = namespace.to_owned();
    std::thread::Builder::new()
        .name("mesh-tun".into())
        .spawn(move || {
            let file = File::open(&namespace)?;
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            open_tun(INTERFACE)
        })?
        .join()
        .map_err(|_| std::io::Error::other("the interface thread panicked"))?
}

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, and the rest of the union.
const IFREQ_BYTES: usize = 40;

#[allow(unsafe_code)]
fn open_tun(name: &str) -> std::io::Result<File> {
    assert!(name.len() < 16, "interface names are at most 15 bytes");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = [0u8; IFREQ_BYTES];
    request[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    request[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which is 40 bytes on Linux and is
    // what `request` holds; the descriptor is open for the call's whole length.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, request.as_mut_ptr()) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_GETFL and F_SETFL take and return an `int` of flags; the descriptor is open.
    let nonblocking = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !nonblocking {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Sets the socket's buffers to [`SOCKET_BUFFER_BYTES`]: past the system's cap where the
/// worker may (as root), else up to it.
#[allow(unsafe_code)]
fn enlarge_buffers(socket: &UdpSocket) {
    let options = [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ];
    let set = |option: libc::c_int| {
        let size: libc::c_int = SOCKET_BUFFER_BYTES;
        // SAFETY: the option's value is one `int`, passed with its size; the descriptor is
        // open for the call's whole length.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        result == 0
    };
    for (forced, capped) in options {
        if !set(forced) {
            set(capped);
        }
    }
}

/// Where the relay is: the coordinator's host, resolved, at `port`.
pub fn relay_address(coordinator_host: &str, port: u16) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addresses: Vec<SocketAddr> = (coordinator_host, port).to_socket_addrs().ok()?.collect();
    let ipv4 = addresses.iter().find(|a| a.is_ipv4());
    ipv4.or(addresses.first()).copied()
}

#[cfg(test)]
mod tests;
