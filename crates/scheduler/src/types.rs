//! What goes into the scheduler (a [`Snapshot`] of offers and a queue of [`Request`]s) and what
//! comes out (a [`Plan`]).

use serde::{Deserialize, Serialize};

/// Prices are in IOSD base units (6 decimals: 1 USD = 1,000,000) per GPU hour.
pub const PRICE_UNITS_PER_USD: u64 = 1_000_000;
/// Reliability and other fractions are in parts per million.
pub const PPM: u32 = 1_000_000;
/// Feedback is in thousandths of a star, 0 to 5,000.
pub const FEEDBACK_MILLI_MAX: u32 = 5_000;

/// Connectivity tier of a worker's link, from its measured bandwidth.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    #[default]
    Low,
    Medium,
    High,
    Ultra,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Low, Tier::Medium, Tier::High, Tier::Ultra];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Medium => "medium",
            Tier::High => "high",
            Tier::Ultra => "ultra",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// What a device is doing, as far as the scheduler cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Verified, unpaused and free: the only status the scheduler places on.
    Idle,
    Hired,
    /// Anything else (pending, down, blocked, paused...): not placeable, not counted as supply.
    Unavailable,
}

/// One device a worker offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOffer {
    pub device_id: String,
    /// Normalised model key, such as `h100` or `rtx4090` (see [`crate::model_key`]).
    pub model: String,
    pub memory_bytes: u64,
    /// The device's proven class throughput (int8 multiply-adds per second); ranks models by
    /// performance per price.
    pub perf_ops_per_s: u64,
    /// Asking price per hour, in IOSD base units.
    pub price_per_hour: u64,
    pub status: DeviceStatus,
    /// Passed proof of compute.
    pub verified: bool,
    pub paused: bool,
}

impl DeviceOffer {
    /// Whether the scheduler may place work on this device.
    pub fn placeable(&self) -> bool {
        self.status == DeviceStatus::Idle && self.verified && !self.paused
    }
}

/// One worker machine and its devices: the unit a request's node lands on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOffer {
    pub worker_id: String,
    pub supplier_id: String,
    /// Region key such as `eu-west`; the part before the first `-` is the continent.
    pub region: String,
    /// ISO 3166 alpha-2 code, lower case.
    pub country: String,
    pub tier: Tier,
    /// Share of the last period the worker was up, in ppm.
    pub uptime_ppm: u32,
    /// Work completed and work lost to this worker's failures.
    pub completed: u32,
    pub failed: u32,
    /// Average renter feedback, in thousandths of a star; `None` before any feedback.
    pub feedback_milli: Option<u32>,
    /// Devices of this supplier hired right now: spreads load across suppliers.
    pub supplier_hired: u32,
    /// The worker runs container images (it has a container engine).
    #[serde(default)]
    pub containers: bool,
    pub devices: Vec<DeviceOffer>,
}

impl NodeOffer {
    /// Reliability in ppm: uptime, lowered by the share of work lost to failures (counted
    /// with one success assumed, so a first failure halves it rather than zeroing it).
    pub fn reliability_ppm(&self) -> u32 {
        let jobs = u64::from(self.completed) + u64::from(self.failed) + 1;
        let kept_ppm = (u64::from(self.completed) + 1) * u64::from(PPM) / jobs;
        (u64::from(self.uptime_ppm.min(PPM)) * kept_ppm / u64::from(PPM)) as u32
    }
}

/// Everything the scheduler knows about supply at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub nodes: Vec<NodeOffer>,
}

/// A range of integers, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

impl Range {
    pub const ANY: Range = Range {
        min: 0,
        max: u64::MAX,
    };

    pub fn contains(&self, value: u64) -> bool {
        self.min <= value && value <= self.max
    }

    pub fn is_any(&self) -> bool {
        *self == Range::ANY
    }
}

impl Default for Range {
    fn default() -> Range {
        Range::ANY
    }
}

