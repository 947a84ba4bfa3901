//! The index the scheduler places from: free devices grouped into slots (one worker, one
//! model), and slots into buckets by (model, region), each bucket an ordered set of its live
//! slots by a static cost, so a request looks at a handful of cheap candidates instead of the
//! whole pool, and a taken slot leaves the set instead of being stepped over.
//!
//! The [`Market`] is built once per snapshot and then mutated as the plan takes devices;
//! [`Market::release`] gives devices back (the simulator uses it; the coordinator rebuilds from
//! a fresh snapshot instead).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::score;
use crate::types::{
    Colocation, DeviceOffer, Filter, NodeAssignment, NodeOffer, Range, Request, Snapshot, Tier,
    WaitReason,
};

/// Candidates looked at beyond the nodes a request needs, per bucket: enough that the full
/// score (latency, load) can reorder what the static cost ranked.
pub const CANDIDATES_EXTRA: usize = 4;

/// One worker's free devices of one model, cheapest first.
#[derive(Debug, Clone)]
struct Slot {
    node: u32,
    bucket: u32,
    /// The static cost at build time: a lower bound for the slot from then on, since devices
    /// only leave a slot or come back to it.
    key: u64,
    /// Device indices within the node, sorted by price (then index).
    free: Vec<u32>,
    /// The size class it is filed under, if it has free devices.
    filed: Option<usize>,
}

#[derive(Debug, Clone)]
struct Bucket {
    model: u32,
    region: u32,
    /// (static cost, slot id) of every slot with a free device, with what a walk checks
    /// first, kept beside the key so most slots are passed over without touching the node;
    /// one map per size class (see [`size_class`]), so a request for a whole machine does not
    /// step over every single free GPU.
    live: Shelves,
}

/// Live slots by (static cost, slot id), one map per size class.
type Shelves = [BTreeMap<(u64, u32), Summary>; SIZE_CLASSES];

/// Size classes of free GPUs on a slot: 1, 2–3, 4–7, 8 or more.
const SIZE_CLASSES: usize = 4;

fn size_class(free: usize) -> usize {
    (free.max(1).ilog2() as usize).min(SIZE_CLASSES - 1)
}

/// Whether a slot of `class` can have `needed` free GPUs.
fn class_can_hold(class: usize, needed: usize) -> bool {
    class == SIZE_CLASSES - 1 || (2usize << class) > needed
}

/// The hot facts of a live slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Summary {
    free: u32,
    cheapest: u64,
    tier: Tier,
    reliability_ppm: u32,
}

/// What a model's devices span, so a request can skip a model without walking it.
#[derive(Debug, Clone, Copy)]
struct ModelSpan {
    memory: Range,
    perf: Range,
    cheapest: u64,
}

/// A candidate node for one request.
#[derive(Debug, Clone)]
struct Candidate {
    slot: u32,
    /// The bucket's (model, region).
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
    model_spans: Vec<ModelSpan>,
    regions: Vec<&'a str>,
    region_ids: HashMap<&'a str, u32>,
    slots: Vec<Slot>,
    /// Slot id for (node, model).
    slot_of: HashMap<(u32, u32), u32>,
    buckets: Vec<Bucket>,
    /// Bucket ids of each model, by region id.
    buckets_of_model: Vec<Vec<u32>>,
    /// Every region's live slots of each model together: what a request free to go anywhere
    /// walks, instead of one map per region.
    model_live: Vec<Shelves>,
    node_supplier: Vec<u32>,
    node_hash: Vec<u64>,
    /// Devices hired per supplier, counting what this plan placed.
    supplier_load: Vec<u32>,
}

