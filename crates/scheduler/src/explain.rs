//! "Why no match?": for a filter (and a node shape) that finds nothing, how many offers each
//! constraint removed, and which single relaxation would match, cheapest first.
//!
//! Counted per device offer (one placeable GPU). Each constraint's count is independent: a
//! device that fails two constraints is counted under both. The `count` constraint (free
//! matching GPUs on one worker) is judged after the others, per worker and model.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::market::{device_passes, node_passes, region_matches};
use crate::types::{Filter, NodeOffer, PRICE_UNITS_PER_USD, Range, Snapshot, Tier};

/// One hard constraint of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Constraint {
    Model,
    Memory,
    Price,
    Region,
    Country,
    Tier,
    Reliability,
    Perf,
    Count,
    Containers,
}

const CONSTRAINTS: [Constraint; 10] = [
    Constraint::Model,
    Constraint::Memory,
    Constraint::Price,
    Constraint::Region,
    Constraint::Country,
    Constraint::Tier,
    Constraint::Reliability,
    Constraint::Perf,
    Constraint::Count,
    Constraint::Containers,
];

/// The filter with one constraint removed.
fn without(filter: &Filter, constraint: Constraint) -> Filter {
    let mut relaxed = filter.clone();
    match constraint {
        Constraint::Model => relaxed.models.clear(),
        Constraint::Memory => relaxed.memory_bytes = Range::ANY,
        Constraint::Price => relaxed.price_per_hour = Range::ANY,
        Constraint::Region => relaxed.regions.clear(),
        Constraint::Country => relaxed.countries.clear(),
        Constraint::Tier => {
            relaxed.tier_min = Tier::Low;
            relaxed.tier_max = Tier::Ultra;
        }
        Constraint::Reliability => relaxed.reliability_ppm = Range::ANY,
        Constraint::Perf => relaxed.perf_ops_per_s = Range::ANY,
        Constraint::Count => relaxed.count = Range::ANY,
        Constraint::Containers => relaxed.needs_containers = false,
    }
    relaxed
}

fn list(values: &[String]) -> String {
    format!("[{}]", values.join(","))
}

fn range_text(name: &str, range: &Range, show: impl Fn(u64) -> String) -> String {
    match (range.min, range.max) {
        (min, max) if min == max => format!("{name}={}", show(min)),
        (0, max) => format!("{name}<={}", show(max)),
        (min, u64::MAX) => format!("{name}>={}", show(min)),
        (min, max) => format!("{name}>={} {name}<={}", show(min), show(max)),
    }
}

/// Whether the filter constrains this at all, and how it reads in the query language.
fn describe(filter: &Filter, constraint: Constraint, gpus_per_node: u32) -> Option<String> {
    match constraint {
        Constraint::Model => {
            (!filter.models.is_empty()).then(|| format!("gpu in {}", list(&filter.models)))
        }
        Constraint::Memory => (!filter.memory_bytes.is_any())
            .then(|| range_text("vram", &filter.memory_bytes, |b| format_decimal(b, 9))),
        Constraint::Price => (!filter.price_per_hour.is_any())
            .then(|| range_text("price", &filter.price_per_hour, format_price)),
        Constraint::Region => {
            (!filter.regions.is_empty()).then(|| format!("region in {}", list(&filter.regions)))
        }
        Constraint::Country => (!filter.countries.is_empty())
            .then(|| format!("country in {}", list(&filter.countries))),
        Constraint::Tier => {
            (filter.tier_min != Tier::Low || filter.tier_max != Tier::Ultra).then(|| {
                if filter.tier_max == Tier::Ultra {
                    format!("tier>={}", filter.tier_min.as_str())
                } else {
                    format!(
                        "tier>={} tier<={}",
                        filter.tier_min.as_str(),
                        filter.tier_max.as_str()
                    )
                }
            })
        }
        Constraint::Reliability => (!filter.reliability_ppm.is_any()).then(|| {
            range_text("reliability", &filter.reliability_ppm, |p| {
                format_decimal(p, 6)
            })
        }),
        Constraint::Perf => (!filter.perf_ops_per_s.is_any())
            .then(|| range_text("perf", &filter.perf_ops_per_s, |p| p.to_string())),
        Constraint::Containers => filter
            .needs_containers
            .then(|| "a container engine (for the image)".to_owned()),
        Constraint::Count => {
            let mut count = filter.count;
            count.min = count.min.max(u64::from(gpus_per_node));
            (!count.is_any()
                && count
                    != Range {
                        min: 1,
                        max: u64::MAX,
                    })
            .then(|| range_text("count", &count, |c| c.to_string()))
        }
    }
}

