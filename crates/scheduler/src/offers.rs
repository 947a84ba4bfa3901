//! Offer search: what the query language lists, one row per worker and model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::market::{device_passes, node_passes};
use crate::query::SortKey;
use crate::types::{Filter, Snapshot, Tier};

/// One worker's matching free GPUs of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferRow {
    /// Index into the snapshot's nodes.
    pub node: usize,
    pub model: String,
    /// Matching free GPUs of this model on the worker.
    pub count: u32,
    /// The smallest memory among them.
    pub memory_bytes: u64,
    /// The cheapest among them, per hour, in IOSD base units.
    pub price_per_hour: u64,
    pub perf_ops_per_s: u64,
    pub region: String,
    pub country: String,
    pub tier: Tier,
    pub reliability_ppm: u32,
    pub feedback_milli: Option<u32>,
}

/// Offers matching `filter`, sorted by `sort` (ties by node index and model), at most `limit`.
pub fn search(snapshot: &Snapshot, filter: &Filter, sort: SortKey, limit: usize) -> Vec<OfferRow> {
    let mut rows: Vec<OfferRow> = Vec::new();
    for (index, node) in snapshot.nodes.iter().enumerate() {
        if !node_passes(filter, node) {
            continue;
        }
        let mut by_model: BTreeMap<&str, OfferRow> = BTreeMap::new();
        for device in node
            .devices
            .iter()
            .filter(|d| device_passes(filter, &filter.price_per_hour, d))
        {
            let row = by_model.entry(&device.model).or_insert_with(|| OfferRow {
                node: index,
                model: device.model.clone(),
                count: 0,
                memory_bytes: u64::MAX,
                price_per_hour: u64::MAX,
                perf_ops_per_s: device.perf_ops_per_s,
                region: node.region.clone(),
                country: node.country.clone(),
                tier: node.tier,
                reliability_ppm: node.reliability_ppm(),
                feedback_milli: node.feedback_milli,
            });
            row.count += 1;
            row.memory_bytes = row.memory_bytes.min(device.memory_bytes);
            row.price_per_hour = row.price_per_hour.min(device.price_per_hour);
            row.perf_ops_per_s = row.perf_ops_per_s.min(device.perf_ops_per_s);
        }
        rows.extend(
            by_model
                .into_values()
                .filter(|r| filter.count.contains(u64::from(r.count))),
        );
    }
    let value = |r: &OfferRow| {
        u128::from(r.perf_ops_per_s) * 1_000_000 / u128::from(r.price_per_hour.max(1))
    };
    match sort {
        SortKey::Price => rows.sort_by_key(|r| (r.price_per_hour, r.node)),
        SortKey::Reliability => rows.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.reliability_ppm),
                r.price_per_hour,
                r.node,
            )
        }),
        SortKey::Vram => {
            rows.sort_by_key(|r| (std::cmp::Reverse(r.memory_bytes), r.price_per_hour, r.node))
        }
        SortKey::Count => {
            rows.sort_by_key(|r| (std::cmp::Reverse(r.count), r.price_per_hour, r.node))
        }
        SortKey::Value => rows.sort_by_key(|r| (std::cmp::Reverse(value(r)), r.node)),
    }
    rows.truncate(limit);
    rows
}
