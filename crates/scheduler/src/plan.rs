//! The queue: in what order requests are placed, and the plan that results.
//!
//! Order: urgent, then normal, then deferrable. A normal request that has waited
//! [`AGING_PROMOTE_MS`] counts as urgent, and a deferrable one past its deadline does too, so
//! nothing starves. Within a class, renters take turns: every renter's oldest request, then
//! every renter's second oldest, and so on, so one renter's thousand requests do not lock out
//! another's one. Ties go to the older request, then the id.

use crate::hash::FxMap;
use crate::market::Market;
use crate::types::{
    NodeAssignment, Placement, Plan, Priority, Replacement, Request, Snapshot, WaitReason, Waiting,
};

/// A normal request that has waited this long is placed with the urgent ones.
pub const AGING_PROMOTE_MS: i64 = 10 * 60 * 1000;

/// Classes of [`effective_class`].
const CLASSES: usize = 3;

/// The class a request is placed in at `now_ms`: 0 urgent, 1 normal, 2 deferrable.
fn effective_class(request: &Request, now_ms: i64) -> u8 {
    match request.priority {
        Priority::Urgent => 0,
        Priority::Normal if now_ms - request.submitted_at_ms >= AGING_PROMOTE_MS => 0,
        Priority::Normal => 1,
        Priority::Deferrable { deadline_ms, .. } if now_ms >= deadline_ms => 0,
        Priority::Deferrable { .. } => 2,
    }
}

/// The order requests are placed in: indices into `queue`.
pub fn queue_order(queue: &[Request], now_ms: i64) -> Vec<usize> {
    // The sort keys are copied out of the requests so the sort does not chase every request;
    // the id (read only on a tie) and then the index make the order total, as a stable sort
    // by (class, submission, id) would.
    let mut order: Vec<(u8, i64, usize)> = queue
        .iter()
        .enumerate()
        .map(|(index, r)| (effective_class(r, now_ms), r.submitted_at_ms, index))
        .collect();
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| queue[a.2].request_id.cmp(&queue[b.2].request_id))
            .then(a.2.cmp(&b.2))
    });
    // Each request's turn: how many older requests of its renter's are in the same class.
    let mut renters: FxMap<&str, usize> = FxMap::default();
    let mut turns: Vec<[u32; CLASSES]> = Vec::new();
    let mut keyed: Vec<(u8, u32, usize)> = order
        .iter()
        .enumerate()
        .map(|(position, &(class, _, index))| {
            let next = renters.len();
            let renter = *renters.entry(&queue[index].renter_id).or_insert(next);
            if renter == turns.len() {
                turns.push([0; CLASSES]);
            }
            let turn = &mut turns[renter][usize::from(class)];
            let key = (class, *turn, position);
            *turn += 1;
            key
        })
        .collect();
    keyed.sort_unstable();
    keyed
        .into_iter()
        .map(|(_, _, position)| order[position].2)
        .collect()
}

/// The price cap a request is placed under at `now_ms`: a deferrable request's target before
/// its deadline.
fn price_cap(request: &Request, now_ms: i64) -> Option<u64> {
    match request.priority {
        Priority::Deferrable {
            target_price_per_hour,
            deadline_ms,
        } if now_ms < deadline_ms => Some(target_price_per_hour),
        _ => None,
    }
}

/// Places what it can of `queue` on `snapshot` at `now_ms`. Pure and deterministic: the same
/// inputs give the same plan.
pub fn plan(snapshot: &Snapshot, queue: &[Request], now_ms: i64) -> Plan {
    let mut market = Market::new(snapshot);
    plan_on(&mut market, queue, now_ms)
}

/// [`plan`] over a market the caller keeps (the simulator releases devices into it).
pub fn plan_on(market: &mut Market<'_>, queue: &[Request], now_ms: i64) -> Plan {
    let mut result = Plan::default();
    for index in queue_order(queue, now_ms) {
        let request = &queue[index];
        if let Some(reason) = invalid(request) {
            result.waiting.push(Waiting {
                request: index,
                reason,
            });
            continue;
        }
        let cap = price_cap(request, now_ms);
        match market.place(request, cap) {
            Ok(nodes) => result.placements.push(Placement {
                request: index,
                nodes,
                attempt: 1,
            }),
            Err(reason) => {
                let reason = match (cap, reason) {
                    (Some(target), WaitReason::NoMatch | WaitReason::NotEnoughNodes { .. }) => {
                        WaitReason::WaitingForPrice {
                            target_price_per_hour: target,
                        }
                    }
                    (_, reason) => reason,
                };
                result.waiting.push(Waiting {
                    request: index,
                    reason,
                });
            }
        }
    }
    result
}

/// A request that can never be placed as written.
fn invalid(request: &Request) -> Option<WaitReason> {
    (request.node_count == 0 || request.gpus_per_node == 0).then_some(WaitReason::NoMatch)
}

/// Plans replacements for a placed request whose nodes `failed` (indices into the snapshot):
/// as many new nodes of the same model, never one of the request's other nodes, preferring the
/// failed nodes' region and tier. The new nodes carry `previous_attempt + 1`.
pub fn plan_replacement(
    snapshot: &Snapshot,
    request: &Request,
    placed: &[NodeAssignment],
    failed: &[usize],
    previous_attempt: u32,
) -> Result<Replacement, WaitReason> {
    let attempt = previous_attempt + 1;
    let Some(reference) = placed.iter().find(|p| failed.contains(&p.node)) else {
        assert!(failed.is_empty(), "only placed nodes can fail");
        return Ok(Replacement {
            nodes: Vec::new(),
            attempt,
        });
    };
    assert!(
        failed.iter().all(|f| placed.iter().any(|p| p.node == *f)),
        "only placed nodes can fail"
    );
    let node = &snapshot.nodes[reference.node];
    let model = &node.devices[reference.devices[0]].model;
    let exclude: Vec<usize> = placed.iter().map(|p| p.node).collect();
    let like = LostShape {
        model,
        region: &node.region,
        tier: node.tier,
    };
    plan_replacement_like(
        snapshot,
        request,
        &exclude,
        failed.len() as u32,
        &like,
        previous_attempt,
    )
}

/// What the nodes being replaced were, when they are no longer in the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct LostShape<'a> {
    pub model: &'a str,
    pub region: &'a str,
    pub tier: crate::types::Tier,
}

/// [`plan_replacement`] for nodes described by `like` rather than found in the snapshot:
/// `count` new nodes, never one of `exclude` (the request's other nodes).
pub fn plan_replacement_like(
    snapshot: &Snapshot,
    request: &Request,
    exclude: &[usize],
    count: u32,
    like: &LostShape<'_>,
    previous_attempt: u32,
) -> Result<Replacement, WaitReason> {
    let nodes = Market::new(snapshot).place_replacements(
        request,
        count,
        exclude,
        like.model,
        (like.region, like.tier),
    )?;
    Ok(Replacement {
        nodes,
        attempt: previous_attempt + 1,
    })
}
