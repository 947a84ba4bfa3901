use proptest::prelude::*;

use crate::explain::explain;
use crate::offers::search;
use crate::prices::{SupplyCount, price_index, supply_by_country};
use crate::query::{SortKey, parse};
use crate::*;

const USD: u64 = PRICE_UNITS_PER_USD;
const GB: u64 = 1_000_000_000;

fn device(model: &str, price_cents: u64) -> DeviceOffer {
    DeviceOffer {
        device_id: String::new(),
        model: model.to_owned(),
        memory_bytes: 24 * GB,
        perf_ops_per_s: 300_000_000_000_000,
        price_per_hour: price_cents * USD / 100,
        status: DeviceStatus::Idle,
        verified: true,
        paused: false,
    }
}

fn node(worker: &str, region: &str, tier: Tier, devices: Vec<DeviceOffer>) -> NodeOffer {
    let devices = devices
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            d.device_id = format!("{worker}-d{i}");
            d
        })
        .collect();
    NodeOffer {
        worker_id: worker.to_owned(),
        supplier_id: format!("sup-{worker}"),
        region: region.to_owned(),
        country: "de".to_owned(),
        tier,
        uptime_ppm: PPM,
        completed: 0,
        failed: 0,
        feedback_milli: None,
        supplier_hired: 0,
        containers: false,
        devices,
    }
}

fn request(id: &str, renter: &str, nodes: u32, gpus: u32) -> Request {
    Request {
        request_id: id.to_owned(),
        renter_id: renter.to_owned(),
        node_count: nodes,
        gpus_per_node: gpus,
        filter: Filter::default(),
        budget_per_hour: None,
        priority: Priority::Normal,
        colocation: Colocation::OneRegion,
        renter_region: None,
        submitted_at_ms: 0,
    }
}

/// `count` one-GPU nodes of rtx4090 at the given price, in a region.
fn uniform(count: usize, region: &str, price_cents: u64) -> Vec<NodeOffer> {
    (0..count)
        .map(|i| {
            node(
                &format!("{region}-w{i}"),
                region,
                Tier::High,
                vec![device("rtx4090", price_cents)],
            )
        })
        .collect()
}

#[test]
fn cheapest_offer_wins_and_the_device_leaves_the_market() {
    let snapshot = Snapshot {
        nodes: vec![
            node("a", "eu-west", Tier::High, vec![device("rtx4090", 50)]),
            node("b", "eu-west", Tier::High, vec![device("rtx4090", 30)]),
        ],
    };
    let queue = vec![
        request("r1", "x", 1, 1),
        request("r2", "x", 1, 1),
        request("r3", "x", 1, 1),
    ];
    let plan = plan(&snapshot, &queue, 0);
    assert_eq!(plan.placements.len(), 2);
    assert_eq!(
        plan.placements[0].nodes[0].node, 1,
        "the cheaper node first"
    );
    assert_eq!(plan.placements[1].nodes[0].node, 0);
    assert_eq!(
        plan.waiting,
        vec![Waiting {
            request: 2,
            reason: WaitReason::NoMatch
        }]
    );
}

#[test]
fn multi_node_requests_land_whole_in_one_region_or_not_at_all() {
    let mut nodes = uniform(3, "eu-west", 40);
    nodes.extend(uniform(2, "us-east", 20));
    let snapshot = Snapshot { nodes };
    let plan_for = |count| plan(&snapshot, &[request("r", "x", count, 1)], 0);
    let three = plan_for(3);
    assert_eq!(three.placements.len(), 1);
    let regions: Vec<&str> = three.placements[0]
        .nodes
        .iter()
        .map(|n| snapshot.nodes[n.node].region.as_str())
        .collect();
    assert_eq!(
        regions, ["eu-west"; 3],
        "us-east is cheaper but has only two"
    );
    let two = plan_for(2);
    assert!(
        two.placements[0]
            .nodes
            .iter()
            .all(|n| snapshot.nodes[n.node].region == "us-east")
    );
    let four = plan_for(4);
    assert!(four.placements.is_empty(), "all or none");
    assert_eq!(
        four.waiting[0].reason,
        WaitReason::NoRegionWithEnoughNodes {
            needed: 4,
            best_region_nodes: 3
        }
    );
    let mut spread = request("r", "x", 4, 1);
    spread.colocation = Colocation::Spread;
    assert_eq!(plan(&snapshot, &[spread], 0).placements[0].nodes.len(), 4);
}