/// Formats `value × 10^-scale` without trailing zeros (at least two decimals for money).
pub fn format_decimal(value: u64, scale_digits: u32) -> String {
    let scale = 10u64.pow(scale_digits);
    let (whole, fraction) = (value / scale, value % scale);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:0width$}", width = scale_digits as usize);
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A price per hour in USD, with at least two decimals.
pub fn format_price(units: u64) -> String {
    let text = format_decimal(units, PRICE_UNITS_PER_USD.ilog10());
    match text.split_once('.') {
        None => format!("{text}.00"),
        Some((_, fraction)) if fraction.len() == 1 => format!("{text}0"),
        Some(_) => text,
    }
}

/// What one constraint removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The constraint as written in the query language.
    pub constraint: String,
    pub offers: u64,
}

/// A single relaxation that would match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relaxation {
    /// The constraint to drop, as written in the query language.
    pub drop: String,
    pub offers: u64,
    /// Workers with enough matching GPUs for one node.
    pub nodes: u64,
    /// The cheapest matching GPU, per hour, in IOSD base units.
    pub cheapest_per_hour: u64,
}

impl std::fmt::Display for Relaxation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "drop {}: {} offers from {}/h",
            self.drop,
            self.offers,
            format_price(self.cheapest_per_hour)
        )
    }
}

/// Why a filter finds what it finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Placeable device offers in the snapshot.
    pub offers_total: u64,
    /// Offers passing every constraint.
    pub offers_matching: u64,
    /// Workers with at least `gpus_per_node` matching GPUs.
    pub nodes_matching: u64,
    pub nodes_needed: u32,
    pub removed: Vec<Removed>,
    /// Single relaxations that would give enough nodes, cheapest first.
    pub relaxations: Vec<Relaxation>,
}

/// Matching offers, workers with enough of them, and the cheapest, for one filter.
fn evaluate(snapshot: &Snapshot, filter: &Filter, gpus_per_node: u32) -> (u64, u64, u64) {
    let mut per_slot: HashMap<(usize, &str), (u64, u64)> = HashMap::new();
    for (index, node) in snapshot.nodes.iter().enumerate() {
        if !node_passes(filter, node) {
            continue;
        }
        for device in &node.devices {
            if device_passes(filter, &filter.price_per_hour, device) {
                let entry = per_slot
                    .entry((index, &device.model))
                    .or_insert((0, u64::MAX));
                entry.0 += 1;
                entry.1 = entry.1.min(device.price_per_hour);
            }
        }
    }
    let mut count = filter.count;
    count.min = count.min.max(u64::from(gpus_per_node));
    let (mut offers, mut nodes, mut cheapest) = (0, 0, u64::MAX);
    for (free, price) in per_slot.values() {
        if count.contains(*free) {
            offers += free;
            nodes += 1;
            cheapest = cheapest.min(*price);
        }
    }
    (offers, nodes, cheapest)
}

