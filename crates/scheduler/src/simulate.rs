//! A deterministic discrete-event simulation of the market, running the real scheduler.
//!
//! Supply: a synthetic pool ([`crate::synthetic`]); most workers are there from the start, the
//! rest join during the first half of the run; every worker fails now and then (work on it is
//! lost and its request goes back to the queue, first in line) and returns after a while.
//! Demand: requests arrive at a steady average rate sized to ask for about
//! [`OFFERED_LOAD_PCT`]% of the pool, each runs for a random time, and a request not placed
//! within [`PATIENCE_MS`] is abandoned.
//!
//! The scheduler places each arrival at once when it can, and retries the whole queue every
//! [`PASS_INTERVAL_MS`] of simulated time. All times are simulated and all arithmetic is
//! integer, so the same seed prints byte-identical output.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::market::Market;
use crate::plan::plan_on;
use crate::synthetic::{self, Rng};
use crate::types::{NodeAssignment, Priority, Request, Snapshot};

/// Offered load: GPUs asked for as a share of the pool, in percent.
pub const OFFERED_LOAD_PCT: u64 = 80;
/// How often the waiting queue is retried.
pub const PASS_INTERVAL_MS: i64 = 60_000;
/// A request waiting this long is abandoned.
pub const PATIENCE_MS: i64 = 24 * 3_600_000;
/// Mean time between a worker's failures, and its downtime range.
const FAILURE_INTERVAL_MEAN_MS: i64 = 72 * 3_600_000;
const DOWNTIME_MS: (i64, i64) = (10 * 60_000, 110 * 60_000);
/// Run time range of a request.
const RUN_MS: (i64, i64) = (10 * 60_000, 230 * 60_000);
/// Mean GPUs per request of the synthetic shape, in thousandths.
const GPUS_PER_REQUEST_MILLI: u64 = 1_850;
/// Workers present from the start, in percent.
const PRESENT_AT_START_PCT: u64 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub devices: usize,
    pub requests: u64,
    pub seed: u64,
}

/// Per priority class: placed requests and their waits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassReport {
    pub placed: u64,
    pub wait_p50_ms: i64,
    pub wait_p99_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub config: Option<Config>,
    pub simulated_ms: i64,
    pub placed: u64,
    pub abandoned: u64,
    pub interrupted: u64,
    /// GPU time in use over GPU time available, in ppm.
    pub utilization_ppm: u64,
    /// (urgent, normal, deferrable).
    pub classes: [ClassReport; 3],
    /// Paid over GPU hours served, in IOSD base units per GPU hour.
    pub cost_per_gpu_hour: u64,
    pub scheduler_passes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    Pass,
    Finish { job: usize },
    Fail { node: usize },
    Return { node: usize },
    Join { node: usize },
}

/// A placed request, running until it finishes or a node under it fails.
#[derive(Debug, Clone)]
struct Job {
    request: usize,
    nodes: Vec<NodeAssignment>,
    started_ms: i64,
    done: bool,
}

struct World<'a> {
    rng: Rng,
    now_ms: i64,
    events: BinaryHeap<Reverse<(i64, u64, Event)>>,
    sequence: u64,
    market: Market<'a>,
    requests: Vec<Request>,
    /// Waiting request indices, and when each first arrived.
    queue: Vec<usize>,
    arrived_ms: Vec<i64>,
    class: Vec<u8>,
    /// Whether a request has started once (a restart after a failure is not a new wait).
    started: Vec<bool>,
    jobs: Vec<Job>,
    running: usize,
    /// Devices came back since the last pass: the queue may fit now.
    freed: bool,
    /// The earliest deadline of a waiting deferrable request.
    next_deadline_ms: i64,
    /// A queue pass is scheduled.
    pass_pending: bool,
    /// The running job on each node, if any.
    job_on: Vec<Vec<usize>>,
    up: Vec<bool>,
    waits: [Vec<i64>; 3],
    report: Report,
    busy_gpu_ms: u128,
    available_gpus: u64,
    available_since_ms: i64,
    available_gpu_ms: u128,
    paid: u128,
}

