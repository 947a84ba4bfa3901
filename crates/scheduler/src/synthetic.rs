//! A synthetic market from a seed: supply and demand shaped like a GPU cloud's, for the
//! simulator, the benchmark and tests. Deterministic: the same seed gives the same market.

use crate::types::{
    Colocation, DeviceOffer, DeviceStatus, Filter, NodeOffer, PPM, PRICE_UNITS_PER_USD, Priority,
    Request, Tier,
};

/// splitmix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// (model, memory in GB, int8 ops/s, typical price in cents per hour, share of supply in %).
pub const MODELS: &[(&str, u64, u64, u64, u64)] = &[
    ("h100", 80, 1_000_000_000_000_000, 200, 10),
    ("a100", 80, 300_000_000_000_000, 120, 15),
    ("l40s", 48, 350_000_000_000_000, 80, 10),
    ("rtx4090", 24, 300_000_000_000_000, 35, 40),
    ("rtx3090", 24, 140_000_000_000_000, 20, 25),
];

pub const REGIONS: &[&str] = &[
    "eu-west",
    "eu-north",
    "eu-central",
    "us-east",
    "us-west",
    "us-central",
    "ap-south",
    "ap-northeast",
    "sa-east",
    "af-south",
    "me-central",
    "oc-east",
];

fn country_of(region: &str) -> &'static str {
    match region {
        "eu-west" => "fr",
        "eu-north" => "se",
        "eu-central" => "de",
        "us-east" | "us-west" | "us-central" => "us",
        "ap-south" => "in",
        "ap-northeast" => "jp",
        "sa-east" => "br",
        "af-south" => "za",
        "me-central" => "ae",
        _ => "au",
    }
}

fn pick_model(rng: &mut Rng) -> usize {
    let mut roll = rng.below(100);
    for (index, model) in MODELS.iter().enumerate() {
        if roll < model.4 {
            return index;
        }
        roll -= model.4;
    }
    MODELS.len() - 1
}

/// Nodes holding about `devices` GPUs in all (1, 2, 4 or 8 per worker), all idle and verified.
pub fn nodes(rng: &mut Rng, devices: usize) -> Vec<NodeOffer> {
    let mut nodes = Vec::new();
    let mut total = 0;
    while total < devices {
        let gpus = (*rng.pick(&[1usize, 1, 2, 4, 8])).min(devices - total);
        let (model, memory_gb, perf, cents, _) = MODELS[pick_model(rng)];
        let region = *rng.pick(REGIONS);
        let index = nodes.len();
        // Asks spread ±30% around the model's typical price.
        let price = cents * PRICE_UNITS_PER_USD / 100 * (70 + rng.below(61)) / 100;
        let devices = (0..gpus)
            .map(|d| DeviceOffer {
                device_id: format!("dev-{index}-{d}"),
                model: model.to_owned(),
                memory_bytes: memory_gb * 1_000_000_000,
                perf_ops_per_s: perf,
                price_per_hour: price,
                status: DeviceStatus::Idle,
                verified: true,
                paused: false,
            })
            .collect();
        nodes.push(NodeOffer {
            worker_id: format!("wrk-{index}"),
            supplier_id: format!("sup-{}", index / 7),
            region: region.to_owned(),
            country: country_of(region).to_owned(),
            tier: *rng.pick(&Tier::ALL),
            uptime_ppm: PPM - rng.below(50_000) as u32,
            completed: rng.below(200) as u32,
            failed: rng.below(4) as u32,
            feedback_milli: rng.chance(70).then(|| 3_000 + rng.below(2_001) as u32),
            supplier_hired: 0,
            containers: rng.chance(50),
            devices,
        });
        total += gpus;
    }
    nodes
}

/// The shape of a request: mostly one GPU, some whole machines, a few small clusters.
pub fn request(rng: &mut Rng, index: u64, renters: u64, submitted_at_ms: i64) -> Request {
    let (node_count, gpus_per_node) = match rng.below(100) {
        0..=69 => (1, 1),
        70..=79 => (1, 2),
        80..=89 => (1, 4),
        90..=94 => (2, 1),
        _ => (*rng.pick(&[2u32, 4]), *rng.pick(&[2u32, 4])),
    };
    let (model, _, _, cents, _) = MODELS[pick_model(rng)];
    let mut filter = Filter::default();
    if rng.chance(70) {
        filter.models = vec![model.to_owned()];
        filter.price_per_hour.max = cents * PRICE_UNITS_PER_USD / 100 * (90 + rng.below(60)) / 100;
    } else {
        filter.memory_bytes.min = *rng.pick(&[16u64, 24, 48]) * 1_000_000_000;
        filter.price_per_hour.max = 150 * PRICE_UNITS_PER_USD / 100;
    }
    if rng.chance(40) {
        filter.regions = vec![
            rng.pick(REGIONS)
                .split('-')
                .next()
                .unwrap_or("eu")
                .to_owned(),
        ];
    }
    if rng.chance(20) {
        filter.tier_min = Tier::High;
    }
    let priority = match rng.below(100) {
        0..=14 => Priority::Urgent,
        15..=79 => Priority::Normal,
        _ => Priority::Deferrable {
            target_price_per_hour: filter.price_per_hour.max * 8 / 10,
            deadline_ms: submitted_at_ms + 3_600_000 * (1 + rng.below(6) as i64),
        },
    };
    Request {
        request_id: format!("req-{index:08}"),
        renter_id: format!("renter-{}", rng.below(renters)),
        node_count,
        gpus_per_node,
        filter,
        budget_per_hour: None,
        priority,
        colocation: if rng.chance(80) {
            Colocation::OneRegion
        } else {
            Colocation::Spread
        },
        renter_region: rng.chance(60).then(|| (*rng.pick(REGIONS)).to_owned()),
        submitted_at_ms,
    }
}