#[test]
fn gpus_per_node_come_from_one_worker() {
    let snapshot = Snapshot {
        nodes: vec![
            node(
                "two",
                "eu-west",
                Tier::High,
                vec![device("h100", 200), device("h100", 200)],
            ),
            node("four", "eu-west", Tier::High, vec![device("h100", 250); 4]),
        ],
    };
    let plan = plan(&snapshot, &[request("r", "x", 1, 4)], 0);
    let node = &plan.placements[0].nodes[0];
    assert_eq!((node.node, node.devices.len()), (1, 4));
    assert_eq!(node.price_per_hour, 10 * USD);
}

#[test]
fn an_image_goes_only_to_workers_with_a_container_engine() {
    let mut nodes = uniform(3, "eu-west", 50);
    nodes[2].containers = true;
    let snapshot = Snapshot { nodes };
    let mut image = request("r", "x", 1, 1);
    image.filter.needs_containers = true;
    let planned = plan(&snapshot, std::slice::from_ref(&image), 0);
    assert_eq!(planned.placements[0].nodes[0].node, 2);
    let mut two = image.clone();
    two.node_count = 2;
    assert!(
        plan(&snapshot, std::slice::from_ref(&two), 0)
            .placements
            .is_empty()
    );
    let found = crate::explain::explain(&snapshot, &two.filter, 1, 2);
    assert!(
        found
            .removed
            .iter()
            .any(|r| r.constraint.contains("container") && r.offers == 2),
        "{found:?}"
    );
}

#[test]
fn price_limits_and_budgets_hold() {
    let snapshot = Snapshot {
        nodes: uniform(4, "eu-west", 50),
    };
    let mut cheap = request("cheap", "x", 1, 1);
    cheap.filter.price_per_hour.max = 49 * USD / 100;
    let mut budget = request("budget", "x", 2, 1);
    budget.budget_per_hour = Some(USD - 1);
    let plan = plan(&snapshot, &[cheap, budget], 0);
    assert!(plan.placements.is_empty());
    let reason = |index: usize| {
        &plan
            .waiting
            .iter()
            .find(|w| w.request == index)
            .unwrap()
            .reason
    };
    assert_eq!(*reason(0), WaitReason::NoMatch);
    assert_eq!(
        *reason(1),
        WaitReason::OverBudget {
            cheapest_per_hour: USD,
            budget_per_hour: USD - 1
        }
    );
}

#[test]
fn one_renters_thousand_requests_do_not_lock_out_anothers_one() {
    let snapshot = Snapshot {
        nodes: uniform(10, "eu-west", 30),
    };
    let mut queue: Vec<Request> = (0..1000)
        .map(|i| {
            let mut r = request(&format!("a{i:04}"), "alice", 1, 1);
            r.submitted_at_ms = i;
            r
        })
        .collect();
    let mut bobs = request("b0", "bob", 1, 1);
    bobs.submitted_at_ms = 5_000;
    queue.push(bobs);
    let plan = plan(&snapshot, &queue, 10_000);
    assert!(
        plan.placements
            .iter()
            .any(|p| queue[p.request].renter_id == "bob"),
        "bob's one request is placed though alice queued a thousand first"
    );
    assert_eq!(plan.placements.len(), 10);
}

#[test]
fn urgent_goes_first_and_waiting_normal_requests_age_into_urgent() {
    let snapshot = Snapshot {
        nodes: uniform(1, "eu-west", 30),
    };
    let mut old_normal = request("old", "x", 1, 1);
    old_normal.submitted_at_ms = 0;
    let mut urgent = request("urgent", "y", 1, 1);
    urgent.priority = Priority::Urgent;
    urgent.submitted_at_ms = 1_000;
    let queue = vec![old_normal, urgent];
    let early = plan(&snapshot, &queue, 2_000);
    assert_eq!(early.placements[0].request, 1, "urgent first");
    let late = plan(&snapshot, &queue, plan::AGING_PROMOTE_MS);
    assert_eq!(late.placements[0].request, 0, "aged into urgent, and older");
}

