//! The control protocol between a worker and the coordinator, over one WebSocket.
//!
//! 1. The coordinator opens with [`ServerMessage::Challenge`]: a fresh random session nonce.
//! 2. Every worker message is an [`Envelope`]: the worker id, a sequence number that starts at 1
//!    and grows by exactly 1, the JSON body as sent, and an ed25519 signature over
//!    [`signing_bytes`] (domain, session nonce, worker id, sequence, SHA-256 of the body).
//! 3. The first body is [`WorkerMessage::Hello`] with the hardware; the coordinator answers
//!    [`ServerMessage::Welcome`] with the device ids. Then [`WorkerMessage::Heartbeat`]s follow.
//!
//! A replayed envelope fails the sequence check, and one from another session fails the
//! signature (the nonce differs). Worker A cannot speak for worker B: the signature is checked
//! against B's enrolled public key, and a connection is bound to one worker id at Hello.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::device::{DeviceHardware, DeviceState, DeviceTelemetry};

const SIGNING_DOMAIN: &[u8] = b"flotilla/worker-message/v1\0";
const ENROLL_DOMAIN: &[u8] = b"flotilla/enroll/v1\0";

/// Bytes in a session nonce.
pub const SESSION_NONCE_BYTES: usize = 32;

/// What the coordinator sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    Challenge {
        protocol_version: u32,
        /// Hex of [`SESSION_NONCE_BYTES`] random bytes.
        session_nonce: String,
        server_time_ms: i64,
    },
    Welcome {
        worker_id: String,
        heartbeat_interval_ms: u64,
        devices: Vec<DeviceAssignment>,
        /// Where the worker opens its tunnel, for renters' connections to its nodes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tunnel: Option<TunnelOffer>,
    },
    /// Prove the compute and memory of one device (see `flotilla_proof`); answer with
    /// [`WorkerMessage::ComputeProof`] before the challenge's commitment deadline.
    ProveCompute {
        device_id: String,
        challenge: flotilla_proof::Challenge,
    },
    /// The commitments are in: open the memory blocks this nonce picks, with
    /// [`WorkerMessage::MemoryOpenings`], before the challenge's answer deadline.
    OpenMemory {
        device_id: String,
        /// Hex of 32 fresh random bytes.
        nonce: String,
    },
    /// Run one node of a cluster. Idempotent by `run_id`: a worker already running it does
    /// nothing. The coordinator sends it when the node is assigned, and again whenever a
    /// heartbeat's `running` list lacks an assigned run.
    RunNode(NodeOrder),
    /// Stop a run (terminated, failed elsewhere, expired, reassigned, or unknown to the
    /// coordinator). The worker kills it and reports [`WorkerMessage::NodeExited`].
    StopNode { run_id: String, reason: String },
    /// The other nodes of a run's cluster mesh, whole, whenever they change. A node sends
    /// WireGuard traffic to these and accepts it from these alone.
    MeshPeers {
        run_id: String,
        peers: Vec<crate::mesh::MeshPeer>,
    },
    /// A message was refused. `fatal` means the coordinator closes the session.
    Rejected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        code: String,
        message: String,
        fatal: bool,
    },
}

/// One node's work, as the coordinator orders it. Its `Debug` names the environment's
/// variables but not their values, which may be the renter's secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOrder {
    /// Names this node's attempt (`run_...`), fresh per attempt.
    pub run_id: String,
    pub cluster_id: String,
    pub node_rank: u32,
    pub node_count: u32,
    /// 1 for the first run of a rank, one more per restart or replacement.
    pub attempt: u32,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The environment the renter gave (secret values included: they go to the node only),
    /// besides the `FLOTILLA_*` variables the worker sets itself.
    pub env: Vec<(String, String)>,
    /// The devices of this worker the node holds; the worker maps them to GPU indices.
    pub device_ids: Vec<String>,
    /// Host names of every node's worker, by rank.
    pub peers: Vec<String>,
    /// Ports the node serves that its renter may reach through the tunnel.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Memory limit for the node's processes.
    pub memory_bytes_max: u64,
    /// CPU limit for the node's processes, thousandths of a core (2000: two cores' time).
    #[serde(default)]
    pub cpu_millis_max: u64,
    /// Killed after this long.
    pub wall_limit_ms: u64,
    /// A container image: run on the container driver instead of the exec driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Keep the node's checkpoint directory across restarts and replacements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointOrder>,
    /// The node's place in its cluster's mesh network, if the cluster has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<crate::mesh::MeshOrder>,
    /// Run Ray on this node instead of `argv` (a `ray` cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray: Option<crate::mesh::RayOrder>,
}

