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
    /// Where it is (empty until the supplier sets it) and its connectivity tier.
    pub region: String,
    pub country: String,
    pub tier: String,
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
    /// The asking price in IOSD base units per hour; absent when not offered.
    pub price_per_hour: Option<u64>,
    /// Renters' tunnelled connections to the nodes this device has held, added up.
    #[serde(default)]
    pub tunnel: TunnelTraffic,
}

/// What renters' tunnelled connections carried, to one node or, added up, to one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TunnelTraffic {
    pub connections: u64,
    pub bytes_to_node: u64,
    pub bytes_from_node: u64,
    /// The connections' durations, added up.
    pub connected_ms: u64,
}

impl TunnelTraffic {
    /// Both added, each figure saturating.
    pub fn plus(self, other: TunnelTraffic) -> TunnelTraffic {
        TunnelTraffic {
            connections: self.connections.saturating_add(other.connections),
            bytes_to_node: self.bytes_to_node.saturating_add(other.bytes_to_node),
            bytes_from_node: self.bytes_from_node.saturating_add(other.bytes_from_node),
            connected_ms: self.connected_ms.saturating_add(other.connected_ms),
        }
    }
}

/// A declared port of a node, reached through the coordinator at `path` (HTTP and WebSockets)
/// or with `flotilla connect CLUSTER --node NODE_RANK --port PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortLink {
    pub node_rank: u32,
    pub port: u16,
    /// What serves there, where Flotilla started it: `Ray dashboard`, `Jupyter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `/t/CLUSTER/NODE/PORT/`, on the coordinator's address.
    pub path: String,
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

/// The coordinator's signature over a proof transcript it checked (and whose timings it
/// measured): ed25519 by the ledger key over `flotilla_proof::transcript_message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProofSignature {
    pub proof_id: String,
    pub public_key: String,
    pub signature: String,
}

/// One worker's matching free GPUs of one model, from `GET /api/v1/offers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfferInfo {
    pub worker_id: String,
    /// Model key, such as `rtx4090` or `h100`.
    pub model: String,
    /// Matching free GPUs of this model on the worker.
    pub count: u32,
    pub memory_bytes: u64,
    /// The cheapest of them, in IOSD base units per GPU hour (6 decimals).
    pub price_per_hour: u64,
    /// The same price in USD, exactly, as text.
    pub price_usd: String,
    /// The class throughput it proved (int8 operations per second).
    pub perf_ops_per_s: u64,
    pub region: String,
    pub country: String,
    pub tier: String,
    /// Reliability in parts per million: measured uptime, lowered by work lost.
    pub reliability_ppm: u32,
    /// Requests it served that have ended.
    pub completed: u32,
    /// Average renter rating in thousandths of a star; absent before any.
    pub feedback_milli: Option<u32>,
    /// A development device that simulates this model and proved only a CPU's compute.
    pub simulated: bool,
}

/// What one constraint removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfferRemoval {
    pub constraint: String,
    pub offers: u64,
}

/// One relaxation that would match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfferRelaxation {
    /// The constraint to drop, in the query language.
    pub drop: String,
    pub offers: u64,
    pub nodes: u64,
    pub cheapest_per_hour: u64,
    /// The same, as a sentence: `drop region in [eu]: 14 offers from 0.41/h`.
    pub summary: String,
}

/// Why a search found nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NoMatchExplanation {
    pub offers_total: u64,
    pub offers_matching: u64,
    pub nodes_matching: u64,
    pub nodes_needed: u32,
    pub removed: Vec<OfferRemoval>,
    /// Cheapest first.
    pub relaxations: Vec<OfferRelaxation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OffersResponse {
    pub offers: Vec<OfferInfo>,
    /// Present when nothing matched.
    pub explanation: Option<NoMatchExplanation>,
}

/// One model's market prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelPriceInfo {
    pub model: String,
    /// Verified devices offered: idle plus hired.
    pub devices: u64,
    pub hired: u64,
    /// IOSD base units per GPU hour.
    pub median_ask_per_hour: u64,
    pub median_ask_usd: String,
    pub cheapest_ask_per_hour: u64,
    /// Hired share in parts per million.
    pub hired_ppm: u32,
    /// Change of the median ask against the index an hour or more ago, in ppm.
    pub trend_ppm: Option<i64>,
}

