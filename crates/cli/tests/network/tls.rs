//! HTTPS on the coordinator's own listener (`--tls-cert`, `--tls-key`) through the real
//! binaries: a worker's control channel (`wss://`), the CLI and a renter's tunnel all go over
//! it, trusting a private CA with `--ca-cert`; a client that does not trust the CA, a client
//! that speaks plain HTTP and clients that never finish a handshake are turned away without
//! holding up anyone else.

use std::process::Command;
use std::time::Duration;

use flotilla_client::{Client, ClientError};
use flotilla_proto::api::{Me, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clusters::{Market, cli, market_flagged, market_flags, sandbox_ready};
use crate::harness::{BIN, Coordinator, Db, TEST_CA, TLS_DIR, TLS_FLAGS, eventually};
use crate::on_both_databases;
use crate::tunnels::{connect_command, echo_service_connected, echo_through, pseudo_random};

/// Connections that open TCP and never say a word, held while others are served.
const SILENT_CONNECTIONS: usize = 8;

async fn a_market_over_tls_works_end_to_end(db: Db) {
    let flags = [&TLS_FLAGS[..], &market_flags("500")].concat();
    // The worker dials wss:// trusting the test CA (the harness passes `--ca-cert`); the
    // market is ready only once its device was proven and priced over that channel.
    let Market {
        coordinator,
        renter_key,
        renter,
        _workers,
        _dirs,
        ..
    } = market_flagged(db, 1, &flags, &[]).await;
    assert!(coordinator.over_tls(), "{}", coordinator.url);

    // The CLI with the CA.
    let (ok, stdout, stderr) = cli(&coordinator, &renter_key, &["whoami", "-o", "json"]);
    assert!(ok, "whoami over https: {stderr}");
    let me: Me = serde_json::from_str(&stdout).unwrap();
    assert!(me.account.roles.contains(&Role::Renter));

    // Without it: refused, saying why, and nonzero.
    let output = Command::new(BIN)
        .args([
            "whoami",
            "--url",
            &coordinator.url,
            "--api-key",
            &renter_key,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("certificate"), "{stderr}");

    // `flotilla login --ca-cert` keeps the CA in the profile; later commands need no flags.
    let config = tempfile::tempdir().unwrap();
    let flotilla = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("FLOTILLA_CONFIG_DIR", config.path())
            .env_remove("FLOTILLA_URL")
            .env_remove("FLOTILLA_API_KEY")
            .env_remove("FLOTILLA_CA_CERT")
            .output()
            .unwrap()
    };
    let login = flotilla(&[
        "login",
        "--url",
        &coordinator.url,
        "--api-key",
        &renter_key,
        "--ca-cert",
        TEST_CA,
    ]);
    assert!(login.status.success(), "{login:?}");
    let whoami = flotilla(&["whoami", "-o", "json"]);
    assert!(whoami.status.success(), "{whoami:?}");
    let me: Me = serde_json::from_slice(&whoami.stdout).unwrap();
    assert!(me.account.roles.contains(&Role::Renter));

    if !sandbox_ready() {
        return;
    }
    // A renter's connection to its node: `flotilla connect` upgrades over TLS.
    let (cluster, port, _connect, address) =
        echo_service_connected(&coordinator, &renter, &renter_key).await;
    let (sent, received) = echo_through(&address, pseudo_random(4 << 20, 3)).await;
    assert_eq!(sent, received, "4 MiB arrive intact over the TLS upgrade");

    // ssh's --fdpass hands over a plain socket, which a TLS session cannot be.
    let (_ssh, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let output = connect_command(&coordinator, &renter_key, &cluster.id, port)
        .arg("--fdpass")
        .stdout(std::os::fd::OwnedFd::from(theirs))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("http://"), "{stderr}");
}

on_both_databases!(a_market_over_tls_works_end_to_end);

async fn plain_http_and_silent_clients_do_not_hold_up_tls(db: Db) {
    let coordinator = Coordinator::start(db, &TLS_FLAGS).await;
    let address = coordinator.url.strip_prefix("https://").unwrap().to_owned();
    let mut silent = Vec::new();
    for _ in 0..SILENT_CONNECTIONS {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }

    // Plain HTTP on the TLS port: no HTTP answer, and the connection ends.
    let mut plain = tokio::net::TcpStream::connect(&address).await.unwrap();
    plain
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the coordinator closes a plain HTTP connection"
    );
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    // A client trusting the CA is served while the silent ones wait.
    let health: serde_json::Value = coordinator.client(None).get("health").await.unwrap();
    assert!(health.is_object(), "{health}");
    // Its cookies are Secure: the browser never sends them over plain HTTP.
    let ca = std::fs::read(TEST_CA).unwrap();
    let roots = flotilla_client::tls::ca_certificates(&ca).unwrap();
    let browser = flotilla_client::tls::http_builder(&roots)
        .unwrap()
        .build()
        .unwrap();
    let login = browser
        .get(format!("{}/login", coordinator.url))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");

    // A client that does not trust the CA: refused, and told why.
    let untrusting = Client::new(&coordinator.url, None);
    match untrusting.get::<serde_json::Value>("health").await {
        Err(ClientError::Transport { detail, .. }) => {
            assert!(detail.contains("certificate"), "{detail}")
        }
        other => panic!("an unknown issuer is refused, got {other:?}"),
    }
    // A CA file with no certificate in it is a clear error, not a silent default.
    let broken = Client::with_ca(&coordinator.url, None, b"not pem");
    assert!(matches!(broken, Err(ClientError::Tls(_))));
    drop(silent);
}

on_both_databases!(plain_http_and_silent_clients_do_not_hold_up_tls);

/// Whether a client trusting only the CA in `ca_file` (of [`TLS_DIR`]) is served.
async fn served_to(coordinator: &Coordinator, ca_file: &str) -> bool {
    let ca = std::fs::read(std::path::Path::new(TLS_DIR).join(ca_file)).unwrap();
    let client = Client::with_ca(&coordinator.url, None, &ca).unwrap();
    client.get::<serde_json::Value>("health").await.is_ok()
}

async fn a_renewed_certificate_is_served_after_sighup(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
    let install = |prefix: &str| {
        let tls = std::path::Path::new(TLS_DIR);
        std::fs::copy(tls.join(format!("{prefix}cert.pem")), &chain).unwrap();
        std::fs::copy(tls.join(format!("{prefix}key.pem")), &key).unwrap();
    };
    install("");
    let flags = [
        "--tls-cert",
        chain.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let coordinator = Coordinator::start(db, &flags).await;
    assert!(served_to(&coordinator, "ca.pem").await);
    assert!(!served_to(&coordinator, "second-ca.pem").await);

    // The renewal: new files, then SIGHUP; the same process serves the new certificate.
    install("second-");
    coordinator.signal("HUP");
    let renewed = eventually(Duration::from_secs(10), || async {
        served_to(&coordinator, "second-ca.pem").await.then_some(())
    })
    .await;
    assert!(renewed.is_some(), "the renewed certificate is served");
    assert!(!served_to(&coordinator, "ca.pem").await);

    // A broken renewal is refused and the certificate in use stays.
    std::fs::write(&chain, "not a certificate").unwrap();
    coordinator.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served_to(&coordinator, "second-ca.pem").await);
}

on_both_databases!(a_renewed_certificate_is_served_after_sighup);
