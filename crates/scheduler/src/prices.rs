//! The market price index: per model, the median ask, the hired share, and the trend against
//! the previous index; and the supply by country and model.

use std::collections::{BTreeMap, BTreeSet};

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

/// Verified, unpaused devices that are idle or hired: what the market holds.
fn offered(device: &crate::types::DeviceOffer) -> bool {
    let hired = device.status == DeviceStatus::Hired;
    device.verified && !device.paused && (hired || device.status == DeviceStatus::Idle)
}

/// Offered devices of one group (a country, or a model in it) and their suppliers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplyCount {
    /// Suppliers with at least one offered device in the group.
    pub suppliers: u64,
    /// Offered devices: idle plus hired.
    pub devices: u64,
    pub hired: u64,
}

/// One country's supply, in total and per model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountrySupply {
    pub country: String,
    pub total: SupplyCount,
    /// By model, in model order.
    pub models: Vec<(String, SupplyCount)>,
}

#[derive(Default)]
struct Tally<'a> {
    suppliers: BTreeSet<&'a str>,
    devices: u64,
    hired: u64,
}

impl Tally<'_> {
    fn count(&self) -> SupplyCount {
        SupplyCount {
            suppliers: self.suppliers.len() as u64,
            devices: self.devices,
            hired: self.hired,
        }
    }
}

/// The supply by country and, within each, by model, in country order. A supplier counts once
/// per group however many devices it offers there.
pub fn supply_by_country(snapshot: &Snapshot) -> Vec<CountrySupply> {
    let mut tallies: BTreeMap<&str, (Tally, BTreeMap<&str, Tally>)> = BTreeMap::new();
    for node in &snapshot.nodes {
        for device in node.devices.iter().filter(|d| offered(d)) {
            let hired = u64::from(device.status == DeviceStatus::Hired);
            let (total, models) = tallies.entry(&node.country).or_default();
            for tally in [total, models.entry(&device.model).or_default()] {
                tally.suppliers.insert(&node.supplier_id);
                tally.devices += 1;
                tally.hired += hired;
            }
        }
    }
    tallies
        .into_iter()
        .map(|(country, (total, models))| CountrySupply {
            country: country.to_owned(),
            total: total.count(),
            models: models
                .into_iter()
                .map(|(model, tally)| (model.to_owned(), tally.count()))
                .collect(),
        })
        .collect()
}

/// The index for `snapshot`, with trends against `previous` (empty for none).
pub fn price_index(snapshot: &Snapshot, previous: &[ModelPrice]) -> Vec<ModelPrice> {
    let mut asks: BTreeMap<&str, (Vec<u64>, u64)> = BTreeMap::new();
    for device in snapshot.nodes.iter().flat_map(|n| &n.devices) {
        if !offered(device) {
            continue;
        }
        let hired = device.status == DeviceStatus::Hired;
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
