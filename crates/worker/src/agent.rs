//! The agent's main loop: enroll if needed, then sessions with backoff until shutdown. The
//! runner is made once, before the first session, so nodes keep running across reconnects.

use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use flotilla_client::{Client, control_channel_url};
use flotilla_proto::api::{EnrollRequest, EnrollResponse};
use flotilla_proto::limits::FRAME_BYTES_MAX;
use flotilla_proto::time::now_unix_ms;
use flotilla_proto::wire::{
    Envelope, SESSION_NONCE_BYTES, ServerMessage, WorkerMessage, sign_enrollment,
};
use flotilla_proto::{AGENT_VERSION, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::WorkerError;
use crate::hardware::Inventory;
use crate::identity::{Enrollment, load_enrollment, load_or_create_key, save_enrollment};
use crate::prover;
use crate::runs::Runner;

/// First reconnect delay; doubles per failure up to [`RECONNECT_DELAY_MS_MAX`].
const RECONNECT_DELAY_MS_MIN: u64 = 200;
const RECONNECT_DELAY_MS_MAX: u64 = 30_000;
/// Proofs the worker runs at once (one per device at enrollment).
const PROOFS_IN_FLIGHT_MAX: usize = flotilla_proto::limits::DEVICES_PER_WORKER_MAX;
/// A session that lasted this long counts as healthy and resets the reconnect backoff.
const HEALTHY_SESSION_MS: u64 = 5_000;
/// Time the coordinator has to send its challenge and welcome.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Refusals after which retrying cannot help.
const FATAL_CODES: &[&str] = &[
    "unknown_worker",
    "simulated_devices_refused",
    "malformed_hardware",
    "too_many_devices",
];

/// How one worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Base URL of the coordinator, e.g. `http://127.0.0.1:7700`.
    pub coordinator_url: String,
    /// Enrollment token; needed only before the first successful enrollment.
    pub token: Option<flotilla_proto::secret::Secret>,
    /// Holds the key (0600) and the enrollment record.
    pub data_dir: PathBuf,
    /// `--simulate-gpu` specs, e.g. `RTX 4090x2`.
    pub simulate_gpus: Vec<String>,
    /// Offer this machine's NVIDIA GPUs (found through NVML) as devices.
    pub real_gpus: bool,
    /// Offer the CPU package as a device.
    pub cpu_device: bool,
    /// Tunnel connections to hold (`--tunnel-lanes`), 1 to [`flotilla_tunnel::LANES_MAX`].
    pub tunnel_lanes: u8,
    /// Name shown for this worker; defaults to the host name.
    pub hostname: Option<String>,
    /// The Docker engine's socket for nodes with an image (`--docker-socket`); none: the
    /// `DOCKER_HOST` unix socket, else `/var/run/docker.sock` when present.
    pub docker_socket: Option<PathBuf>,
    /// Where Ray's Python environment is made and kept (`--ray-dir`); none:
    /// `<data_dir>/ray`.
    pub ray_dir: Option<PathBuf>,
    /// The certificates (PEM) of a private CA that signed an `https://` coordinator's
    /// certificate (`--ca-cert`), trusted beside the platform's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl WorkerConfig {
    /// The coordinator's API client, trusting [`WorkerConfig::ca_pem`].
    fn client(&self) -> Result<Client, WorkerError> {
        let client = match &self.ca_pem {
            Some(pem) => Client::with_ca(&self.coordinator_url, None, pem)?,
            None => Client::new(&self.coordinator_url, None),
        };
        Ok(client)
    }
}

/// How a session ended.
enum SessionEnd {
    /// Shutdown was asked for.
    Stopped,
    /// Try again after a delay; `healthy` resets the backoff.
    Retry {
        healthy: bool,
        reason: String,
    },
    Fatal(WorkerError),
}

