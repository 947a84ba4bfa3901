//! Each exec node's own network: a namespace named `flotilla-<run_id>` with loopback, and a veth
//! pair to the host carrying a /30 of [`NODE_NETWORK`] so the node reaches the internet through
//! the host (masqueraded). Two nodes on one machine may then both listen on port 8888: the
//! tunnel dials each inside its own namespace ([`dial`]), so even a server bound to 127.0.0.1
//! (Jupyter's default) is reached, and only the node's own ports are.
//!
//! It takes root (`ip netns`, `setns`); elsewhere nodes share the worker's network, as they did
//! before, and the worker says so once. The interfaces' names and addresses are chosen
//! host-wide (a name that exists is skipped), because several workers may share one machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::net::{TcpSocket, TcpStream};

/// The addresses nodes' networks are carved from: a /30 per node, host side `.1`, node `.2`.
pub const NODE_NETWORK: &str = "10.77.0.0/16";
const NODE_NETWORK_BASE: u32 = u32::from_be_bytes([10, 77, 0, 0]);
/// Nodes' networks one machine holds at once (a /16 has this many /30s).
pub const NODE_NETWORKS_MAX: u32 = 1 << 14;
/// Interface names (at most 15 bytes): host end `flh<slot>`, node end `fln<slot>`.
const HOST_INTERFACE_PREFIX: &str = "flh";
const NODE_INTERFACE_PREFIX: &str = "fln";
/// Namespace names: this prefix and the run id.
pub const NAMESPACE_PREFIX: &str = "flotilla-";
/// Slots tried before giving up (others are taken by other nodes, or other workers').
const SLOT_TRIES_MAX: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("no free node network slot after {SLOT_TRIES_MAX} tries")]
    NoSlot,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether nodes get networks of their own here, found once.
#[derive(Debug, Clone)]
pub struct NodeNetworks {
    /// Where namespaces' markers go, so a restarted worker removes the ones it left.
    markers_dir: Option<PathBuf>,
}

impl NodeNetworks {
    /// Private networks when this process is root and has `ip`; the outbound rules (forwarding,
    /// masquerade, nothing from nodes to the host itself) are put in place once, best effort.
    pub fn detect(data_dir: &Path) -> NodeNetworks {
        if !crate::sandbox::running_as_root() || ip(&["netns", "list"]).is_err() {
            tracing::warn!(
                "not root or no `ip`: nodes share this machine's network, so two nodes here cannot both use one port"
            );
            return NodeNetworks::shared();
        }
        if let Err(error) = host_rules() {
            tracing::warn!(%error, "nodes' networks have no way out: their traffic to the internet is dropped");
        }
        let markers_dir = data_dir.join("netns");
        if let Err(error) = std::fs::create_dir_all(&markers_dir) {
            tracing::warn!(%error, "cannot keep node network markers: nodes share this machine's network");
            return NodeNetworks::shared();
        }
        let networks = NodeNetworks {
            markers_dir: Some(markers_dir),
        };
        networks.sweep_leftovers();
        networks
    }

    /// Nodes share the worker's network.
    pub fn shared() -> NodeNetworks {
        NodeNetworks { markers_dir: None }
    }

    pub fn private(&self) -> bool {
        self.markers_dir.is_some()
    }

    /// Makes `run_id`'s network; `None` when nodes share the worker's. Blocks on `ip`.
    pub fn create(&self, run_id: &str) -> Result<Option<NodeNetwork>, NetnsError> {
        let Some(markers_dir) = &self.markers_dir else {
            return Ok(None);
        };
        let name = format!("{NAMESPACE_PREFIX}{run_id}");
        let marker = markers_dir.join(&name);
        std::fs::write(&marker, b"")?;
        // A namespace of the same name is a leftover of this very run: start afresh.
        let _ = ip(&["netns", "delete", &name]);
        ip(&["netns", "add", &name])?;
        let network = NodeNetwork { name, marker };
        match network.wire() {
            Ok(()) => Ok(Some(network)),
            Err(error) => {
                network.remove();
                Err(error)
            }
        }
    }

    /// Removes the namespaces a previous run of this worker left (their nodes died with it).
    fn sweep_leftovers(&self) {
        let Some(markers_dir) = &self.markers_dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(markers_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NAMESPACE_PREFIX) {
                let _ = ip(&["netns", "delete", &name]);
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// One node's network namespace.
#[derive(Debug)]
pub struct NodeNetwork {
    name: String,
    marker: PathBuf,
}

impl NodeNetwork {
    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path, for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Loopback up, then a veth pair on the first free slot, addressed and routed.
    fn wire(&self) -> Result<(), NetnsError> {
        ip(&["-n", &self.name, "link", "set", "lo", "up"])?;
        let slot = self.claim_slot()?;
        let (host, node) = slot_addresses(slot);
        let host_if = format!("{HOST_INTERFACE_PREFIX}{slot}");
        let node_if = format!("{NODE_INTERFACE_PREFIX}{slot}");
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let n = self.name.as_str();
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{node}/30"),
            "dev",
            &node_if,
        ])?;
        ip(&["-n", n, "link", "set", &node_if, "up"])?;
        ip(&["-n", n, "route", "add", "default", "via", &host.to_string()])?;
        Ok(())
    }

    /// Makes the veth pair on a slot no interface of this machine uses yet.
    fn claim_slot(&self) -> Result<u32, NetnsError> {
        let start = random_u32() % NODE_NETWORKS_MAX;
        for offset in 0..SLOT_TRIES_MAX {
            let slot = (start + offset) % NODE_NETWORKS_MAX;
            let host_if = format!("{HOST_INTERFACE_PREFIX}{slot}");
            let node_if = format!("{NODE_INTERFACE_PREFIX}{slot}");
            let made = ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &node_if, "netns",
                &self.name,
            ]);
            match made {
                Ok(()) => return Ok(slot),
                Err(NetnsError::Command { message, .. }) if message.contains("exists") => {}
                Err(error) => return Err(error),
            }
        }
        Err(NetnsError::NoSlot)
    }

    /// Deletes the namespace (its veth pair goes with it) and the marker. Blocks on `ip`.
    pub fn remove(&self) {
        if let Err(error) = ip(&["netns", "delete", &self.name]) {
            tracing::warn!(namespace = %self.name, %error, "cannot remove a node's network");
        }
        let _ = std::fs::remove_file(&self.marker);
    }
}