/// Hard constraints on offers: what a request needs and what an offer search asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Allowed model keys; empty means any.
    pub models: Vec<String>,
    /// Free matching GPUs on one worker.
    pub count: Range,
    /// Memory per GPU, in bytes.
    pub memory_bytes: Range,
    /// Price per GPU hour, in IOSD base units.
    pub price_per_hour: Range,
    /// Allowed regions (a continent such as `eu` matches every `eu-*` region); empty means any.
    pub regions: Vec<String>,
    /// Allowed countries; empty means any.
    pub countries: Vec<String>,
    pub tier_min: Tier,
    pub tier_max: Tier,
    /// Reliability in ppm.
    pub reliability_ppm: Range,
    /// Proven throughput per GPU.
    pub perf_ops_per_s: Range,
    /// Only workers that run container images.
    pub needs_containers: bool,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            models: Vec::new(),
            count: Range::ANY,
            memory_bytes: Range::ANY,
            price_per_hour: Range::ANY,
            regions: Vec::new(),
            countries: Vec::new(),
            tier_min: Tier::Low,
            tier_max: Tier::Ultra,
            reliability_ppm: Range::ANY,
            perf_ops_per_s: Range::ANY,
            needs_containers: false,
        }
    }
}

/// How urgent a request is. Urgent before normal; deferrable requests wait for cheap supply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "class")]
pub enum Priority {
    Urgent,
    Normal,
    /// Placed only on offers at or under `target_price_per_hour` until `deadline_ms`; from the
    /// deadline on, as urgent, up to the request's price limit.
    Deferrable {
        target_price_per_hour: u64,
        deadline_ms: i64,
    },
}

impl Priority {
    pub fn name(&self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::Normal => "normal",
            Priority::Deferrable { .. } => "deferrable",
        }
    }
}

/// Where a multi-node request's nodes may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Colocation {
    /// Every node in one region (the default: cluster traffic stays local).
    #[default]
    OneRegion,
    /// Nodes anywhere the filter allows.
    Spread,
}

/// A request for a cluster: `node_count` workers with `gpus_per_node` matching GPUs each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: String,
    pub renter_id: String,
    pub node_count: u32,
    pub gpus_per_node: u32,
    pub filter: Filter,
    /// The most the whole placement may cost per hour, in IOSD base units; `None` for no cap
    /// beyond the per-GPU price limit.
    pub budget_per_hour: Option<u64>,
    pub priority: Priority,
    pub colocation: Colocation,
    /// The renter's region, for latency; `None` when it does not matter.
    pub renter_region: Option<String>,
    pub submitted_at_ms: i64,
}

impl Request {
    pub fn gpu_count(&self) -> u64 {
        u64::from(self.node_count) * u64::from(self.gpus_per_node)
    }
}

/// Devices on one worker given to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAssignment {
    /// Index into the snapshot's nodes.
    pub node: usize,
    /// Indices into that node's devices.
    pub devices: Vec<usize>,
    /// Total price per hour of these devices.
    pub price_per_hour: u64,
}

/// A request placed whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Index into the queue the plan was made for.
    pub request: usize,
    pub nodes: Vec<NodeAssignment>,
    /// 1 for a first placement; a replacement carries the next attempt, so reports from an
    /// older attempt can be refused.
    pub attempt: u32,
}

impl Placement {
    pub fn price_per_hour(&self) -> u64 {
        self.nodes.iter().map(|n| n.price_per_hour).sum()
    }
}

/// New nodes for a placed request that lost some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    pub nodes: Vec<NodeAssignment>,
    /// The placement's attempt after the replacement: reports that carry an older one are
    /// refused.
    pub attempt: u32,
}

/// Why a request is still waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum WaitReason {
    /// No offer passes the request's constraints; see [`crate::explain`] for which removed what.
    NoMatch,
    /// Offers match, but not enough workers have `gpus_per_node` of them free.
    NotEnoughNodes { needed: u32, found: u32 },
    /// Enough nodes, but never that many in one region.
    NoRegionWithEnoughNodes { needed: u32, best_region_nodes: u32 },
    /// The cheapest whole placement costs more per hour than the budget.
    OverBudget {
        cheapest_per_hour: u64,
        budget_per_hour: u64,
    },
    /// Deferrable and before its deadline: waiting for offers at or under its target price.
    WaitingForPrice { target_price_per_hour: u64 },
}

/// A request left waiting, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub request: usize,
    pub reason: WaitReason,
}

/// The scheduler's output for one snapshot and queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub waiting: Vec<Waiting>,
}