#[test]
fn deferrable_requests_wait_for_their_price_until_the_deadline() {
    let snapshot = Snapshot {
        nodes: uniform(2, "eu-west", 50),
    };
    let mut deferrable = request("d", "x", 1, 1);
    deferrable.priority = Priority::Deferrable {
        target_price_per_hour: 40 * USD / 100,
        deadline_ms: 60_000,
    };
    deferrable.filter.price_per_hour.max = USD;
    let before = plan(&snapshot, std::slice::from_ref(&deferrable), 1_000);
    assert_eq!(
        before.waiting[0].reason,
        WaitReason::WaitingForPrice {
            target_price_per_hour: 40 * USD / 100
        }
    );
    let after = plan(&snapshot, std::slice::from_ref(&deferrable), 60_000);
    assert_eq!(
        after.placements.len(),
        1,
        "at the deadline it takes the market price"
    );
    // And a normal request placed in the same pass goes before it.
    let mut normal = request("n", "y", 1, 1);
    normal.submitted_at_ms = 50_000;
    let cheap = Snapshot {
        nodes: uniform(1, "eu-west", 30),
    };
    let both = plan(&cheap, &[deferrable, normal], 55_000);
    assert_eq!(both.placements[0].request, 1);
}

#[test]
fn equal_offers_share_the_work() {
    let snapshot = Snapshot {
        nodes: uniform(20, "eu-west", 30),
    };
    let queue: Vec<Request> = (0..10)
        .map(|i| request(&format!("r{i}"), "x", 1, 1))
        .collect();
    let plan = plan(&snapshot, &queue, 0);
    let mut used: Vec<usize> = plan.placements.iter().map(|p| p.nodes[0].node).collect();
    used.sort_unstable();
    assert_ne!(
        used,
        (0..10).collect::<Vec<_>>(),
        "not simply the first ten workers"
    );
    used.dedup();
    assert_eq!(used.len(), 10);
}

#[test]
fn replacements_prefer_the_failed_nodes_region_and_tier() {
    let mut nodes = uniform(3, "eu-west", 40);
    nodes.push(node(
        "far",
        "us-east",
        Tier::High,
        vec![device("rtx4090", 35)],
    ));
    nodes.push(node(
        "near-low",
        "eu-west",
        Tier::Low,
        vec![device("rtx4090", 39)],
    ));
    nodes.push(node(
        "near",
        "eu-west",
        Tier::High,
        vec![device("rtx4090", 41)],
    ));
    let snapshot = Snapshot { nodes };
    let request = request("r", "x", 3, 1);
    // Nodes 0..3 hold the request; node 1 failed.
    let mut after_failure = snapshot.clone();
    for index in [0, 2] {
        after_failure.nodes[index].devices[0].status = DeviceStatus::Hired;
    }
    after_failure.nodes[1].devices[0].status = DeviceStatus::Unavailable;
    let placed: Vec<NodeAssignment> = (0..3)
        .map(|node| NodeAssignment {
            node,
            devices: vec![0],
            price_per_hour: 40 * USD / 100,
        })
        .collect();
    let replacement = plan_replacement(&after_failure, &request, &placed, &[1], 1).unwrap();
    assert_eq!(replacement.attempt, 2);
    assert_eq!(replacement.nodes.len(), 1);
    assert_eq!(
        snapshot.nodes[replacement.nodes[0].node].worker_id, "near",
        "same region and tier beat a cheaper node elsewhere or a lower tier"
    );
}

fn offer_strategy() -> impl Strategy<Value = Snapshot> {
    let device = (0..3usize, 10..200u64, 0..10u8, any::<bool>(), any::<bool>()).prop_map(
        |(model, cents, status, verified, paused)| {
            let mut d = device(["h100", "a100", "rtx4090"][model], cents);
            d.status = match status {
                0..=6 => DeviceStatus::Idle,
                7 | 8 => DeviceStatus::Hired,
                _ => DeviceStatus::Unavailable,
            };
            d.verified = verified || status < 5;
            d.paused = paused && status == 0;
            d
        },
    );
    let node = (
        0..3usize,
        0..4usize,
        800_000..=1_000_000u32,
        proptest::collection::vec(device, 1..5),
    )
        .prop_map(|(region, tier, uptime, devices)| {
            let mut n = node(
                "w",
                ["eu-west", "eu-north", "us-east"][region],
                Tier::ALL[tier],
                devices,
            );
            n.uptime_ppm = uptime;
            n
        });
    proptest::collection::vec(node, 0..30).prop_map(|mut nodes| {
        for (i, n) in nodes.iter_mut().enumerate() {
            n.worker_id = format!("w{i}");
            n.supplier_id = format!("s{}", i % 4);
        }
        Snapshot { nodes }
    })
}

