//! The index the scheduler places from: free devices grouped into slots (one worker, one
//! model), and slots into buckets by (model, region), each bucket an ordered set of its live
//! slots by a static cost, so a request looks at a handful of cheap candidates instead of the
//! whole pool, and a taken slot leaves the set instead of being stepped over.
//!
//! The [`Market`] is built once per snapshot and then mutated as the plan takes devices;
//! [`Market::release`] gives devices back (the simulator uses it; the coordinator rebuilds from
//! a fresh snapshot instead).
//!
//! Speed: a decision at 100,000 devices should cost about what it costs at 1,000, so what a
//! walk reads per slot (the [`Slot`], its free devices, the bucket) is copied out of the
//! snapshot into small dense arrays at build time, and the scratch buffers a decision fills
//! are kept between decisions. The snapshot is read only for rare filters (countries) and for
//! devices whose slot is not uniform.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, btree_map};

use crate::hash::FxMap;
use crate::score::{self, Distance, Standing};
use crate::types::{
    Colocation, DeviceOffer, Filter, NodeAssignment, NodeOffer, Range, Request, Snapshot, Tier,
    WaitReason,
};

/// Candidates looked at beyond the nodes a request needs, per bucket: enough that the full
/// score (latency, load) can reorder what the static cost ranked.
pub const CANDIDATES_EXTRA: usize = 4;

/// Walks over at most this many shelves find the next slot by scanning them all; more go
/// through a heap. A scan of a few keys beats a heap's bookkeeping.
const SCAN_HEADS_MAX: usize = 8;

/// One worker's devices of one model, the free ones cheapest first.
///
/// Holds everything a walk reads about the worker, so scoring a candidate does not go back to
/// the snapshot's node (strings, a device list) at all.
#[derive(Debug, Clone)]
struct Slot {
    /// The static cost at build time: a lower bound for the slot from then on, since devices
    /// only leave a slot or come back to it.
    key: u64,
    /// The tie-break hash of the worker.
    worker_hash: u64,
    /// Memory and throughput of every device of the model on the worker, when they agree
    /// (`uniform`); otherwise each device is read from the snapshot.
    memory_bytes: u64,
    perf_ops_per_s: u64,
    node: u32,
    bucket: u32,
    supplier: u32,
    /// `Market::free[start..start + free_count]` are the free devices, sorted by (price,
    /// index); the range reaches `capacity` (every device of the model on the worker) so
    /// devices given back always fit.
    start: u32,
    free_count: u32,
    capacity: u32,
    /// Reliability and feedback penalties of the worker, in ‰.
    static_permille: u16,
    /// The size class it is filed under, if it has free devices.
    filed: Option<u8>,
    uniform: bool,
    containers: bool,
}

/// A free device: ordered by price, then index, the order a slot hands them out in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct FreeDevice {
    price_per_hour: u64,
    device: u32,
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
#[derive(Debug, Clone, Copy)]
struct Candidate {
    slot: u32,
    bucket: u32,
    /// Where its devices (as many as the request needs per node) start in
    /// [`Scratch::devices`].
    devices_at: u32,
    price_per_hour: u64,
    score: u64,
    tie: u64,
}

/// Buffers a decision fills, kept between decisions so a decision does not allocate them.
#[derive(Debug, Default)]
struct Scratch {
    candidates: Vec<Candidate>,
    devices: Vec<u32>,
    /// (candidates, summed score of the best `needed`) per group, for [`best_group`].
    groups: Vec<(usize, u64)>,
}

/// Names (models, regions, continents, suppliers) numbered in order of first sight. The names
/// are copied, so looking one up reads this small table rather than a string somewhere in the
/// snapshot.
#[derive(Debug, Default)]
struct Names {
    ids: FxMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    /// The id interned last: a worker's devices are mostly of one model, and a supplier's
    /// workers often come together.
    last: Option<u32>,
}

