//! Reverse tunnels through the real binaries: a renter reaches a port of its running node
//! with `flotilla connect` (a local listener, or standard input and output), many connections
//! at once and 100 MiB with a checksum; another renter, an undeclared port or a stopped
//! cluster are refused; after a coordinator restart new connections work again.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_client::{Client, ClientError};
use flotilla_proto::api::{ClusterInfo, ClusterSpec, Role};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clusters::{Market, market, sandbox_ready, spec, until_state};
use crate::harness::{BIN, Coordinator, Db, Proc, eventually};
use crate::on_both_databases;

/// An echo server on `port` of the node's loopback, threads per connection.
pub(crate) fn echo_server(port: u16) -> String {
    format!(
        "import socket, threading\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(128)\n\
         def echo(c):\n    \
             while True:\n        \
                 d = c.recv(262144)\n        \
                 if not d: break\n        \
                 c.sendall(d)\n    \
             c.close()\n\
         while True:\n    \
             c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()\n"
    )
}

/// A running service cluster of `nodes` nodes, each running the Python `program` and
/// declaring `port`.
pub(crate) async fn python_service(
    renter: &Client,
    nodes: u32,
    port: u16,
    program: &str,
) -> ClusterInfo {
    let service = ClusterSpec {
        kind: "service".into(),
        ports: vec![port],
        ..spec(nodes, &["python3", "-c", program])
    };
    let cluster: ClusterInfo = renter.post("clusters", &service).await.unwrap();
    until_state(renter, &cluster.id, "running", 30).await
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running one-node echo service, its port, and `flotilla connect`'s process and local
/// address, once the echo answers through it.
pub(crate) async fn echo_service_connected(
    coordinator: &Coordinator,
    renter: &Client,
    renter_key: &str,
) -> (ClusterInfo, u16, Proc, String) {
    let port = free_port();
    let cluster = python_service(renter, 1, port, &echo_server(port)).await;
    let (listener, address) = connect_process(coordinator, renter_key, &cluster.id, port);
    // The node's server may take a moment to listen.
    let ready = eventually(Duration::from_secs(20), || async {
        try_echo(&address, b"ping").await.then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "the echo server answers through the tunnel"
    );
    (cluster, port, listener, address)
}

/// `flotilla connect` to `port` of node 0 of `cluster` as `key`'s holder; the caller adds its
/// mode (`--stdio`, `--fdpass`) if any.
pub(crate) fn connect_command(
    coordinator: &Coordinator,
    key: &str,
    cluster: &str,
    port: u16,
) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "connect",
            cluster,
            "--node",
            "0",
            "--port",
            &port.to_string(),
        ])
        .args(["--url", &coordinator.url, "--api-key", key])
        .args(coordinator.ca_flags());
    command
}

/// `flotilla connect` as a process; the local address it listens on.
pub(crate) fn connect_process(
    coordinator: &Coordinator,
    key: &str,
    cluster: &str,
    port: u16,
) -> (Proc, String) {
    let mut child = connect_command(coordinator, key, cluster, port)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split(':').take(2).collect::<Vec<_>>().join(":").into())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (Proc { child }, address)
}

/// Sends `bytes` through an echo connection while reading it back; the digests of both ends.
pub(crate) async fn echo_through(address: &str, bytes: Vec<u8>) -> ([u8; 32], [u8; 32]) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sent_digest: [u8; 32] = Sha256::digest(&bytes).into();
    let total = bytes.len();
    let sender = tokio::spawn(async move {
        for chunk in bytes.chunks(1 << 20) {
            writer.write_all(chunk).await.unwrap();
        }
        writer.shutdown().await.unwrap();
    });
    let mut received = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut count = 0;
    while count < total {
        let read = reader.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the echo ended after {count} of {total} bytes");
        received.update(&buffer[..read]);
        count += read;
    }
    sender.await.unwrap();
    (sent_digest, received.finalize().into())
}