/// Devices that pass every constraint but `constraint`, judged alone.
fn removed_by(
    snapshot: &Snapshot,
    filter: &Filter,
    constraint: Constraint,
    gpus_per_node: u32,
) -> u64 {
    let placeable = |node: &NodeOffer| node.devices.iter().filter(|d| d.placeable()).count() as u64;
    let fails_node = |node: &NodeOffer| match constraint {
        Constraint::Region => !region_matches(&filter.regions, &node.region),
        Constraint::Country => {
            !filter.countries.is_empty() && !filter.countries.contains(&node.country)
        }
        Constraint::Tier => node.tier < filter.tier_min || node.tier > filter.tier_max,
        Constraint::Reliability => !filter
            .reliability_ppm
            .contains(u64::from(node.reliability_ppm())),
        Constraint::Containers => filter.needs_containers && !node.containers,
        _ => false,
    };
    match constraint {
        Constraint::Region
        | Constraint::Country
        | Constraint::Tier
        | Constraint::Reliability
        | Constraint::Containers => snapshot
            .nodes
            .iter()
            .filter(|n| fails_node(n))
            .map(placeable)
            .sum(),
        Constraint::Count => {
            let all_but_count = evaluate(snapshot, &without(filter, Constraint::Count), 1).0;
            all_but_count - evaluate(snapshot, filter, gpus_per_node).0
        }
        _ => {
            let alone = Filter {
                models: if constraint == Constraint::Model {
                    filter.models.clone()
                } else {
                    Vec::new()
                },
                memory_bytes: if constraint == Constraint::Memory {
                    filter.memory_bytes
                } else {
                    Range::ANY
                },
                price_per_hour: if constraint == Constraint::Price {
                    filter.price_per_hour
                } else {
                    Range::ANY
                },
                perf_ops_per_s: if constraint == Constraint::Perf {
                    filter.perf_ops_per_s
                } else {
                    Range::ANY
                },
                ..Filter::default()
            };
            snapshot
                .nodes
                .iter()
                .flat_map(|n| &n.devices)
                .filter(|d| d.placeable() && !device_passes(&alone, &alone.price_per_hour, d))
                .count() as u64
        }
    }
}

/// Explains what `filter` finds for nodes of `gpus_per_node` GPUs, `nodes_needed` of them.
pub fn explain(
    snapshot: &Snapshot,
    filter: &Filter,
    gpus_per_node: u32,
    nodes_needed: u32,
) -> Explanation {
    let gpus_per_node = gpus_per_node.max(1);
    let offers_total = snapshot
        .nodes
        .iter()
        .flat_map(|n| &n.devices)
        .filter(|d| d.placeable())
        .count() as u64;
    let (offers_matching, nodes_matching, _) = evaluate(snapshot, filter, gpus_per_node);
    let mut removed = Vec::new();
    let mut relaxations = Vec::new();
    for constraint in CONSTRAINTS {
        let Some(text) = describe(filter, constraint, gpus_per_node) else {
            continue;
        };
        removed.push(Removed {
            constraint: text.clone(),
            offers: removed_by(snapshot, filter, constraint, gpus_per_node),
        });
        let relaxed = without(filter, constraint);
        let per_node = if constraint == Constraint::Count {
            1
        } else {
            gpus_per_node
        };
        let (offers, nodes, cheapest) = evaluate(snapshot, &relaxed, per_node);
        if nodes >= u64::from(nodes_needed.max(1)) && nodes > nodes_matching {
            relaxations.push(Relaxation {
                drop: text,
                offers,
                nodes,
                cheapest_per_hour: cheapest,
            });
        }
    }
    relaxations.sort_by(|a, b| {
        (a.cheapest_per_hour, std::cmp::Reverse(a.offers), &a.drop).cmp(&(
            b.cheapest_per_hour,
            std::cmp::Reverse(b.offers),
            &b.drop,
        ))
    });
    Explanation {
        offers_total,
        offers_matching,
        nodes_matching,
        nodes_needed,
        removed,
        relaxations,
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} of {} offers match; {} workers have enough for a node ({} needed)",
            self.offers_matching, self.offers_total, self.nodes_matching, self.nodes_needed
        )?;
        for removed in &self.removed {
            writeln!(
                f,
                "  {} removed {} offers",
                removed.constraint, removed.offers
            )?;
        }
        match self.relaxations.first() {
            Some(best) => {
                writeln!(f, "cheapest relaxation: {best}")?;
                for other in &self.relaxations[1..] {
                    writeln!(f, "  or {other}")?;
                }
            }
            None => writeln!(f, "no single relaxation matches")?,
        }
        Ok(())
    }
}