/// Offered devices of one group of the supply and their suppliers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SupplyCountInfo {
    /// Suppliers with at least one verified device offered in the group (each once).
    pub suppliers: u64,
    /// Verified devices offered: idle plus hired.
    pub devices: u64,
    pub hired: u64,
    pub idle: u64,
}

/// One model's supply within a country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelSupplyInfo {
    pub model: String,
    #[serde(flatten)]
    pub count: SupplyCountInfo,
}

/// One country's supply, in total and by model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CountrySupplyInfo {
    /// ISO 3166 alpha-2, lower case.
    pub country: String,
    #[serde(flatten)]
    pub total: SupplyCountInfo,
    pub models: Vec<ModelSupplyInfo>,
}

/// Sets a device's asking price; `null` withdraws it from the market.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPriceRequest {
    /// IOSD base units (6 decimals) per hour.
    pub price_per_hour: Option<u64>,
}

/// Sets where a worker is and how well it is connected.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLocationRequest {
    /// Such as `eu-west`: lower-case words joined by `-`.
    pub region: String,
    /// ISO 3166 alpha-2, lower case.
    pub country: String,
    /// low, medium, high or ultra.
    pub tier: String,
}

/// A request for GPUs: `nodes` workers with `gpus_per_node` matching GPUs each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub nodes: u32,
    pub gpus_per_node: u32,
    /// Constraints in the offer search language, such as `gpu=h100 price<2.5 region=eu`.
    #[serde(default)]
    pub query: String,
    /// The most the whole placement may cost per hour, in IOSD base units.
    #[serde(default)]
    pub budget_per_hour: Option<u64>,
    /// urgent, normal (default) or deferrable.
    #[serde(default)]
    pub priority: Option<String>,
    /// Deferrable only: wait for offers at or under this price (IOSD base units per GPU hour)...
    #[serde(default)]
    pub target_price_per_hour: Option<u64>,
    /// ...until this many seconds after submission, then take the market price.
    #[serde(default)]
    pub deadline_s: Option<u64>,
    /// one_region (default) or spread.
    #[serde(default)]
    pub colocation: Option<String>,
    /// The renter's region, for latency.
    #[serde(default)]
    pub renter_region: Option<String>,
    /// A paid rental of this many hours: `budget_per_hour x hours` plus fees is held from the
    /// renter's IOSD when submitted; on placement the actual cost moves into the request's
    /// escrow, each minute a node is up pays its supplier, and what is left returns at the end.
    #[serde(default)]
    pub hours: Option<u32>,
    /// Only workers that run container images (a cluster with an image).
    #[serde(default)]
    pub containers: bool,
    /// Paid in IO at this price, IOSD base units per whole IO, fixed when the cluster was
    /// deployed; none: paid in IOSD. Set by the coordinator, never by the caller.
    #[serde(default)]
    pub io_price_micros: Option<u64>,
}

/// The devices one node of a placement holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacedNode {
    pub worker_id: String,
    pub device_ids: Vec<String>,
    /// IOSD base units per hour for these devices.
    pub price_per_hour: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestInfo {
    pub id: String,
    /// queued, placed or cancelled.
    pub state: String,
    pub spec: RequestSpec,
    /// Why a queued request waits, in words.
    pub waiting_because: Option<String>,
    /// For a request that finds nothing: which constraint removed what, and what to relax
    /// (in `GET /requests/{id}` only, not in lists).
    pub explanation: Option<NoMatchExplanation>,
    /// Placement attempt: 1 at first placement, one more per replacement.
    pub attempt: u32,
    pub nodes: Vec<PlacedNode>,
    pub created_at: String,
    pub placed_at: Option<String>,
    /// The renter's rating, once given.
    pub feedback_stars: Option<u8>,
    /// A paid rental's escrow left (IOSD base units), and the minutes metered so far.
    pub escrow_micros: Option<i64>,
    pub metered_minutes: Option<u64>,
}

/// A renter's rating of a request that ran.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// 1 to 5.
    pub stars: u8,
}

// --- Clusters ----------------------------------------------------------------------------