/// Runs the simulation.
pub fn simulate(config: Config) -> Report {
    let mut rng = Rng::new(config.seed);
    let snapshot = Snapshot {
        nodes: synthetic::nodes(&mut rng, config.devices),
    };
    let gpus = snapshot
        .nodes
        .iter()
        .map(|n| n.devices.len() as u64)
        .sum::<u64>()
        .max(1);
    let run_mean_ms = ((RUN_MS.0 + RUN_MS.1) / 2) as u64;
    // Arrivals per ms such that GPUs asked for ≈ the offered share of the pool.
    let interarrival_mean_ms = (GPUS_PER_REQUEST_MILLI * run_mean_ms * 100
        / (1_000 * OFFERED_LOAD_PCT * gpus))
        .max(1) as i64;
    let mut world = World {
        rng,
        now_ms: 0,
        events: BinaryHeap::new(),
        sequence: 0,
        market: Market::new(&snapshot),
        requests: Vec::new(),
        queue: Vec::new(),
        arrived_ms: Vec::new(),
        class: Vec::new(),
        started: Vec::new(),
        jobs: Vec::new(),
        running: 0,
        freed: false,
        next_deadline_ms: i64::MAX,
        pass_pending: false,
        job_on: vec![Vec::new(); snapshot.nodes.len()],
        up: vec![true; snapshot.nodes.len()],
        waits: Default::default(),
        report: Report {
            config: Some(config),
            ..Report::default()
        },
        busy_gpu_ms: 0,
        available_gpus: 0,
        available_since_ms: 0,
        available_gpu_ms: 0,
        paid: 0,
    };
    let horizon_ms = interarrival_mean_ms * config.requests as i64;
    for (node, offer) in snapshot.nodes.iter().enumerate() {
        if world.rng.chance(PRESENT_AT_START_PCT) {
            world.available_gpus += offer.devices.len() as u64;
            let first_failure = world.uniform_around(FAILURE_INTERVAL_MEAN_MS);
            world.at(first_failure, Event::Fail { node });
        } else {
            world.up[node] = false;
            world
                .market
                .withdraw(node, &(0..offer.devices.len()).collect::<Vec<_>>());
            let join = world.rng.below((horizon_ms / 2).max(1) as u64) as i64;
            world.at(join, Event::Join { node });
        }
    }
    world.at(0, Event::Arrival);
    while let Some(Reverse((time_ms, _, event))) = world.events.pop() {
        world.advance(time_ms);
        match event {
            Event::Arrival => world.arrive(config.requests, interarrival_mean_ms),
            Event::Pass => world.pass(),
            Event::Finish { job } => world.finish(job),
            Event::Fail { node } => world.fail(node),
            Event::Return { node } | Event::Join { node } => world.node_back(node),
        }
        let all_arrived = world.requests.len() as u64 == config.requests;
        if all_arrived && world.queue.is_empty() && world.running == 0 {
            break;
        }
    }
    world.finish_report()
}