/// Runs the worker until `shutdown` turns true or the coordinator refuses it for good.
pub async fn run(
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let key = load_or_create_key(&config.data_dir)?;
    let hostname = config.hostname.clone().unwrap_or_else(local_hostname);
    let client = config.client()?;
    let control_tls = control_channel_tls(&client)?;
    let enrollment = ensure_enrolled(&config, &client, &key, &hostname).await?;
    let mut inventory = Inventory::detect(
        &config.simulate_gpus,
        config.real_gpus,
        config.cpu_device,
        &key.verifying_key().to_bytes(),
    )?;
    let mut runner = Runner::new(&config.data_dir)?
        .with_container_engine(crate::container::locate(config.docker_socket.as_deref()))
        .with_coordinator(&config.coordinator_url, client.extra_roots())
        .with_ray_dir(config.ray_dir.clone());
    tracing::info!(worker_id = %enrollment.worker_id, devices = inventory.hardware().len(), "worker starting");
    // The tunnel lives beside the sessions; each welcome tells it where to go.
    let (tunnel_offers, offers) = watch::channel(None);
    let tunnel = crate::tunnel::TunnelConfig {
        coordinator_url: config.coordinator_url.clone(),
        worker_id: enrollment.worker_id.clone(),
        key: key.clone(),
        ports: runner.port_table(),
    };
    for lane in 0..config.tunnel_lanes {
        let run = crate::tunnel::run(tunnel.clone(), lane, offers.clone(), shutdown.clone());
        tokio::spawn(run);
    }
    let mut delay_ms = RECONNECT_DELAY_MS_MIN;
    loop {
        let context = SessionContext {
            config: &config,
            key: &key,
            enrollment: &enrollment,
            hostname: &hostname,
            inventory: &mut inventory,
            runner: &mut runner,
            tunnel_offers: &tunnel_offers,
            control_tls: control_tls.clone(),
        };
        let end = session(context, &mut shutdown).await;
        match end {
            SessionEnd::Stopped => {
                runner.shutdown().await;
                return Ok(());
            }
            SessionEnd::Fatal(error) => {
                runner.shutdown().await;
                return Err(error);
            }
            SessionEnd::Retry { healthy, reason } => {
                if healthy {
                    delay_ms = RECONNECT_DELAY_MS_MIN;
                }
                let jittered_ms = delay_ms / 2 + jitter_ms(delay_ms / 2);
                tracing::warn!(%reason, retry_in_ms = jittered_ms, "control session ended");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(jittered_ms)) => {}
                    _ = stopped(&mut shutdown) => {
                        runner.shutdown().await;
                        return Ok(());
                    }
                }
                delay_ms = (delay_ms * 2).min(RECONNECT_DELAY_MS_MAX);
            }
        }
    }
}

fn jitter_ms(range_ms: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system has a random source");
    u64::from_le_bytes(bytes) % range_ms.max(1)
}

fn local_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

async fn ensure_enrolled(
    config: &WorkerConfig,
    client: &Client,
    key: &SigningKey,
    hostname: &str,
) -> Result<Enrollment, WorkerError> {
    if let Some(enrollment) = load_enrollment(&config.data_dir)? {
        if enrollment.coordinator_url == config.coordinator_url {
            return Ok(enrollment);
        }
        tracing::warn!(previous = %enrollment.coordinator_url, "enrolled with another coordinator; enrolling again");
    }
    let token = config.token.clone().ok_or_else(|| {
        WorkerError::Config(
            "this worker is not enrolled yet: pass --token with an enrollment token".to_owned(),
        )
    })?;
    let token = token.expose().to_owned();
    let (public_key, signature) = sign_enrollment(key, &token);
    let request = EnrollRequest {
        token,
        public_key,
        signature,
        hostname: hostname.to_owned(),
    };
    let answer: EnrollResponse = client.post("workers/enroll", &request).await?;
    let enrollment = Enrollment {
        worker_id: answer.worker_id,
        account_id: answer.account_id,
        coordinator_url: config.coordinator_url.clone(),
    };
    save_enrollment(&config.data_dir, &enrollment)?;
    tracing::info!(worker_id = %enrollment.worker_id, "enrolled");
    Ok(enrollment)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_server_message(socket: &mut Socket) -> Result<ServerMessage, String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .map_err(|e| format!("bad message from coordinator: {e}"));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => return Err("unexpected binary message".to_owned()),
            Some(Ok(Message::Close(_))) | None => {
                return Err("coordinator closed the connection".to_owned());
            }
            Some(Err(error)) => return Err(error.to_string()),
        }
    }
}

