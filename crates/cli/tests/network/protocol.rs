//! The worker protocol under attack: reused, expired and revoked tokens; replayed, reordered
//! and foreign messages.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use flotilla_client::control_channel_url;
use flotilla_proto::api::{Device, DeviceDetail, Role};
use flotilla_proto::device::{DeviceHardware, DeviceKind, DeviceTelemetry};
use flotilla_proto::wire::{Envelope, ServerMessage, WorkerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Coordinator, Db, enroll, key};
use crate::on_both_databases;

async fn enrollment_tokens_are_single_use_expiring_revocable_and_rate_limited(db: Db) {
    let coordinator = Coordinator::start(db, &["--enroll-rate-per-minute", "5"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let client = coordinator.client(None);

    let token = coordinator.token(&supplier).await;
    enroll(&client, &key(1), &token, "first")
        .await
        .expect("a fresh token enrolls");
    let reused = enroll(&client, &key(2), &token, "second")
        .await
        .unwrap_err();
    assert_eq!(
        reused.status(),
        Some(401),
        "a used token is refused: {reused}"
    );

    let short = coordinator.created_token(&supplier, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let expired = enroll(&client, &key(3), &short.secret, "late")
        .await
        .unwrap_err();
    assert_eq!(
        expired.status(),
        Some(401),
        "an expired token is refused: {expired}"
    );

    let revoked = coordinator.created_token(&supplier, None).await;
    let _: serde_json::Value = coordinator
        .client(Some(&supplier))
        .post_empty(&format!("enrollment-tokens/{}/revoke", revoked.token.id))
        .await
        .unwrap();
    let refused = enroll(&client, &key(4), &revoked.secret, "revoked")
        .await
        .unwrap_err();
    assert_eq!(
        refused.status(),
        Some(401),
        "a revoked token is refused: {refused}"
    );

    // A signature by another key than the one presented is refused before the token is used.
    let fresh = coordinator.token(&supplier).await;
    let (public_key, _) = flotilla_proto::wire::sign_enrollment(&key(5), &fresh);
    let (_, signature) = flotilla_proto::wire::sign_enrollment(&key(6), &fresh);
    let request = flotilla_proto::api::EnrollRequest {
        token: fresh.clone(),
        public_key,
        signature,
        hostname: "x".into(),
    };
    let forged = client
        .post::<_, serde_json::Value>("workers/enroll", &request)
        .await
        .unwrap_err();
    assert_eq!(forged.status(), Some(422));

    // Five attempts a minute from one address: the sixth is 429.
    let limited = enroll(&client, &key(7), &fresh, "limited")
        .await
        .unwrap_err();
    assert_eq!(
        limited.status(),
        Some(429),
        "enrollment is rate limited: {limited}"
    );
}
on_both_databases!(enrollment_tokens_are_single_use_expiring_revocable_and_rate_limited);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A hand-driven worker connection.
struct RawSession {
    socket: Socket,
    nonce: Vec<u8>,
    worker_id: String,
    key: SigningKey,
    devices: Vec<String>,
}

fn gpu(hardware_id: &str) -> DeviceHardware {
    DeviceHardware::new(
        hardware_id,
        DeviceKind::Gpu,
        "NVIDIA H100 80GB HBM3",
        80 << 30,
    )
}

async fn recv(socket: &mut Socket) -> ServerMessage {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer")
            .expect("open")
            .unwrap();
        if let Message::Text(text) = message {
            let message: ServerMessage = serde_json::from_str(text.as_str()).unwrap();
            // Challenges arrive after every welcome; tests that care read them with `recv_any`.
            if !matches!(message, ServerMessage::ProveCompute { .. }) {
                return message;
            }
        }
    }
}

async fn recv_any(socket: &mut Socket) -> ServerMessage {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer")
            .expect("open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

impl RawSession {
    async fn open(url: &str, worker_id: &str, key: &SigningKey, hardware_id: &str) -> RawSession {
        RawSession::open_with(url, worker_id, key, gpu(hardware_id)).await
    }

    async fn open_with(
        url: &str,
        worker_id: &str,
        key: &SigningKey,
        device: DeviceHardware,
    ) -> RawSession {
        let (mut socket, _) = tokio_tungstenite::connect_async(control_channel_url(url))
            .await
            .unwrap();
        let ServerMessage::Challenge { session_nonce, .. } = recv(&mut socket).await else {
            panic!("challenge expected")
        };
        let nonce = hex::decode(session_nonce).unwrap();
        let hello = WorkerMessage::Hello {
            agent_version: "test".into(),
            hostname: "raw".into(),
            devices: vec![device],
            containers: false,
        };
        let mut session = RawSession {
            socket,
            nonce,
            worker_id: worker_id.to_owned(),
            key: key.clone(),
            devices: vec![],
        };
        session
            .send(&Envelope::seal(key, &session.nonce, worker_id, 1, &hello))
            .await;
        let ServerMessage::Welcome { devices, .. } = recv(&mut session.socket).await else {
            panic!("welcome expected")
        };
        session.devices = devices.into_iter().map(|d| d.device_id).collect();
        session
    }

    /// The proof-of-compute challenge that follows the welcome.
    async fn challenge(&mut self) -> (String, flotilla_proof::Challenge) {
        match recv_any(&mut self.socket).await {
            ServerMessage::ProveCompute {
                device_id,
                challenge,
            } => (device_id, challenge),
            other => panic!("a challenge is expected after the welcome, not {other:?}"),
        }
    }

    /// Sends a proof's commitments for one device.
    async fn commit(&mut self, seq: u64, device_id: &str, transcript: flotilla_proof::Transcript) {
        let message = WorkerMessage::ComputeProof {
            device_id: device_id.to_owned(),
            transcript,
        };
        let envelope = Envelope::seal(&self.key, &self.nonce, &self.worker_id, seq, &message);
        self.send(&envelope).await;
    }

    fn heartbeat(&self, seq: u64, device_id: &str, utilization_pct: u8) -> Envelope {
        let sample = DeviceTelemetry {
            device_id: device_id.to_owned(),
            utilization_pct,
            memory_used_bytes: 1,
            temperature_c: Some(40),
            power_w: Some(100),
            net_rx_bytes: 0,
            net_tx_bytes: 0,
        };
        let beat = WorkerMessage::Heartbeat {
            sent_at_ms: 0,
            devices: vec![sample],
            running: vec![],
        };
        Envelope::seal(&self.key, &self.nonce, &self.worker_id, seq, &beat)
    }

    async fn send(&mut self, envelope: &Envelope) {
        self.socket
            .send(Message::text(serde_json::to_string(envelope).unwrap()))
            .await
            .unwrap();
    }

    /// Sends and expects a refusal with `code`.
    async fn refused(&mut self, envelope: &Envelope, code: &str) {
        self.send(envelope).await;
        match recv(&mut self.socket).await {
            ServerMessage::Rejected { code: got, .. } => assert_eq!(got, code),
            other => panic!("expected rejection {code}, got {other:?}"),
        }
    }
}

/// Two suppliers, each with one worker enrolled by hand.
struct TwoSuppliers {
    supplier_a: String,
    supplier_b: String,
    worker_a: String,
    worker_b: String,
    key_a: SigningKey,
    key_b: SigningKey,
}

async fn two_suppliers(coordinator: &Coordinator) -> TwoSuppliers {
    let supplier_a = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let supplier_b = coordinator.account("supplier-b", &[Role::Supplier]).await;
    let client = coordinator.client(None);
    let (key_a, key_b) = (key(1), key(2));
    let worker_a = enroll(&client, &key_a, &coordinator.token(&supplier_a).await, "a")
        .await
        .unwrap()
        .worker_id;
    let worker_b = enroll(&client, &key_b, &coordinator.token(&supplier_b).await, "b")
        .await
        .unwrap()
        .worker_id;
    TwoSuppliers {
        supplier_a,
        supplier_b,
        worker_a,
        worker_b,
        key_a,
        key_b,
    }
}

async fn replayed_reordered_and_foreign_messages_are_refused(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let TwoSuppliers {
        supplier_a,
        supplier_b,
        worker_a,
        worker_b,
        key_a,
        key_b,
    } = two_suppliers(&coordinator).await;

    let mut b = RawSession::open(&coordinator.url, &worker_b, &key_b, "GPU-b").await;
    let device_b = b.devices[0].clone();
    let b_beat = b.heartbeat(2, &device_b, 11);
    b.send(&b_beat).await;

    let mut a = RawSession::open(&coordinator.url, &worker_a, &key_a, "GPU-a").await;
    let device_a = a.devices[0].clone();
    let first = a.heartbeat(2, &device_a, 50);
    a.send(&first).await;
    a.refused(&first, "replayed_message").await;
    a.refused(&a.heartbeat(7, &device_a, 50), "out_of_order")
        .await;
    // Worker A reporting B's device: refused, and B's telemetry is untouched.
    a.refused(&a.heartbeat(3, &device_b, 99), "device_not_owned")
        .await;
    let detail: DeviceDetail = coordinator
        .client(Some(&supplier_b))
        .get(&format!("devices/{device_b}"))
        .await
        .unwrap();
    assert_eq!(detail.device.telemetry.unwrap().utilization_pct, 11);

    // Replaying B's captured message on A's connection: it is not A's session.
    a.refused(&b_beat, "worker_mismatch").await;

    // A message captured in one session does not verify in the next one.
    let mut a2 = RawSession::open(&coordinator.url, &worker_a, &key_a, "GPU-a").await;
    a2.refused(&first, "bad_signature").await;

    // A worker cannot open a session as another worker: B's id with A's key fails at hello.
    let (mut socket, _) = tokio_tungstenite::connect_async(control_channel_url(&coordinator.url))
        .await
        .unwrap();
    let ServerMessage::Challenge { session_nonce, .. } = recv(&mut socket).await else {
        panic!()
    };
    let nonce = hex::decode(session_nonce).unwrap();
    let hello = WorkerMessage::Hello {
        agent_version: "x".into(),
        hostname: "x".into(),
        devices: vec![gpu("GPU-x")],
        containers: false,
    };
    let forged = Envelope::seal(&key_a, &nonce, &worker_b, 1, &hello);
    socket
        .send(Message::text(serde_json::to_string(&forged).unwrap()))
        .await
        .unwrap();
    match recv(&mut socket).await {
        ServerMessage::Rejected { code, fatal, .. } => {
            assert_eq!((code.as_str(), fatal), ("bad_signature", true))
        }
        other => panic!("expected bad_signature, got {other:?}"),
    }

    // Garbage never takes the coordinator down.
    let (mut socket, _) = tokio_tungstenite::connect_async(control_channel_url(&coordinator.url))
        .await
        .unwrap();
    let _ = recv(&mut socket).await;
    socket.send(Message::text("{not json")).await.unwrap();
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Rejected { fatal: true, .. }
    ));
    let devices: flotilla_proto::api::Page<Device> = coordinator
        .client(Some(&supplier_a))
        .get("devices")
        .await
        .unwrap();
    assert_eq!(devices.items.len(), 1);
}
on_both_databases!(replayed_reordered_and_foreign_messages_are_refused);

async fn simulated_devices_are_refused_unless_allowed(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier).await;
    let mut worker = coordinator.worker(dir.path(), Some(&token), "RTX 4090");
    let status = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = worker.proc_status() {
                return Some(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
    .expect("the worker exits");
    assert!(!status.success(), "a refused worker exits non-zero");
    let devices: flotilla_proto::api::Page<Device> = coordinator
        .client(Some(&supplier))
        .get("devices")
        .await
        .unwrap();
    assert!(devices.items.is_empty());
}
on_both_databases!(simulated_devices_are_refused_unless_allowed);

async fn the_same_gpu_uuid_on_two_workers_blocks_both(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let TwoSuppliers {
        supplier_a,
        supplier_b,
        worker_a,
        worker_b,
        key_a,
        key_b,
    } = two_suppliers(&coordinator).await;
    let a = RawSession::open(&coordinator.url, &worker_a, &key_a, "GPU-1111-same").await;
    let device_a = a.devices[0].clone();
    let a_before: DeviceDetail = coordinator
        .client(Some(&supplier_a))
        .get(&format!("devices/{device_a}"))
        .await
        .unwrap();
    assert_eq!(
        a_before.device.state,
        flotilla_proto::device::DeviceState::Pending,
        "waiting for its proof of compute"
    );

    let b = RawSession::open(&coordinator.url, &worker_b, &key_b, "GPU-1111-same").await;
    let device_b = b.devices[0].clone();
    for (key, device) in [(&supplier_a, &device_a), (&supplier_b, &device_b)] {
        let detail: DeviceDetail = coordinator
            .client(Some(key))
            .get(&format!("devices/{device}"))
            .await
            .unwrap();
        assert_eq!(
            detail.device.state,
            flotilla_proto::device::DeviceState::Blocked,
            "{device}"
        );
    }
    let audit: flotilla_proto::api::Page<flotilla_proto::api::AuditEvent> = coordinator
        .client(Some(&coordinator.admin_key))
        .get("audit-events")
        .await
        .unwrap();
    let flagged = audit
        .items
        .iter()
        .find(|e| e.action == "device.duplicate_hardware_id")
        .expect("flagged in the audit log");
    assert_eq!(flagged.detail["hardware_id"], "GPU-1111-same");
    // A blocked device stays blocked across reconnects.
    drop(a);
    let _again = RawSession::open(&coordinator.url, &worker_a, &key_a, "GPU-1111-same").await;
    let detail: DeviceDetail = coordinator
        .client(Some(&supplier_a))
        .get(&format!("devices/{device_a}"))
        .await
        .unwrap();
    assert_eq!(
        detail.device.state,
        flotilla_proto::device::DeviceState::Blocked
    );
}
on_both_databases!(the_same_gpu_uuid_on_two_workers_blocks_both);

async fn a_cpu_claiming_an_h100_is_blocked_and_the_evidence_is_public(db: Db) {
    let coordinator = Coordinator::start(db, &["--faucet"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let client = coordinator.client(None);
    // The supplier staked 3,000 IO; an H100 needs 2,000 staked to earn.
    let io = |tokens: u64| tokens * 1_000_000;
    let owner = coordinator.client(Some(&supplier));
    let faucet = flotilla_proto::api::FaucetRequest {
        token: "IO".into(),
        amount_micros: io(3_000),
    };
    let _: flotilla_proto::api::TransferResult = owner
        .post_idempotent("wallet/faucet", &faucet, "io")
        .await
        .unwrap();
    let stake = flotilla_proto::api::StakeRequest {
        amount_micros: io(3_000),
    };
    let _: flotilla_proto::api::TransferResult = owner
        .post_idempotent("wallet/stake", &stake, "stake")
        .await
        .unwrap();
    let (cheap_key, silent_key) = (key(1), key(2));
    let cheap = coordinator.enrolled(&supplier, &cheap_key, "cheap").await;
    let silent = coordinator.enrolled(&supplier, &silent_key, "silent").await;

    // One answers the H100 challenge with work a CPU can do: a CPU-class proof for its seed.
    let mut session =
        RawSession::open(&coordinator.url, &cheap, &cheap_key, "GPU-h100-cheap").await;
    let (device_id, challenge) = session.challenge().await;
    assert_eq!(
        (challenge.class.as_str(), challenge.compute.matrix_n),
        ("h100", 4096)
    );
    let seed: [u8; 32] = hex::decode(&challenge.seed).unwrap().try_into().unwrap();
    let cpu_sized =
        flotilla_proof::challenge_with_target(&flotilla_proof::cpu_class(), seed, 20, 1);
    let transcript = flotilla_proof::prove_on_cpu(&cpu_sized).unwrap().transcript;
    session.commit(2, &device_id, transcript).await;

    // The other never answers: its deadline passes.
    let _silent = RawSession::open(&coordinator.url, &silent, &silent_key, "GPU-h100-silent").await;
    let states = crate::harness::eventually(Duration::from_secs(15), || async {
        let page: flotilla_proto::api::Page<Device> = owner.get("devices").await.ok()?;
        page.items
            .iter()
            .all(|d| d.state == flotilla_proto::device::DeviceState::Blocked)
            .then_some(page.items)
    })
    .await
    .expect("both claimed H100s end blocked");
    assert_eq!(states.len(), 2);

    // The transcripts are public and say why.
    let proofs: flotilla_proto::api::Page<flotilla_proto::api::ProofInfo> =
        client.get("proofs").await.unwrap();
    assert_eq!(proofs.items.len(), 2);
    assert!(proofs.items.iter().all(|p| !p.passed && p.class == "h100"));
    let missed = proofs
        .items
        .iter()
        .find(|p| p.device_id != device_id)
        .unwrap();
    assert_eq!(missed.reason, "no commitments before the deadline");
    let cheated = proofs
        .items
        .iter()
        .find(|p| p.device_id == device_id)
        .unwrap();
    let transcript: flotilla_proof::Transcript = client
        .get(&format!("proofs/{}/transcript", cheated.id))
        .await
        .unwrap();
    assert_eq!(
        transcript.challenge.class, "h100",
        "the stored challenge is the coordinator's"
    );
    assert!(
        flotilla_proof::verify_transcript(&transcript).is_err(),
        "and it re-checks as a failure offline"
    );

    // Each failed proof slashed the stake (2,000 IO, then the 1,000 left), held through the
    // appeal window with the proof as evidence.
    let wallet = crate::harness::eventually(Duration::from_secs(10), || async {
        let wallet: flotilla_proto::api::WalletInfo = owner.get("wallet").await.ok()?;
        (wallet.holds.len() == 2).then_some(wallet)
    })
    .await
    .expect("two slashes held");
    let mut slashed: Vec<u64> = wallet.holds.iter().map(|h| h.amount_micros).collect();
    slashed.sort_unstable();
    assert_eq!(slashed, vec![io(1_000), io(2_000)]);
    assert!(wallet.holds.iter().all(|h| h.credit == "system:burn:IO"));
    let history: Vec<flotilla_proto::api::EntryInfo> = owner.get("wallet/history").await.unwrap();
    for proof in &proofs.items {
        assert!(
            history
                .iter()
                .any(|e| e.kind == "slash" && e.reference.contains(&proof.id)),
            "the slash names proof {}",
            proof.id
        );
    }
}
on_both_databases!(a_cpu_claiming_an_h100_is_blocked_and_the_evidence_is_public);

async fn a_device_that_commits_but_cannot_open_its_memory_is_blocked(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let client = coordinator.client(None);
    let worker_key = key(3);
    let worker = coordinator
        .enrolled(&supplier, &worker_key, "forgetful")
        .await;
    // An unknown GPU model proves at the CPU class.
    let device = DeviceHardware::new("GPU-acme-1", DeviceKind::Gpu, "Acme Accelerator", 16 << 30);
    let mut session = RawSession::open_with(&coordinator.url, &worker, &worker_key, device).await;
    let (device_id, challenge) = session.challenge().await;
    assert_eq!(challenge.class, "cpu");
    // Honest commitments, then the fill is dropped: the memory query cannot be answered.
    let proof = flotilla_proof::prove_on_cpu(&challenge).unwrap();
    session
        .commit(2, &device_id, proof.transcript.clone())
        .await;
    drop(proof);
    let ServerMessage::OpenMemory {
        device_id: queried, ..
    } = recv_any(&mut session.socket).await
    else {
        panic!("good commitments get a memory query");
    };
    assert_eq!(queried, device_id);
    // Alive (heartbeats) but silent on the query until the answer deadline passes.
    let owner = coordinator.client(Some(&supplier));
    let mut blocked = false;
    for seq in 3..100 {
        session.send(&session.heartbeat(seq, &device_id, 0)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let detail: DeviceDetail = owner.get(&format!("devices/{device_id}")).await.unwrap();
        if detail.device.state == flotilla_proto::device::DeviceState::Blocked {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "blocked once the answer deadline passes");
    let proofs: flotilla_proto::api::Page<flotilla_proto::api::ProofInfo> =
        client.get("proofs").await.unwrap();
    assert_eq!(proofs.items.len(), 1);
    assert_eq!(
        proofs.items[0].reason,
        "memory not opened before the deadline"
    );
}
on_both_databases!(a_device_that_commits_but_cannot_open_its_memory_is_blocked);

async fn enrollment_is_rate_limited_per_supplier_across_addresses(db: Db) {
    let coordinator = Coordinator::start(db, &["--enroll-rate-per-minute", "3"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let mut statuses = Vec::new();
    for index in 0..4u8 {
        let token = coordinator.token(&supplier).await;
        let (public_key, signature) = flotilla_proto::wire::sign_enrollment(&key(index), &token);
        let request = flotilla_proto::api::EnrollRequest {
            token,
            public_key,
            signature,
            hostname: format!("w{index}"),
        };
        // Each attempt from its own loopback address, so only the per-supplier limit can bite.
        let address = std::net::IpAddr::from([127, 0, 0, 2 + index]);
        let http = reqwest::Client::builder()
            .local_address(address)
            .build()
            .unwrap();
        let response = http
            .post(format!("{}/api/v1/workers/enroll", coordinator.url))
            .json(&request)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 429]);
}
on_both_databases!(enrollment_is_rate_limited_per_supplier_across_addresses);

/// Opens a session reporting these GPUs; returns the coordinator's answer to the hello.
async fn hello_with(
    url: &str,
    worker_id: &str,
    key: &SigningKey,
    hardware_ids: &[String],
) -> ServerMessage {
    let (mut socket, _) = tokio_tungstenite::connect_async(control_channel_url(url))
        .await
        .unwrap();
    let ServerMessage::Challenge { session_nonce, .. } = recv(&mut socket).await else {
        panic!("challenge expected")
    };
    let nonce = hex::decode(session_nonce).unwrap();
    let devices = hardware_ids.iter().map(|id| gpu(id)).collect();
    let hello = WorkerMessage::Hello {
        agent_version: "test".into(),
        hostname: "many".into(),
        devices,
        containers: false,
    };
    let sealed = Envelope::seal(key, &nonce, worker_id, 1, &hello);
    socket
        .send(Message::text(serde_json::to_string(&sealed).unwrap()))
        .await
        .unwrap();
    recv(&mut socket).await
}

async fn device_rows_per_worker_are_bounded(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let worker_key = key(1);
    let worker = coordinator.enrolled(&supplier, &worker_key, "many").await;
    // Five hellos of 64 new hardware ids each: 320 rows, past the cap of 256.
    for round in 0..5 {
        let ids: Vec<String> = (0..64).map(|i| format!("GPU-{round}-{i}")).collect();
        let answer = hello_with(&coordinator.url, &worker, &worker_key, &ids).await;
        assert!(
            matches!(answer, ServerMessage::Welcome { .. }),
            "round {round}: {answer:?}"
        );
    }
    let ids = vec!["GPU-next".to_owned()];
    match hello_with(&coordinator.url, &worker, &worker_key, &ids).await {
        ServerMessage::Rejected { code, fatal, .. } => {
            assert_eq!((code.as_str(), fatal), ("too_many_devices", true))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
on_both_databases!(device_rows_per_worker_are_bounded);