/// Where a node's checkpoints go: the worker uploads the directory `path` (under the work
/// directory) as a tar.gz every `interval_ms` and when the node ends, with `PUT`, and before
/// the node starts restores the newest one with `GET`, both at `/api/v1/runs/{run_id}/checkpoint`
/// of the coordinator with the header `X-Run-Token: token`. Its `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointOrder {
    pub path: String,
    pub token: String,
    pub interval_ms: u64,
    /// Largest archive the coordinator keeps.
    pub bytes_max: u64,
}

impl std::fmt::Debug for NodeOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("NodeOrder")
            .field("run_id", &self.run_id)
            .field("cluster_id", &self.cluster_id)
            .field("node_rank", &self.node_rank)
            .field("node_count", &self.node_count)
            .field("attempt", &self.attempt)
            .field("argv", &self.argv)
            .field("env_names", &env_names)
            .field("device_ids", &self.device_ids)
            .field("peers", &self.peers)
            .field("ports", &self.ports)
            .field("memory_bytes_max", &self.memory_bytes_max)
            .field("cpu_millis_max", &self.cpu_millis_max)
            .field("wall_limit_ms", &self.wall_limit_ms)
            .field("image", &self.image)
            .field("checkpoint", &self.checkpoint)
            .field("mesh", &self.mesh)
            .field("ray", &self.ray)
            .finish()
    }
}

impl std::fmt::Debug for CheckpointOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointOrder")
            .field("path", &self.path)
            .field("token", &"***")
            .field("interval_ms", &self.interval_ms)
            .field("bytes_max", &self.bytes_max)
            .finish()
    }
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Bytes of one [`WorkerMessage::NodeLog`] chunk at most.
pub const LOG_CHUNK_BYTES_MAX: usize = 16 * 1024;

/// The coordinator's tunnel listener: its port (on the host the worker reaches the
/// coordinator at) and its Noise static public key (hex of 32 bytes, X25519), which the worker
/// requires of the listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelOffer {
    pub port: u16,
    pub public_key: String,
}

/// The first line on every tunnel stream the coordinator opens: which run's port to reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOpen {
    pub run_id: String,
    pub port: u16,
    /// A standby stream: the worker checks the run and the port and answers at once, but dials
    /// the port only when [`STANDBY_GO`] arrives, and the stream carries the connection's bytes
    /// from the next byte on. A renter's client keeps a few ready, so that a new connection
    /// skips the checks and the open's round trip, and a node sees no connection nobody made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// The byte that starts a standby stream, renter to coordinator to worker.
pub const STANDBY_GO: u8 = b'!';
/// How long a standby stream waits for [`STANDBY_GO`] before the coordinator and the worker
/// close it (so a revoked key's standby streams do not outlive it by more).
pub const STANDBY_WAIT_MS_MAX: u64 = 120_000;

/// The worker's one-line answer to a [`StreamOpen`]; after `ok`, the stream carries the
/// connection's bytes both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOpened {
    pub ok: bool,
    #[serde(default)]
    pub error: String,
}

impl StreamOpened {
    pub fn ok() -> StreamOpened {
        StreamOpened {
            ok: true,
            error: String::new(),
        }
    }
}

/// Longest first line of a tunnel stream, either way.
pub const STREAM_LINE_BYTES_MAX: usize = 1024;

/// The id the coordinator gave one reported device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceAssignment {
    pub hardware_id: String,
    pub device_id: String,
    pub state: DeviceState,
}

/// A signed worker message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub worker_id: String,
    pub seq: u64,
    /// The JSON of a [`WorkerMessage`], exactly as signed.
    pub body: String,
    /// Hex of the 64-byte ed25519 signature over [`signing_bytes`].
    pub signature: String,
}