fn refusal_end(code: String, message: String) -> SessionEnd {
    if FATAL_CODES.contains(&code.as_str()) {
        SessionEnd::Fatal(WorkerError::Refused { code, message })
    } else {
        SessionEnd::Retry {
            healthy: false,
            reason: format!("refused: {message} ({code})"),
        }
    }
}

/// What a session works with; all of it outlives the session.
struct SessionContext<'a> {
    config: &'a WorkerConfig,
    key: &'a SigningKey,
    enrollment: &'a Enrollment,
    hostname: &'a str,
    inventory: &'a mut Inventory,
    runner: &'a mut Runner,
    tunnel_offers: &'a watch::Sender<Option<flotilla_proto::wire::TunnelOffer>>,
    /// For a `wss://` control channel: trust as the API client's.
    control_tls: Option<tokio_tungstenite::Connector>,
}

/// The TLS connector for the control channel of an `https://` coordinator; none for `http://`.
fn control_channel_tls(
    client: &Client,
) -> Result<Option<tokio_tungstenite::Connector>, WorkerError> {
    if !client.base_url().starts_with("https://") {
        return Ok(None);
    }
    let config = flotilla_client::tls::client_config(client.extra_roots())?;
    Ok(Some(tokio_tungstenite::Connector::Rustls(config)))
}