/// What a renter deploys: a placement of `nodes` x `gpus_per_node`, paid for `hours`, and the
/// command every node runs. Its `Debug` names the secret variables but not their values.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Letters, digits, `-` and `_`, at most 64.
    pub name: String,
    /// `batch` (done when every node exits 0), `service` (runs until terminated or expired),
    /// or `ray` (a Ray cluster over the cluster's mesh, until terminated or expired; jobs go
    /// through `flotilla ray submit`).
    #[serde(rename = "type")]
    pub kind: String,
    pub nodes: u32,
    /// 1 unless given.
    #[serde(default = "one")]
    pub gpus_per_node: u32,
    /// Constraints in the offer search language: GPU model or class, memory, region, tier,
    /// price, such as `gpu=h100 vram>=80 region=eu tier=datacenter price<2.5`.
    #[serde(default)]
    pub query: String,
    /// The most the whole cluster may cost per hour, in IOSD base units. Without it, the
    /// quote's price is held.
    #[serde(default)]
    pub budget_per_hour: Option<u64>,
    pub hours: u32,
    /// The token rent is paid in: IOSD.
    #[serde(default = "default_token")]
    pub token: String,
    /// The program and its arguments; none for a `ray` cluster.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Given to the nodes only; never logged and never shown back (answers list the names).
    #[serde(default)]
    pub secret_env: std::collections::BTreeMap<String, String>,
    /// Ports a service listens on.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Memory limit per node, MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// CPU cores per node (their time, enforced by the worker); default 4 per GPU.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Restarts of a node whose command failed (not of one whose worker failed). Default 0.
    #[serde(default)]
    pub retries: u32,
    /// A directory under the work directory kept across replacements.
    #[serde(default)]
    pub checkpoint_path: Option<String>,
    /// A container image: the node runs on the container driver.
    #[serde(default)]
    pub image: Option<String>,
    /// one_region (default) or spread.
    #[serde(default)]
    pub colocation: Option<String>,
    #[serde(default)]
    pub renter_region: Option<String>,
    /// `ray` clusters only: JupyterLab on the head node (rank 0), on port 8888.
    #[serde(default)]
    pub jupyter: bool,
}

impl ClusterSpec {
    /// A one-hour batch of `nodes` one-GPU nodes running `command`, paid in IOSD, with nothing
    /// else set: the base that callers adjust with struct update syntax.
    pub fn new(name: &str, nodes: u32, command: Vec<String>) -> ClusterSpec {
        ClusterSpec {
            name: name.to_owned(),
            kind: "batch".to_owned(),
            nodes,
            gpus_per_node: 1,
            query: String::new(),
            budget_per_hour: None,
            hours: 1,
            token: "IOSD".to_owned(),
            command,
            env: Default::default(),
            secret_env: Default::default(),
            ports: Vec::new(),
            memory_mib: None,
            cpus: None,
            retries: 0,
            checkpoint_path: None,
            image: None,
            colocation: None,
            renter_region: None,
            jupyter: false,
        }
    }
}

impl std::fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_names: Vec<&String> = self.secret_env.keys().collect();
        f.debug_struct("ClusterSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("nodes", &self.nodes)
            .field("gpus_per_node", &self.gpus_per_node)
            .field("query", &self.query)
            .field("budget_per_hour", &self.budget_per_hour)
            .field("hours", &self.hours)
            .field("token", &self.token)
            .field("command", &self.command)
            .field("env", &self.env)
            .field("secret_env_names", &secret_names)
            .field("ports", &self.ports)
            .field("memory_mib", &self.memory_mib)
            .field("cpus", &self.cpus)
            .field("retries", &self.retries)
            .field("checkpoint_path", &self.checkpoint_path)
            .field("image", &self.image)
            .field("colocation", &self.colocation)
            .field("renter_region", &self.renter_region)
            .field("jupyter", &self.jupyter)
            .finish()
    }
}

fn default_token() -> String {
    "IOSD".to_owned()
}

fn one() -> u32 {
    1
}

/// What a cluster would cost now, or why nothing matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterQuote {
    /// Whether the market can place the cluster now.
    pub placeable: bool,
    /// The placement's rent per hour, IOSD base units (offers are priced in IOSD).
    pub rent_per_hour: u64,
    pub hours: u32,
    /// Rent, fees and their total in `token`'s base units.
    pub rent_micros: u64,
    pub fee_micros: u64,
    /// What deploy holds: rent plus fees.
    pub total_micros: u64,
    pub token: String,
    /// Paying in IO: the price IOSD amounts convert at (IOSD base units per whole IO).
    #[serde(default)]
    pub io_price_micros: Option<u64>,
    /// one_region, or spread when the spec names no colocation and only nodes in several
    /// regions are free (deploy then spreads too).
    pub colocation: String,
    /// Why nothing matches, in words, when not placeable.
    pub waiting_because: Option<String>,
    pub explanation: Option<NoMatchExplanation>,
}

