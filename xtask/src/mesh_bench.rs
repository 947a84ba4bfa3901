//! `cargo xtask bench mesh`: TCP throughput (iperf3) between two network namespaces joined
//! by a veth pair, in one run over three paths: the bare veth, Flotilla's cluster mesh
//! (`flotilla_worker::mesh`, the worker's own data path), and wireguard-go set up the same
//! way; then the time a 2-node Ray cluster takes to be ready (`ray_bench.rs`). Needs root;
//! installs iperf3, wireguard-go and wireguard-tools when missing. Prints one JSON line last.
//!
//! Teardown goes in order: wireguard-go processes stopped and their interfaces deleted, the
//! mesh endpoints stopped, then the namespaces deleted. Deleting a namespace under a live TUN
//! process has wedged processes in the kernel on these machines.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_proto::mesh::{MeshOrder, MeshPeer, node_address};
use flotilla_worker::mesh::MeshNode;

/// Seconds each iperf3 run sends for.
const SEND_S: u32 = 5;
const NAMESPACES: [&str; 2] = ["flbench-a", "flbench-b"];
/// The veth pair's addresses (a /30), and wireguard-go's overlay (a /24).
const VETH: [&str; 2] = ["10.88.0.1", "10.88.0.2"];
const WIREGUARD: [&str; 2] = ["10.89.0.1", "10.89.0.2"];
const WIREGUARD_PORT: u16 = 51_820;
const IPERF_PORT: &str = "5201";
/// The cluster id the mesh's addresses derive from.
const MESH_CLUSTER: &str = "cls_bench";

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) != Some("--here") {
        return crate::rerun_release_bench_with("mesh", args);
    }
    // `--ray-only`: the Ray cluster's start alone, for working on it.
    if args.iter().any(|a| a == "--ray-only") {
        let ray_cluster_ready_ms = crate::ray_bench::cluster_ready_ms()?;
        let figures = serde_json::json!({
            "ray_cluster_ready_ms": ray_cluster_ready_ms.map(|ms| ms.round()),
        });
        println!("{figures}");
        return Ok(());
    }
    if !flotilla_worker::sandbox::running_as_root() {
        bail!("the mesh bench makes network namespaces: run it as root");
    }
    let tools = [
        ("iperf3", "iperf3"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
    ];
    let present = |binary: &str| {
        Command::new("which")
            .arg(binary)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(binary, _)| !present(binary))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        crate::apt_install_without_recommends(&missing)?;
    }
    let namespaces = Namespaces::make()?;
    let veth = iperf(VETH[1])?;
    let mesh = {
        let _mesh = Mesh::start()?;
        iperf(&node_address(MESH_CLUSTER, 1).to_string())?
    };
    let wireguard_go = {
        let _wireguard = WireguardGo::start()?;
        iperf(WIREGUARD[1])?
    };
    drop(namespaces);
    let gbit = |bits: f64| bits / 1e9;
    eprintln!(
        "bench: TCP over the veth {:.2} Gbit/s, Flotilla's mesh {:.2} Gbit/s, wireguard-go {:.2} Gbit/s \
         (target: mesh at least wireguard-go's)",
        gbit(veth),
        gbit(mesh),
        gbit(wireguard_go)
    );
    // A Ray cluster that does not come up leaves its figure null, not the mesh's unprinted.
    let ray_cluster_ready_ms = crate::ray_bench::cluster_ready_ms().unwrap_or_else(|error| {
        eprintln!("bench: no Ray figure: {error:#}");
        None
    });
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let figures = serde_json::json!({
        "send_s": SEND_S,
        "veth_gbit_per_s": round(gbit(veth)),
        "mesh_gbit_per_s": round(gbit(mesh)),
        "wireguard_go_gbit_per_s": round(gbit(wireguard_go)),
        "mesh_throughput_vs_wireguard_go": round(mesh / wireguard_go),
        "mesh_throughput_vs_veth": round(mesh / veth),
        "ray_cluster_ready_ms": ray_cluster_ready_ms.map(|ms| ms.round()),
    });
    println!("{figures}");
    Ok(())
}