impl<'a> Market<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Market<'a> {
        let mut market = Market {
            snapshot,
            models: HashMap::new(),
            model_spans: Vec::new(),
            regions: Vec::new(),
            region_ids: HashMap::new(),
            slots: Vec::new(),
            slot_of: HashMap::new(),
            buckets: Vec::new(),
            buckets_of_model: Vec::new(),
            model_live: Vec::new(),
            node_supplier: Vec::with_capacity(snapshot.nodes.len()),
            node_hash: Vec::with_capacity(snapshot.nodes.len()),
            supplier_load: Vec::new(),
        };
        let mut suppliers: HashMap<&str, u32> = HashMap::new();
        for (node_index, node) in snapshot.nodes.iter().enumerate() {
            let next = suppliers.len() as u32;
            let supplier = *suppliers.entry(&node.supplier_id).or_insert(next);
            if supplier as usize == market.supplier_load.len() {
                market.supplier_load.push(0);
            }
            market.supplier_load[supplier as usize] =
                market.supplier_load[supplier as usize].saturating_add(node.supplier_hired);
            market.node_supplier.push(supplier);
            market.node_hash.push(score::tie_break("", &node.worker_id));
            market.add_node(node_index as u32, node);
        }
        market.index();
        market
    }

    fn add_node(&mut self, node_index: u32, node: &'a NodeOffer) {
        let region = intern(&mut self.region_ids, &mut self.regions, &node.region);
        for (device_index, device) in node.devices.iter().enumerate() {
            if !device.placeable() {
                continue;
            }
            let next = self.models.len() as u32;
            let model = *self.models.entry(&device.model).or_insert(next);
            if model as usize == self.model_spans.len() {
                self.model_spans.push(ModelSpan {
                    memory: Range {
                        min: u64::MAX,
                        max: 0,
                    },
                    perf: Range {
                        min: u64::MAX,
                        max: 0,
                    },
                    cheapest: u64::MAX,
                });
                self.buckets_of_model.push(Vec::new());
                self.model_live.push(Shelves::default());
            }
            let span = &mut self.model_spans[model as usize];
            span.memory.min = span.memory.min.min(device.memory_bytes);
            span.memory.max = span.memory.max.max(device.memory_bytes);
            span.perf.min = span.perf.min.min(device.perf_ops_per_s);
            span.perf.max = span.perf.max.max(device.perf_ops_per_s);
            span.cheapest = span.cheapest.min(device.price_per_hour);
            let slot = match self.slot_of.get(&(node_index, model)) {
                Some(&slot) => slot,
                None => {
                    let bucket = self.bucket_for(model, region);
                    let slot = self.slots.len() as u32;
                    self.slots.push(Slot {
                        node: node_index,
                        bucket,
                        key: 0,
                        free: Vec::new(),
                        filed: None,
                    });
                    self.slot_of.insert((node_index, model), slot);
                    slot
                }
            };
            self.slots[slot as usize].free.push(device_index as u32);
        }
    }

    fn bucket_for(&mut self, model: u32, region: u32) -> u32 {
        let list = &mut self.buckets_of_model[model as usize];
        if let Some(&bucket) = list
            .iter()
            .find(|&&b| self.buckets[b as usize].region == region)
        {
            return bucket;
        }
        let bucket = self.buckets.len() as u32;
        self.buckets.push(Bucket {
            model,
            region,
            live: Default::default(),
        });
        list.push(bucket);
        bucket
    }

    /// Sorts each slot's devices by price and files the slot in its bucket by static cost.
    fn index(&mut self) {
        let snapshot = self.snapshot;
        for slot_id in 0..self.slots.len() as u32 {
            let slot = &mut self.slots[slot_id as usize];
            let node = &snapshot.nodes[slot.node as usize];
            slot.free
                .sort_by_key(|&d| (node.devices[d as usize].price_per_hour, d));
            slot.key = score::static_cost(node, &node.devices[slot.free[0] as usize]);
            self.refresh(slot_id);
        }
        let buckets = &self.buckets;
        for list in &mut self.buckets_of_model {
            list.sort_by_key(|&b| buckets[b as usize].region);
        }
    }

    pub fn snapshot(&self) -> &'a Snapshot {
        self.snapshot
    }

    /// Models the filter allows and whose devices can pass its memory, throughput and price.
    fn model_ids(&self, filter: &Filter, price: &Range) -> Vec<u32> {
        let spans_meet = |model: u32| {
            let span = &self.model_spans[model as usize];
            overlaps(&filter.memory_bytes, &span.memory)
                && overlaps(&filter.perf_ops_per_s, &span.perf)
                && span.cheapest <= price.max
        };
        let mut ids: Vec<u32> = if filter.models.is_empty() {
            (0..self.models.len() as u32).collect()
        } else {
            filter
                .models
                .iter()
                .filter_map(|m| self.models.get(m.as_str()).copied())
                .collect()
        };
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|&m| spans_meet(m));
        ids
    }

    /// Places `request` if it can: takes the devices and returns the nodes, or says why not.
    /// `price_cap` lowers the request's price limit (deferrable requests before their deadline).
    pub fn place(
        &mut self,
        request: &Request,
        price_cap: Option<u64>,
    ) -> Result<Vec<NodeAssignment>, WaitReason> {
        let mut price = request.filter.price_per_hour;
        if let Some(cap) = price_cap {
            price.max = price.max.min(cap);
        }
        let mut search = Search::new(request, price, &[]);
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

    /// Walks the buckets the request may use and gathers scored candidates: per bucket for a
    /// one-region cluster (each region needs its own), per model for a spread cluster (one
    /// model per cluster), and across everything for a single node.
    fn collect(&self, search: &mut Search) {
        let request = search.request;
        let wanted = request.node_count as usize + CANDIDATES_EXTRA;
        let mut groups: Vec<Vec<(u32, &Shelves)>> = Vec::new();
        let anywhere = request.filter.regions.is_empty()
            && (request.node_count == 1 || request.colocation == Colocation::Spread);
        for model in self.model_ids(&request.filter, &search.price) {
            if anywhere {
                let shelves = (model, &self.model_live[model as usize]);
                if request.node_count == 1 {
                    groups.resize_with(1, Vec::new);
                    groups[0].push(shelves);
                } else {
                    groups.push(vec![shelves]);
                }
                continue;
            }
            let allowed = self.buckets_of_model[model as usize]
                .iter()
                .copied()
                .filter(|&b| {
                    region_matches(
                        &request.filter.regions,
                        self.regions[self.buckets[b as usize].region as usize],
                    )
                })
                .map(|b| (model, &self.buckets[b as usize].live));
            if request.node_count == 1 {
                groups.resize_with(1, Vec::new);
                groups[0].extend(allowed);
            } else if request.colocation == Colocation::OneRegion {
                groups.extend(allowed.map(|b| vec![b]));
            } else {
                groups.push(allowed.collect());
            }
        }
        for group in groups {
            self.walk(search, &group, wanted);
        }
    }

    /// Files a slot in its bucket as its free list now stands: out when empty.
    fn refresh(&mut self, slot_id: u32) {
        let slot = &mut self.slots[slot_id as usize];
        let bucket = &mut self.buckets[slot.bucket as usize];
        let model_live = &mut self.model_live[bucket.model as usize];
        let key = (slot.key, slot_id);
        if let Some(class) = slot.filed.take() {
            bucket.live[class].remove(&key);
            model_live[class].remove(&key);
        }
        let Some(&cheapest) = slot.free.first() else {
            return;
        };
        let class = size_class(slot.free.len());
        slot.filed = Some(class);
        let node = &self.snapshot.nodes[slot.node as usize];
        let summary = Summary {
            free: slot.free.len() as u32,
            cheapest: node.devices[cheapest as usize].price_per_hour,
            tier: node.tier,
            reliability_ppm: node.reliability_ppm(),
        };
        bucket.live[class].insert(key, summary);
        model_live[class].insert(key, summary);
    }

    /// Walks `shelves` (each a model's) together in static-cost order until `wanted`
    /// candidates are found.
    fn walk(&self, search: &mut Search, shelves: &[(u32, &Shelves)], wanted: usize) {
        type Entries<'m> = std::collections::btree_map::Iter<'m, (u64, u32), Summary>;
        /// The next entry of every bucket walked, smallest static cost on top.
        type Heads = BinaryHeap<Reverse<((u64, u32), usize, Summary)>>;
        let needed = search.request.gpus_per_node as usize;
        let mut heads: Vec<(Entries<'_>, u64)> = Vec::new();
        for &(model, maps) in shelves {
            let perf = self.model_spans[model as usize].perf.min;
            // No slot past this static cost has a device within the price limit.
            let beyond = score::static_cost_bound(search.price.max, perf);
            for (class, live) in maps.iter().enumerate() {
                if class_can_hold(class, needed) && !live.is_empty() {
                    heads.push((live.iter(), beyond));
                }
            }
        }
        // The next entry of every bucket, smallest static cost on top.
        let mut next: Heads = BinaryHeap::new();
        let advance = |heads: &mut Vec<(Entries<'_>, u64)>, next: &mut Heads, index: usize| {
            let (iter, beyond) = &mut heads[index];
            if let Some((key, summary)) = iter.next()
                && key.0 <= *beyond
            {
                next.push(Reverse((*key, index, *summary)));
            }
        };
        for index in 0..heads.len() {
            advance(&mut heads, &mut next, index);
        }
        let mut found = 0;
        while found < wanted {
            let Some(Reverse(((_, slot_id), index, summary))) = next.pop() else {
                break;
            };
            advance(&mut heads, &mut next, index);
            if self.worth_a_look(search, &summary) {
                found += usize::from(self.consider(search, slot_id));
            }
        }
    }

    /// What the summary alone rules out: node-level constraints, price, and too few GPUs
    /// (which still counts as a match).
    fn worth_a_look(&self, search: &mut Search, summary: &Summary) -> bool {
        let filter = &search.request.filter;
        if summary.tier < filter.tier_min
            || summary.tier > filter.tier_max
            || !filter
                .reliability_ppm
                .contains(u64::from(summary.reliability_ppm))
            || summary.cheapest > search.price.max
        {
            return false;
        }
        if (summary.free as usize) < search.request.gpus_per_node as usize {
            search.any_match = true;
            return false;
        }
        true
    }

    /// Scores one slot for the request; whether it became a candidate.
    fn consider(&self, search: &mut Search, slot_id: u32) -> bool {
        let slot = &self.slots[slot_id as usize];
        let request = search.request;
        if search.exclude.contains(&(slot.node as usize)) {
            return false;
        }
        let node = &self.snapshot.nodes[slot.node as usize];
        // The bucket already matches the model and the region.
        if !node_passes_within_bucket(&request.filter, node) {
            return false;
        }
        let passes = |&d: &u32| {
            device_passes_within_bucket(&request.filter, &search.price, &node.devices[d as usize])
        };
        let matching = slot.free.iter().filter(|d| passes(d)).count();
        if matching == 0 {
            return false;
        }
        search.any_match = true;
        let needed = request.gpus_per_node as usize;
        if matching < needed || !request.filter.count.contains(matching as u64) {
            return false;
        }
        let devices: Vec<u32> = slot
            .free
            .iter()
            .copied()
            .filter(|d| passes(d))
            .take(needed)
            .collect();
        let price_per_hour: u64 = devices
            .iter()
            .map(|&d| node.devices[d as usize].price_per_hour)
            .sum();
        let load = self.supplier_load[self.node_supplier[slot.node as usize] as usize];
        let perf = node.devices[devices[0] as usize].perf_ops_per_s;
        let score = score::full_cost(
            node,
            price_per_hour,
            perf,
            load,
            request,
            search.preferred.as_ref(),
        );
        let bucket = &self.buckets[slot.bucket as usize];
        search.candidates.push(Candidate {
            slot: slot_id,
            bucket: (bucket.model, bucket.region),
            devices,
            price_per_hour,
            score,
            tie: score::mix(search.request_hash ^ self.node_hash[slot.node as usize]),
        });
        true
    }

    /// Picks the request's nodes from the candidates: the best `node_count` of one model (a
    /// cluster's GPUs are alike), and of one region when the request asks for it.
    fn choose(
        &self,
        request: &Request,
        search: &mut Search<'_>,
    ) -> Result<Vec<Candidate>, WaitReason> {
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
                let node = slot.node;
                self.refresh(candidate.slot);
                let supplier = self.node_supplier[node as usize] as usize;
                self.supplier_load[supplier] += candidate.devices.len() as u32;
                NodeAssignment {
                    node: node as usize,
                    devices: candidate.devices.iter().map(|&d| d as usize).collect(),
                    price_per_hour: candidate.price_per_hour,
                }
            })
            .collect()
    }

    /// The slot holding a device, if the device was placeable when the market was built.
    fn slot_holding(&self, node: usize, device: usize) -> Option<u32> {
        let model = self
            .models
            .get(self.snapshot.nodes[node].devices[device].model.as_str())?;
        self.slot_of.get(&(node as u32, *model)).copied()
    }

    /// Gives devices back (work ended); they become placeable again.
    pub fn release(&mut self, node: usize, devices: &[usize]) {
        let offers = &self.snapshot.nodes[node].devices;
        for &device in devices {
            let Some(slot_id) = self.slot_holding(node, device) else {
                continue;
            };
            let slot = &mut self.slots[slot_id as usize];
            if slot.free.contains(&(device as u32)) {
                continue;
            }
            slot.free.push(device as u32);
            slot.free
                .sort_by_key(|&d| (offers[d as usize].price_per_hour, d));
            self.refresh(slot_id);
            let supplier = self.node_supplier[node] as usize;
            self.supplier_load[supplier] = self.supplier_load[supplier].saturating_sub(1);
        }
    }

    /// Takes devices out without a request (a device failed or was hired elsewhere).
    pub fn withdraw(&mut self, node: usize, devices: &[usize]) {
        for &device in devices {
            let Some(slot_id) = self.slot_holding(node, device) else {
                continue;
            };
            self.slots[slot_id as usize]
                .free
                .retain(|&d| d != device as u32);
            self.refresh(slot_id);
        }
    }
}

