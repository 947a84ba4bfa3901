//! JSON bodies of the HTTP API under `/api/v1`. Request types reject unknown fields, so a client
//! cannot set what it does not own (no mass assignment).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::device::{DeviceHardware, DeviceKind, DeviceState};

/// Every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// snake_case, stable, for programs.
    pub code: String,
    /// Lowercase sentence naming the thing, for people.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// `sqlite` or `postgres`.
    pub database: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Renter,
    Supplier,
    Admin,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Renter => "renter",
            Role::Supplier => "supplier",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Renter, Role::Supplier, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// What an API key may do. `write` includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub created_at: String,
}

/// Sign-up. Anyone may become a renter or a supplier; only an admin creates admins.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    pub name: String,
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateAccountResponse {
    pub account: Account,
    /// The account's first key, with read and write scope. Shown once.
    pub api_key: CreatedApiKey,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Lifetime; none means the key never expires.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    pub key: ApiKeyInfo,
    /// The secret. Shown once; only its hash is stored.
    pub secret: String,
}

/// The caller, as the API sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub account: Account,
    pub key_id: String,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentTokenRequest {
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime; default one hour.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentTokenState {
    Active,
    Used,
    Expired,
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenInfo {
    pub id: String,
    pub name: String,
    pub state: EnrollmentTokenState,
    pub created_at: String,
    pub expires_at: String,
    pub used_at: Option<String>,
    pub used_by_worker_id: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    pub token: EnrollmentTokenInfo,
    /// Pass to `flotilla worker --token`. Shown once; single use.
    pub secret: String,
}

/// A worker's first contact: the token, its new public key, and a signature proving it holds
/// the private half.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// Hex of the 32-byte ed25519 public key.
    pub public_key: String,
    /// Hex of the signature over `flotilla_proto::wire::enroll_signing_bytes`.
    pub signature: String,
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    pub worker_id: String,
    pub account_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Active,
    Paused,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Worker {
    pub id: String,
    pub name: String,
    pub hostname: String,
    /// Hex ed25519 public key: the worker's identity.
    pub public_key: String,
    pub state: WorkerState,
    /// Whether its control session is up now.
    pub connected: bool,
    pub agent_version: String,
    pub device_count: u32,
    pub created_at: String,
    pub last_seen_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerDetail {
    pub worker: Worker,
    pub devices: Vec<Device>,
}

/// Latest telemetry of a device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySnapshot {
    pub at: String,
    pub utilization_pct: u8,
    pub memory_used_bytes: u64,
    pub temperature_c: Option<i16>,
    pub power_w: Option<u32>,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// One downsampled point of telemetry history: averages over the bucket, maxima for
/// temperature, counters at the bucket's end.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TelemetryPoint {
    pub bucket_start: String,
    pub bucket_s: u64,
    pub samples: u32,
    pub utilization_pct_avg: u8,
    pub memory_used_bytes_avg: u64,
    pub temperature_c_max: Option<i16>,
    pub power_w_avg: Option<u32>,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Device {
    pub id: String,
    pub worker_id: String,
    pub name: String,
    pub kind: DeviceKind,
    pub model: String,
    pub memory_bytes: u64,
    pub simulated: bool,
    pub state: DeviceState,
    pub state_changed_at: String,
    pub hardware: DeviceHardware,
    pub created_at: String,
    pub last_seen_at: Option<String>,
    pub telemetry: Option<TelemetrySnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceDetail {
    pub device: Device,
    /// Oldest first.
    pub history: Vec<TelemetryPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: String,
    pub at: String,
    pub actor_account_id: Option<String>,
    pub actor_key_id: Option<String>,
    pub source_ip: Option<String>,
    /// e.g. `login`, `api_key.create`, `worker.enroll`, `device.remove`.
    pub action: String,
    pub target_id: Option<String>,
    pub detail: serde_json::Value,
}

/// One page of a list. `next_cursor` is opaque; pass it back as `?cursor=`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `?limit=&cursor=` on every list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A proof-of-compute attempt. Public: anyone may list proofs and re-check their transcripts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProofInfo {
    pub id: String,
    pub device_id: String,
    pub worker_id: String,
    /// The device class the challenge was sized for (`cpu`, `h100`, ...).
    pub class: String,
    pub passed: bool,
    /// Why it failed; empty when it passed.
    pub reason: String,
    pub elapsed_ms: u64,
    pub created_at: String,
}
