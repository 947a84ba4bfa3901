//! One worker's control session over a WebSocket: challenge, signed Hello, then signed
//! heartbeats, each checked for signature, sequence and device ownership.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use flotilla_proto::device::DeviceState;
use flotilla_proto::limits::{DEVICES_PER_WORKER_MAX, HARDWARE_STRING_CHARS_MAX};
use flotilla_proto::time::now_unix_ms;
use flotilla_proto::wire::{
    DeviceAssignment, Envelope, SESSION_NONCE_BYTES, ServerMessage, WorkerMessage, parse_public_key,
};
use flotilla_proto::{PROTOCOL_VERSION, id};
use tokio::sync::watch;

use crate::AppState;
use crate::admission::{self, Admission};
use crate::device_state::DeviceEvent;
use crate::fleet::FleetError;

/// Device rows (not removed) one worker may have on record; a hello adds at most
/// `DEVICES_PER_WORKER_MAX` more.
const DEVICE_ROWS_PER_WORKER_MAX: usize = 4 * DEVICES_PER_WORKER_MAX;
/// How long a new connection may take to send its Hello.
const HELLO_TIMEOUT_MS: u64 = 10_000;
/// Most runs one heartbeat may list.
const RUNS_REPORTED_MAX: usize = 256;

/// A refusal sent to the worker: a stable code, a message, and whether the session ends.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
    fatal: bool,
}

impl Refusal {
    fn fatal(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            fatal: true,
        }
    }

    fn soft(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            fatal: false,
        }
    }
}

/// What the session knows after Hello.
struct Bound {
    worker_id: String,
    account_id: String,
    public_key: ed25519_dalek::VerifyingKey,
    last_seq: u64,
    session_id: u64,
    /// Devices to challenge once the welcome is out.
    to_prove: Vec<flotilla_store::DeviceRow>,
    /// The devices this session reports, for re-checks of idle ones.
    devices: Vec<flotilla_store::DeviceRow>,
    /// Challenges sent and not yet answered, by device id.
    pending_proofs: std::collections::HashMap<String, PendingProof>,
    /// Messages a handler wants sent; the session loop sends them after the handler returns.
    outbox: Vec<ServerMessage>,
    /// Fires when this worker's runs change (`clusters::nudge`).
    nudge: std::sync::Arc<tokio::sync::Notify>,
    /// The worker's live runs as last loaded, and when each was last ordered.
    runs: std::collections::HashMap<String, tokio::time::Instant>,
    /// The mesh version each of the worker's mesh nodes was last sent peers of.
    mesh_seen: std::collections::HashMap<String, u64>,
}

/// A proof-of-compute challenge in flight.
struct PendingProof {
    challenge: flotilla_proof::Challenge,
    sent_at: tokio::time::Instant,
    /// The commitment deadline, then (once the nonce is out) the answer deadline.
    deadline: tokio::time::Instant,
    /// Once the commitments are in: the transcript so far, and when the nonce went out.
    opening: Option<(flotilla_proof::Transcript, tokio::time::Instant)>,
    /// Proven on the worker's own CPU (see [`admission::proves_on_host_cpu`]).
    on_host_cpu: bool,
}

