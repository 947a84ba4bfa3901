//! The index the scheduler places from: free devices grouped into slots (one worker, one
//! model), and slots into buckets by (model, region), each bucket sorted by a static cost, so a
//! request looks at a handful of cheap candidates instead of the whole pool.
//!
//! The [`Market`] is built once per snapshot and then mutated as the plan takes devices;
//! [`Market::release`] gives devices back (the simulator uses it; the coordinator rebuilds from
//! a fresh snapshot instead).

use std::collections::HashMap;

use crate::score;
use crate::types::{
    Colocation, DeviceOffer, Filter, NodeAssignment, NodeOffer, Range, Request, Snapshot, Tier,
    WaitReason,
};

/// Candidates looked at beyond the nodes a request needs, per bucket: enough that the full
/// score (latency, load) can reorder what the static cost ranked.
pub const CANDIDATES_EXTRA: usize = 8;

/// One worker's free devices of one model, cheapest first.
#[derive(Debug, Clone)]
struct Slot {
    node: u32,
    /// Device indices within the node, sorted by price (then index).
    free: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Slot ids, sorted by static cost.
    slots: Vec<u32>,
    /// Slots before this index have no free device; skipped without looking.
    first_live: usize,
}

/// A candidate node for one request.
#[derive(Debug, Clone)]
struct Candidate {
    slot: u32,
    /// The bucket it came from: (model, region).
    bucket: (u32, u32),
    devices: Vec<u32>,
    price_per_hour: u64,
    score: u64,
    tie: u64,
}

/// The mutable index over one snapshot.
#[derive(Debug)]
pub struct Market<'a> {
    snapshot: &'a Snapshot,
    models: HashMap<&'a str, u32>,
    regions: Vec<&'a str>,
    region_ids: HashMap<&'a str, u32>,
    slots: Vec<Slot>,
    /// Slot id for (node, model).
    slot_of: HashMap<(u32, u32), u32>,
    /// Position of each slot within its bucket.
    slot_position: Vec<u32>,
    buckets: HashMap<(u32, u32), Bucket>,
    /// Per model, the regions that have a bucket, sorted.
    regions_of_model: Vec<Vec<u32>>,
    /// Devices hired per supplier, counting what this plan placed.
    supplier_load: HashMap<&'a str, u32>,
}