impl World<'_> {
    fn at(&mut self, time_ms: i64, event: Event) {
        self.sequence += 1;
        self.events.push(Reverse((time_ms, self.sequence, event)));
    }

    /// A time uniform in `0..2 × mean`: the mean, without floating point.
    fn uniform_around(&mut self, mean_ms: i64) -> i64 {
        self.now_ms + self.rng.below((2 * mean_ms).max(1) as u64) as i64
    }

    fn between(&mut self, (low, high): (i64, i64)) -> i64 {
        low + self.rng.below((high - low).max(1) as u64) as i64
    }

    fn advance(&mut self, time_ms: i64) {
        let elapsed = (time_ms - self.available_since_ms).max(0) as u128;
        self.available_gpu_ms += elapsed * u128::from(self.available_gpus);
        self.available_since_ms = time_ms;
        self.now_ms = time_ms;
    }

    fn arrive(&mut self, total: u64, interarrival_mean_ms: i64) {
        let index = self.requests.len();
        let request = synthetic::request(&mut self.rng, index as u64, 10_000, self.now_ms);
        self.class.push(match request.priority {
            Priority::Urgent => 0,
            Priority::Normal => 1,
            Priority::Deferrable { .. } => 2,
        });
        self.requests.push(request);
        self.arrived_ms.push(self.now_ms);
        self.started.push(false);
        if !self.try_place(&[index]) {
            self.queue.push(index);
            self.schedule_pass();
            if let Priority::Deferrable { deadline_ms, .. } = self.requests[index].priority {
                self.next_deadline_ms = self.next_deadline_ms.min(deadline_ms);
            }
        }
        if (self.requests.len() as u64) < total {
            let next = self.uniform_around(interarrival_mean_ms);
            self.at(next, Event::Arrival);
        }
    }

    /// Runs the scheduler over `indices`; true when everything was placed.
    fn try_place(&mut self, indices: &[usize]) -> bool {
        let batch: Vec<Request> = indices.iter().map(|&i| self.requests[i].clone()).collect();
        let plan = plan_on(&mut self.market, &batch, self.now_ms);
        self.report.scheduler_passes += 1;
        for placement in &plan.placements {
            self.start(indices[placement.request], placement.nodes.clone());
        }
        plan.waiting.is_empty()
    }

    fn start(&mut self, request: usize, nodes: Vec<NodeAssignment>) {
        if !self.started[request] {
            self.started[request] = true;
            let wait = self.now_ms - self.arrived_ms[request];
            self.waits[self.class[request] as usize].push(wait);
        }
        let job = self.jobs.len();
        for assignment in &nodes {
            self.job_on[assignment.node].push(job);
        }
        self.running += 1;
        self.jobs.push(Job {
            request,
            nodes,
            started_ms: self.now_ms,
            done: false,
        });
        let run = self.between(RUN_MS);
        self.at(self.now_ms + run, Event::Finish { job });
    }

    /// Makes sure the queue is retried within a pass interval.
    fn schedule_pass(&mut self) {
        if !self.pass_pending {
            self.pass_pending = true;
            self.at(self.now_ms + PASS_INTERVAL_MS, Event::Pass);
        }
    }

    fn pass(&mut self) {
        self.pass_pending = false;
        let patience = PATIENCE_MS;
        let (now, arrived) = (self.now_ms, &self.arrived_ms);
        let before = self.queue.len();
        self.queue.retain(|&r| now - arrived[r] < patience);
        self.report.abandoned += (before - self.queue.len()) as u64;
        // Nothing fits that did not fit before unless devices came back or a deadline passed.
        let worth_it = self.freed || self.now_ms >= self.next_deadline_ms;
        if !self.queue.is_empty() && worth_it {
            self.freed = false;
            let waiting = std::mem::take(&mut self.queue);
            let batch: Vec<Request> = waiting.iter().map(|&i| self.requests[i].clone()).collect();
            let plan = plan_on(&mut self.market, &batch, self.now_ms);
            self.report.scheduler_passes += 1;
            for placement in &plan.placements {
                self.start(waiting[placement.request], placement.nodes.clone());
            }
            self.queue = plan.waiting.iter().map(|w| waiting[w.request]).collect();
            self.next_deadline_ms = self
                .queue
                .iter()
                .filter_map(|&r| match self.requests[r].priority {
                    Priority::Deferrable { deadline_ms, .. } if deadline_ms > self.now_ms => {
                        Some(deadline_ms)
                    }
                    _ => None,
                })
                .min()
                .unwrap_or(i64::MAX);
        }
        if !self.queue.is_empty() {
            self.schedule_pass();
        }
    }

    /// Ends a job: pays for its time and gives its devices back.
    fn end_job(&mut self, job: usize) {
        let ran_ms = (self.now_ms - self.jobs[job].started_ms).max(0) as u128;
        let mut gpus = 0u128;
        for assignment in std::mem::take(&mut self.jobs[job].nodes) {
            gpus += assignment.devices.len() as u128;
            self.paid += u128::from(assignment.price_per_hour) * ran_ms / 3_600_000;
            self.job_on[assignment.node].retain(|&j| j != job);
            if self.up[assignment.node] {
                self.market.release(assignment.node, &assignment.devices);
                self.freed = true;
            }
        }
        self.busy_gpu_ms += gpus * ran_ms;
        self.jobs[job].done = true;
        self.running -= 1;
    }

    fn finish(&mut self, job: usize) {
        if self.jobs[job].done {
            return;
        }
        self.end_job(job);
        self.report.placed += 1;
    }

    fn fail(&mut self, node: usize) {
        if !self.up[node] {
            return;
        }
        self.up[node] = false;
        let devices = self.market.snapshot().nodes[node].devices.len();
        self.available_gpus -= devices as u64;
        self.market
            .withdraw(node, &(0..devices).collect::<Vec<_>>());
        for job in std::mem::take(&mut self.job_on[node]) {
            let request = self.jobs[job].request;
            self.end_job(job);
            self.report.interrupted += 1;
            // Lost work goes back first in line: its arrival stays, so it ages.
            self.queue.insert(0, request);
            self.freed = true;
            self.schedule_pass();
            self.requests[request].priority = Priority::Urgent;
            self.class[request] = 0;
        }
        let back = self.between(DOWNTIME_MS);
        self.at(self.now_ms + back, Event::Return { node });
    }

    fn node_back(&mut self, node: usize) {
        if self.up[node] {
            return;
        }
        self.up[node] = true;
        let devices = self.market.snapshot().nodes[node].devices.len();
        self.available_gpus += devices as u64;
        self.market.release(node, &(0..devices).collect::<Vec<_>>());
        self.freed = true;
        let next_failure = self.uniform_around(FAILURE_INTERVAL_MEAN_MS);
        self.at(next_failure, Event::Fail { node });
    }

    fn finish_report(mut self) -> Report {
        let mut report = std::mem::take(&mut self.report);
        report.simulated_ms = self.now_ms;
        report.abandoned += self.queue.len() as u64;
        report.utilization_ppm =
            (self.busy_gpu_ms * 1_000_000 / self.available_gpu_ms.max(1)) as u64;
        report.cost_per_gpu_hour = (self.paid * 3_600_000 / self.busy_gpu_ms.max(1)) as u64;
        for (class, waits) in self.waits.iter_mut().enumerate() {
            waits.sort_unstable();
            let at = |p: usize| {
                waits
                    .get((waits.len().max(1) - 1) * p / 100)
                    .copied()
                    .unwrap_or(0)
            };
            report.classes[class] = ClassReport {
                placed: waits.len() as u64,
                wait_p50_ms: at(50),
                wait_p99_ms: at(99),
            };
        }
        report
    }
}