fn request_strategy() -> impl Strategy<Value = Vec<Request>> {
    let one = (
        1..4u32,
        1..3u32,
        prop::option::of(0..3usize),
        20..250u64,
        prop::option::of(50..1000u64),
        0..3u8,
        any::<bool>(),
        0..4u8,
    )
        .prop_map(
            |(nodes, gpus, model, max_cents, budget_cents, priority, spread, renter)| {
                let mut r = request("r", &format!("renter{renter}"), nodes, gpus);
                if let Some(model) = model {
                    r.filter.models = vec![["h100", "a100", "rtx4090"][model].to_owned()];
                }
                r.filter.price_per_hour.max = max_cents * USD / 100;
                r.budget_per_hour = budget_cents.map(|c| c * USD / 100);
                r.priority = match priority {
                    0 => Priority::Urgent,
                    1 => Priority::Normal,
                    _ => Priority::Deferrable {
                        target_price_per_hour: max_cents * USD / 200,
                        deadline_ms: 5_000,
                    },
                };
                if spread {
                    r.colocation = Colocation::Spread;
                }
                r
            },
        );
    proptest::collection::vec(one, 0..25).prop_map(|mut requests| {
        for (i, r) in requests.iter_mut().enumerate() {
            r.request_id = format!("r{i}");
            r.submitted_at_ms = i as i64 * 100;
        }
        requests
    })
}

proptest! {
    #[test]
    fn plans_respect_every_invariant(snapshot in offer_strategy(), queue in request_strategy(), now in 0..10_000i64) {
        let result = plan(&snapshot, &queue, now);
        prop_assert_eq!(&result, &plan(&snapshot, &queue, now), "same input, same plan");
        let mut used = std::collections::HashSet::new();
        for placement in &result.placements {
            let request = &queue[placement.request];
            prop_assert_eq!(placement.nodes.len(), request.node_count as usize, "gang: every node");
            let mut nodes_seen = std::collections::HashSet::new();
            for assignment in &placement.nodes {
                prop_assert!(nodes_seen.insert(assignment.node), "one assignment per worker");
                prop_assert_eq!(assignment.devices.len(), request.gpus_per_node as usize);
                let node = &snapshot.nodes[assignment.node];
                let mut price = 0;
                for &d in &assignment.devices {
                    let device = &node.devices[d];
                    prop_assert!(device.placeable(), "idle, verified, unpaused only");
                    prop_assert!(used.insert((assignment.node, d)), "never over capacity");
                    prop_assert!(device.price_per_hour <= request.filter.price_per_hour.max);
                    if let Priority::Deferrable { target_price_per_hour, deadline_ms } = request.priority
                        && now < deadline_ms {
                        prop_assert!(device.price_per_hour <= target_price_per_hour);
                    }
                    if !request.filter.models.is_empty() {
                        prop_assert!(request.filter.models.contains(&device.model));
                    }
                    price += device.price_per_hour;
                }
                prop_assert_eq!(price, assignment.price_per_hour);
            }
            if let Some(budget) = request.budget_per_hour {
                prop_assert!(placement.price_per_hour() <= budget);
            }
            if request.colocation == Colocation::OneRegion {
                let regions: std::collections::HashSet<&str> = placement.nodes.iter().map(|n| snapshot.nodes[n.node].region.as_str()).collect();
                prop_assert_eq!(regions.len(), 1);
            }
        }
        prop_assert_eq!(result.placements.len() + result.waiting.len(), queue.len());
    }
}