impl<'a> Market<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Market<'a> {
        let mut market = Market {
            snapshot,
            models: HashMap::new(),
            regions: Vec::new(),
            region_ids: HashMap::new(),
            slots: Vec::new(),
            slot_of: HashMap::new(),
            slot_position: Vec::new(),
            buckets: HashMap::new(),
            regions_of_model: Vec::new(),
            supplier_load: HashMap::new(),
        };
        for (node_index, node) in snapshot.nodes.iter().enumerate() {
            market.add_node(node_index as u32, node);
        }
        market.sort_buckets();
        market
    }

    fn add_node(&mut self, node_index: u32, node: &'a NodeOffer) {
        let load = self.supplier_load.entry(&node.supplier_id).or_default();
        *load = load.saturating_add(node.supplier_hired);
        let region = self.intern_region(&node.region);
        for (device_index, device) in node.devices.iter().enumerate() {
            if !device.placeable() {
                continue;
            }
            let model = self.intern_model(&device.model);
            let slot = match self.slot_of.get(&(node_index, model)) {
                Some(&slot) => slot,
                None => {
                    let slot = self.slots.len() as u32;
                    self.slots.push(Slot {
                        node: node_index,
                        free: Vec::new(),
                    });
                    self.slot_of.insert((node_index, model), slot);
                    self.buckets
                        .entry((model, region))
                        .or_default()
                        .slots
                        .push(slot);
                    slot
                }
            };
            self.slots[slot as usize].free.push(device_index as u32);
        }
    }

    fn intern_model(&mut self, model: &'a str) -> u32 {
        let next = self.models.len() as u32;
        *self.models.entry(model).or_insert(next)
    }

    fn intern_region(&mut self, region: &'a str) -> u32 {
        if let Some(&id) = self.region_ids.get(region) {
            return id;
        }
        let id = self.regions.len() as u32;
        self.regions.push(region);
        self.region_ids.insert(region, id);
        id
    }

    fn sort_buckets(&mut self) {
        let snapshot = self.snapshot;
        for slot in &mut self.slots {
            let devices = &snapshot.nodes[slot.node as usize].devices;
            slot.free
                .sort_by_key(|&d| (devices[d as usize].price_per_hour, d));
        }
        self.slot_position = vec![0; self.slots.len()];
        let mut keys: Vec<(u32, u32)> = self.buckets.keys().copied().collect();
        keys.sort_unstable();
        self.regions_of_model = vec![Vec::new(); self.models.len()];
        for key in keys {
            let bucket = self.buckets.get_mut(&key).expect("listed key");
            let slots = &self.slots;
            bucket.slots.sort_by_cached_key(|&s| {
                let slot = &slots[s as usize];
                let node = &snapshot.nodes[slot.node as usize];
                let cheapest = &node.devices[slot.free[0] as usize];
                (score::static_cost(node, cheapest), slot.node)
            });
            for (position, &slot) in bucket.slots.iter().enumerate() {
                self.slot_position[slot as usize] = position as u32;
            }
            self.regions_of_model[key.0 as usize].push(key.1);
        }
    }

    pub fn snapshot(&self) -> &'a Snapshot {
        self.snapshot
    }

    /// Free devices left in the market.
    pub fn free_devices(&self) -> usize {
        self.slots.iter().map(|s| s.free.len()).sum()
    }

    fn model_ids(&self, filter: &Filter) -> Vec<u32> {
        if filter.models.is_empty() {
            let mut all: Vec<u32> = self.models.values().copied().collect();
            all.sort_unstable();
            return all;
        }
        let mut ids: Vec<u32> = filter
            .models
            .iter()
            .filter_map(|m| self.models.get(m.as_str()).copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn region_allowed(&self, filter: &Filter, region: u32) -> bool {
        region_matches(&filter.regions, self.regions[region as usize])
    }

    /// Places `request` if it can: takes the devices and returns the nodes, or says why not.
    /// `price_cap` lowers the request's price limit (deferrable requests before their deadline).
    pub fn place(
        &mut self,
        request: &Request,
        price_cap: Option<u64>,
    ) -> Result<Vec<NodeAssignment>, WaitReason> {
        let mut filter_price = request.filter.price_per_hour;
        if let Some(cap) = price_cap {
            filter_price.max = filter_price.max.min(cap);
        }
        let mut search = Search::new(request, filter_price, &[]);
        self.collect(&mut search);
        let chosen = self.choose(request, &mut search)?;
        Ok(self.take(chosen))
    }

    /// Places `count` more nodes of `model` for a running request, never on `exclude` (its
    /// other nodes), preferring `region` and at least `tier`. A one-region request looks in
    /// `region` first and elsewhere only if that fails.
    pub fn place_replacements(
        &mut self,
        request: &Request,
        count: u32,
        exclude: &[usize],
        model: &str,
        (region, tier): (&str, Tier),
    ) -> Result<Vec<NodeAssignment>, WaitReason> {
        let mut partial = request.clone();
        partial.node_count = count;
        partial.filter.models = vec![model.to_owned()];
        // Replacements need not share a region with each other: they join placed nodes, and
        // the score prefers those nodes' region.
        partial.colocation = Colocation::Spread;
        let mut scopes = vec![partial.filter.regions.clone()];
        if request.colocation == Colocation::OneRegion {
            scopes.insert(0, vec![region.to_owned()]);
        }
        let mut last = WaitReason::NoMatch;
        for regions in scopes {
            let mut scoped = partial.clone();
            scoped.filter.regions = regions;
            let mut search = Search::new(&scoped, scoped.filter.price_per_hour, exclude);
            search.preferred = Some((region.to_owned(), tier));
            self.collect(&mut search);
            match self.choose(&scoped, &mut search) {
                Ok(chosen) => return Ok(self.take(chosen)),
                Err(reason) => last = reason,
            }
        }
        Err(last)
    }

    /// Walks the buckets the request may use and gathers scored candidates.
    fn collect(&mut self, search: &mut Search) {
        let request = search.request.clone();
        let per_bucket = request.node_count as usize + CANDIDATES_EXTRA;
        for model in self.model_ids(&request.filter) {
            let regions = self.regions_of_model[model as usize].clone();
            for region in regions {
                if !self.region_allowed(&request.filter, region) {
                    continue;
                }
                self.collect_bucket(search, (model, region), per_bucket);
            }
        }
    }

    fn collect_bucket(&mut self, search: &mut Search, key: (u32, u32), wanted: usize) {
        let snapshot = self.snapshot;
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return;
        };
        while bucket.first_live < bucket.slots.len()
            && self.slots[bucket.slots[bucket.first_live] as usize]
                .free
                .is_empty()
        {
            bucket.first_live += 1;
        }
        let mut found = 0;
        for &slot_id in &bucket.slots[bucket.first_live..] {
            if found >= wanted {
                break;
            }
            let slot = &self.slots[slot_id as usize];
            if slot.free.is_empty() || search.exclude.contains(&(slot.node as usize)) {
                continue;
            }
            let node = &snapshot.nodes[slot.node as usize];
            if !node_passes(&search.request.filter, node) {
                continue;
            }
            let devices = matching_devices(
                &search.request.filter,
                &search.price,
                &node.devices,
                &slot.free,
            );
            if devices.is_empty() {
                continue;
            }
            search.any_match = true;
            let needed = search.request.gpus_per_node as usize;
            if devices.len() < needed || !search.request.filter.count.contains(devices.len() as u64)
            {
                continue;
            }
            let devices: Vec<u32> = devices.into_iter().take(needed).collect();
            let price_per_hour: u64 = devices
                .iter()
                .map(|&d| node.devices[d as usize].price_per_hour)
                .sum();
            let load = self
                .supplier_load
                .get(node.supplier_id.as_str())
                .copied()
                .unwrap_or(0);
            let perf = node.devices[devices[0] as usize].perf_ops_per_s;
            let score = score::full_cost(
                node,
                price_per_hour,
                perf,
                load,
                &search.request,
                search.preferred.as_ref(),
            );
            search.candidates.push(Candidate {
                slot: slot_id,
                bucket: key,
                devices,
                price_per_hour,
                score,
                tie: score::tie_break(&search.request.request_id, &node.worker_id),
            });
            found += 1;
        }
    }

    /// Picks the request's nodes from the candidates: the best `node_count` of one model (a
    /// cluster's GPUs are alike), and of one region when the request asks for it.
    fn choose(&self, request: &Request, search: &mut Search) -> Result<Vec<Candidate>, WaitReason> {
        if !search.any_match {
            return Err(WaitReason::NoMatch);
        }
        let candidates = &mut search.candidates;
        candidates.sort_by_key(|c| (c.score, c.tie, c.slot));
        let one_region = request.colocation == Colocation::OneRegion && request.node_count > 1;
        let chosen = best_group(candidates, request.node_count as usize, |c| {
            (c.bucket.0, if one_region { c.bucket.1 } else { u32::MAX })
        });
        let chosen = match chosen {
            Ok(chosen) => chosen,
            Err(largest_group) if one_region => {
                let by_model = best_group(candidates, request.node_count as usize, |c| {
                    (c.bucket.0, u32::MAX)
                });
                return Err(match by_model {
                    Ok(_) => WaitReason::NoRegionWithEnoughNodes {
                        needed: request.node_count,
                        best_region_nodes: largest_group as u32,
                    },
                    Err(found) => WaitReason::NotEnoughNodes {
                        needed: request.node_count,
                        found: found as u32,
                    },
                });
            }
            Err(found) => {
                return Err(WaitReason::NotEnoughNodes {
                    needed: request.node_count,
                    found: found as u32,
                });
            }
        };
        let total: u64 = chosen.iter().map(|c| c.price_per_hour).sum();
        if let Some(budget) = request.budget_per_hour
            && total > budget
        {
            return Err(WaitReason::OverBudget {
                cheapest_per_hour: total,
                budget_per_hour: budget,
            });
        }
        Ok(chosen)
    }

    /// Takes the chosen devices out of the market.
    fn take(&mut self, chosen: Vec<Candidate>) -> Vec<NodeAssignment> {
        chosen
            .into_iter()
            .map(|candidate| {
                let slot = &mut self.slots[candidate.slot as usize];
                slot.free.retain(|d| !candidate.devices.contains(d));
                let node = &self.snapshot.nodes[slot.node as usize];
                *self
                    .supplier_load
                    .entry(node.supplier_id.as_str())
                    .or_default() += candidate.devices.len() as u32;
                NodeAssignment {
                    node: slot.node as usize,
                    devices: candidate.devices.iter().map(|&d| d as usize).collect(),
                    price_per_hour: candidate.price_per_hour,
                }
            })
            .collect()
    }

    /// Gives devices back (work ended); they become placeable again.
    pub fn release(&mut self, node: usize, devices: &[usize]) {
        let snapshot = self.snapshot;
        let node_offer = &snapshot.nodes[node];
        for &device in devices {
            let offer = &node_offer.devices[device];
            let (Some(&model), Some(&region)) = (
                self.models.get(offer.model.as_str()),
                self.region_ids.get(node_offer.region.as_str()),
            ) else {
                continue;
            };
            let Some(&slot_id) = self.slot_of.get(&(node as u32, model)) else {
                continue;
            };
            let slot = &mut self.slots[slot_id as usize];
            if slot.free.contains(&(device as u32)) {
                continue;
            }
            slot.free.push(device as u32);
            let devices = &node_offer.devices;
            slot.free
                .sort_by_key(|&d| (devices[d as usize].price_per_hour, d));
            let position = self.slot_position[slot_id as usize] as usize;
            if let Some(bucket) = self.buckets.get_mut(&(model, region)) {
                bucket.first_live = bucket.first_live.min(position);
            }
            let load = self
                .supplier_load
                .entry(node_offer.supplier_id.as_str())
                .or_default();
            *load = load.saturating_sub(1);
        }
    }

    /// Takes devices out without a request (a device failed or was hired elsewhere).
    pub fn withdraw(&mut self, node: usize, devices: &[usize]) {
        let node_offer = &self.snapshot.nodes[node];
        for &device in devices {
            let Some(&model) = self.models.get(node_offer.devices[device].model.as_str()) else {
                continue;
            };
            if let Some(&slot_id) = self.slot_of.get(&(node as u32, model)) {
                self.slots[slot_id as usize]
                    .free
                    .retain(|&d| d != device as u32);
            }
        }
    }
}