fn intern<'a>(ids: &mut HashMap<&'a str, u32>, names: &mut Vec<&'a str>, name: &'a str) -> u32 {
    if let Some(&id) = ids.get(name) {
        return id;
    }
    let id = names.len() as u32;
    names.push(name);
    ids.insert(name, id);
    id
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.min <= b.max && b.min <= a.max
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
struct Search<'r> {
    request: &'r Request,
    request_hash: u64,
    price: Range,
    exclude: &'r [usize],
    preferred: Option<(String, Tier)>,
    candidates: Vec<Candidate>,
    /// Some device passed every constraint (whether or not a node had enough of them).
    any_match: bool,
}

impl<'r> Search<'r> {
    fn new(request: &'r Request, price: Range, exclude: &'r [usize]) -> Search<'r> {
        Search {
            request,
            request_hash: score::tie_break(&request.request_id, ""),
            price,
            exclude,
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

/// The node-level constraints: country, tier, reliability, a container engine.
pub fn node_passes(filter: &Filter, node: &NodeOffer) -> bool {
    (node.containers || !filter.needs_containers)
        && (filter.countries.is_empty() || filter.countries.contains(&node.country))
        && node.tier >= filter.tier_min
        && node.tier <= filter.tier_max
        && filter
            .reliability_ppm
            .contains(u64::from(node.reliability_ppm()))
        && region_matches(&filter.regions, &node.region)
}

/// [`node_passes`] less the region, which a bucket already matches.
fn node_passes_within_bucket(filter: &Filter, node: &NodeOffer) -> bool {
    (node.containers || !filter.needs_containers)
        && node.tier >= filter.tier_min
        && node.tier <= filter.tier_max
        && (filter.countries.is_empty() || filter.countries.contains(&node.country))
        && filter
            .reliability_ppm
            .contains(u64::from(node.reliability_ppm()))
}

/// [`device_passes`] less the model, which a bucket already matches, and placeability, which
/// a slot's free list already has.
fn device_passes_within_bucket(filter: &Filter, price: &Range, device: &DeviceOffer) -> bool {
    price.contains(device.price_per_hour)
        && filter.memory_bytes.contains(device.memory_bytes)
        && filter.perf_ops_per_s.contains(device.perf_ops_per_s)
}

/// The device-level constraints, on top of being placeable and of an allowed model.
pub fn device_passes(filter: &Filter, price: &Range, device: &DeviceOffer) -> bool {
    device.placeable()
        && (filter.models.is_empty() || filter.models.contains(&device.model))
        && filter.memory_bytes.contains(device.memory_bytes)
        && price.contains(device.price_per_hour)
        && filter.perf_ops_per_s.contains(device.perf_ops_per_s)
}