#[test]
fn queries_parse_into_exact_filters() {
    let filter = parse(
        "gpu=rtx4090 count>=4 vram>=24 price<0.40 region in [eu,us] tier>=high reliability>0.98",
    )
    .unwrap();
    assert_eq!(filter.models, ["rtx4090"]);
    assert_eq!(
        filter.count,
        Range {
            min: 4,
            max: u64::MAX
        }
    );
    assert_eq!(filter.memory_bytes.min, 24 * GB);
    assert_eq!(
        filter.price_per_hour,
        Range {
            min: 0,
            max: 399_999
        }
    );
    assert_eq!(filter.regions, ["eu", "us"]);
    assert_eq!(
        (filter.tier_min, filter.tier_max),
        (Tier::High, Tier::Ultra)
    );
    assert_eq!(filter.reliability_ppm.min, 980_001);
    assert_eq!(parse("").unwrap(), Filter::default());
    assert_eq!(
        parse("price<=1.5 price>=0.25").unwrap().price_per_hour,
        Range {
            min: 250_000,
            max: 1_500_000
        }
    );
}

#[test]
fn bad_queries_name_the_column_and_the_expected_token() {
    let cases = [
        (
            "gpu=rtx4090 cuont>=4",
            "at column 13: expected a field (gpu, count, vram, price, region, country, tier, reliability), found \"cuont\"",
        ),
        (
            "price<",
            "at column 7: expected a price in USD, found the end of the query",
        ),
        (
            "price<abc",
            "at column 7: expected a price in USD, found \"abc\"",
        ),
        (
            "price<0.1234567",
            "at column 7: expected a price in USD, found \"0.1234567\"",
        ),
        (
            "count 4",
            "at column 7: expected an operator (=, <, <=, >, >=), found \"4\"",
        ),
        (
            "count!=4",
            "at column 6: expected an operator (=, <, <=, >, >=), found \"!=\"",
        ),
        ("region in eu", "at column 11: expected \"[\", found \"eu\""),
        (
            "region in [eu us]",
            "at column 15: expected \",\" or \"]\", found \"us\"",
        ),
        (
            "region in [eu,",
            "at column 15: expected a value, found the end of the query",
        ),
        (
            "gpu>h100",
            "at column 4: expected \"=\" or \"in\", found \">\"",
        ),
        (
            "tier>=gold",
            "at column 7: expected a tier (low, medium, high, ultra), found \"gold\"",
        ),
        (
            "reliability>1.5",
            "at column 13: expected a fraction from 0 to 1, found \"1.5\"",
        ),
        (
            "gpu=a gpu=b",
            "at column 7: expected gpu at most once, found \"gpu\" again",
        ),
        (
            "price<0.4 $",
            "at column 11: expected a field, an operator, a value, \"[\", \",\" or \"]\", found \"$\"",
        ),
    ];
    for (query, message) in cases {
        assert_eq!(parse(query).unwrap_err().to_string(), message, "{query}");
    }
}

proptest! {
    #[test]
    fn the_parser_never_panics(text in ".{0,80}") {
        let _ = parse(&text);
    }
}

fn market_for_explain() -> Snapshot {
    let mut nodes = uniform(14, "us-east", 41);
    nodes.extend(uniform(3, "eu-west", 60));
    nodes.push(node(
        "eu-pricy",
        "eu-west",
        Tier::Low,
        vec![device("h100", 300)],
    ));
    Snapshot { nodes }
}

#[test]
fn why_no_match_counts_removals_and_finds_the_cheapest_relaxation() {
    let snapshot = market_for_explain();
    let filter = parse("gpu=rtx4090 region=eu price<0.50").unwrap();
    let explanation = explain(&snapshot, &filter, 1, 1);
    assert_eq!(explanation.offers_matching, 0);
    assert_eq!(explanation.offers_total, 18);
    let removed: Vec<(String, u64)> = explanation
        .removed
        .iter()
        .map(|r| (r.constraint.clone(), r.offers))
        .collect();
    assert_eq!(
        removed,
        [
            ("gpu in [rtx4090]".to_owned(), 1),
            ("price<=0.499999".to_owned(), 4),
            ("region in [eu]".to_owned(), 14),
        ]
    );
    assert_eq!(
        explanation.relaxations[0].to_string(),
        "drop region in [eu]: 14 offers from 0.41/h"
    );
    assert_eq!(
        explanation.relaxations[1].to_string(),
        "drop price<=0.499999: 3 offers from 0.60/h"
    );
    assert_eq!(
        explanation.relaxations.len(),
        2,
        "dropping the model alone matches nothing"
    );
}