/// Runs one session to its end.
pub async fn run(mut socket: WebSocket, app: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut nonce = [0u8; SESSION_NONCE_BYTES];
    getrandom::fill(&mut nonce).expect("the operating system has a random source");
    let challenge = ServerMessage::Challenge {
        protocol_version: PROTOCOL_VERSION,
        session_nonce: hex::encode(nonce),
        server_time_ms: now_unix_ms(),
    };
    if send(&mut socket, &challenge).await.is_err() {
        return;
    }
    let hello = tokio::time::timeout(
        Duration::from_millis(HELLO_TIMEOUT_MS),
        next_text(&mut socket),
    )
    .await;
    let Ok(Some(text)) = hello else { return };
    let (mut bound, mut kicked, welcome) = match hello_session(&app, &nonce, &text).await {
        Ok(session) => session,
        Err(refusal) => {
            refuse(&mut socket, &app, None, refusal).await;
            return;
        }
    };
    sync_runs(&app, &mut bound).await;
    if send(&mut socket, &welcome).await.is_err()
        || issue_challenges(&mut socket, &app, &mut bound)
            .await
            .is_err()
        || send_outbox(&mut socket, &mut bound).await.is_err()
    {
        app.fleet.close_session(&bound.worker_id, bound.session_id);
        return;
    }
    let silence_limit = Duration::from_millis(app.config.heartbeat_grace_ms.saturating_mul(2));
    // Built once and reset per message: this loop runs for every heartbeat of every worker, so
    // it creates no timer or watch registration per iteration.
    let silence = tokio::time::sleep(silence_limit);
    tokio::pin!(silence);
    let stopping = shutdown.changed();
    tokio::pin!(stopping);
    // The first re-check falls anywhere in the first interval, so reconnecting often does not
    // put it off.
    let first_recheck_ms = random_below(app.config.proof_recheck_interval_ms.max(1));
    let recheck = tokio::time::sleep(Duration::from_millis(first_recheck_ms));
    tokio::pin!(recheck);
    let nudge = bound.nudge.clone();
    loop {
        let next_proof_deadline = bound.pending_proofs.values().map(|p| p.deadline).min();
        tokio::select! {
            _ = &mut kicked => break,
            _ = &mut stopping => break,
            _ = &mut silence => break,
            _ = nudge.notified() => {
                sync_runs(&app, &mut bound).await;
                send_mesh_peers(&app, &mut bound);
                if send_outbox(&mut socket, &mut bound).await.is_err() {
                    break;
                }
            }
            _ = &mut recheck => {
                recheck.as_mut().reset(tokio::time::Instant::now() + recheck_delay(&app));
                for row in idle_devices(&app, &bound) {
                    if !bound.to_prove.iter().any(|waiting| waiting.id == row.id) {
                        bound.to_prove.push(row);
                    }
                }
                if issue_challenges(&mut socket, &app, &mut bound).await.is_err() {
                    break;
                }
            }
            _ = sleep_until_some(next_proof_deadline), if next_proof_deadline.is_some() => {
                expire_proofs(&app, &mut bound).await;
                if issue_challenges(&mut socket, &app, &mut bound).await.is_err() {
                    break;
                }
            }
            next = next_text(&mut socket) => {
                let Some(text) = next else { break };
                silence.as_mut().reset(tokio::time::Instant::now() + silence_limit);
                if let Err(refusal) = on_message(&app, &nonce, &mut bound, &text).await {
                    let fatal = refusal.fatal;
                    refuse(&mut socket, &app, Some(bound.last_seq), refusal).await;
                    if fatal {
                        break;
                    }
                }
                if send_outbox(&mut socket, &mut bound).await.is_err() {
                    break;
                }
                // A verdict may free the worker's CPU for a challenge that waits.
                if !bound.to_prove.is_empty()
                    && issue_challenges(&mut socket, &app, &mut bound).await.is_err()
                {
                    break;
                }
            }
        }
    }
    app.fleet.close_session(&bound.worker_id, bound.session_id);
    let _ = socket.send(Message::Close(None)).await;
    tracing::info!(worker_id = %bound.worker_id, "worker session ended");
}

async fn next_text(socket: &mut WebSocket) -> Option<String> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(text)) => return Some(text.as_str().to_owned()),
            Ok(Message::Binary(_)) => return Some(String::new()),
            Ok(Message::Close(_)) => return None,
            Err(error) => {
                // An unreadable message (one over the frame bound, say) ends the session: say
                // why, or a worker is seen only reconnecting.
                tracing::info!(%error, "worker connection unreadable");
                return None;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
        }
    }
}

async fn send_outbox(socket: &mut WebSocket, bound: &mut Bound) -> Result<(), axum::Error> {
    for message in std::mem::take(&mut bound.outbox) {
        send(socket, &message).await?;
    }
    Ok(())
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("server messages serialize");
    socket.send(Message::Text(text.into())).await
}

async fn refuse(socket: &mut WebSocket, app: &AppState, seq: Option<u64>, refusal: Refusal) {
    app.metrics.rejected(refusal.code);
    tracing::warn!(code = refusal.code, message = %refusal.message, "worker message refused");
    let _ = send(
        socket,
        &ServerMessage::Rejected {
            seq,
            code: refusal.code.to_owned(),
            message: refusal.message,
            fatal: refusal.fatal,
        },
    )
    .await;
}

fn parse_envelope(text: &str) -> Result<Envelope, Refusal> {
    serde_json::from_str(text).map_err(|e| {
        Refusal::fatal(
            "malformed_message",
            format!("message is not a signed envelope: {e}"),
        )
    })
}