impl Names {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(last) = self.last
            && *self.names[last as usize] == *name
        {
            return last;
        }
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let id = self.names.len() as u32;
                self.names.push(name.into());
                self.ids.insert(name.into(), id);
                id
            }
        };
        self.last = Some(id);
        id
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// The mutable index over one snapshot.
#[derive(Debug)]
pub struct Market<'a> {
    snapshot: &'a Snapshot,
    models: Names,
    model_spans: Vec<ModelSpan>,
    regions: Names,
    continents: Names,
    /// Continent id of each region id.
    region_continent: Vec<u32>,
    slots: Vec<Slot>,
    /// Each node's slots are `node_slots[node]..node_slots[node + 1]`.
    node_slots: Vec<u32>,
    /// Every slot's devices, in the ranges the slots name.
    free: Vec<FreeDevice>,
    buckets: Vec<Bucket>,
    /// Bucket ids of each model, by region id.
    buckets_of_model: Vec<Vec<u32>>,
    /// Every region's live slots of each model together: what a request free to go anywhere
    /// walks, instead of one map per region.
    model_live: Vec<Shelves>,
    /// Devices hired per supplier, counting what this plan placed.
    supplier_load: Vec<u32>,
    scratch: Scratch,
}

impl<'a> Market<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Market<'a> {
        let mut market = Market {
            snapshot,
            models: Names::default(),
            model_spans: Vec::new(),
            regions: Names::default(),
            continents: Names::default(),
            region_continent: Vec::new(),
            slots: Vec::new(),
            node_slots: Vec::with_capacity(snapshot.nodes.len() + 1),
            free: Vec::new(),
            buckets: Vec::new(),
            buckets_of_model: Vec::new(),
            model_live: Vec::new(),
            supplier_load: Vec::new(),
            scratch: Scratch::default(),
        };
        let mut suppliers = Names::default();
        let mut placeable: Vec<(u32, FreeDevice)> = Vec::new();
        for (node_index, node) in snapshot.nodes.iter().enumerate() {
            let supplier = suppliers.intern(&node.supplier_id);
            if supplier as usize == market.supplier_load.len() {
                market.supplier_load.push(0);
            }
            market.supplier_load[supplier as usize] =
                market.supplier_load[supplier as usize].saturating_add(node.supplier_hired);
            market.node_slots.push(market.slots.len() as u32);
            market.add_node(node_index as u32, node, supplier, &mut placeable);
        }
        market.node_slots.push(market.slots.len() as u32);
        market.index();
        market
    }

    /// Files a node's placeable devices into its slots (made in the order the node's models
    /// first appear, so slot ids, and with them ties, follow the snapshot).
    fn add_node(
        &mut self,
        node_index: u32,
        node: &NodeOffer,
        supplier: u32,
        placeable: &mut Vec<(u32, FreeDevice)>,
    ) {
        let region = self.regions.intern(&node.region);
        if region as usize == self.region_continent.len() {
            let continent = self.continents.intern(score::continent(&node.region));
            self.region_continent.push(continent);
        }
        let first_slot = self.slots.len() as u32;
        placeable.clear();
        for (device_index, device) in node.devices.iter().enumerate() {
            if !device.placeable() {
                continue;
            }
            let model = self.model_of(device);
            let known = (first_slot..self.slots.len() as u32)
                .find(|&s| self.buckets[self.slots[s as usize].bucket as usize].model == model);
            let slot = match known {
                Some(slot) => slot,
                None => self.new_slot(node_index, node, model, region, supplier),
            };
            let free = FreeDevice {
                price_per_hour: device.price_per_hour,
                device: device_index as u32,
            };
            placeable.push((slot, free));
        }
        placeable.sort_unstable();
        for slot_id in first_slot..self.slots.len() as u32 {
            let slot = &mut self.slots[slot_id as usize];
            slot.start = self.free.len() as u32;
            let mine = placeable.iter().filter(|(s, _)| *s == slot_id);
            self.free.extend(mine.map(|&(_, free)| free));
            slot.free_count = self.free.len() as u32 - slot.start;
            self.free.resize(
                slot.start as usize + slot.capacity as usize,
                FreeDevice::default(),
            );
        }
    }

    /// The model id of a placeable device, widening the model's span to take it in.
    fn model_of(&mut self, device: &DeviceOffer) -> u32 {
        let model = self.models.intern(&device.model);
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
        model
    }

    /// A slot for `model` on the node, sized for every device of the model there (placeable
    /// or not: any of them may be given back later).
    fn new_slot(
        &mut self,
        node_index: u32,
        node: &NodeOffer,
        model: u32,
        region: u32,
        supplier: u32,
    ) -> u32 {
        let name = self.models.name(model);
        let mut alike = node.devices.iter().filter(|d| d.model == name);
        let first = alike
            .next()
            .expect("the device being filed is of its model");
        let mut capacity = 1;
        let mut uniform = true;
        for device in alike {
            capacity += 1;
            uniform &= device.memory_bytes == first.memory_bytes
                && device.perf_ops_per_s == first.perf_ops_per_s;
        }
        let bucket = self.bucket_for(model, region);
        self.slots.push(Slot {
            key: 0,
            worker_hash: score::tie_break("", &node.worker_id),
            memory_bytes: first.memory_bytes,
            perf_ops_per_s: first.perf_ops_per_s,
            node: node_index,
            bucket,
            supplier,
            start: 0,
            free_count: 0,
            capacity,
            static_permille: u16::try_from(score::static_permille(node))
                .expect("the static penalties are capped"),
            filed: None,
            uniform,
            containers: node.containers,
        });
        self.slots.len() as u32 - 1
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

    /// Files every slot in its bucket by static cost. The maps are built from sorted lists in
    /// one go rather than by one insert per slot.
    fn index(&mut self) {
        type Entries = [Vec<((u64, u32), Summary)>; SIZE_CLASSES];
        let snapshot = self.snapshot;
        let mut by_bucket: Vec<Entries> = vec![Entries::default(); self.buckets.len()];
        let mut by_model: Vec<Entries> = vec![Entries::default(); self.model_live.len()];
        for (slot_id, slot) in self.slots.iter_mut().enumerate() {
            let node = &snapshot.nodes[slot.node as usize];
            let free = &self.free[slot.start as usize..][..slot.free_count as usize];
            let cheapest = free[0];
            slot.key = score::static_cost(node, &node.devices[cheapest.device as usize]);
            let class = size_class(free.len());
            slot.filed = Some(class as u8);
            let summary = Summary {
                free: free.len() as u32,
                cheapest: cheapest.price_per_hour,
                tier: node.tier,
                reliability_ppm: node.reliability_ppm(),
            };
            let entry = ((slot.key, slot_id as u32), summary);
            let bucket = slot.bucket as usize;
            by_bucket[bucket][class].push(entry);
            by_model[self.buckets[bucket].model as usize][class].push(entry);
        }
        for (bucket, entries) in self.buckets.iter_mut().zip(by_bucket) {
            bucket.live = entries.map(BTreeMap::from_iter);
        }
        for (live, entries) in self.model_live.iter_mut().zip(by_model) {
            *live = entries.map(BTreeMap::from_iter);
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
                .filter_map(|m| self.models.get(m))
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
        let mut search = self.search(request, price, &[], None);
        self.collect(&mut search);
        let placed = self
            .choose(request, &mut search)
            .map(|chosen| self.take(&chosen, &search));
        self.scratch = search.scratch;
        placed
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
        let preferred = Preferred {
            name: region,
            region: self.regions.get(region),
            tier,
        };
        let mut last = WaitReason::NoMatch;
        for regions in scopes {
            let mut scoped = partial.clone();
            scoped.filter.regions = regions;
            let price = scoped.filter.price_per_hour;
            let mut search = self.search(&scoped, price, exclude, Some(preferred));
            self.collect(&mut search);
            let placed = self
                .choose(&scoped, &mut search)
                .map(|chosen| self.take(&chosen, &search));
            self.scratch = search.scratch;
            match placed {
                Ok(nodes) => return Ok(nodes),
                Err(reason) => last = reason,
            }
        }
        Err(last)
    }

    /// A search for `request`, with the market's scratch buffers (handed back after it).
    fn search<'r>(
        &mut self,
        request: &'r Request,
        price: Range,
        exclude: &'r [usize],
        preferred: Option<Preferred<'r>>,
    ) -> Search<'r> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.candidates.clear();
        scratch.devices.clear();
        let renter = request.renter_region.as_deref().map(|renter| Renter {
            region: self.regions.get(renter),
            continent: self.continents.get(score::continent(renter)),
        });
        Search {
            request,
            request_hash: score::tie_break(&request.request_id, ""),
            price,
            exclude,
            preferred,
            renter,
            scratch,
            any_match: false,
        }
    }

    /// Walks the buckets the request may use and gathers scored candidates: per bucket for a
    /// one-region cluster (each region needs its own), per model for a spread cluster (one
    /// model per cluster), and across everything for a single node.
    fn collect(&self, search: &mut Search) {
        let request = search.request;
        let wanted = request.node_count as usize + CANDIDATES_EXTRA;
        let single = request.node_count == 1;
        let per_bucket = !single && request.colocation == Colocation::OneRegion;
        let anywhere = request.filter.regions.is_empty() && (single || !per_bucket);
        // The shelves of the group being gathered: a walk goes through them together.
        let mut heads: Vec<Head<'_>> = Vec::new();
        for model in self.model_ids(&request.filter, &search.price) {
            if anywhere {
                self.push_heads(&mut heads, search, model, &self.model_live[model as usize]);
                if !single {
                    self.walk(search, &mut heads, wanted);
                }
                continue;
            }
            for &bucket in &self.buckets_of_model[model as usize] {
                let bucket = &self.buckets[bucket as usize];
                let region = self.regions.name(bucket.region);
                if !region_matches(&request.filter.regions, region) {
                    continue;
                }
                self.push_heads(&mut heads, search, model, &bucket.live);
                if per_bucket {
                    self.walk(search, &mut heads, wanted);
                }
            }
            if !single && !per_bucket {
                self.walk(search, &mut heads, wanted);
            }
        }
        if single {
            self.walk(search, &mut heads, wanted);
        }
    }

    /// Adds to `heads` the shelves of a model's `shelves` that can hold the request's GPUs
    /// and have a slot within its price.
    fn push_heads<'m>(
        &self,
        heads: &mut Vec<Head<'m>>,
        search: &Search,
        model: u32,
        shelves: &'m Shelves,
    ) {
        let needed = search.request.gpus_per_node as usize;
        let perf = self.model_spans[model as usize].perf.min;
        // No slot past this static cost has a device within the price limit.
        let beyond = score::static_cost_bound(search.price.max, perf);
        for (class, live) in shelves.iter().enumerate() {
            if !class_can_hold(class, needed) {
                continue;
            }
            let mut head = Head {
                entries: live.iter(),
                beyond,
                key: (0, 0),
                summary: Summary {
                    free: 0,
                    cheapest: 0,
                    tier: Tier::Low,
                    reliability_ppm: 0,
                },
            };
            if head.advance() {
                heads.push(head);
            }
        }
    }

    /// Walks `heads` together in static-cost order until `wanted` candidates are found, and
    /// empties it.
    fn walk(&self, search: &mut Search, heads: &mut Vec<Head<'_>>, wanted: usize) {
        let mut found = 0;
        if heads.len() <= SCAN_HEADS_MAX {
            while found < wanted {
                let Some(index) = (0..heads.len()).min_by_key(|&i| heads[i].key) else {
                    break;
                };
                let (slot_id, summary) = (heads[index].key.1, heads[index].summary);
                if !heads[index].advance() {
                    heads.swap_remove(index);
                }
                found += usize::from(self.look_at(search, slot_id, &summary));
            }
        } else {
            // The next entry of every shelf, smallest (static cost, slot id) on top.
            let mut next: BinaryHeap<Reverse<((u64, u32), usize)>> = heads
                .iter()
                .enumerate()
                .map(|(i, h)| Reverse((h.key, i)))
                .collect();
            while found < wanted {
                let Some(Reverse(((_, slot_id), index))) = next.pop() else {
                    break;
                };
                let summary = heads[index].summary;
                if heads[index].advance() {
                    next.push(Reverse((heads[index].key, index)));
                }
                found += usize::from(self.look_at(search, slot_id, &summary));
            }
        }
        heads.clear();
    }

    /// Whether a live slot became a candidate.
    fn look_at(&self, search: &mut Search, slot_id: u32, summary: &Summary) -> bool {
        self.worth_a_look(search, summary) && self.consider(search, slot_id, summary.tier)
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

    /// Scores one slot (of a worker of `tier`) for the request; whether it became a candidate.
    /// Called only on a slot [`Market::worth_a_look`] passed, so the worker's tier and
    /// reliability are already checked.
    fn consider(&self, search: &mut Search, slot_id: u32, tier: Tier) -> bool {
        let slot = &self.slots[slot_id as usize];
        let request = search.request;
        let filter = &request.filter;
        if search.exclude.contains(&(slot.node as usize)) {
            return false;
        }
        // The bucket already matches the model and the region.
        if filter.needs_containers && !slot.containers {
            return false;
        }
        if !filter.countries.is_empty()
            && !filter
                .countries
                .contains(&self.snapshot.nodes[slot.node as usize].country)
        {
            return false;
        }
        let free = &self.free[slot.start as usize..][..slot.free_count as usize];
        let devices = &self.snapshot.nodes[slot.node as usize].devices;
        let alike_pass = filter.memory_bytes.contains(slot.memory_bytes)
            && filter.perf_ops_per_s.contains(slot.perf_ops_per_s);
        let passes = |free: &FreeDevice| {
            search.price.contains(free.price_per_hour)
                && if slot.uniform {
                    alike_pass
                } else {
                    let device = &devices[free.device as usize];
                    filter.memory_bytes.contains(device.memory_bytes)
                        && filter.perf_ops_per_s.contains(device.perf_ops_per_s)
                }
        };
        let matching = free.iter().filter(|f| passes(f)).count();
        if matching == 0 {
            return false;
        }
        search.any_match = true;
        let needed = request.gpus_per_node as usize;
        if matching < needed || !filter.count.contains(matching as u64) {
            return false;
        }
        let pool = &mut search.scratch.devices;
        let devices_at = pool.len() as u32;
        let mut price_per_hour = 0u64;
        for chosen in free.iter().filter(|f| passes(f)).take(needed) {
            pool.push(chosen.device);
            price_per_hour += chosen.price_per_hour;
        }
        let first = pool[devices_at as usize] as usize;
        let perf = if slot.uniform {
            slot.perf_ops_per_s
        } else {
            devices[first].perf_ops_per_s
        };
        let bucket = &self.buckets[slot.bucket as usize];
        let load = self.supplier_load[slot.supplier as usize];
        let standing = Standing {
            distance: search.distance_to(bucket.region, &self.region_continent),
            tier,
            supplier_load: load,
            in_preferred_region: search
                .preferred
                .is_some_and(|p| p.region == Some(bucket.region)),
        };
        let permille = u64::from(slot.static_permille)
            + score::request_permille(
                &standing,
                request.node_count,
                search.preferred.map(|p| p.tier),
            );
        let score = score::cost_with_penalty(price_per_hour, perf, permille);
        debug_assert_eq!(
            score,
            score::full_cost(
                &self.snapshot.nodes[slot.node as usize],
                price_per_hour,
                perf,
                load,
                request,
                search
                    .preferred
                    .map(|p| (p.name.to_owned(), p.tier))
                    .as_ref(),
            ),
            "the index scores slot {slot_id} as the documented score does"
        );
        search.scratch.candidates.push(Candidate {
            slot: slot_id,
            bucket: slot.bucket,
            devices_at,
            price_per_hour,
            score,
            tie: score::mix(search.request_hash ^ slot.worker_hash),
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
        let scratch = &mut search.scratch;
        // (score, tie, slot) is unique per candidate, so an unstable sort orders them fully.
        scratch
            .candidates
            .sort_unstable_by_key(|c| (c.score, c.tie, c.slot));
        let one_region = request.colocation == Colocation::OneRegion && request.node_count > 1;
        let needed = request.node_count as usize;
        let chosen = self.best_group(scratch, needed, one_region);
        let chosen = match chosen {
            Ok(chosen) => chosen,
            Err(largest_group) if one_region => {
                let by_model = self.best_group(scratch, needed, false);
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

    /// The group (a bucket when `by_region`, else a model) whose best `needed` candidates
    /// (already sorted) score least in total; or, when no group has enough, the size of the
    /// largest.
    fn best_group(
        &self,
        scratch: &mut Scratch,
        needed: usize,
        by_region: bool,
    ) -> Result<Vec<Candidate>, usize> {
        let group_of = |c: &Candidate| {
            if by_region {
                c.bucket as usize
            } else {
                self.buckets[c.bucket as usize].model as usize
            }
        };
        // Ties between equal totals go to the smaller (model, region), as groups are named.
        let name = |group: usize| {
            if by_region {
                let bucket = &self.buckets[group];
                (bucket.model, bucket.region)
            } else {
                (group as u32, u32::MAX)
            }
        };
        let groups = &mut scratch.groups;
        groups.clear();
        groups.resize(
            if by_region {
                self.buckets.len()
            } else {
                self.model_spans.len()
            },
            (0, 0),
        );
        for candidate in &scratch.candidates {
            let (count, total) = &mut groups[group_of(candidate)];
            if *count < needed {
                *total += candidate.score;
            }
            *count += 1;
        }
        let best = (0..groups.len())
            .filter(|&g| groups[g].0 >= needed && groups[g].0 > 0)
            .min_by_key(|&g| (groups[g].1, name(g)));
        match best {
            Some(best) => Ok(scratch
                .candidates
                .iter()
                .filter(|c| group_of(c) == best)
                .take(needed)
                .copied()
                .collect()),
            None => Err(groups.iter().map(|&(count, _)| count).max().unwrap_or(0)),
        }
    }

    /// Takes the chosen devices out of the market.
    fn take(&mut self, chosen: &[Candidate], search: &Search) -> Vec<NodeAssignment> {
        let needed = search.request.gpus_per_node as usize;
        chosen
            .iter()
            .map(|candidate| {
                let devices = &search.scratch.devices[candidate.devices_at as usize..][..needed];
                let slot = &mut self.slots[candidate.slot as usize];
                let free = &mut self.free[slot.start as usize..][..slot.free_count as usize];
                let mut kept = 0;
                for index in 0..free.len() {
                    if !devices.contains(&free[index].device) {
                        free[kept] = free[index];
                        kept += 1;
                    }
                }
                slot.free_count = kept as u32;
                let (node, supplier) = (slot.node, slot.supplier as usize);
                self.refresh(candidate.slot);
                self.supplier_load[supplier] += devices.len() as u32;
                NodeAssignment {
                    node: node as usize,
                    devices: devices.iter().map(|&d| d as usize).collect(),
                    price_per_hour: candidate.price_per_hour,
                }
            })
            .collect()
    }

    /// Files a slot in its bucket as its free list now stands: out when empty. A slot that
    /// stays in its size class only has its summary updated.
    fn refresh(&mut self, slot_id: u32) {
        let slot = &mut self.slots[slot_id as usize];
        let bucket = &mut self.buckets[slot.bucket as usize];
        let model_live = &mut self.model_live[bucket.model as usize];
        let key = (slot.key, slot_id);
        let free = &self.free[slot.start as usize..][..slot.free_count as usize];
        let class = free.first().map(|_| size_class(free.len()));
        let update = |summary: &mut Summary| {
            summary.free = free.len() as u32;
            summary.cheapest = free[0].price_per_hour;
        };
        if let (Some(filed), Some(class)) = (slot.filed, class)
            && usize::from(filed) == class
        {
            let class = usize::from(filed);
            for live in [&mut bucket.live[class], &mut model_live[class]] {
                update(live.get_mut(&key).expect("a filed slot is in its maps"));
            }
            return;
        }
        let filed = slot.filed.take().map(usize::from);
        let previous = filed.and_then(|filed| {
            model_live[filed].remove(&key);
            bucket.live[filed].remove(&key)
        });
        let Some(class) = class else {
            return;
        };
        slot.filed = Some(class as u8);
        let mut summary = previous.unwrap_or_else(|| {
            let node = &self.snapshot.nodes[slot.node as usize];
            Summary {
                free: 0,
                cheapest: 0,
                tier: node.tier,
                reliability_ppm: node.reliability_ppm(),
            }
        });
        update(&mut summary);
        bucket.live[class].insert(key, summary);
        model_live[class].insert(key, summary);
    }

    /// The slot holding a device, if the device's model had a placeable device on the node
    /// when the market was built.
    fn slot_holding(&self, node: usize, device: usize) -> Option<u32> {
        let model = self
            .models
            .get(&self.snapshot.nodes[node].devices[device].model)?;
        (self.node_slots[node]..self.node_slots[node + 1])
            .find(|&s| self.buckets[self.slots[s as usize].bucket as usize].model == model)
    }

    /// Gives devices back (work ended); they become placeable again.
    pub fn release(&mut self, node: usize, devices: &[usize]) {
        let offers = &self.snapshot.nodes[node].devices;
        for &device in devices {
            let Some(slot_id) = self.slot_holding(node, device) else {
                continue;
            };
            let slot = &mut self.slots[slot_id as usize];
            let free = &mut self.free[slot.start as usize..][..slot.capacity as usize];
            let count = slot.free_count as usize;
            if free[..count].iter().any(|f| f.device == device as u32) {
                continue;
            }
            let back = FreeDevice {
                price_per_hour: offers[device].price_per_hour,
                device: device as u32,
            };
            // Devices of the model not free leave room: the range spans all of them.
            assert!(
                count < free.len(),
                "slot {slot_id} has room for device {device}"
            );
            let at = free[..count].partition_point(|f| *f < back);
            free.copy_within(at..count, at + 1);
            free[at] = back;
            slot.free_count += 1;
            let supplier = slot.supplier as usize;
            self.refresh(slot_id);
            self.supplier_load[supplier] = self.supplier_load[supplier].saturating_sub(1);
        }
    }

    /// Takes devices out without a request (a device failed or was hired elsewhere).
    pub fn withdraw(&mut self, node: usize, devices: &[usize]) {
        for &device in devices {
            let Some(slot_id) = self.slot_holding(node, device) else {
                continue;
            };
            let slot = &mut self.slots[slot_id as usize];
            let free = &mut self.free[slot.start as usize..][..slot.free_count as usize];
            if let Some(at) = free.iter().position(|f| f.device == device as u32) {
                free.copy_within(at + 1.., at);
                slot.free_count -= 1;
            }
            self.refresh(slot_id);
        }
    }
}

/// The next entry of one shelf a walk goes through.
struct Head<'m> {
    entries: btree_map::Iter<'m, (u64, u32), Summary>,
    /// No slot past this static cost has a device within the request's price.
    beyond: u64,
    key: (u64, u32),
    summary: Summary,
}

impl Head<'_> {
    /// Moves to the shelf's next entry; false when there is none within the price.
    fn advance(&mut self) -> bool {
        match self.entries.next() {
            Some((key, summary)) if key.0 <= self.beyond => {
                (self.key, self.summary) = (*key, *summary);
                true
            }
            _ => false,
        }
    }
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.min <= b.max && b.min <= a.max
}

/// A replacement's preference: the failed nodes' region and tier.
#[derive(Debug, Clone, Copy)]
struct Preferred<'r> {
    name: &'r str,
    /// The region's id; `None` when no node is in it.
    region: Option<u32>,
    tier: Tier,
}

/// The renter's region and continent as ids (`None`: one no node is in).
#[derive(Debug, Clone, Copy)]
struct Renter {
    region: Option<u32>,
    continent: Option<u32>,
}

/// One request's walk over the market.
struct Search<'r> {
    request: &'r Request,
    request_hash: u64,
    price: Range,
    exclude: &'r [usize],
    preferred: Option<Preferred<'r>>,
    renter: Option<Renter>,
    scratch: Scratch,
    /// Some device passed every constraint (whether or not a node had enough of them).
    any_match: bool,
}

impl Search<'_> {
    /// How far `region` is from the renter ([`Distance::between`], on ids).
    fn distance_to(&self, region: u32, region_continent: &[u32]) -> Distance {
        let Some(renter) = self.renter else {
            return Distance::Irrelevant;
        };
        if renter.region == Some(region) {
            Distance::SameRegion
        } else if renter.continent == Some(region_continent[region as usize]) {
            Distance::SameContinent
        } else {
            Distance::Elsewhere
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

/// The device-level constraints, on top of being placeable and of an allowed model.
pub fn device_passes(filter: &Filter, price: &Range, device: &DeviceOffer) -> bool {
    device.placeable()
        && (filter.models.is_empty() || filter.models.contains(&device.model))
        && filter.memory_bytes.contains(device.memory_bytes)
        && price.contains(device.price_per_hour)
        && filter.perf_ops_per_s.contains(device.perf_ops_per_s)
}
