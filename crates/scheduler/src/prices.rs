//! The market price index: per model, the median ask, the hired share, and the trend against
//! the previous index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{DeviceStatus, PPM, Snapshot};

/// One model's prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub model: String,
    /// Verified, unpaused devices: idle plus hired.
    pub devices: u64,
    pub hired: u64,
    /// The median asking price per hour over those devices (the lower middle for an even
    /// count), in IOSD base units.
    pub median_ask_per_hour: u64,
    pub cheapest_ask_per_hour: u64,
    /// Hired share, in ppm.
    pub hired_ppm: u32,
    /// Change of the median ask since the previous index, in ppm (negative: cheaper); `None`
    /// when the previous index had no such model.
    pub trend_ppm: Option<i64>,
}

/// The index for `snapshot`, with trends against `previous` (empty for none).
pub fn price_index(snapshot: &Snapshot, previous: &[ModelPrice]) -> Vec<ModelPrice> {
    let mut asks: BTreeMap<&str, (Vec<u64>, u64)> = BTreeMap::new();
    for device in snapshot.nodes.iter().flat_map(|n| &n.devices) {
        let hired = device.status == DeviceStatus::Hired;
        if !(device.verified && !device.paused && (hired || device.status == DeviceStatus::Idle)) {
            continue;
        }
        let entry = asks.entry(&device.model).or_default();
        entry.0.push(device.price_per_hour);
        entry.1 += u64::from(hired);
    }
    asks.into_iter()
        .map(|(model, (mut prices, hired))| {
            prices.sort_unstable();
            let devices = prices.len() as u64;
            let median = prices[(prices.len() - 1) / 2];
            let trend_ppm = previous
                .iter()
                .find(|p| p.model == model && p.median_ask_per_hour > 0)
                .map(|p| {
                    (i128::from(median) - i128::from(p.median_ask_per_hour)) * i128::from(PPM)
                        / i128::from(p.median_ask_per_hour)
                })
                .map(|t| t as i64);
            ModelPrice {
                model: model.to_owned(),
                devices,
                hired,
                median_ask_per_hour: median,
                cheapest_ask_per_hour: prices[0],
                hired_ppm: (hired * u64::from(PPM) / devices) as u32,
                trend_ppm,
            }
        })
        .collect()
}