async fn hello_session(
    app: &AppState,
    nonce: &[u8],
    text: &str,
) -> Result<(Bound, tokio::sync::oneshot::Receiver<()>, ServerMessage), Refusal> {
    let envelope = parse_envelope(text)?;
    if !id::is_id(id::IdKind::Worker, &envelope.worker_id) {
        return Err(Refusal::fatal(
            "unknown_worker",
            "worker id is not a worker id",
        ));
    }
    let worker = app
        .store
        .worker_for_session(&envelope.worker_id)
        .await
        .map_err(|e| Refusal::fatal("internal", e.to_string()))?
        .ok_or_else(|| {
            Refusal::fatal(
                "unknown_worker",
                format!(
                    "worker {} is not enrolled or was removed",
                    envelope.worker_id
                ),
            )
        })?;
    let public_key = parse_public_key(&worker.public_key)
        .map_err(|e| Refusal::fatal("internal", e.to_string()))?;
    let message = envelope
        .open(&public_key, nonce)
        .map_err(|e| Refusal::fatal("bad_signature", format!("hello from {}: {e}", worker.id)))?;
    if envelope.seq != 1 {
        return Err(Refusal::fatal("out_of_order", "hello must be sequence 1"));
    }
    let WorkerMessage::Hello {
        agent_version,
        hostname,
        devices,
        containers,
    } = message
    else {
        return Err(Refusal::fatal(
            "hello_expected",
            "the first message must be hello",
        ));
    };
    check_hello(app, &hostname, &agent_version, &devices)?;
    let now_ms = now_unix_ms();
    app.store
        .update_worker_hello(&worker.id, &hostname, &agent_version, containers, now_ms)
        .await
        .map_err(|e| Refusal::fatal("internal", e.to_string()))?;
    // Rows per worker stay bounded even for a worker that invents new hardware ids at every
    // hello: past the cap its supplier must remove devices first.
    if worker.device_count as usize > DEVICE_ROWS_PER_WORKER_MAX {
        return Err(Refusal::fatal(
            "too_many_devices",
            format!(
                "worker {} has more than {DEVICE_ROWS_PER_WORKER_MAX} devices on record; remove some",
                worker.id
            ),
        ));
    }
    let reported: Vec<_> = devices
        .into_iter()
        .map(|hardware| {
            (
                id::new_id(id::IdKind::Device),
                hardware,
                DeviceState::Pending,
            )
        })
        .collect();
    let rows = app
        .store
        .upsert_reported_devices(&worker.account_id, &worker.id, &reported, now_ms)
        .await
        .map_err(|e| Refusal::fatal("internal", e.to_string()))?;
    // Devices the worker no longer reports (a pulled GPU, a failed read) are not bound to this
    // session: they go down, and only a later hello that reports them brings them back.
    let (current, absent): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .filter(|row| row.removed_at_ms.is_none())
        .partition(|row| {
            reported
                .iter()
                .any(|(_, hw, _)| hw.hardware_id == row.hardware.hardware_id)
        });
    let (session_id, kicked, nudge) = app
        .fleet
        .open_session(&worker.id, &current, &absent, now_ms);
    let to_prove = match settle_devices(app, &current, &absent, worker.paused).await {
        Ok(to_prove) => to_prove,
        Err(error) => {
            app.fleet.close_session(&worker.id, session_id);
            return Err(Refusal::fatal("internal", error.to_string()));
        }
    };
    // The worker may have been removed while this hello was in flight; the fleet must not keep
    // a session (or devices) for it.
    let still_enrolled = app
        .store
        .worker_for_session(&worker.id)
        .await
        .map_err(|e| Refusal::fatal("internal", e.to_string()))?;
    if still_enrolled.is_none() {
        app.fleet.forget_worker(&worker.id);
        return Err(Refusal::fatal(
            "unknown_worker",
            format!("worker {} was removed", worker.id),
        ));
    }
    let assignments: Vec<DeviceAssignment> = current
        .iter()
        .map(|row| DeviceAssignment {
            hardware_id: row.hardware.hardware_id.clone(),
            device_id: row.id.clone(),
            state: app.fleet.lifecycle(&row.id).map_or(row.state, |l| l.state),
        })
        .collect();
    let welcome = ServerMessage::Welcome {
        worker_id: worker.id.clone(),
        heartbeat_interval_ms: app.config.heartbeat_interval_ms,
        devices: assignments,
        tunnel: Some(app.tunnels.offer()),
    };
    let bound = Bound {
        worker_id: worker.id.clone(),
        account_id: worker.account_id.clone(),
        public_key,
        last_seq: 1,
        session_id,
        to_prove,
        devices: current.clone(),
        pending_proofs: std::collections::HashMap::new(),
        outbox: Vec::new(),
        nudge,
        runs: std::collections::HashMap::new(),
        mesh_seen: std::collections::HashMap::new(),
    };
    tracing::info!(worker_id = %worker.id, devices = current.len(), "worker session opened");
    Ok((bound, kicked, welcome))
}