/// The body of an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerMessage {
    Hello {
        agent_version: String,
        hostname: String,
        devices: Vec<DeviceHardware>,
        /// The worker runs container images (it found a container engine).
        #[serde(default)]
        containers: bool,
    },
    Heartbeat {
        sent_at_ms: i64,
        devices: Vec<DeviceTelemetry>,
        /// Runs the worker has not reported ended yet (started or starting).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        running: Vec<String>,
    },
    /// A run's command started in its sandbox.
    NodeStarted { run_id: String },
    /// A run's mesh interface is up: its WireGuard public key (hex of 32 bytes, X25519), for
    /// the cluster's other nodes. The private key never leaves the worker.
    MeshJoined { run_id: String, public_key: String },
    /// Output of a run, in order: `offset` is the stream's byte count before this chunk, and
    /// `text` at most [`LOG_CHUNK_BYTES_MAX`] bytes (invalid UTF-8 replaced).
    NodeLog {
        run_id: String,
        stream: LogStream,
        offset: u64,
        text: String,
    },
    /// A run ended. `exit_code` is none when it was killed by a signal; `reason` is one of
    /// `exited`, `stopped` (by [`ServerMessage::StopNode`]), `memory` (over its memory limit),
    /// `timed_out`, or `start_failed` (with `message` saying why).
    NodeExited {
        run_id: String,
        exit_code: Option<i32>,
        reason: String,
        #[serde(default)]
        message: String,
    },
    /// The answer to [`ServerMessage::ProveCompute`]: both commitments and the compute
    /// openings (the transcript's memory fields are left empty).
    ComputeProof {
        device_id: String,
        transcript: flotilla_proof::Transcript,
    },
    /// The answer to [`ServerMessage::OpenMemory`].
    MemoryOpenings {
        device_id: String,
        openings: Vec<flotilla_proof::BlockOpening>,
    },
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("signature is not 64 hex-encoded bytes")]
    SignatureMalformed,
    #[error("public key is not 32 hex-encoded bytes of a valid ed25519 key")]
    PublicKeyMalformed,
    #[error("signature does not verify")]
    SignatureInvalid,
    #[error("body is not a valid worker message: {0}")]
    BodyMalformed(String),
}

/// The bytes a worker signs for one envelope.
pub fn signing_bytes(session_nonce: &[u8], worker_id: &str, seq: u64, body: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNING_DOMAIN.len() + session_nonce.len() + 80);
    bytes.extend_from_slice(SIGNING_DOMAIN);
    bytes.extend_from_slice(session_nonce);
    bytes.extend_from_slice(worker_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(&Sha256::digest(body.as_bytes()));
    bytes
}

impl Envelope {
    /// Signs `message` as sequence `seq` of the session with `session_nonce`.
    pub fn seal(
        key: &SigningKey,
        session_nonce: &[u8],
        worker_id: &str,
        seq: u64,
        message: &WorkerMessage,
    ) -> Envelope {
        let body = serde_json::to_string(message).expect("worker messages serialize");
        let signature = key.sign(&signing_bytes(session_nonce, worker_id, seq, &body));
        Envelope {
            worker_id: worker_id.to_owned(),
            seq,
            body,
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Checks the signature against `public_key` and decodes the body. The sequence check is the
    /// caller's, since it alone knows the session's last sequence.
    pub fn open(
        &self,
        public_key: &VerifyingKey,
        session_nonce: &[u8],
    ) -> Result<WorkerMessage, WireError> {
        let (signed, signature) = self.signed_parts(session_nonce)?;
        public_key
            .verify(&signed, &signature)
            .map_err(|_| WireError::SignatureInvalid)?;
        self.decode_body()
    }

    /// What a verifier checks: the signed bytes and the signature. For callers that verify many
    /// envelopes together (batch verification); [`Envelope::open`] is the one-at-a-time path.
    pub fn signed_parts(&self, session_nonce: &[u8]) -> Result<(Vec<u8>, Signature), WireError> {
        let signature = decode_signature(&self.signature)?;
        Ok((
            signing_bytes(session_nonce, &self.worker_id, self.seq, &self.body),
            signature,
        ))
    }

    /// Decodes the body. Only meaningful after the signature verified.
    pub fn decode_body(&self) -> Result<WorkerMessage, WireError> {
        serde_json::from_str(&self.body).map_err(|e| WireError::BodyMalformed(e.to_string()))
    }
}

fn decode_signature(text: &str) -> Result<Signature, WireError> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| WireError::SignatureMalformed)?;
    Ok(Signature::from_bytes(&bytes))
}

/// Parses a hex public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, WireError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| WireError::PublicKeyMalformed)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| WireError::PublicKeyMalformed)
}

