//! The documented score: what a node costs a request, in effective IOSD base units per hour.
//!
//! Lower is better. The base is the asking price, scaled to a reference throughput (so a
//! faster model at the same price ranks better: performance per price). It is then raised by
//! penalties expressed in thousandths of the price (‰), so every factor trades against money:
//!
//! | factor | penalty |
//! | --- | --- |
//! | reliability | 1‰ per 0.1% of downtime or lost work, at most 100‰ |
//! | renter feedback | (5 − stars) × 10‰, at most 50‰; 5‰ before any feedback |
//! | latency to the renter's region | 0 same region, 10‰ same continent, 30‰ elsewhere |
//! | connectivity tier (multi-node requests, replacements) | ultra 0, high 5‰, medium 15‰, low 30‰ |
//! | supplier load | 1‰ per 10 devices the supplier has hired, at most 10‰ |
//! | replacement away from the failed node | 50‰ another region, 20‰ per tier lower |
//!
//! Ties go to a hash of (request, worker), so equal offers share the work instead of one
//! worker taking every request.

use crate::types::{FEEDBACK_MILLI_MAX, NodeOffer, PPM, Request, Tier};

/// Throughput every price is scaled to: 10^15 int8 operations per second (an H100-class
/// device on the proof). Only ratios matter.
const PERF_REFERENCE_OPS_PER_S: u128 = 1_000_000_000_000_000;

/// Caps on the static penalties, so a bucket walk can stop at a known static cost.
const RELIABILITY_PERMILLE_MAX: u64 = 100;
const FEEDBACK_PERMILLE_MAX: u64 = 50;

fn reliability_permille(node: &NodeOffer) -> u64 {
    (u64::from(PPM - node.reliability_ppm().min(PPM)) / 1_000).min(RELIABILITY_PERMILLE_MAX)
}

fn feedback_permille(node: &NodeOffer) -> u64 {
    match node.feedback_milli {
        None => 5,
        Some(milli) => u64::from(FEEDBACK_MILLI_MAX - milli.min(FEEDBACK_MILLI_MAX)) / 100,
    }
}

/// How far a node is from the renter's region, for the latency penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    /// The request names no renter region: latency does not matter.
    Irrelevant,
    SameRegion,
    SameContinent,
    Elsewhere,
}

impl Distance {
    /// The distance from `renter_region` to `region`; a continent is the part of a region key
    /// before its first `-`.
    pub fn between(renter_region: Option<&str>, region: &str) -> Distance {
        let Some(renter) = renter_region else {
            return Distance::Irrelevant;
        };
        if renter == region {
            Distance::SameRegion
        } else if continent(renter) == continent(region) {
            Distance::SameContinent
        } else {
            Distance::Elsewhere
        }
    }

    fn permille(self) -> u64 {
        match self {
            Distance::Irrelevant | Distance::SameRegion => 0,
            Distance::SameContinent => 10,
            Distance::Elsewhere => 30,
        }
    }
}

/// The continent of a region key: the part before the first `-`.
pub fn continent(region: &str) -> &str {
    region.split('-').next().unwrap_or("")
}

fn tier_permille(tier: Tier) -> u64 {
    match tier {
        Tier::Ultra => 0,
        Tier::High => 5,
        Tier::Medium => 15,
        Tier::Low => 30,
    }
}

fn load_permille(supplier_hired: u32) -> u64 {
    u64::from(supplier_hired / 10).min(10)
}

fn scaled(price: u64, perf_ops_per_s: u64, permille: u64) -> u64 {
    let perf = u128::from(perf_ops_per_s.max(1));
    let value =
        u128::from(price) * u128::from(1_000 + permille) * PERF_REFERENCE_OPS_PER_S / perf / 1_000;
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The penalties that do not depend on the request (reliability, feedback), in ‰.
pub fn static_permille(node: &NodeOffer) -> u64 {
    reliability_permille(node) + feedback_permille(node)
}

/// What the index sorts slots by: price per reference throughput, with the penalties that do
/// not depend on the request.
pub fn static_cost(node: &NodeOffer, cheapest: &crate::types::DeviceOffer) -> u64 {
    scaled(
        cheapest.price_per_hour,
        cheapest.perf_ops_per_s,
        static_permille(node),
    )
}

/// `price` (of devices with `perf_ops_per_s` each) scaled to the reference throughput and
/// raised by `permille`: what every cost here comes down to.
pub fn cost_with_penalty(price: u64, perf_ops_per_s: u64, permille: u64) -> u64 {
    scaled(price, perf_ops_per_s, permille)
}

/// A price scaled to the reference throughput, with no penalty: the objective when every other
/// factor is equal.
pub fn effective_price(price: u64, perf_ops_per_s: u64) -> u64 {
    scaled(price, perf_ops_per_s, 0)
}

/// The highest static cost a device at `price` (or less) with at least `perf_ops_per_s` can
/// have: a bucket walk past it finds nothing within the price.
pub fn static_cost_bound(price: u64, perf_ops_per_s: u64) -> u64 {
    scaled(
        price,
        perf_ops_per_s,
        RELIABILITY_PERMILLE_MAX + FEEDBACK_PERMILLE_MAX,
    )
}

/// Where a node stands relative to one request: what the request-dependent penalties read.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub distance: Distance,
    pub tier: Tier,
    /// Devices the node's supplier has hired, counting what this plan placed.
    pub supplier_load: u32,
    /// Whether the node is in a replacement's preferred region (read only for replacements).
    pub in_preferred_region: bool,
}

/// The penalties that depend on the request, in ‰: latency, connectivity tier, supplier load,
/// and for a replacement (`preferred_tier` set) the distance from the failed node.
pub fn request_permille(standing: &Standing, node_count: u32, preferred_tier: Option<Tier>) -> u64 {
    let mut permille = standing.distance.permille() + load_permille(standing.supplier_load);
    // Cluster traffic crosses the links of multi-node requests and of replacements.
    if node_count > 1 || preferred_tier.is_some() {
        permille += tier_permille(standing.tier);
    }
    if let Some(tier) = preferred_tier {
        if !standing.in_preferred_region {
            permille += 50;
        }
        permille += 20 * (tier as u64).saturating_sub(standing.tier as u64);
    }
    permille
}

/// The full cost of `price_per_hour` worth of devices on `node` for `request`.
pub fn full_cost(
    node: &NodeOffer,
    price_per_hour: u64,
    perf_ops_per_s: u64,
    supplier_load: u32,
    request: &Request,
    preferred: Option<&(String, Tier)>,
) -> u64 {
    let standing = Standing {
        distance: Distance::between(request.renter_region.as_deref(), &node.region),
        tier: node.tier,
        supplier_load,
        in_preferred_region: preferred.is_some_and(|(region, _)| *region == node.region),
    };
    let permille = static_permille(node)
        + request_permille(
            &standing,
            request.node_count,
            preferred.map(|(_, tier)| *tier),
        );
    scaled(price_per_hour, perf_ops_per_s, permille)
}

/// Scrambles a combined hash, so ties order differently for each request.
pub fn mix(mut value: u64) -> u64 {
    value ^= value >> 33;
    value = value.wrapping_mul(0xff51_afd7_ed55_8ccd);
    value ^= value >> 33;
    value
}

/// A deterministic hash of (request, worker): FNV-1a.
pub fn tie_break(request_id: &str, worker_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in request_id.bytes().chain([0]).chain(worker_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
