//! `cargo xtask bench scheduler`: the scheduler's throughput and decision latency at 100,000
//! and at 1,000 devices, and its placement cost against the exact min-cost assignment
//! (Kuhn–Munkres, from the `pathfinding` crate) and against first-fit, all in one run of a
//! release build. Prints one JSON line last.

use std::time::Instant;

use anyhow::{Result, bail};
use flotilla_scheduler::market::{Market, device_passes, node_passes};
use flotilla_scheduler::synthetic::{self, Rng};
use flotilla_scheduler::{Request, Snapshot, queue_order};

/// Throughput rounds per size, interleaved so both sizes see the same machine; the figures are
/// medians.
const ROUNDS: usize = 5;
/// Quality instances: requests and one-GPU workers in each.
const QUALITY_INSTANCES: u64 = 30;
const QUALITY_REQUESTS: u64 = 60;
const QUALITY_DEVICES: usize = 150;

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) != Some("--here") {
        return crate::rerun_release_bench("scheduler");
    }
    let (large_market, small_market) = (Workload::new(100_000), Workload::new(1_000));
    let (mut large, mut small) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        large.push(large_market.measure());
        small.push(small_market.measure());
    }
    let (large, small) = (median(large), median(small));
    let quality = quality()?;
    eprintln!(
        "bench: 100k devices: {:.0} placements/s ({} placed of {} requests), decision p99 {:.1} us; \
         1k devices: {:.0} placements/s; cost vs optimal {:.4}, vs first-fit {:.4} over {} instances",
        large.placements_per_s,
        large.placed,
        large.requests,
        large.p99_us,
        small.placements_per_s,
        quality.vs_optimal,
        quality.vs_first_fit,
        QUALITY_INSTANCES
    );
    let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
    let figures = serde_json::json!({
        "devices": 100_000,
        "placements_per_s": round(large.placements_per_s, 0),
        "decisions_per_s": round(large.decisions_per_s, 0),
        "decision_p50_us": round(large.p50_us, 2),
        "decision_p99_us": round(large.p99_us, 2),
        "index_build_ms": round(large.build_ms, 1),
        "placements_per_s_1k": round(small.placements_per_s, 0),
        "throughput_100k_vs_1k": round(large.placements_per_s / small.placements_per_s, 3),
        "cost_vs_optimal": round(quality.vs_optimal, 4),
        "cost_vs_first_fit": round(quality.vs_first_fit, 4),
        "quality_instances": quality.compared,
        "quality_unplaced": quality.unplaced,
        "quality_first_fit_unplaced": quality.first_fit_unplaced,
    });
    println!("{figures}");
    Ok(())
}

struct Throughput {
    build_ms: f64,
    requests: usize,
    placed: usize,
    placements_per_s: f64,
    decisions_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// A snapshot and a queue of about half as many requests as devices (about 85% of the GPUs
/// asked for).
struct Workload {
    snapshot: Snapshot,
    queue: Vec<Request>,
}

impl Workload {
    fn new(devices: usize) -> Workload {
        let mut rng = Rng::new(7);
        let snapshot = Snapshot {
            nodes: synthetic::nodes(&mut rng, devices),
        };
        let queue = (0..devices as u64 / 2)
            .map(|i| synthetic::request(&mut rng, i, 1_000, i as i64))
            .collect();
        Workload { snapshot, queue }
    }