fn duration(ms: i64) -> String {
    let seconds = ms / 1_000;
    if seconds < 60 {
        format!("{seconds}s")
    } else if seconds < 3_600 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}h{:02}m", seconds / 3_600, seconds % 3_600 / 60)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(config) = self.config {
            writeln!(
                f,
                "simulated {} devices, {} requests, seed {}: {} of simulated time",
                config.devices,
                config.requests,
                config.seed,
                duration(self.simulated_ms)
            )?;
        }
        writeln!(
            f,
            "completed {} requests; abandoned {}; interrupted by failures {}; {} scheduler passes",
            self.placed, self.abandoned, self.interrupted, self.scheduler_passes
        )?;
        writeln!(
            f,
            "utilization {}.{}%",
            self.utilization_ppm / 10_000,
            self.utilization_ppm % 10_000 / 1_000
        )?;
        for (name, class) in ["urgent", "normal", "deferrable"].iter().zip(&self.classes) {
            writeln!(
                f,
                "{name:>10}: {} placed, wait p50 {}, p99 {}",
                class.placed,
                duration(class.wait_p50_ms),
                duration(class.wait_p99_ms)
            )?;
        }
        writeln!(
            f,
            "cost per GPU hour: {} USD",
            crate::explain::format_price(self.cost_per_gpu_hour)
        )
    }
}