/// Brings a worker's devices in line with its hello: reported devices that were down come
/// back, pending ones go through admission, and all of them stay off the market while the
/// worker is paused; devices it no longer reports go down. Returns the devices that must now
/// prove their compute.
async fn settle_devices(
    app: &AppState,
    current: &[flotilla_store::DeviceRow],
    absent: &[flotilla_store::DeviceRow],
    worker_paused: bool,
) -> Result<Vec<flotilla_store::DeviceRow>, FleetError> {
    let gone: Vec<String> = absent.iter().map(|row| row.id.clone()).collect();
    app.fleet
        .apply_events(&gone, DeviceEvent::HeartbeatsMissed, false)
        .await?;
    let ids: Vec<String> = current.iter().map(|row| row.id.clone()).collect();
    app.fleet
        .apply_events(&ids, DeviceEvent::HeartbeatResumed, false)
        .await?;
    block_duplicate_gpus(app, current).await?;
    // Read the state after reviving: a device that went down while pending is pending again.
    let mut to_prove = Vec::new();
    for row in current {
        if !app
            .fleet
            .lifecycle(&row.id)
            .is_some_and(|l| l.state == DeviceState::Pending)
        {
            continue;
        }
        match admission::admit(&row.hardware) {
            Admission::NeedsProof => to_prove.push(row.clone()),
            Admission::Unsupported => {
                app.fleet
                    .apply_events(std::slice::from_ref(&row.id), DeviceEvent::Rejected, false)
                    .await?;
            }
        }
    }
    if worker_paused {
        app.fleet
            .apply_events(&ids, DeviceEvent::Paused, false)
            .await?;
    }
    Ok(to_prove)
}

/// Sends a proof-of-compute challenge for every device that needs one, except that devices
/// proven on the worker's own CPU go one at a time: proven together they would share its
/// cores and all miss their deadlines. The others wait in `to_prove` for the next call.
async fn issue_challenges(
    socket: &mut WebSocket,
    app: &AppState,
    bound: &mut Bound,
) -> Result<(), axum::Error> {
    let mut host_cpu_busy = bound.pending_proofs.values().any(|p| p.on_host_cpu);
    let mut waiting = Vec::new();
    for row in std::mem::take(&mut bound.to_prove) {
        let still_due = app
            .fleet
            .lifecycle(&row.id)
            .is_some_and(|l| matches!(l.state, DeviceState::Pending | DeviceState::Idle));
        if !still_due || bound.pending_proofs.contains_key(&row.id) {
            continue;
        }
        let on_host_cpu = admission::proves_on_host_cpu(&row.hardware);
        if on_host_cpu && host_cpu_busy {
            waiting.push(row);
            continue;
        }
        host_cpu_busy |= on_host_cpu;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system has a random source");
        let challenge = admission::challenge(
            &row.hardware,
            seed,
            app.config.proof_target_ms,
            app.config.proof_memory_pct,
        );
        let sent_at = tokio::time::Instant::now();
        let deadline = sent_at + Duration::from_millis(challenge.commit_deadline_ms());
        tracing::info!(device_id = %row.id, class = %challenge.class, steps = challenge.compute.steps, "proof of compute requested");
        send(
            socket,
            &ServerMessage::ProveCompute {
                device_id: row.id.clone(),
                challenge: challenge.clone(),
            },
        )
        .await?;
        bound.pending_proofs.insert(
            row.id,
            PendingProof {
                challenge,
                sent_at,
                deadline,
                opening: None,
                on_host_cpu,
            },
        );
    }
    bound.to_prove = waiting;
    Ok(())
}

/// The time to the next re-check of a session's idle devices: the configured interval, with
/// up to a quarter either way at random, so devices cannot predict it and sessions spread out.
fn recheck_delay(app: &AppState) -> Duration {
    let interval_ms = app.config.proof_recheck_interval_ms.max(1);
    let offset_ms = random_below((interval_ms / 2).max(1));
    Duration::from_millis(interval_ms - interval_ms / 4 + offset_ms)
}

/// A random number in `0..bound` from the operating system's source.
fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system has a random source");
    u64::from_le_bytes(bytes) % bound.max(1)
}

/// The session's devices that are idle now (never hired ones) and have no challenge open.
fn idle_devices(app: &AppState, bound: &Bound) -> Vec<flotilla_store::DeviceRow> {
    bound
        .devices
        .iter()
        .filter(|row| {
            app.fleet
                .lifecycle(&row.id)
                .is_some_and(|l| l.state == DeviceState::Idle)
        })
        .filter(|row| !bound.pending_proofs.contains_key(&row.id))
        .cloned()
        .collect()
}