    /// Builds the index and places the queue, timing the whole pass and each decision.
    fn measure(&self) -> Throughput {
        let (snapshot, queue) = (&self.snapshot, &self.queue);
        let now_ms = queue.len() as i64;
        {
            let mut latencies_ns = Vec::with_capacity(queue.len());
            let started = Instant::now();
            let mut market = Market::new(snapshot);
            let build_ms = started.elapsed().as_secs_f64() * 1000.0;
            let mut placed = 0;
            for index in queue_order(queue, now_ms) {
                let decided = Instant::now();
                placed += usize::from(market.place(&queue[index], None).is_ok());
                latencies_ns.push(decided.elapsed().as_nanos() as u64);
            }
            let seconds = started.elapsed().as_secs_f64();
            latencies_ns.sort_unstable();
            let percentile =
                |p: usize| latencies_ns[(latencies_ns.len() - 1) * p / 100] as f64 / 1000.0;
            Throughput {
                build_ms,
                requests: queue.len(),
                placed,
                placements_per_s: placed as f64 / seconds,
                decisions_per_s: queue.len() as f64 / seconds,
                p50_us: percentile(50),
                p99_us: percentile(99),
            }
        }
    }
}

fn median(mut runs: Vec<Throughput>) -> Throughput {
    runs.sort_by(|a, b| a.placements_per_s.total_cmp(&b.placements_per_s));
    runs.swap_remove(runs.len() / 2)
}

struct Quality {
    vs_optimal: f64,
    vs_first_fit: f64,
    /// Requests the scheduler left waiting where the optimum placed all.
    unplaced: u64,
    /// Instances where first-fit left a request waiting.
    first_fit_unplaced: u64,
    /// Instances in the cost ratios.
    compared: u64,
}

/// Small instances of one-GPU requests on one-GPU workers, so placement is an assignment
/// problem the Hungarian algorithm solves exactly. Reliability, feedback and the renter's
/// region are made equal, so the scheduler's objective is the price per reference throughput
/// (`score::effective_price`): the cost all three are measured in.
fn quality() -> Result<Quality> {
    let (mut ours_total, mut optimal_total, mut first_fit_total) = (0u64, 0u64, 0u64);
    let (mut unplaced, mut first_fit_unplaced, mut compared) = (0, 0, 0);
    let mut instance = 0;
    let mut seed = 100;
    while instance < QUALITY_INSTANCES {
        seed += 1;
        let mut rng = Rng::new(seed);
        let mut snapshot = Snapshot {
            nodes: synthetic::nodes(&mut rng, QUALITY_DEVICES * 12),
        };
        snapshot.nodes.retain(|n| n.devices.len() == 1);
        snapshot.nodes.truncate(QUALITY_DEVICES);
        for node in &mut snapshot.nodes {
            (
                node.uptime_ppm,
                node.completed,
                node.failed,
                node.feedback_milli,
            ) = (1_000_000, 0, 0, Some(5_000));
        }
        let queue: Vec<Request> = (0..QUALITY_REQUESTS)
            .map(|i| {
                let mut r = synthetic::request(&mut rng, i, 10, 0);
                (r.node_count, r.gpus_per_node, r.renter_region) = (1, 1, None);
                r.priority = flotilla_scheduler::Priority::Normal;
                r.filter.price_per_hour.max = u64::MAX;
                r
            })
            .collect();
        let Some(optimal) = optimal_cost(&snapshot, &queue) else {
            continue;
        };
        instance += 1;
        let plan = flotilla_scheduler::plan(&snapshot, &queue, 0);
        unplaced += (queue.len() - plan.placements.len()) as u64;
        let first_fit = first_fit_cost(&snapshot, &queue);
        first_fit_unplaced += u64::from(first_fit.is_none());
        // Costs compare only where everyone placed every request.
        let (Some(first_fit), true) = (first_fit, plan.placements.len() == queue.len()) else {
            continue;
        };
        compared += 1;
        ours_total += plan
            .placements
            .iter()
            .map(|p| cost(&snapshot, p.nodes[0].node))
            .sum::<u64>();
        optimal_total += optimal;
        first_fit_total += first_fit;
    }
    if optimal_total == 0 {
        bail!("no quality instance was placed whole");
    }
    Ok(Quality {
        vs_optimal: ours_total as f64 / optimal_total as f64,
        vs_first_fit: ours_total as f64 / first_fit_total as f64,
        unplaced,
        first_fit_unplaced,
        compared,
    })
}

/// What placing on a one-GPU worker costs, in the scheduler's objective.
fn cost(snapshot: &Snapshot, node: usize) -> u64 {
    let device = &snapshot.nodes[node].devices[0];
    flotilla_scheduler::score::effective_price(device.price_per_hour, device.perf_ops_per_s)
}

fn fits(snapshot: &Snapshot, request: &Request, node: usize) -> bool {
    let offer = &snapshot.nodes[node];
    node_passes(&request.filter, offer)
        && device_passes(
            &request.filter,
            &request.filter.price_per_hour,
            &offer.devices[0],
        )
}

/// The exact minimum total price placing every request, or `None` when no assignment places
/// them all.
fn optimal_cost(snapshot: &Snapshot, queue: &[Request]) -> Option<u64> {
    const INFEASIBLE: i64 = 1 << 40;
    let weights: Vec<Vec<i64>> = queue
        .iter()
        .map(|request| {
            (0..snapshot.nodes.len())
                .map(|node| {
                    if fits(snapshot, request, node) {
                        cost(snapshot, node) as i64
                    } else {
                        INFEASIBLE
                    }
                })
                .collect()
        })
        .collect();
    let matrix = pathfinding::matrix::Matrix::from_rows(weights).ok()?;
    let (total, _) = pathfinding::kuhn_munkres::kuhn_munkres_min(&matrix);
    (total < INFEASIBLE).then_some(total as u64)
}

/// First-fit in queue order: the first free worker (in snapshot order) that fits; `None` if
/// it leaves a request unplaced.
fn first_fit_cost(snapshot: &Snapshot, queue: &[Request]) -> Option<u64> {
    let mut taken = vec![false; snapshot.nodes.len()];
    let mut total = 0;
    for index in queue_order(queue, 0) {
        let node =
            (0..snapshot.nodes.len()).find(|&n| !taken[n] && fits(snapshot, &queue[index], n))?;
        taken[node] = true;
        total += cost(snapshot, node);
    }
    Some(total)
}