/// One node of a cluster: its latest run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterNodeInfo {
    pub rank: u32,
    /// 1 for the first run, one more per restart or replacement.
    pub attempt: u32,
    pub run_id: String,
    pub worker_id: String,
    pub device_ids: Vec<String>,
    /// assigned, running, exited, failed, stopped or lost.
    pub state: String,
    pub exit_code: Option<i32>,
    /// Why it ended: exited, stopped, memory, timed_out, start_failed, worker_lost.
    pub reason: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// The renter's rating of this node's supplier, once given.
    pub rating_stars: Option<u8>,
    /// Renters' tunnelled connections to this run of the node.
    #[serde(default)]
    pub tunnel: TunnelTraffic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// deploying, running, completed, failed, terminated or expired.
    pub state: String,
    /// The spec as deployed, secret values left out (their names are in `secret_env_names`).
    pub spec: ClusterSpec,
    pub secret_env_names: Vec<String>,
    pub nodes: Vec<ClusterNodeInfo>,
    /// Each node's declared ports, while the cluster runs.
    #[serde(default)]
    pub port_links: Vec<PortLink>,
    /// Why a deploying cluster waits.
    pub waiting_because: Option<String>,
    pub rent_per_hour: u64,
    /// Escrow left, and the node-minutes' minutes metered so far.
    pub escrow_micros: i64,
    pub metered_minutes: u64,
    pub created_at: String,
    pub running_at: Option<String>,
    pub ended_at: Option<String>,
    /// Why it ended, in words.
    pub ended_because: Option<String>,
}

/// A renter's ratings of an ended cluster's nodes (each node's supplier).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateNodesRequest {
    pub ratings: Vec<NodeRating>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRating {
    pub node_rank: u32,
    /// 1 to 5.
    pub stars: u8,
    /// At most 1,000 characters.
    #[serde(default)]
    pub comment: String,
}

/// Adds hours to a cluster; their rent is held at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub hours: u32,
    /// The cluster's paid hours as the caller last saw them. When given and no longer
    /// current, the extension is refused (409 `stale`) and nothing is paid, so a form sent
    /// twice extends once.
    #[serde(default)]
    pub from_hours: Option<u32>,
}

/// One chunk of a node's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Position in the cluster's log, for `?after=`.
    pub seq: i64,
    pub node_rank: u32,
    pub attempt: u32,
    /// stdout or stderr.
    pub stream: String,
    pub at: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// Pass as `after` to read on.
    pub next_after: i64,
    /// Whether the cluster ended (a follower stops once it has read everything).
    pub ended: bool,
}

/// `?node=&port=` on a connection to a node.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConnectQuery {
    /// The node's rank.
    pub node: u32,
    pub port: u16,
    /// Open the connection on standby: after `101`, the node is dialled only when the byte
    /// `!` arrives, and bytes flow from the next one on. Unused, it is closed after two minutes.
    #[serde(default)]
    pub standby: bool,
}

/// A short-lived link to a port of a node, for a browser.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    pub node: u32,
    pub port: u16,
    /// Seconds the link works; default an hour, at most a day.
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LinkInfo {
    /// The path on the coordinator (`/t/...`), with its token.
    pub path: String,
    pub expires_at: String,
}

/// `?after=&node=&limit=` on a cluster's logs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    #[serde(default)]
    pub after: Option<i64>,
    #[serde(default)]
    pub node: Option<u32>,
    #[serde(default)]
    pub limit: Option<u32>,
}

// --- Ledger ------------------------------------------------------------------------------
// Amounts are integers of base units (a millionth of a token) beside a `token` (IO or IOSD).

/// One account's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BalanceInfo {
    /// `OWNER:PURPOSE:TOKEN`.
    pub account: String,
    /// main, stake or escrow.
    pub purpose: String,
    pub token: String,
    /// Credits less debits.
    pub posted_micros: i64,
    /// Reserved by open holds (escrow, unstaking, slashes under appeal).
    pub held_micros: i64,
    pub available_micros: i64,
}

/// An open hold on an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HoldInfo {
    pub id: String,
    pub debit: String,
    pub credit: String,
    pub amount_micros: u64,
    pub expires_at: String,
    /// What expiry does: `post` (the funds move) or `void` (they come back).
    pub on_expiry: String,
}

/// The caller's accounts and open holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletInfo {
    pub account_id: String,
    pub balances: Vec<BalanceInfo>,
    pub holds: Vec<HoldInfo>,
}