/// Bits per second iperf3 received from namespace A at `address` in namespace B.
fn iperf(address: &str) -> Result<f64> {
    let mut server = Spawned(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                NAMESPACES[1],
                "iperf3",
                "-s",
                "-1",
                "-p",
                IPERF_PORT,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                NAMESPACES[0],
                "iperf3",
                "-J",
                "-c",
                address,
                "-p",
                IPERF_PORT,
            ])
            .args(["-t", &SEND_S.to_string()])
            .output()?;
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if let Some(bits) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
            server.stop();
            return Ok(bits);
        }
        if Instant::now() > deadline {
            bail!(
                "iperf3 to {address} failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed when dropped.
struct Spawned(Child);

impl Spawned {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    crate::run(Command::new("ip").args(args).stdout(Stdio::null()))
}

/// The two namespaces and their veth pair; deleted when dropped.
struct Namespaces;

impl Namespaces {
    fn make() -> Result<Namespaces> {
        for name in NAMESPACES {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
            ip(&["netns", "add", name])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        let namespaces = Namespaces;
        let [a, b] = NAMESPACES;
        ip(&[
            "-n", a, "link", "add", "flbv0", "type", "veth", "peer", "name", "flbv1", "netns", b,
        ])?;
        for (index, name) in NAMESPACES.iter().enumerate() {
            let interface = format!("flbv{index}");
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{}/30", VETH[index]),
                "dev",
                &interface,
            ])?;
            ip(&["-n", name, "link", "set", &interface, "up"])?;
        }
        Ok(namespaces)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in NAMESPACES {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
    }
}

/// Two mesh endpoints, one per namespace, peered directly over this process's loopback.
struct Mesh {
    nodes: Vec<MeshNode>,
}

impl Mesh {
    fn start() -> Result<Mesh> {
        // Nothing listens at the relay: the peers are given direct endpoints.
        let relay = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let mut nodes = Vec::new();
        for (rank, name) in NAMESPACES.iter().enumerate() {
            let order = MeshOrder {
                address: node_address(MESH_CLUSTER, rank as u32),
                relay_port: relay.port(),
                relay_token: hex::encode([rank as u8; 16]),
            };
            let path = std::path::Path::new("/run/netns").join(name);
            nodes.push(MeshNode::start(&path, name, &order, relay)?);
        }
        let peer = |rank: usize, node: &MeshNode| MeshPeer {
            rank: rank as u32,
            address: node.address(),
            public_key: node.public_key(),
            endpoint: Some(format!("127.0.0.1:{}", node.port())),
        };
        nodes[0].set_peers(&[peer(1, &nodes[1])]);
        nodes[1].set_peers(&[peer(0, &nodes[0])]);
        Ok(Mesh { nodes })
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.stop();
        }
    }
}

/// wireguard-go in each namespace, peered over the veth.
struct WireguardGo {
    processes: Vec<Spawned>,
}

const WIREGUARD_INTERFACES: [&str; 2] = ["flbwg0", "flbwg1"];

impl WireguardGo {
    fn start() -> Result<WireguardGo> {
        let mut processes = Vec::new();
        for (name, interface) in NAMESPACES.iter().zip(WIREGUARD_INTERFACES) {
            let child = Command::new("ip")
                .args(["netns", "exec", name, "wireguard-go", "-f", interface])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting wireguard-go")?;
            processes.push(Spawned(child));
        }
        let wireguard = WireguardGo { processes };
        let keys = [generate_key()?, generate_key()?];
        let publics = [public_key(&keys[0])?, public_key(&keys[1])?];
        let dir = std::env::temp_dir().join(format!("flbench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for index in 0..2 {
            let (name, interface) = (NAMESPACES[index], WIREGUARD_INTERFACES[index]);
            let other = 1 - index;
            wait_for_interface(name, interface)?;
            let key_file = dir.join(format!("key{index}"));
            std::fs::write(&key_file, &keys[index])?;
            let endpoint = format!("{}:{WIREGUARD_PORT}", VETH[other]);
            let allowed = format!("{}/32", WIREGUARD[other]);
            crate::run(
                Command::new("ip")
                    .args(["netns", "exec", name, "wg", "set", interface, "private-key"])
                    .arg(&key_file)
                    .args(["listen-port", &WIREGUARD_PORT.to_string()])
                    .args([
                        "peer",
                        &publics[other],
                        "allowed-ips",
                        &allowed,
                        "endpoint",
                        &endpoint,
                    ]),
            )?;
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{}/24", WIREGUARD[index]),
                "dev",
                interface,
            ])?;
            ip(&["-n", name, "link", "set", interface, "mtu", "1420", "up"])?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(wireguard)
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        for process in &mut self.processes {
            process.stop();
        }
        for (name, interface) in NAMESPACES.iter().zip(WIREGUARD_INTERFACES) {
            let _ = Command::new("ip")
                .args(["-n", name, "link", "delete", interface])
                .output();
        }
    }
}

fn wait_for_interface(namespace: &str, interface: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let shown = Command::new("ip")
            .args(["-n", namespace, "link", "show", interface])
            .output()?;
        if shown.status.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("wireguard-go made no {interface} in {namespace}")
}

fn generate_key() -> Result<String> {
    let output = Command::new("wg").arg("genkey").output()?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

fn public_key(private: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("wg pubkey's input")?
        .write_all(private.as_bytes())?;
    let output = child.wait_with_output()?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}