/// The group (by `key`) whose best `needed` candidates (already sorted) score least in total;
/// or, when no group has enough, the size of the largest.
fn best_group(
    sorted: &[Candidate],
    needed: usize,
    key: impl Fn(&Candidate) -> (u32, u32),
) -> Result<Vec<Candidate>, usize> {
    let mut groups: Vec<((u32, u32), Vec<&Candidate>)> = Vec::new();
    for candidate in sorted {
        let k = key(candidate);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, list)) => list.push(candidate),
            None => groups.push((k, vec![candidate])),
        }
    }
    let best = groups
        .iter()
        .filter(|(_, list)| list.len() >= needed)
        .min_by_key(|(k, list)| (list[..needed].iter().map(|c| c.score).sum::<u64>(), *k));
    match best {
        Some((_, list)) => Ok(list[..needed].iter().map(|c| (*c).clone()).collect()),
        None => Err(groups.iter().map(|(_, l)| l.len()).max().unwrap_or(0)),
    }
}

/// One request's walk over the market.
struct Search {
    request: Request,
    price: Range,
    exclude: Vec<usize>,
    preferred: Option<(String, Tier)>,
    candidates: Vec<Candidate>,
    /// Some device passed every constraint (whether or not a node had enough of them).
    any_match: bool,
}