/// Whether a short message comes back through the tunnel (false on any error: the node may
/// not listen yet).
pub(crate) async fn try_echo(address: &str, message: &[u8]) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(message).await?;
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await?;
        std::io::Result::Ok(back == message)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Ok(true))
    )
}

pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn a_renter_reaches_its_nodes_port_and_no_one_else_does(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let Market {
        coordinator,
        renter_key,
        renter,
        supplier,
        _workers,
        _dirs,
        ..
    } = market(db, 1).await;
    let (cluster, port, listener, address) =
        echo_service_connected(&coordinator, &renter, &renter_key).await;

    // Many connections at once, each its own bytes.
    let parallel: Vec<_> = (0..16u64)
        .map(|seed| {
            let address = address.clone();
            tokio::spawn(
                async move { echo_through(&address, pseudo_random(256 << 10, seed)).await },
            )
        })
        .collect();
    for connection in parallel {
        let (sent, received) = connection.await.unwrap();
        assert_eq!(sent, received);
    }
    // 100 MiB through one connection, compared by checksum at both ends.
    let (sent, received) = echo_through(&address, pseudo_random(100 << 20, 7)).await;
    assert_eq!(sent, received, "100 MiB arrive intact");

    // --stdio carries one connection over standard input and output.
    let mut stdio = connect_command(&coordinator, &renter_key, &cluster.id, port)
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    stdio
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello through stdio\n")
        .unwrap();
    let output = tokio::task::spawn_blocking(move || stdio.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello through stdio\n"
    );

    // Every connection is counted for the node and its device: the ping(s) before, 16
    // parallel ones, 100 MiB and the stdio one, each way. A closing connection's figures
    // land a moment after its bytes, so the two views are read until they agree.
    let moved = 16 * (256 << 10) + (100 << 20);
    let counted = eventually(Duration::from_secs(10), || async {
        let info: ClusterInfo = renter.get(&format!("clusters/{}", cluster.id)).await.ok()?;
        let node = info.nodes[0].clone();
        let device: flotilla_proto::api::DeviceDetail = supplier
            .get(&format!("devices/{}", node.device_ids[0]))
            .await
            .ok()?;
        (node.tunnel.connections >= 19
            && node.tunnel.bytes_from_node >= moved
            && device.device.tunnel == node.tunnel)
            .then_some((info, node))
    })
    .await;
    let (info, node) =
        counted.expect("the node's tunnel traffic is counted, the same for its device");
    assert!(node.tunnel.bytes_to_node >= moved, "{:?}", node.tunnel);
    // The running cluster lists its port's link, and `clusters show` prints it.
    let link_path = format!("/t/{}/0/{port}/", cluster.id);
    assert_eq!(info.port_links.len(), 1);
    assert_eq!(info.port_links[0].path, link_path);
    let (ok, shown, _) = crate::clusters::cli(
        &coordinator,
        &renter_key,
        &["clusters", "show", &cluster.id],
    );
    assert!(
        ok && shown.contains(&format!("{}{link_path}", coordinator.url)),
        "{shown}"
    );

    // Refusals: another renter, a port the cluster did not declare.
    let other_key = coordinator.account("other", &[Role::Renter]).await;
    let path = |port: u16| format!("clusters/{}/connect?node=0&port={port}", cluster.id);
    let refused = coordinator
        .client(Some(&other_key))
        .upgrade(&path(port), "flotilla-tunnel")
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(404), "{refused}");
    match renter.upgrade(&path(port + 1), "flotilla-tunnel").await {
        Err(ClientError::Api {
            status: 422, field, ..
        }) => assert_eq!(field.as_deref(), Some("port")),
        other => panic!("an undeclared port: {other:?}"),
    }

    // A coordinator restart: the worker's tunnel comes back and new connections work.
    // The tunnel's old port (the next one) may be taken by now: any free one will do.
    let mut flags = crate::clusters::market_flags("500");
    flags.extend(["--tunnel-listen", "127.0.0.1:0"]);
    let coordinator = coordinator.restart(&flags);
    let again = eventually(Duration::from_secs(30), || async {
        try_echo(&address, b"after the restart").await.then_some(())
    })
    .await;
    assert!(
        again.is_some(),
        "new connections work after a coordinator restart"
    );

    // A stopped cluster is not reachable.
    let _: ClusterInfo = renter
        .post_empty(&format!("clusters/{}/terminate", cluster.id))
        .await
        .unwrap();
    let refused = renter
        .upgrade(&path(port), "flotilla-tunnel")
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    drop(listener);
    drop(coordinator);
}
on_both_databases!(a_renter_reaches_its_nodes_port_and_no_one_else_does);

