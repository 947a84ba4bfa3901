use std::io::Write;

use super::*;

#[test]
fn slots_get_disjoint_point_to_point_addresses() {
    assert_eq!(
        slot_addresses(0),
        (Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2))
    );
    assert_eq!(
        slot_addresses(NODE_NETWORKS_MAX - 1),
        (
            Ipv4Addr::new(10, 77, 255, 253),
            Ipv4Addr::new(10, 77, 255, 254)
        )
    );
}

#[test]
fn shared_networks_make_no_namespace() {
    let networks = NodeNetworks::shared();
    assert!(!networks.private());
    assert!(networks.create("run_x").unwrap().is_none());
}

/// Serves one connection on 127.0.0.1:`port` inside `namespace`, answering `reply`.
fn serve_once_in(
    namespace: PathBuf,
    port: u16,
    reply: &'static [u8],
) -> std::thread::JoinHandle<()> {
    let (bound, ready) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let file = std::fs::File::open(&namespace).unwrap();
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        bound.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(reply).unwrap();
    });
    ready.recv().unwrap();
    server
}

async fn read_all(mut stream: TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// Two nodes' networks on one machine: each serves port 8888 on its own loopback and each
/// dial reaches its own; a restarted worker sweeps what its predecessor left.
#[tokio::test]
async fn two_nodes_serve_one_port_and_each_dial_reaches_its_own() {
    if !crate::sandbox::running_as_root() {
        eprintln!("skipped: node networks take root");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let networks = NodeNetworks::detect(data.path());
    assert!(networks.private());
    let suffix = hex::encode(random_u32().to_le_bytes());
    let first = networks.create(&format!("run_a{suffix}")).unwrap().unwrap();
    let second = networks.create(&format!("run_b{suffix}")).unwrap().unwrap();
    assert!(first.path().exists() && second.path().exists());
    let servers = [
        serve_once_in(first.path(), 8888, b"first"),
        serve_once_in(second.path(), 8888, b"second"),
    ];
    // One handle dials more than once, from the same thread.
    let first_sockets = NamespaceSockets::open(&first.path());
    let from_first = read_all(first_sockets.dial(8888).await.unwrap()).await;
    let from_second = read_all(dial(&second.path(), 8888).await.unwrap()).await;
    assert_eq!(from_first, b"first");
    assert_eq!(from_second, b"second");
    for server in servers {
        server.join().unwrap();
    }
    // Nothing listens there any more: the dial is refused, not sent elsewhere.
    assert!(first_sockets.dial(8888).await.is_err());
    let routes = std::process::Command::new("ip")
        .args(["-n", first.name(), "route"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(routes.contains("default via 10.77."), "{routes}");
    let second_path = second.path();
    drop(second);
    let _ = NodeNetworks::detect(data.path());
    assert!(!second_path.exists(), "swept at the next start");
    assert!(!first.path().exists(), "swept at the next start");
    let markers = std::fs::read_dir(data.path().join("netns")).unwrap();
    assert_eq!(markers.count(), 0);
}

/// A namespace that cannot be entered never means the worker's own network: a server on the
/// worker's loopback is not reached.
#[tokio::test]
async fn a_namespace_that_cannot_be_entered_refuses_every_dial() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let missing = tempfile::tempdir()
        .unwrap()
        .path()
        .join("no-such-namespace");
    let sockets = NamespaceSockets::open(&missing);
    for _ in 0..2 {
        let error = sockets.dial(port).await.unwrap_err();
        assert!(error.to_string().contains("cannot enter"), "{error}");
    }
}