async fn session(context: SessionContext<'_>, shutdown: &mut watch::Receiver<bool>) -> SessionEnd {
    let SessionContext {
        config,
        key,
        enrollment,
        hostname,
        inventory,
        runner,
        tunnel_offers,
        control_tls,
    } = context;
    let retry = |reason: String| SessionEnd::Retry {
        healthy: false,
        reason,
    };
    let url = control_channel_url(&config.coordinator_url);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(FRAME_BYTES_MAX))
        .max_frame_size(Some(FRAME_BYTES_MAX));
    let runs_containers = runner.runs_containers().await;
    let handshake = async {
        let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            &url,
            Some(ws_config),
            false,
            control_tls,
        )
        .await
        .map_err(|e| retry(format!("connect {url}: {e}")))?;
        let ServerMessage::Challenge {
            protocol_version,
            session_nonce,
            ..
        } = next_server_message(&mut socket).await.map_err(retry)?
        else {
            return Err(retry("expected a challenge".to_owned()));
        };
        if protocol_version != PROTOCOL_VERSION {
            return Err(SessionEnd::Fatal(WorkerError::Config(format!(
                "coordinator speaks protocol {protocol_version}, this worker {PROTOCOL_VERSION}"
            ))));
        }
        let mut nonce = [0u8; SESSION_NONCE_BYTES];
        hex::decode_to_slice(&session_nonce, &mut nonce)
            .map_err(|_| retry("malformed session nonce".to_owned()))?;
        let hello = WorkerMessage::Hello {
            agent_version: AGENT_VERSION.to_owned(),
            hostname: hostname.to_owned(),
            devices: inventory.hardware(),
            containers: runs_containers,
        };
        send(
            &mut socket,
            &Envelope::seal(key, &nonce, &enrollment.worker_id, 1, &hello),
        )
        .await
        .map_err(retry)?;
        match next_server_message(&mut socket).await.map_err(retry)? {
            ServerMessage::Welcome {
                heartbeat_interval_ms,
                devices,
                tunnel,
                ..
            } => {
                tunnel_offers.send_if_modified(|current| {
                    let changed = *current != tunnel;
                    *current = tunnel;
                    changed
                });
                let ids: Vec<(String, String)> = devices
                    .into_iter()
                    .map(|d| (d.hardware_id, d.device_id))
                    .collect();
                Ok((socket, nonce, heartbeat_interval_ms, ids))
            }
            ServerMessage::Rejected { code, message, .. } => Err(refusal_end(code, message)),
            _ => Err(retry("expected a welcome".to_owned())),
        }
    };
    let handshake = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), handshake);
    let (mut socket, nonce, interval_ms, device_ids) = match handshake.await {
        Ok(Ok(ready)) => ready,
        Ok(Err(end)) => return end,
        Err(_) => return retry("handshake timed out".to_owned()),
    };
    tracing::info!(worker_id = %enrollment.worker_id, devices = device_ids.len(), "control session open");
    runner.set_devices(inventory.gpu_indices(&device_ids));
    // A restarted coordinator holds no meshes: each live node's key goes again.
    runner.rejoin_meshes();
    let opened = std::time::Instant::now();
    // Only a session that lasted resets the backoff: two workers fighting over one identity,
    // or a coordinator that drops every session at once, must not be retried at full speed.
    let healthy = move || opened.elapsed() >= Duration::from_millis(HEALTHY_SESSION_MS);
    let mut seq: u64 = 1;
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(10)));
    // Proofs run on blocking threads and come back here, so this loop alone numbers messages.
    let (proved, mut proofs) =
        tokio::sync::mpsc::channel::<(String, prover::Proof)>(PROOFS_IN_FLIGHT_MAX);
    let mut held = prover::HeldFills::default();
    let hardware = inventory.hardware();
    let hardware_of = |device_id: &str| {
        let (hardware_id, _) = device_ids.iter().find(|(_, id)| id == device_id)?;
        hardware.iter().find(|h| &h.hardware_id == hardware_id)
    };
    loop {
        tokio::select! {
            Some((device_id, proof)) = proofs.recv() => {
                let message = WorkerMessage::ComputeProof { device_id: device_id.clone(), transcript: proof.transcript().clone() };
                held.keep(device_id, proof);
                seq += 1;
                if let Err(reason) = send(&mut socket, &Envelope::seal(key, &nonce, &enrollment.worker_id, seq, &message)).await {
                    return SessionEnd::Retry { healthy: healthy(), reason };
                }
            }
            message = runner.next_message() => {
                seq += 1;
                if let Err(reason) = send(&mut socket, &Envelope::seal(key, &nonce, &enrollment.worker_id, seq, &message)).await {
                    return SessionEnd::Retry { healthy: healthy(), reason };
                }
            }
            _ = stopped(shutdown) => {
                let _ = socket.close(None).await;
                return SessionEnd::Stopped;
            }
            _ = ticker.tick() => {
                seq += 1;
                let beat = WorkerMessage::Heartbeat { sent_at_ms: now_unix_ms(), devices: inventory.sample(&device_ids, now_unix_ms()), running: runner.running() };
                if let Err(reason) = send(&mut socket, &Envelope::seal(key, &nonce, &enrollment.worker_id, seq, &beat)).await {
                    return SessionEnd::Retry { healthy: healthy(), reason };
                }
            }
            incoming = next_server_message(&mut socket) => match incoming {
                Ok(ServerMessage::Rejected { code, message, fatal: true, .. }) => {
                    return match refusal_end(code, message) {
                        SessionEnd::Retry { reason, .. } => SessionEnd::Retry { healthy: healthy(), reason },
                        other => other,
                    };
                }
                Ok(ServerMessage::Rejected { code, message, .. }) => {
                    tracing::warn!(%code, %message, "coordinator refused a message");
                }
                Ok(ServerMessage::ProveCompute { device_id, challenge }) => {
                    held.drop_expired();
                    let device = hardware_of(&device_id);
                    prover::start(device_id, challenge, device, proved.clone());
                }
                Ok(ServerMessage::OpenMemory { device_id, nonce: query }) => {
                    let Some(message) = held.open(device_id, &query) else { continue };
                    seq += 1;
                    if let Err(reason) = send(&mut socket, &Envelope::seal(key, &nonce, &enrollment.worker_id, seq, &message)).await {
                        return SessionEnd::Retry { healthy: healthy(), reason };
                    }
                }
                Ok(ServerMessage::RunNode(order)) => runner.start(order),
                Ok(ServerMessage::StopNode { run_id, reason }) => runner.stop(&run_id, &reason),
                Ok(ServerMessage::MeshPeers { run_id, peers }) => runner.mesh_peers(&run_id, &peers),
                Ok(ServerMessage::Challenge { .. } | ServerMessage::Welcome { .. }) => {
                    tracing::warn!("unexpected handshake message in an open session");
                }
                Err(reason) => return SessionEnd::Retry { healthy: healthy(), reason },
            }
        }
    }
}

async fn send(socket: &mut Socket, envelope: &Envelope) -> Result<(), String> {
    let text = serde_json::to_string(envelope).expect("envelopes serialize");
    socket
        .send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// Resolves once shutdown is asked for (or the sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