/// A server that speaks first, as SSH's does: each connection it accepts gets `hello N`, N
/// counting its connections.
fn greeting_server(port: u16) -> String {
    format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(16)\n\
         n = 0\n\
         while True:\n    \
             c, _ = s.accept(); n += 1; c.sendall(b'hello %d\\n' % n); c.close()\n"
    )
}

/// Reads what `connection` sends until its end, or None if nothing ends within `wait`.
async fn read_to_end_within<S: tokio::io::AsyncRead + Unpin>(
    connection: &mut S,
    wait: Duration,
) -> Option<String> {
    let mut text = Vec::new();
    let read = tokio::time::timeout(wait, connection.read_to_end(&mut text)).await;
    matches!(read, Ok(Ok(_))).then(|| String::from_utf8_lossy(&text).into_owned())
}

async fn a_standby_connection_reaches_the_node_only_once_started(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let Market {
        coordinator,
        renter,
        renter_key,
        _workers,
        _dirs,
        ..
    } = market(db, 1).await;
    let port = free_port();
    let cluster = python_service(&renter, 1, port, &greeting_server(port)).await;
    let path = format!("clusters/{}/connect?node=0&port={port}", cluster.id);
    // The usual connection, once the server listens, is its first.
    let first = eventually(Duration::from_secs(20), || async {
        let mut connection = renter.upgrade(&path, "flotilla-tunnel").await.ok()?;
        read_to_end_within(&mut connection, Duration::from_secs(5)).await
    })
    .await;
    assert_eq!(first.as_deref(), Some("hello 1\n"));

    let standby = format!("{path}&standby=true");
    // Opened and left unstarted: the node hears nothing, and its server never sees it.
    let mut unstarted = renter.upgrade(&standby, "flotilla-tunnel").await.unwrap();
    let heard = read_to_end_within(&mut unstarted, Duration::from_millis(500)).await;
    assert_eq!(
        heard, None,
        "a standby connection is not dialled before its go"
    );
    drop(unstarted);
    // Started with its go byte: dialled then, and the server's greeting comes without a word
    // from the renter.
    let mut started = renter.upgrade(&standby, "flotilla-tunnel").await.unwrap();
    started.write_all(b"!").await.unwrap();
    let greeting = read_to_end_within(&mut started, Duration::from_secs(10)).await;
    assert_eq!(greeting.as_deref(), Some("hello 2\n"));
    drop(started);
    // Another first byte is no go: the connection ends, and the server sees nothing.
    let mut wrong = renter.upgrade(&standby, "flotilla-tunnel").await.unwrap();
    wrong.write_all(b"x").await.unwrap();
    let ended = read_to_end_within(&mut wrong, Duration::from_secs(10)).await;
    assert_eq!(ended.as_deref(), Some(""));
    drop(wrong);
    // A standby connection is checked like any other.
    let undeclared = format!(
        "clusters/{}/connect?node=0&port={}&standby=true",
        cluster.id,
        port + 1
    );
    assert!(matches!(
        renter.upgrade(&undeclared, "flotilla-tunnel").await,
        Err(ClientError::Api { status: 422, .. })
    ));

    // Only started connections are counted: the usual one and the started standby one.
    let counted = eventually(Duration::from_secs(10), || async {
        let info: ClusterInfo = renter.get(&format!("clusters/{}", cluster.id)).await.ok()?;
        let tunnel = info.nodes[0].tunnel;
        (tunnel.connections >= 2).then_some(tunnel)
    })
    .await
    .expect("the started connections are counted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info: ClusterInfo = renter
        .get(&format!("clusters/{}", cluster.id))
        .await
        .unwrap();
    assert_eq!(info.nodes[0].tunnel.connections, 2, "{counted:?}");
    // The go byte is the tunnel's, not the node's.
    assert_eq!(info.nodes[0].tunnel.bytes_to_node, 0);
    let mut last = renter.upgrade(&standby, "flotilla-tunnel").await.unwrap();
    last.write_all(b"!").await.unwrap();
    assert_eq!(
        read_to_end_within(&mut last, Duration::from_secs(10))
            .await
            .as_deref(),
        Some("hello 3\n"),
        "the wrong byte's connection never reached the server"
    );

    // --fdpass hands the connection itself over a Unix socket, as ssh's ProxyUseFdpass
    // expects, and exits; the server's greeting, sent at once, is still in it.
    let fdpass = |stdout: Stdio| {
        connect_command(&coordinator, &renter_key, &cluster.id, port)
            .arg("--fdpass")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let passing = fdpass(std::os::fd::OwnedFd::from(theirs).into());
    assert!(passing.status.success(), "{passing:?}");
    let passed = std::net::TcpStream::from(flotilla_client::fdpass::receive(&ours).unwrap());
    passed.set_nonblocking(true).unwrap();
    let mut passed = tokio::net::TcpStream::from_std(passed).unwrap();
    let greeting = read_to_end_within(&mut passed, Duration::from_secs(10)).await;
    assert_eq!(greeting.as_deref(), Some("hello 4\n"));
    // Standard output that is no socket: a clear error before the node is dialled.
    let piped = fdpass(Stdio::piped());
    let said = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !piped.status.success() && said.contains("Unix socket"),
        "{said}"
    );
    let ssh_said = ssh_through_fdpass(&coordinator.url, &renter_key, &cluster.id, port);
    if let Some(said) = ssh_said {
        assert!(
            said.contains("hello 5"),
            "ssh read the node's greeting: {said}"
        );
    }
}

/// What the real ssh client says (`-v`) when it reaches node 0's `port` through
/// `flotilla connect --fdpass`; None where no ssh client is installed.
fn ssh_through_fdpass(url: &str, key: &str, cluster: &str, port: u16) -> Option<String> {
    let proxy =
        format!("{BIN} connect {cluster} --port {port} --fdpass --url {url} --api-key {key}");
    let output = Command::new("ssh")
        .args([
            "-v",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ProxyUseFdpass=yes",
        ])
        .args(["-o", &format!("ProxyCommand={proxy}"), "nobody@node"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stderr).into_owned())
}

on_both_databases!(a_standby_connection_reaches_the_node_only_once_started);

/// A tunnelled connection to `path` that echoes a ping, once the node's server answers.
async fn echoing(renter: &Client, path: &str) -> Option<flotilla_client::Upgraded> {
    eventually(Duration::from_secs(20), || async {
        let mut connection = renter.upgrade(path, "flotilla-tunnel").await.ok()?;
        connection.write_all(b"ping").await.ok()?;
        let mut answer = [0u8; 4];
        let read = connection.read_exact(&mut answer);
        let read = tokio::time::timeout(Duration::from_secs(5), read).await;
        matches!(read, Ok(Ok(_))).then_some(())?;
        (&answer == b"ping").then_some(connection)
    })
    .await
}

/// A market of `workers` one-GPU workers whose coordinator also takes `flags`.
async fn market_coordinated_with(db: Db, workers: usize, flags: &[&str]) -> Market {
    let mut coordinator_flags = crate::clusters::market_flags("500");
    coordinator_flags.extend(flags);
    crate::clusters::market_flagged(db, workers, &coordinator_flags, &[]).await
}

/// One node's connections are limited, so they cannot take the whole of its worker's tunnel:
/// past the limit a connection is refused with 409 and a body naming the limit, another node
/// still gets through, and a closed connection's slot is free again.
async fn a_node_holds_at_most_its_limit_of_connections(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let Market {
        coordinator: _coordinator,
        renter,
        _workers,
        _dirs,
        ..
    } = market_coordinated_with(db, 2, &["--tunnel-connections-per-node-max", "2"]).await;
    let port = free_port();
    let cluster = python_service(&renter, 2, port, &echo_server(port)).await;
    let path = |node: u32| format!("clusters/{}/connect?node={node}&port={port}", cluster.id);
    let first = echoing(&renter, &path(0)).await.expect("node 0 echoes");
    let _second = echoing(&renter, &path(0))
        .await
        .expect("a second connection");
    match renter.upgrade(&path(0), "flotilla-tunnel").await {
        Err(ClientError::Api {
            status: 409,
            code,
            message,
            ..
        }) => {
            assert_eq!(code, "too_many_connections");
            assert!(message.contains("as one node may (2)"), "{message}");
        }
        other => panic!("a third connection to node 0 is refused, got {other:?}"),
    }
    let standby = format!("{}&standby=true", path(0));
    assert!(
        matches!(
            renter.upgrade(&standby, "flotilla-tunnel").await,
            Err(ClientError::Api { status: 409, .. })
        ),
        "standby connections count too"
    );
    let _other_node = echoing(&renter, &path(1))
        .await
        .expect("node 1 has its own connections");
    drop(first);
    let _third = echoing(&renter, &path(0))
        .await
        .expect("a closed connection's slot is free again");
}

on_both_databases!(a_node_holds_at_most_its_limit_of_connections);

/// Drops, while it lives, what the local TCP port `port` sends: its peer hears nothing more
/// from it, as from a laptop gone to sleep.
struct Silenced(u16);

impl Silenced {
    fn rule(&self, action: &str) -> std::process::ExitStatus {
        let port = self.0.to_string();
        Command::new("iptables")
            .args([
                "-w", action, "INPUT", "-p", "tcp", "-i", "lo", "--sport", &port,
            ])
            .args(["-j", "DROP"])
            .status()
            .unwrap()
    }
}

impl Drop for Silenced {
    fn drop(&mut self) {
        self.rule("-D");
    }
}

/// A renter that vanishes mid-connection (no close, no answer) gives the node's slot back:
/// the coordinator's TCP keepalive and user timeout find it gone.
async fn a_vanished_renters_connection_is_closed_and_its_slot_freed(db: Db) {
    let iptables = Command::new("iptables").arg("--version").output().is_ok();
    if !sandbox_ready() || !flotilla_worker::sandbox::running_as_root() || !iptables {
        return;
    }
    let flags = [
        "--tunnel-connections-per-node-max",
        "1",
        "--tcp-keepalive-s",
        "1",
    ];
    let (market, path) = echo_node_coordinated_with(db, &flags).await;
    let renter = &market.renter;
    // The node's server is up once a connection echoes; that one then gives its slot back.
    drop(echoing(renter, &path).await.expect("the node echoes"));
    let held = eventually(Duration::from_secs(10), || async {
        // A connection of its own, so its local port is known.
        let mut tcp = renter.upgrade_socket(&path, "flotilla-tunnel").await.ok()?;
        tcp.write_all(b"ping").await.ok()?;
        let mut answer = [0u8; 4];
        tcp.read_exact(&mut answer).await.ok()?;
        (&answer == b"ping").then_some(tcp)
    })
    .await
    .expect("a connection by hand echoes");
    assert!(
        matches!(
            renter.upgrade(&path, "flotilla-tunnel").await,
            Err(ClientError::Api { status: 409, .. })
        ),
        "the one slot is held"
    );
    let silenced = Silenced(held.local_addr().unwrap().port());
    assert!(silenced.rule("-I").success());
    let freed = echoing(renter, &path).await;
    drop(silenced);
    assert!(freed.is_some(), "the vanished renter's slot is given back");
    drop(held);
}

on_both_databases!(a_vanished_renters_connection_is_closed_and_its_slot_freed);

/// A market whose coordinator also takes `flags`, with a running one-node echo service; the
/// path that connects to its port.
async fn echo_node_coordinated_with(db: Db, flags: &[&str]) -> (Market, String) {
    let market = market_coordinated_with(db, 1, flags).await;
    let port = free_port();
    let cluster = python_service(&market.renter, 1, port, &echo_server(port)).await;
    let path = format!("clusters/{}/connect?node=0&port={port}", cluster.id);
    (market, path)
}

/// A connection on which no byte moves past the coordinator's idle timeout is closed; one
/// that keeps talking is kept.
async fn an_idle_connection_is_closed_and_a_talking_one_kept(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let flags = ["--tunnel-idle-timeout-s", "1"];
    let (market, path) = echo_node_coordinated_with(db, &flags).await;
    let renter = &market.renter;
    let mut idle = echoing(renter, &path).await.expect("the node echoes");
    let mut talking = echoing(renter, &path).await.expect("the node echoes");
    // A ping every fifth of the timeout, for well over two timeouts.
    for round in 0..12u8 {
        talking.write_all(&[round]).await.unwrap();
        let mut answer = [0u8; 1];
        talking.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [round]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let heard = read_to_end_within(&mut idle, Duration::from_secs(10)).await;
    assert_eq!(heard.as_deref(), Some(""), "the idle connection is closed");
    talking.write_all(b"still").await.unwrap();
    let mut answer = [0u8; 5];
    talking.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"still", "the talking one is kept");
}

on_both_databases!(an_idle_connection_is_closed_and_a_talking_one_kept);

/// A small HTTP server on the node: plain requests answer their path; `Upgrade: websocket`
/// gets the RFC 6455 handshake and an echo of each frame.
fn web_server(port: u16) -> String {
    let code = r#"
import socket, threading, hashlib, base64
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def handle(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            return
        data += chunk
    lines = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    if headers.get("upgrade", "").lower() == "websocket":
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()).decode()
        c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n").encode())
        f = c.makefile("rb")
        while True:
            head = f.read(2)
            if len(head) < 2:
                break
            op, n = head[0] & 15, head[1] & 127
            if n == 126:
                n = int.from_bytes(f.read(2), "big")
            mask = f.read(4) if head[1] & 128 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
            if op == 8:
                break
            size = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
            c.sendall(bytes([128 | op]) + size + payload)
        c.close()
        return
    body = ("hello from node, path " + path + ", host " + headers.get("host", "")).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;
    code.replace("PORT", &port.to_string())
}

/// The coordinator proxies `/t/CLUSTER/NODE/PORT/...` to the node's port: a request, a
/// WebSocket echo, and a signed link that works without a key until it expires.
async fn a_browser_reaches_a_node_by_link(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let Market {
        coordinator,
        renter_key,
        renter,
        _workers,
        _dirs,
        ..
    } = market(db, 1).await;
    let port = free_port();
    let cluster = python_service(&renter, 1, port, &web_server(port)).await;
    let base = format!("{}/t/{}/0/{port}", coordinator.url, cluster.id);
    let http = reqwest::Client::new();
    let page = eventually(Duration::from_secs(20), || async {
        let response = http
            .get(format!("{base}/hello?x=1"))
            .bearer_auth(&renter_key)
            .send()
            .await
            .ok()?;
        response
            .status()
            .is_success()
            .then_some(response.text().await.ok()?)
    })
    .await
    .expect("the node's page answers through the coordinator");
    assert_eq!(
        page,
        format!("hello from node, path /hello?x=1, host 127.0.0.1:{port}")
    );
    // Without a key or a link: refused.
    let anonymous = http.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // A WebSocket through the same path.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let mut ws_request = ws_url.into_client_request().unwrap();
    ws_request.headers_mut().insert(
        "authorization",
        format!("Bearer {renter_key}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request).await.unwrap();
    socket.send(Message::text("echo me")).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "echo me");

    // A signed link: no key needed; it sets a cookie for the port's other pages.
    let link: flotilla_proto::api::LinkInfo = renter
        .post(
            &format!("clusters/{}/links", cluster.id),
            &flotilla_proto::api::LinkRequest {
                node: 0,
                port,
                ttl_s: Some(2),
            },
        )
        .await
        .unwrap();
    let opened = http
        .get(format!("{}{}", coordinator.url, link.path))
        .send()
        .await
        .unwrap();
    assert!(opened.status().is_success(), "{}", opened.status());
    let cookie = opened.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let token_cookie = cookie.split(';').next().unwrap().to_owned();
    let next_page = http
        .get(format!("{base}/other"))
        .header("cookie", &token_cookie)
        .send()
        .await
        .unwrap();
    assert!(next_page.text().await.unwrap().contains("path /other"));
    // Another port of the same node is not covered by the link.
    let other_port = http
        .get(format!(
            "{}/t/{}/0/{}/",
            coordinator.url,
            cluster.id,
            port + 1
        ))
        .header("cookie", &token_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(other_port.status(), 401);
    // Once it expires, it is refused.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let expired = http
        .get(format!("{}{}", coordinator.url, link.path))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
}
on_both_databases!(a_browser_reaches_a_node_by_link);

/// An HTTP server on 127.0.0.1:`port` of the node that answers with the node's rank.
fn rank_server(port: u16) -> String {
    format!(
        "import os, socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(16)\n\
         body = ('node ' + os.environ['FLOTILLA_NODE_RANK']).encode()\n\
         while True:\n    \
             c, _ = s.accept(); c.recv(65536)\n    \
             c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: ' + str(len(body)).encode() + b'\\r\\nConnection: close\\r\\n\\r\\n' + body); c.close()\n"
    )
}

/// What `/t/CLUSTER/NODE/PORT/` answers, once it answers with success.
async fn page_of(coordinator: &str, key: &str, cluster: &str, node: u32, port: u16) -> String {
    let url = format!("{coordinator}/t/{cluster}/{node}/{port}/");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), || async {
        let response = http.get(&url).bearer_auth(key).send().await.ok()?;
        response
            .status()
            .is_success()
            .then_some(response.text().await.ok()?)
    })
    .await
    .unwrap_or_else(|| panic!("{url} answers"))
}

/// Ports are per node: two nodes on one machine (two workers here) both serve one port on
/// their loopback, and each node's link reaches its own; a container node's port is reached
/// the same way.
async fn nodes_on_one_machine_share_a_port_number_and_each_is_reached(db: Db) {
    if !sandbox_ready() || !flotilla_worker::sandbox::running_as_root() {
        return;
    }
    let engine = crate::clusters::container_engine();
    let flags: Vec<&str> = match &engine {
        Some((socket, _)) => vec!["--docker-socket", socket],
        None => vec![],
    };
    let Market {
        coordinator,
        renter_key,
        renter,
        _workers,
        _dirs,
        ..
    } = crate::clusters::market_with(db, 2, "500", &flags).await;
    let port = free_port();
    let cluster = python_service(&renter, 2, port, &rank_server(port)).await;
    for node in [0, 1] {
        let page = page_of(&coordinator.url, &renter_key, &cluster.id, node, port).await;
        assert_eq!(page, format!("node {node}"));
    }
    // Nothing of the nodes' reached the host's own port.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    let _: ClusterInfo = renter
        .post_empty(&format!("clusters/{}/terminate", cluster.id))
        .await
        .unwrap();

    let Some((_, image)) = engine else {
        return;
    };
    let script =
        format!("echo container-node > /tmp/index.html; httpd -f -p 127.0.0.1:{port} -h /tmp");
    let in_container = ClusterSpec {
        kind: "service".into(),
        ports: vec![port],
        image: Some(image),
        ..spec(1, &["sh", "-c", &script])
    };
    let cluster: ClusterInfo = renter.post("clusters", &in_container).await.unwrap();
    until_state(&renter, &cluster.id, "running", 60).await;
    let page = page_of(&coordinator.url, &renter_key, &cluster.id, 0, port).await;
    assert_eq!(page, "container-node\n");
    // The container goes before its engine does: a run's work dir is removed after its node.
    let _: ClusterInfo = renter
        .post_empty(&format!("clusters/{}/terminate", cluster.id))
        .await
        .unwrap();
    let runs_dirs: Vec<_> = _dirs.iter().map(|d| d.path().join("runs")).collect();
    let removed = eventually(Duration::from_secs(20), || async {
        let empty =
            |dir: &std::path::PathBuf| std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_none());
        runs_dirs.iter().all(empty).then_some(())
    })
    .await;
    assert!(removed.is_some(), "the container node is removed");
}
on_both_databases!(nodes_on_one_machine_share_a_port_number_and_each_is_reached);