/// The bytes a worker signs to enroll: proof that it holds the key it presents.
pub fn enroll_signing_bytes(token: &str, public_key_hex: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ENROLL_DOMAIN.len() + token.len() + 65);
    bytes.extend_from_slice(ENROLL_DOMAIN);
    bytes.extend_from_slice(token.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(public_key_hex.as_bytes());
    bytes
}

/// Signs an enrollment request.
pub fn sign_enrollment(key: &SigningKey, token: &str) -> (String, String) {
    let public_key = hex::encode(key.verifying_key().to_bytes());
    let signature = key.sign(&enroll_signing_bytes(token, &public_key));
    (public_key, hex::encode(signature.to_bytes()))
}

/// Verifies an enrollment signature.
pub fn verify_enrollment(
    token: &str,
    public_key_hex: &str,
    signature_hex: &str,
) -> Result<VerifyingKey, WireError> {
    let public_key = parse_public_key(public_key_hex)?;
    let signature = decode_signature(signature_hex)?;
    public_key
        .verify(&enroll_signing_bytes(token, public_key_hex), &signature)
        .map_err(|_| WireError::SignatureInvalid)?;
    Ok(public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn heartbeat() -> WorkerMessage {
        WorkerMessage::Heartbeat {
            sent_at_ms: 1,
            devices: vec![],
            running: vec![],
        }
    }

    #[test]
    fn sealed_envelope_opens_with_the_right_key_and_nonce_only() {
        let nonce = [7u8; SESSION_NONCE_BYTES];
        let envelope = Envelope::seal(&key(1), &nonce, "wrk_a", 3, &heartbeat());
        assert_eq!(
            envelope.open(&key(1).verifying_key(), &nonce),
            Ok(heartbeat())
        );
        assert_eq!(
            envelope.open(&key(2).verifying_key(), &nonce),
            Err(WireError::SignatureInvalid)
        );
        let other_session = [8u8; SESSION_NONCE_BYTES];
        assert_eq!(
            envelope.open(&key(1).verifying_key(), &other_session),
            Err(WireError::SignatureInvalid)
        );
    }

    #[test]
    fn tampering_with_any_signed_field_breaks_the_signature() {
        let nonce = [7u8; SESSION_NONCE_BYTES];
        let sealed = Envelope::seal(&key(1), &nonce, "wrk_a", 3, &heartbeat());
        let public = key(1).verifying_key();
        let mut other_seq = sealed.clone();
        other_seq.seq = 4;
        let mut other_worker = sealed.clone();
        other_worker.worker_id = "wrk_b".into();
        let mut other_body = sealed.clone();
        other_body.body = other_body.body.replace("1", "2");
        for envelope in [other_seq, other_worker, other_body] {
            assert_eq!(
                envelope.open(&public, &nonce),
                Err(WireError::SignatureInvalid)
            );
        }
        let mut garbage = sealed;
        garbage.signature = "zz".into();
        assert_eq!(
            garbage.open(&public, &nonce),
            Err(WireError::SignatureMalformed)
        );
    }

    #[test]
    fn enrollment_signature_binds_token_and_key() {
        let (public, signature) = sign_enrollment(&key(1), "fle_token");
        assert!(verify_enrollment("fle_token", &public, &signature).is_ok());
        assert_eq!(
            verify_enrollment("fle_other", &public, &signature).unwrap_err(),
            WireError::SignatureInvalid
        );
        let (other_public, _) = sign_enrollment(&key(2), "fle_token");
        assert!(verify_enrollment("fle_token", &other_public, &signature).is_err());
        assert_eq!(
            verify_enrollment("fle_token", "nothex", &signature).unwrap_err(),
            WireError::PublicKeyMalformed
        );
    }

    #[test]
    fn an_order_logged_shows_no_secret() {
        let order = NodeOrder {
            run_id: "run_a".into(),
            cluster_id: "clu_a".into(),
            node_rank: 0,
            node_count: 1,
            attempt: 1,
            argv: vec!["true".into()],
            env: vec![("HF_TOKEN".into(), "hf_secretvalue".into())],
            device_ids: vec![],
            peers: vec![],
            ports: vec![],
            memory_bytes_max: 1,
            cpu_millis_max: 1,
            wall_limit_ms: 1,
            image: None,
            checkpoint: Some(CheckpointOrder {
                path: "ckpt".into(),
                token: "tokensecret".into(),
                interval_ms: 1,
                bytes_max: 1,
            }),
            mesh: Some(crate::mesh::MeshOrder {
                address: std::net::Ipv4Addr::new(100, 64, 0, 1),
                relay_port: 1,
                relay_token: "relaysecret".into(),
            }),
            ray: None,
        };
        let shown = format!("{order:?}");
        assert!(
            shown.contains("HF_TOKEN") && shown.contains("ckpt") && shown.contains("100.64.0.1"),
            "{shown}"
        );
        assert!(
            !shown.contains("hf_secretvalue")
                && !shown.contains("tokensecret")
                && !shown.contains("relaysecret"),
            "{shown}"
        );
    }

    #[test]
    fn decoding_garbage_never_panics() {
        for text in ["", "{", "{\"type\":\"hello\"}", "[1,2]", "\u{0}"] {
            assert!(serde_json::from_str::<Envelope>(text).is_err());
            assert!(serde_json::from_str::<WorkerMessage>(text).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn untrusted_frames_never_panic(text in ".{0,300}", signature in "[0-9a-f]{0,140}", seq in proptest::num::u64::ANY) {
            let _ = serde_json::from_str::<Envelope>(&text);
            let _ = serde_json::from_str::<WorkerMessage>(&text);
            let envelope = Envelope { worker_id: text.clone(), seq, body: text.clone(), signature };
            let nonce = [1u8; SESSION_NONCE_BYTES];
            proptest::prop_assert!(envelope.open(&key(1).verifying_key(), &nonce).is_err());
            let _ = verify_enrollment(&text, &text, &envelope.signature);
        }
    }

    /// Hex of `n` bytes, as a transcript writes rows and blocks.
    fn hex_of(n: u64) -> String {
        "ab".repeat(n as usize)
    }

    /// Merkle path entries (hex SHA-256) for a tree over `leaves`.
    fn path_over(leaves: u64) -> Vec<String> {
        vec![hex_of(32); leaves.next_power_of_two().trailing_zeros() as usize]
    }

    /// The proofs the coordinator may ask the largest class for, at the longest target and a
    /// full memory fill, sealed as the worker sends them: each fits one control-channel frame.
    #[test]
    fn the_largest_proof_messages_fit_a_frame() {
        for class in ["b200", "cpu"] {
            let class = flotilla_proof::class_named(class).unwrap();
            let challenge = flotilla_proof::challenge_with_target(
                &class,
                [1; 32],
                flotilla_proof::CHALLENGE_TARGET_MS_MAX,
                100,
            );
            let compute = &challenge.compute;
            let n = u64::from(compute.matrix_n);
            let rows = (u64::from(compute.steps) + 1) * n;
            let row = flotilla_proof::RowOpening {
                step: compute.steps,
                row: compute.matrix_n,
                values: hex_of(n),
                next_values: hex_of(n),
                path: path_over(rows),
                next_path: path_over(rows),
            };
            let memory = &challenge.memory;
            let blocks = u64::from(memory.lanes) * memory.blocks_per_lane;
            let block = flotilla_proof::BlockOpening {
                index: blocks,
                block: hex_of(u64::from(memory.block_bytes)),
                previous: hex_of(u64::from(memory.block_bytes)),
                reference: hex_of(u64::from(memory.block_bytes)),
                path: path_over(blocks),
                previous_path: path_over(blocks),
                reference_path: path_over(blocks),
            };
            let transcript = flotilla_proof::Transcript {
                challenge: challenge.clone(),
                compute_root: hex_of(32),
                openings: vec![row; compute.checks as usize],
                memory_root: hex_of(32),
                elapsed_ms: u64::MAX,
                memory_nonce: String::new(),
                memory_openings: Vec::new(),
                answer_elapsed_ms: 0,
            };
            let messages = [
                WorkerMessage::ComputeProof {
                    device_id: "dev_".repeat(8),
                    transcript,
                },
                WorkerMessage::MemoryOpenings {
                    device_id: "dev_".repeat(8),
                    openings: vec![block; memory.checks as usize],
                },
            ];
            for message in &messages {
                let envelope =
                    Envelope::seal(&key(1), &[0; SESSION_NONCE_BYTES], "wrk_a", 1, message);
                let frame_bytes = serde_json::to_string(&envelope).unwrap().len();
                assert!(
                    frame_bytes <= crate::limits::FRAME_BYTES_MAX,
                    "{} class: a {frame_bytes}-byte message",
                    class.name
                );
            }
        }
    }
}