impl Search {
    fn new(request: &Request, price: Range, exclude: &[usize]) -> Search {
        Search {
            request: request.clone(),
            price,
            exclude: exclude.to_vec(),
            preferred: None,
            candidates: Vec::new(),
            any_match: false,
        }
    }
}

/// Whether a region key passes a list of allowed regions or continents (empty allows all).
pub fn region_matches(allowed: &[String], region: &str) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|a| {
            region == a
                || (region.len() > a.len()
                    && region.starts_with(a.as_str())
                    && region.as_bytes()[a.len()] == b'-')
        })
}

/// The node-level constraints: country, tier, reliability.
pub fn node_passes(filter: &Filter, node: &NodeOffer) -> bool {
    (filter.countries.is_empty() || filter.countries.contains(&node.country))
        && node.tier >= filter.tier_min
        && node.tier <= filter.tier_max
        && filter
            .reliability_ppm
            .contains(u64::from(node.reliability_ppm()))
        && region_matches(&filter.regions, &node.region)
}

/// The device-level constraints, on top of being placeable and of an allowed model.
pub fn device_passes(filter: &Filter, price: &Range, device: &DeviceOffer) -> bool {
    device.placeable()
        && (filter.models.is_empty() || filter.models.contains(&device.model))
        && filter.memory_bytes.contains(device.memory_bytes)
        && price.contains(device.price_per_hour)
        && filter.perf_ops_per_s.contains(device.perf_ops_per_s)
}

/// The free devices of a slot that pass the filter, cheapest first.
fn matching_devices(
    filter: &Filter,
    price: &Range,
    devices: &[DeviceOffer],
    free: &[u32],
) -> Vec<u32> {
    free.iter()
        .copied()
        .filter(|&d| device_passes(filter, price, &devices[d as usize]))
        .collect()
}