/// Resolves at `deadline` (never, for none).
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Fails every challenge whose deadline passed without an answer.
async fn expire_proofs(app: &AppState, bound: &mut Bound) {
    let now = tokio::time::Instant::now();
    let expired: Vec<String> = bound
        .pending_proofs
        .iter()
        .filter(|(_, p)| p.deadline <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for device_id in expired {
        let Some(pending) = bound.pending_proofs.remove(&device_id) else {
            continue;
        };
        let (transcript, reason) = match pending.opening {
            Some((mut transcript, nonce_sent_at)) => {
                transcript.answer_elapsed_ms = duration_ms(nonce_sent_at.elapsed());
                (transcript, "memory not opened before the deadline")
            }
            None => (
                flotilla_proof::Transcript {
                    elapsed_ms: duration_ms(pending.sent_at.elapsed()),
                    challenge: pending.challenge,
                    compute_root: String::new(),
                    openings: Vec::new(),
                    memory_root: String::new(),
                    memory_nonce: String::new(),
                    memory_openings: Vec::new(),
                    answer_elapsed_ms: 0,
                },
                "no commitments before the deadline",
            ),
        };
        let reason = reason.to_owned();
        if let Err(error) = record_proof(app, bound, &device_id, &transcript, Err(reason)).await {
            tracing::warn!(%error, %device_id, "could not record a missed proof");
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Checks the commitments against the challenge this session sent, with the time this side
/// measured; if they hold, sends the nonce that picks the memory blocks to open.
async fn take_commitments(
    app: &AppState,
    bound: &mut Bound,
    device_id: String,
    mut transcript: flotilla_proof::Transcript,
) -> Result<(), Refusal> {
    let Some(pending) = bound
        .pending_proofs
        .get_mut(&device_id)
        .filter(|p| p.opening.is_none())
    else {
        return Err(Refusal::soft(
            "unexpected_proof",
            format!("no challenge awaits commitments for device {device_id}"),
        ));
    };
    // The worker's copy of the challenge, its timing and any memory answers are not trusted:
    // ours replace them.
    transcript.challenge = pending.challenge.clone();
    transcript.elapsed_ms = duration_ms(pending.sent_at.elapsed());
    transcript.memory_nonce = String::new();
    transcript.memory_openings = Vec::new();
    transcript.answer_elapsed_ms = 0;
    let (mut transcript, verdict) =
        verify_blocking(transcript, flotilla_proof::verify_commitments).await?;
    if let Err(reason) = verdict {
        bound.pending_proofs.remove(&device_id);
        return record_proof(app, bound, &device_id, &transcript, Err(reason))
            .await
            .map_err(|e| Refusal::soft("internal", e.to_string()));
    }
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).expect("the operating system has a random source");
    transcript.memory_nonce = hex::encode(nonce);
    let now = tokio::time::Instant::now();
    let pending = bound
        .pending_proofs
        .get_mut(&device_id)
        .expect("still pending: this session alone changes it");
    pending.deadline = now + Duration::from_millis(pending.challenge.memory.answer_deadline_ms);
    pending.opening = Some((transcript, now));
    bound.outbox.push(ServerMessage::OpenMemory {
        device_id,
        nonce: hex::encode(nonce),
    });
    Ok(())
}

/// Checks the memory openings, and with them the whole transcript, and records the verdict.
async fn take_memory_openings(
    app: &AppState,
    bound: &mut Bound,
    device_id: String,
    openings: Vec<flotilla_proof::BlockOpening>,
) -> Result<(), Refusal> {
    let querying = bound
        .pending_proofs
        .get(&device_id)
        .is_some_and(|p| p.opening.is_some());
    let Some((mut transcript, nonce_sent_at)) = querying
        .then(|| bound.pending_proofs.remove(&device_id))
        .flatten()
        .and_then(|p| p.opening)
    else {
        return Err(Refusal::soft(
            "unexpected_proof",
            format!("no memory query is open for device {device_id}"),
        ));
    };
    transcript.answer_elapsed_ms = duration_ms(nonce_sent_at.elapsed());
    transcript.memory_openings = openings;
    let (transcript, verdict) =
        verify_blocking(transcript, flotilla_proof::verify_transcript).await?;
    record_proof(app, bound, &device_id, &transcript, verdict)
        .await
        .map_err(|e| Refusal::soft("internal", e.to_string()))
}

/// Runs a verifier on a blocking thread: a check recomputes rows and blocks.
async fn verify_blocking(
    transcript: flotilla_proof::Transcript,
    check: fn(&flotilla_proof::Transcript) -> Result<(), flotilla_proof::Failure>,
) -> Result<(flotilla_proof::Transcript, Result<(), String>), Refusal> {
    tokio::task::spawn_blocking(move || {
        let verdict = check(&transcript).map_err(|failure| failure.to_string());
        (transcript, verdict)
    })
    .await
    .map_err(|e| Refusal::soft("internal", e.to_string()))
}

/// Stores the transcript as public evidence and moves the device: admitted, or blocked.
async fn record_proof(
    app: &AppState,
    bound: &Bound,
    device_id: &str,
    transcript: &flotilla_proof::Transcript,
    verdict: Result<(), String>,
) -> Result<(), FleetError> {
    let passed = verdict.is_ok();
    let row = flotilla_store::ProofRow {
        id: id::new_id(id::IdKind::Proof),
        device_id: device_id.to_owned(),
        account_id: bound.account_id.clone(),
        worker_id: bound.worker_id.clone(),
        class: transcript.challenge.class.clone(),
        passed,
        reason: verdict.err().unwrap_or_default(),
        elapsed_ms: transcript.elapsed_ms,
        created_at_ms: now_unix_ms(),
    };
    let json = serde_json::to_string(transcript).expect("transcripts serialize");
    app.store.insert_proof(&row, &json).await?;
    tracing::info!(%device_id, proof_id = %row.id, passed, reason = %row.reason, elapsed_ms = row.elapsed_ms, "proof of compute checked");
    if !passed
        && let Some(device) = app.store.device(&bound.account_id, device_id).await?
        && let Err(error) = crate::admission::slash_for_failed_proof(
            app,
            &bound.account_id,
            &device.hardware,
            &row.id,
            &row.reason,
        )
        .await
    {
        tracing::warn!(%device_id, %error, "could not slash for a failed proof");
    }
    app.fleet
        .apply_events(
            &[device_id.to_owned()],
            admission::verdict_event(passed),
            false,
        )
        .await
}

fn check_hello(
    app: &AppState,
    hostname: &str,
    agent_version: &str,
    devices: &[flotilla_proto::device::DeviceHardware],
) -> Result<(), Refusal> {
    if devices.len() > DEVICES_PER_WORKER_MAX {
        return Err(Refusal::fatal(
            "too_many_devices",
            format!("a worker may report at most {DEVICES_PER_WORKER_MAX} devices"),
        ));
    }
    let strings = devices
        .iter()
        .flat_map(|d| {
            [
                Some(&d.hardware_id),
                Some(&d.model),
                d.driver_version.as_ref(),
                d.cuda_capability.as_ref(),
            ]
        })
        .flatten()
        .map(String::as_str)
        .chain([hostname, agent_version]);
    for text in strings {
        if text.chars().count() > HARDWARE_STRING_CHARS_MAX || text.chars().any(char::is_control) {
            return Err(Refusal::fatal(
                "malformed_hardware",
                format!("hardware string {text:?} is too long or has control characters"),
            ));
        }
    }
    let mut ids: Vec<_> = devices.iter().map(|d| d.hardware_id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) || ids.iter().any(|id| id.is_empty()) {
        return Err(Refusal::fatal(
            "malformed_hardware",
            "hardware ids must be non-empty and distinct",
        ));
    }
    if !app.config.allow_simulated_devices && devices.iter().any(|d| d.simulated) {
        return Err(Refusal::fatal(
            "simulated_devices_refused",
            "this coordinator refuses simulated devices; start it with --allow-simulated-devices",
        ));
    }
    Ok(())
}

async fn on_message(
    app: &AppState,
    nonce: &[u8],
    bound: &mut Bound,
    text: &str,
) -> Result<(), Refusal> {
    let envelope = parse_envelope(text)?;
    if envelope.worker_id != bound.worker_id {
        return Err(Refusal::fatal(
            "worker_mismatch",
            format!("this session belongs to worker {}", bound.worker_id),
        ));
    }
    let message = open_batched(app, &envelope, &bound.public_key, nonce).await?;
    if envelope.seq <= bound.last_seq {
        return Err(Refusal::soft(
            "replayed_message",
            format!("sequence {} was already used", envelope.seq),
        ));
    }
    if envelope.seq != bound.last_seq + 1 {
        return Err(Refusal::soft(
            "out_of_order",
            format!("expected sequence {}", bound.last_seq + 1),
        ));
    }
    bound.last_seq = envelope.seq;
    match message {
        WorkerMessage::Hello { .. } => Err(Refusal::soft(
            "unexpected_hello",
            "hello was already received",
        )),
        WorkerMessage::ComputeProof {
            device_id,
            transcript,
        } => take_commitments(app, bound, device_id, transcript).await,
        WorkerMessage::MemoryOpenings {
            device_id,
            openings,
        } => take_memory_openings(app, bound, device_id, openings).await,
        WorkerMessage::MeshJoined { run_id, public_key } => {
            mesh_joined(app, bound, &run_id, public_key).await
        }
        WorkerMessage::NodeStarted { run_id } => {
            crate::clusters::on_started(app, &bound.worker_id, &run_id)
                .await
                .map_err(report_refused)
        }
        WorkerMessage::NodeLog {
            run_id,
            stream,
            text,
            ..
        } => crate::clusters::on_log(app, &bound.worker_id, &run_id, stream, &text)
            .await
            .map_err(report_refused),
        WorkerMessage::NodeExited {
            run_id,
            exit_code,
            reason,
            ..
        } => {
            bound.runs.remove(&run_id);
            bound.mesh_seen.remove(&run_id);
            for worker_id in app.meshes.leave(&run_id) {
                app.fleet.nudge(&worker_id);
            }
            crate::clusters::on_exited(app, &bound.worker_id, &run_id, exit_code, &reason)
                .await
                .map_err(report_refused)
        }
        WorkerMessage::Heartbeat {
            devices, running, ..
        } => {
            check_telemetry(&devices)?;
            if running.len() > RUNS_REPORTED_MAX {
                return Err(Refusal::soft(
                    "too_many_runs",
                    format!("a heartbeat lists at most {RUNS_REPORTED_MAX} runs"),
                ));
            }
            reconcile_running(app, bound, &running).await;
            let returning = app
                .fleet
                .heartbeat(&bound.worker_id, &devices, now_unix_ms())
                .map_err(|e| Refusal::soft("device_not_owned", e.to_string()))?;
            if !returning.is_empty() {
                app.fleet
                    .apply_events(&returning, DeviceEvent::HeartbeatResumed, false)
                    .await
                    .map_err(|e| Refusal::soft("internal", e.to_string()))?;
            }
            Ok(())
        }
    }
}

/// Takes a node's key into its cluster's mesh; the cluster's workers (this one among them)
/// are nudged to send the new peer lists.
async fn mesh_joined(
    app: &AppState,
    bound: &mut Bound,
    run_id: &str,
    public_key: String,
) -> Result<(), Refusal> {
    let mut key = [0u8; 32];
    if hex::decode_to_slice(&public_key, &mut key).is_err() {
        return Err(Refusal::soft(
            "bad_mesh_key",
            "public_key must be 32 hex-encoded bytes",
        ));
    }
    let run = crate::clusters::live_run_of(app, &bound.worker_id, run_id)
        .await
        .map_err(report_refused)?;
    let token = crate::mesh::relay_token(app, run_id);
    let joined = app.meshes.join(
        &run.cluster_id,
        run.node_rank,
        run_id,
        &bound.worker_id,
        public_key,
        token,
    );
    let Some(affected) = joined else {
        return Err(Refusal::soft(
            "mesh_full",
            "the coordinator's meshes are full",
        ));
    };
    bound.mesh_seen.insert(run_id.to_owned(), 0);
    send_mesh_peers(app, bound);
    for worker_id in affected {
        app.fleet.nudge(&worker_id);
    }
    Ok(())
}

/// Queues new peer lists for this worker's mesh nodes whose meshes changed.
fn send_mesh_peers(app: &AppState, bound: &mut Bound) {
    for (run_id, seen) in &mut bound.mesh_seen {
        if let Some(peers) = app.meshes.peers_if_changed(run_id, seen) {
            bound.outbox.push(ServerMessage::MeshPeers {
                run_id: run_id.clone(),
                peers,
            });
        }
    }
}

fn report_refused(refused: crate::clusters::ReportRefused) -> Refusal {
    Refusal::soft(refused.code, refused.message)
}

/// Loads the worker's live runs: orders the new ones, stops the ones no longer live.
async fn sync_runs(app: &AppState, bound: &mut Bound) {
    let live = match app.store.live_runs_of_worker(&bound.worker_id).await {
        Ok(live) => live,
        Err(error) => {
            tracing::warn!(worker_id = %bound.worker_id, %error, "could not load runs; next nudge or heartbeat retries");
            return;
        }
    };
    let gone: Vec<String> = bound
        .runs
        .keys()
        .filter(|id| !live.iter().any(|run| &run.id == *id))
        .cloned()
        .collect();
    for run_id in gone {
        bound.runs.remove(&run_id);
        bound.outbox.push(ServerMessage::StopNode {
            run_id,
            reason: "the run ended".to_owned(),
        });
    }
    for run in &live {
        if !bound.runs.contains_key(&run.id) {
            order(app, bound, run).await;
        }
    }
}

async fn order(app: &AppState, bound: &mut Bound, run: &flotilla_store::RunRow) {
    match crate::clusters::order_for(app, run).await {
        Ok(Some(order)) => {
            bound.outbox.push(ServerMessage::RunNode(order));
            bound
                .runs
                .insert(run.id.clone(), tokio::time::Instant::now());
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(run_id = %run.id, %error, "could not build a run's order"),
    }
}

/// Compares what the worker runs with what it should: runs it should not have are stopped, and
/// live runs it lacks are ordered again (an order lost with a dropped connection).
async fn reconcile_running(app: &AppState, bound: &mut Bound, running: &[String]) {
    for run_id in running.iter().filter(|id| !bound.runs.contains_key(*id)) {
        bound.outbox.push(ServerMessage::StopNode {
            run_id: run_id.clone(),
            reason: "not assigned to this worker".to_owned(),
        });
    }
    let patience = Duration::from_millis(app.config.heartbeat_interval_ms.saturating_mul(2));
    let missing: Vec<String> = bound
        .runs
        .iter()
        .filter(|(id, ordered_at)| !running.contains(id) && ordered_at.elapsed() > patience)
        .map(|(id, _)| id.clone())
        .collect();
    for run_id in missing {
        match app.store.run(&run_id).await {
            Ok(Some(run)) if run.is_live() && run.worker_id == bound.worker_id => {
                order(app, bound, &run).await;
            }
            Ok(_) => {
                bound.runs.remove(&run_id);
            }
            Err(error) => tracing::warn!(%run_id, %error, "could not re-check a run"),
        }
    }
}

/// A real GPU's UUID is unique: when two workers report the same one, at least one of them is
/// lying, so both devices are blocked and the evidence goes into the audit log.
async fn block_duplicate_gpus(
    app: &AppState,
    current: &[flotilla_store::DeviceRow],
) -> Result<(), FleetError> {
    let real_gpus = current.iter().filter(|row| {
        row.hardware.kind == flotilla_proto::device::DeviceKind::Gpu && !row.hardware.simulated
    });
    for row in real_gpus {
        let others = app
            .store
            .gpus_with_hardware_id_elsewhere(&row.hardware.hardware_id, &row.worker_id)
            .await?;
        if others.is_empty() {
            continue;
        }
        let mut blocked: Vec<String> = others.iter().map(|other| other.id.clone()).collect();
        blocked.push(row.id.clone());
        app.fleet
            .apply_events(&blocked, DeviceEvent::Blocked, false)
            .await?;
        let detail =
            serde_json::json!({ "hardware_id": row.hardware.hardware_id, "devices": blocked });
        let recorded = crate::api::audit::record(
            app,
            None,
            "control-session",
            "device.duplicate_hardware_id",
            Some(&row.id),
            detail,
        )
        .await;
        if let Err(error) = recorded {
            tracing::warn!(%error, "could not record a duplicate gpu in the audit log");
        }
        tracing::warn!(device_id = %row.id, hardware_id = %row.hardware.hardware_id, "same gpu uuid on two workers; both blocked");
    }
    Ok(())
}

/// Refuses samples no device can produce, so nothing absurd reaches history or charts.
fn check_telemetry(samples: &[flotilla_proto::device::DeviceTelemetry]) -> Result<(), Refusal> {
    if samples.len() > DEVICES_PER_WORKER_MAX {
        return Err(Refusal::soft(
            "malformed_telemetry",
            format!("at most {DEVICES_PER_WORKER_MAX} samples per heartbeat"),
        ));
    }
    if let Some(bad) = samples.iter().find(|s| s.utilization_pct > 100) {
        return Err(Refusal::soft(
            "malformed_telemetry",
            format!("utilization of {} is above 100%", bad.device_id),
        ));
    }
    Ok(())
}

/// Verifies an envelope through the batching verifier, then decodes its body.
async fn open_batched(
    app: &AppState,
    envelope: &Envelope,
    public_key: &ed25519_dalek::VerifyingKey,
    nonce: &[u8],
) -> Result<WorkerMessage, Refusal> {
    let bad = |e: flotilla_proto::wire::WireError| Refusal::fatal("bad_signature", e.to_string());
    let (message, signature) = envelope.signed_parts(nonce).map_err(bad)?;
    let job = crate::verifier::Job {
        key: *public_key,
        message,
        signature,
    };
    if !app.verifier.verify(job).await {
        return Err(bad(flotilla_proto::wire::WireError::SignatureInvalid));
    }
    envelope
        .decode_body()
        .map_err(|e| Refusal::fatal("malformed_message", e.to_string()))
}