/// What the caller spent on rentals since a time: what went from its accounts into escrows
/// less what came back as refunds, per token (negative when refunds of earlier escrows were
/// larger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpendingInfo {
    /// RFC 3339; the start of the current calendar month (UTC).
    pub since: String,
    pub tokens: Vec<TokenSpending>,
    /// False while the sums have not caught up with the ledger (an account with more entries
    /// this month than one answer reads); a later answer goes on from where this one stopped.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenSpending {
    pub token: String,
    pub spent_micros: i64,
}

/// One entry of the ledger log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EntryInfo {
    pub seq: u64,
    pub id: String,
    pub at: String,
    pub kind: String,
    pub reference: String,
    /// What the entry did: move, hold, resolve or record.
    pub effect: String,
    pub debit: Option<String>,
    pub credit: Option<String>,
    pub token: Option<String>,
    /// Moved (for a move or a resolved hold: the posted part) or reserved (a hold).
    pub amount_micros: u64,
    pub hash: String,
    /// The entry exactly as hashed.
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
}

/// A transfer from the caller's main account to another account's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The receiving account's id (`usr_...`).
    pub to: String,
    pub token: String,
    pub amount_micros: u64,
    #[serde(default)]
    pub reference: String,
}

/// Money leaving for the outside world (settled by an external adapter).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    pub token: String,
    pub amount_micros: u64,
    /// Where it goes (a bank transfer reference or a chain address).
    pub reference: String,
}

/// Admin: IOSD minted against a USD deposit, or IO settled in from outside.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositRequest {
    pub account_id: String,
    pub token: String,
    pub amount_micros: u64,
    /// The external reference (bank transfer id, chain transaction).
    pub reference: String,
}

/// Demo funds, where the coordinator runs a faucet (`flotilla dev`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaucetRequest {
    pub token: String,
    pub amount_micros: u64,
}

/// Stake or unstake IO.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StakeRequest {
    pub amount_micros: u64,
}

/// Admin: take stake for fraud. It is held through the appeal window, then burned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlashRequest {
    pub account_id: String,
    pub amount_micros: u64,
    pub reason: String,
    /// What shows the fraud (a failed proof's id, for example).
    pub evidence: String,
}

/// A supplier's stake against what their devices need to earn rewards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StakeInfo {
    pub staked_micros: i64,
    /// Unstaking (cooldown) and slashes under appeal.
    pub holds: Vec<HoldInfo>,
    /// 200 IO x max(1, multiplier) x GPUs, summed over the caller's devices.
    pub required_micros: u64,
}

/// How an applied (or earlier applied) transfer ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransferResult {
    /// `applied`, or `duplicate` when the same transfer was applied before.
    pub status: String,
    pub entry: EntryInfo,
}

/// The ledger's public key and head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LedgerInfo {
    /// ed25519, hex: the key that signs epoch roots and exports.
    pub public_key: String,
    pub epoch_ms: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// Per token: circulating supply (outside the mint accounts and burn), and burned.
    pub supply: Vec<SupplyInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SupplyInfo {
    pub token: String,
    pub minted_micros: i64,
    pub burned_micros: i64,
    pub circulating_micros: i64,
}

/// A sealed epoch: its entries under a signed Merkle root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EpochInfo {
    pub epoch: u64,
    /// A long epoch is sealed in parts (0, 1, ...).
    pub part: u32,
    pub first_seq: u64,
    pub entry_count: u64,
    pub root: String,
    /// The signed seal as the log holds it.
    #[schema(value_type = Object)]
    pub seal: serde_json::Value,
    /// IO paid in block rewards for the epoch, once paid.
    pub rewards_paid_micros: Option<u64>,
}

/// A governance proposal to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposalCreate {
    pub title: String,
    pub body: String,
    /// 2 to 16 choices.
    pub options: Vec<String>,
    pub voting_period_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProposalInfo {
    pub id: String,
    pub title: String,
    pub body: String,
    pub options: Vec<String>,
    pub opened_at: String,
    pub closes_at: String,
    /// open or closed.
    pub state: String,
    /// The caller's vote (an option index), if any.
    pub my_vote: Option<u32>,
    /// Voting weight of the caller: their stake when the proposal opened.
    pub my_weight_micros: Option<u64>,
    /// Stake behind each option, once closed.
    pub option_weights_micros: Option<Vec<u64>>,
    pub winner: Option<u32>,
    /// The ledger entry recording the tally.
    pub tally_seq: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// The option's index.
    pub option: u32,
}