/// The coordinator's `flotilla_worker_tunnel_lanes` gauge.
async fn lanes_open(coordinator: &str) -> Option<u64> {
    let text = reqwest::get(format!("{coordinator}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("flotilla_worker_tunnel_lanes "))
        .and_then(|value| value.trim().parse().ok())
}

async fn until_lanes(coordinator: &str, lanes: u64) -> bool {
    eventually(Duration::from_secs(30), || async {
        (lanes_open(coordinator).await == Some(lanes)).then_some(())
    })
    .await
    .is_some()
}

/// A worker holds the tunnel lanes it was told to; parallel connections, spread over them,
/// each carry their own bytes; a killed worker's lanes close, and a restarted one holds as
/// many again.
async fn parallel_connections_spread_over_a_workers_lanes(db: Db) {
    if !sandbox_ready() {
        return;
    }
    const LANES: u64 = 3;
    let lane_flags = ["--tunnel-lanes", "3"];
    let coordinator = Coordinator::start(db, &crate::clusters::market_flags("500")).await;
    let market = crate::clusters::market_from(coordinator, 1, |coordinator, dir, token, _| {
        coordinator.worker_with(dir, Some(token), "H100x1", &lane_flags)
    })
    .await;
    let url = market.coordinator.url.clone();
    assert!(
        until_lanes(&url, LANES).await,
        "{:?}",
        lanes_open(&url).await
    );
    let port = free_port();
    let cluster = python_service(&market.renter, 1, port, &echo_server(port)).await;
    let path = format!("clusters/{}/connect?node=0&port={port}", cluster.id);
    let transfers = (0..2 * LANES).map(|seed| {
        let (renter, path) = (&market.renter, &path);
        async move {
            let mut connection = echoing(renter, path).await.expect("the node echoes");
            let sent = pseudo_random(256 * 1024, seed);
            let (mut from_node, mut to_node) = tokio::io::split(&mut connection);
            let mut echoed = vec![0u8; sent.len()];
            let (wrote, read) =
                tokio::join!(to_node.write_all(&sent), from_node.read_exact(&mut echoed));
            wrote.unwrap();
            read.unwrap();
            echoed == sent
        }
    });
    let echoed = futures_util::future::join_all(transfers).await;
    assert!(echoed.iter().all(|same| *same), "{echoed:?}");

    let Market {
        coordinator,
        _workers: mut workers,
        _dirs: dirs,
        ..
    } = market;
    workers.clear();
    assert!(until_lanes(&url, 0).await, "a killed worker's lanes close");
    let _again = coordinator.worker_with(dirs[0].path(), None, "H100x1", &lane_flags);
    assert!(
        until_lanes(&url, LANES).await,
        "after a restart: {:?}",
        lanes_open(&url).await
    );
}

on_both_databases!(parallel_connections_spread_over_a_workers_lanes);