/// The host's and the node's address on `slot`.
fn slot_addresses(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    assert!(slot < NODE_NETWORKS_MAX);
    let base = NODE_NETWORK_BASE + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the operating system has a random source");
    u32::from_le_bytes(bytes)
}

/// Forwarding on, nodes' traffic to elsewhere masqueraded (and let through a FORWARD chain
/// that drops by default, as Docker leaves it), and nothing from a node to the host's own
/// services or to another node's network. Each rule goes in once, at the head of its chain.
fn host_rules() -> Result<(), NetnsError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")?;
    let nodes = format!("{HOST_INTERFACE_PREFIX}+");
    let nodes = nodes.as_str();
    let masquerade = [
        "-s",
        NODE_NETWORK,
        "!",
        "-d",
        NODE_NETWORK,
        "-j",
        "MASQUERADE",
    ];
    ensure_rule("nat", "POSTROUTING", &masquerade)?;
    ensure_rule("filter", "INPUT", &["-i", nodes, "-j", "DROP"])?;
    let replies = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];
    let inbound: Vec<&str> = ["-o", nodes].iter().chain(&replies).copied().collect();
    ensure_rule(
        "filter",
        "FORWARD",
        &[&inbound[..], &["-j", "ACCEPT"]].concat(),
    )?;
    ensure_rule(
        "filter",
        "FORWARD",
        &["-i", nodes, "!", "-o", nodes, "-j", "ACCEPT"],
    )?;
    ensure_rule(
        "filter",
        "FORWARD",
        &["-i", nodes, "-o", nodes, "-j", "DROP"],
    )?;
    Ok(())
}

/// Inserts `rule` at the head of `chain` in `table` unless it is there.
fn ensure_rule(table: &str, chain: &str, rule: &[&str]) -> Result<(), NetnsError> {
    let with = |action: &'static str| -> Vec<&str> {
        ["-w", "-t", table, action, chain]
            .into_iter()
            .chain(rule.iter().copied())
            .collect()
    };
    if run("iptables", &with("-C")).is_ok() {
        return Ok(());
    }
    run("iptables", &with("-I"))
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), NetnsError> {
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    let failed = |message: String| NetnsError::Command {
        command: format!("{program} {}", args.join(" ")),
        message,
    };
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        )),
        Err(error) => Err(failed(error.to_string())),
    }
}

/// Dials made at once in one namespace, at most; more are refused (each is a renter's
/// connection being opened).
const DIALS_WAITING_MAX: usize = 256;

type SocketAnswer = tokio::sync::oneshot::Sender<std::io::Result<TcpSocket>>;

/// Makes TCP sockets inside one node's network namespace, on a thread that entered it once:
/// a socket belongs to the namespace it was made in, so connecting it (on the runtime, never
/// blocking) reaches that node's loopback, and a connection costs neither a thread nor a
/// `setns` of its own. No thread of the worker's runtime ever enters a node's network. The
/// thread ends when the last handle is dropped (the node's ports leave the port table).
#[derive(Debug, Clone)]
pub struct NamespaceSockets {
    requests: std::sync::mpsc::SyncSender<SocketAnswer>,
}

impl NamespaceSockets {
    /// The socket thread of the namespace at `namespace` (a path to `setns` into). A namespace
    /// it cannot enter answers each dial with the reason.
    pub fn open(namespace: &Path) -> NamespaceSockets {
        let (requests, queue) = std::sync::mpsc::sync_channel::<SocketAnswer>(DIALS_WAITING_MAX);
        let namespace = namespace.to_owned();
        // Should the thread not start, the queue is dropped and every dial says so.
        let _ = std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                let entered = enter(&namespace).map_err(|e| e.to_string());
                for answer in queue {
                    let made = match &entered {
                        Ok(()) => TcpSocket::new_v4(),
                        Err(reason) => Err(std::io::Error::other(format!(
                            "cannot enter the node's network: {reason}"
                        ))),
                    };
                    let _ = answer.send(made);
                }
            });
        NamespaceSockets { requests }
    }

    /// Connects to `port` on the namespace's loopback.
    pub async fn dial(&self, port: u16) -> std::io::Result<TcpStream> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.requests
            .try_send(answer)
            .map_err(|error| match error {
                std::sync::mpsc::TrySendError::Full(_) => {
                    std::io::Error::other("too many connections being opened to this node")
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    std::io::Error::other("the node's socket thread is gone")
                }
            })?;
        let socket = answered
            .await
            .map_err(|_| std::io::Error::other("the node's socket thread is gone"))??;
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
    }
}

fn enter(namespace: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(namespace)?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

/// Connects to `port` on loopback inside the namespace at `namespace`, once.
pub async fn dial(namespace: &Path, port: u16) -> std::io::Result<TcpStream> {
    NamespaceSockets::open(namespace).dial(port).await
}

#[cfg(test)]
mod tests;