#[test]
fn offers_are_searched_per_worker_and_sorted() {
    let mut nodes = uniform(3, "eu-west", 45);
    nodes.push(node(
        "big",
        "eu-west",
        Tier::Ultra,
        vec![device("rtx4090", 50); 4],
    ));
    let snapshot = Snapshot { nodes };
    let rows = search(
        &snapshot,
        &parse("gpu=rtx4090 count>=2").unwrap(),
        SortKey::Price,
        10,
    );
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].count, rows[0].tier), (4, Tier::Ultra));
    let all = search(&snapshot, &Filter::default(), SortKey::Price, 2);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.price_per_hour == 45 * USD / 100));
}

#[test]
fn supply_is_counted_by_country_and_model_with_each_supplier_once() {
    let mut nodes = uniform(2, "eu-west", 40);
    nodes[0].devices[0].status = DeviceStatus::Hired;
    nodes[1].supplier_id = nodes[0].supplier_id.clone();
    let mut us = node("x", "us-east", Tier::High, vec![device("h100", 200)]);
    us.country = "us".into();
    us.devices.push(device("rtx4090", 50));
    us.devices[1].paused = true;
    nodes.push(us);
    let supply = supply_by_country(&Snapshot { nodes });
    let countries: Vec<&str> = supply.iter().map(|c| c.country.as_str()).collect();
    assert_eq!(countries, ["de", "us"]);
    let count = |suppliers, devices, hired| SupplyCount {
        suppliers,
        devices,
        hired,
    };
    assert_eq!(
        supply[0].total,
        count(1, 2, 1),
        "one supplier's two workers"
    );
    assert_eq!(supply[0].models, [("rtx4090".to_owned(), count(1, 2, 1))]);
    assert_eq!(
        supply[1].models,
        [("h100".to_owned(), count(1, 1, 0))],
        "a paused device is not offered"
    );
}

#[test]
fn the_price_index_has_medians_hired_shares_and_trends() {
    let mut nodes = uniform(3, "eu-west", 40);
    nodes[0].devices[0].status = DeviceStatus::Hired;
    nodes.push(node(
        "x",
        "eu-west",
        Tier::High,
        vec![device("rtx4090", 60)],
    ));
    nodes.push(node("y", "eu-west", Tier::High, vec![device("h100", 200)]));
    let index = price_index(
        &Snapshot {
            nodes: nodes.clone(),
        },
        &[],
    );
    assert_eq!(index.len(), 2);
    let rtx = index.iter().find(|p| p.model == "rtx4090").unwrap();
    assert_eq!(
        (
            rtx.devices,
            rtx.hired,
            rtx.median_ask_per_hour,
            rtx.hired_ppm
        ),
        (4, 1, 40 * USD / 100, 250_000)
    );
    assert_eq!(rtx.trend_ppm, None);
    for n in &mut nodes {
        for d in &mut n.devices {
            d.price_per_hour = d.price_per_hour * 11 / 10;
        }
    }
    let later = price_index(&Snapshot { nodes }, &index);
    assert_eq!(later[0].trend_ppm, Some(100_000), "prices rose 10%");
}

#[test]
fn the_simulator_is_deterministic_and_reports_every_class() {
    let config = simulate::Config {
        devices: 300,
        requests: 2_000,
        seed: 7,
    };
    let first = simulate::simulate(config).to_string();
    assert_eq!(
        first,
        simulate::simulate(config).to_string(),
        "one seed, one output"
    );
    let other = simulate::simulate(simulate::Config { seed: 8, ..config }).to_string();
    assert_ne!(first, other, "the seed matters");
    let report = simulate::simulate(config);
    assert!(report.classes.iter().all(|c| c.placed > 0), "{first}");
    assert!(
        report.utilization_ppm > 100_000 && report.utilization_ppm <= 1_000_000,
        "{first}"
    );
    assert_eq!(
        report.placed + report.abandoned,
        2_000,
        "every request completes or is abandoned: {first}"
    );
}
