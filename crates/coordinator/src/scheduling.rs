//! The scheduling loop: every pass, the queued requests and a snapshot of the market go into
//! the pure scheduler; its plan comes back and is committed through one writer that re-checks
//! it. The writer hires each placement's devices through the fleet, all or none (a device
//! taken or gone since the snapshot refuses the entry, which is retried next pass), and only
//! then marks the request placed. The same pass moves placed requests off nodes whose devices
//! failed: the scheduler plans replacements like the lost nodes, the writer hires them, and the
//! placement's attempt goes up by one, so reports from the older attempt can be refused.

use std::time::Duration;

use flotilla_proto::api::RequestSpec;
use flotilla_scheduler::explain::format_price;
use flotilla_scheduler::{Colocation, Placement, Priority, Request, WaitReason};
use flotilla_store::{PlacementRow, RequestRow};
use tokio::sync::watch;

use crate::device_state::DeviceEvent;
use crate::market::MarketView;
use crate::{AppState, now_ms};

/// Most queued requests one pass considers (the oldest).
pub const QUEUE_PASS_MAX: u32 = 10_000;
/// Most lost nodes one pass replaces.
pub const REPLACEMENTS_PER_PASS_MAX: u32 = 100;
/// Limits on one request's shape.
pub const NODES_MAX: u32 = 64;
pub const GPUS_PER_NODE_MAX: u32 = 16;
/// Longest a deferrable request may wait for its price.
pub const DEADLINE_S_MAX: u64 = 7 * 24 * 3_600;

/// A request spec that cannot be scheduled: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn spec_error(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

/// The scheduler's view of a renter's request.
pub fn to_request(
    request_id: &str,
    renter_id: &str,
    spec: &RequestSpec,
    created_at_ms: i64,
) -> Result<Request, SpecError> {
    if !(1..=NODES_MAX).contains(&spec.nodes) {
        return Err(spec_error(
            "nodes",
            format!("must be between 1 and {NODES_MAX}"),
        ));
    }
    if !(1..=GPUS_PER_NODE_MAX).contains(&spec.gpus_per_node) {
        return Err(spec_error(
            "gpus_per_node",
            format!("must be between 1 and {GPUS_PER_NODE_MAX}"),
        ));
    }
    let mut filter = flotilla_scheduler::query::parse(&spec.query)
        .map_err(|e| spec_error("query", e.to_string()))?;
    filter.needs_containers = spec.containers;
    let priority = match (
        spec.priority.as_deref(),
        spec.target_price_per_hour,
        spec.deadline_s,
    ) {
        (None | Some("normal"), None, None) => Priority::Normal,
        (Some("urgent"), None, None) => Priority::Urgent,
        (Some("deferrable"), Some(target), Some(deadline_s)) if deadline_s <= DEADLINE_S_MAX => {
            Priority::Deferrable {
                target_price_per_hour: target,
                deadline_ms: created_at_ms
                    .saturating_add(i64::try_from(deadline_s * 1000).unwrap_or(i64::MAX)),
            }
        }
        (Some("deferrable"), _, _) => {
            return Err(spec_error(
                "priority",
                format!(
                    "deferrable needs target_price_per_hour and deadline_s (at most {DEADLINE_S_MAX})"
                ),
            ));
        }
        (Some("urgent" | "normal") | None, _, _) => {
            return Err(spec_error(
                "target_price_per_hour",
                "only deferrable requests take a target price and a deadline",
            ));
        }
        (Some(_), _, _) => {
            return Err(spec_error(
                "priority",
                "must be urgent, normal or deferrable",
            ));
        }
    };
    let colocation = match spec.colocation.as_deref() {
        None | Some("one_region") => Colocation::OneRegion,
        Some("spread") => Colocation::Spread,
        Some(_) => return Err(spec_error("colocation", "must be one_region or spread")),
    };
    if let Some(region) = &spec.renter_region
        && (region.is_empty()
            || region.len() > 32
            || !region.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
    {
        return Err(spec_error(
            "renter_region",
            "must be a region such as eu-west",
        ));
    }
    match (spec.hours, spec.budget_per_hour) {
        (Some(hours), _) if !(1..=crate::rent::HOURS_MAX).contains(&hours) => {
            return Err(spec_error("hours", "must be between 1 and 720"));
        }
        (Some(_), None | Some(0)) => {
            return Err(spec_error(
                "budget_per_hour",
                "a paid rental (hours) needs a budget to hold",
            ));
        }
        _ => {}
    }
    Ok(Request {
        request_id: request_id.to_owned(),
        renter_id: renter_id.to_owned(),
        node_count: spec.nodes,
        gpus_per_node: spec.gpus_per_node,
        filter,
        budget_per_hour: spec.budget_per_hour,
        priority,
        colocation,
        renter_region: spec.renter_region.clone(),
        submitted_at_ms: created_at_ms,
    })
}

/// Why a request waits, in words.
pub fn describe(reason: &WaitReason) -> String {
    match reason {
        WaitReason::NoMatch => "no free offer matches its constraints".to_owned(),
        WaitReason::NotEnoughNodes { needed, found } => {
            format!("{found} of the {needed} workers it needs have enough matching GPUs free")
        }
        WaitReason::NoRegionWithEnoughNodes {
            needed,
            best_region_nodes,
        } => format!(
            "no region has {needed} such workers free (the most in one region: {best_region_nodes})"
        ),
        WaitReason::OverBudget {
            cheapest_per_hour,
            budget_per_hour,
        } => format!(
            "the cheapest placement costs {}/h, over its budget of {}/h",
            format_price(*cheapest_per_hour),
            format_price(*budget_per_hour)
        ),
        WaitReason::WaitingForPrice {
            target_price_per_hour,
        } => format!(
            "waiting for offers at or under {}/h until its deadline",
            format_price(*target_price_per_hour)
        ),
    }
}

/// Runs passes every `schedule_interval_ms` until shutdown.
pub async fn run(app: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(app.config.schedule_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = app.schedule_now.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(error) = pass(&app).await {
            tracing::warn!(%error, "scheduling pass failed; retrying next tick");
        }
    }
}

/// One pass: replace lost nodes, then plan the queue over the market and commit what was
/// placed.
pub async fn pass(app: &AppState) -> Result<(), flotilla_store::StoreError> {
    let lost = app.store.lost_nodes(REPLACEMENTS_PER_PASS_MAX).await?;
    // Read once per pass, and again only if replacements hired devices since.
    let mut market = None;
    if !lost.is_empty() {
        let loaded = crate::market::load(&app.store).await?;
        let mut by_request: Vec<(String, Vec<String>)> = Vec::new();
        for node in lost {
            match by_request.iter_mut().find(|(id, _)| *id == node.request_id) {
                Some((_, workers)) => workers.push(node.worker_id),
                None => by_request.push((node.request_id, vec![node.worker_id])),
            }
        }
        let mut hired = false;
        for (request_id, workers) in by_request {
            match replace(app, &loaded, &request_id, &workers).await {
                Ok(moved) => hired |= moved,
                Err(error) => {
                    tracing::warn!(%request_id, %error, "replacement failed; retrying next pass");
                }
            }
        }
        market = (!hired).then_some(loaded);
    }
    let rows = app.store.queued_requests(QUEUE_PASS_MAX).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let market = match market {
        Some(market) => market,
        None => crate::market::load(&app.store).await?,
    };
    let (rows, queue): (Vec<RequestRow>, Vec<Request>) = rows
        .into_iter()
        .filter_map(|row| {
            let spec: RequestSpec = serde_json::from_str(&row.spec).ok()?;
            let request = to_request(&row.id, &row.account_id, &spec, row.created_at_ms).ok()?;
            Some((row, request))
        })
        .unzip();
    let now = now_ms();
    let plan = flotilla_scheduler::plan(&market.snapshot, &queue, now);
    for placement in &plan.placements {
        commit(app, &market, &rows[placement.request], placement, now).await;
    }
    let reasons: Vec<(String, String)> = plan
        .waiting
        .iter()
        .map(|w| (&rows[w.request], describe(&w.reason)))
        .filter(|(row, reason)| row.reason != *reason)
        .map(|(row, reason)| (row.id.clone(), reason))
        .collect();
    if !reasons.is_empty() {
        app.store.set_request_reasons(&reasons).await?;
    }
    Ok(())
}

/// The writer: hires the placement's devices all or none, then records the placement; a refusal
/// leaves the request queued for the next pass.
async fn commit(
    app: &AppState,
    market: &MarketView,
    row: &RequestRow,
    placement: &Placement,
    now: i64,
) {
    let (device_ids, rows) = placement_rows(market, &placement.nodes, placement.attempt, 0);
    if let Err(error) = app
        .fleet
        .apply_events(&device_ids, DeviceEvent::Hired, true)
        .await
    {
        tracing::info!(request_id = %row.id, %error, "placement refused; retrying next pass");
        return;
    }
    match app
        .store
        .place_request(&row.id, placement.attempt, &rows, now)
        .await
    {
        Ok(true) => {
            tracing::info!(request_id = %row.id, devices = device_ids.len(), "request placed");
            if fund_or_cancel(app, row, &rows, device_ids).await {
                crate::clusters::start_runs(app, &row.id, &rows).await;
            }
        }
        outcome => {
            if let Err(error) = outcome {
                tracing::warn!(request_id = %row.id, %error, "could not record a placement");
            }
            release(app, &device_ids).await;
        }
    }
}

/// Moves a paid request's cost into its escrow; a request whose hold cannot pay is cancelled
/// and its devices given back.
async fn fund_or_cancel(
    app: &AppState,
    row: &RequestRow,
    rows: &[PlacementRow],
    device_ids: Vec<String>,
) -> bool {
    let Ok(spec) = serde_json::from_str::<RequestSpec>(&row.spec) else {
        return false;
    };
    match crate::rent::fund_placement(app, &row.id, &spec, rows).await {
        Ok(true) => {
            // Cancelled while being funded: the cancel's refund may have found nothing yet.
            if let Ok(Some(now)) = app.store.request_by_id(&row.id).await
                && now.state != flotilla_store::REQUEST_PLACED
            {
                if let Err(error) = crate::rent::refund(app, &now).await {
                    tracing::warn!(request_id = %row.id, %error, "refund left to the reconciler");
                }
                return false;
            }
            true
        }
        outcome => {
            tracing::warn!(request_id = %row.id, ?outcome, "a paid request's hold could not fund it; cancelled");
            if let Err(error) = app
                .store
                .cancel_request(&row.account_id, &row.id, now_ms())
                .await
            {
                tracing::warn!(request_id = %row.id, %error, "could not cancel an unfunded request");
            }
            release(app, &device_ids).await;
            false
        }
    }
}

/// Moves a placed request off `lost_workers`: plans as many nodes like them, hires those all
/// or none, records them as the next attempt, and gives back what the lost nodes still held.
/// True when it hired devices (the market read before is stale then).
async fn replace(
    app: &AppState,
    market: &MarketView,
    request_id: &str,
    lost_workers: &[String],
) -> Result<bool, flotilla_store::StoreError> {
    let Some(row) = app.store.request_by_id(request_id).await? else {
        return Ok(false);
    };
    let Some(shape) = app
        .store
        .lost_node_shape(request_id, &lost_workers[0])
        .await?
    else {
        return Ok(false);
    };
    let Some(request) = serde_json::from_str::<RequestSpec>(&row.spec)
        .ok()
        .and_then(|spec| to_request(&row.id, &row.account_id, &spec, row.created_at_ms).ok())
    else {
        return Ok(false);
    };
    let held = app.store.placements(request_id).await?;
    // The request's own nodes, lost or not, are never its replacements.
    let exclude: Vec<usize> = market
        .snapshot
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, node)| held.iter().any(|p| p.worker_id == node.worker_id))
        .map(|(index, _)| index)
        .collect();
    let model = flotilla_proto::device::model_key(shape.hardware.kind, &shape.hardware.model);
    let like = flotilla_scheduler::LostShape {
        model: &model,
        region: &shape.region,
        tier: flotilla_scheduler::Tier::parse(&shape.tier).unwrap_or_default(),
    };
    let replacement = match flotilla_scheduler::plan_replacement_like(
        &market.snapshot,
        &request,
        &exclude,
        lost_workers.len() as u32,
        &like,
        row.attempt,
    ) {
        Ok(replacement) => replacement,
        Err(reason) => {
            // Retried every pass until capacity frees: not worth a line each time.
            tracing::debug!(%request_id, reason = %describe(&reason), "no replacement yet");
            return Ok(false);
        }
    };
    let first_index = held.iter().map(|p| p.node_index + 1).max().unwrap_or(0);
    let (device_ids, rows) =
        placement_rows(market, &replacement.nodes, replacement.attempt, first_index);
    if let Err(error) = app
        .fleet
        .apply_events(&device_ids, DeviceEvent::Hired, true)
        .await
    {
        tracing::info!(%request_id, %error, "replacement refused; retrying next pass");
        return Ok(false);
    }
    let now = now_ms();
    if !app
        .store
        .replace_nodes(request_id, row.attempt, lost_workers, &rows, now)
        .await
        .unwrap_or(false)
    {
        release(app, &device_ids).await;
        return Ok(false);
    }
    let left_behind: Vec<String> = held
        .iter()
        .filter(|p| lost_workers.contains(&p.worker_id))
        .map(|p| p.device_id.clone())
        .collect();
    release(app, &left_behind).await;
    tracing::info!(%request_id, attempt = replacement.attempt, nodes = lost_workers.len(), "lost nodes replaced");
    if let Err(error) = move_runs_of(app, request_id).await {
        tracing::warn!(%request_id, error = ?error, "could not move a cluster's runs; the reconciler retries");
    }
    Ok(true)
}

async fn move_runs_of(app: &AppState, request_id: &str) -> crate::error::ApiResult<()> {
    let runs = app.store.runs_of_cluster(request_id).await?;
    crate::clusters::move_orphaned_runs(app, request_id, &runs).await
}

/// The device ids and placement rows of `nodes`, numbered from `first_index`.
fn placement_rows(
    market: &MarketView,
    nodes: &[flotilla_scheduler::NodeAssignment],
    attempt: u32,
    first_index: u32,
) -> (Vec<String>, Vec<PlacementRow>) {
    let mut device_ids = Vec::new();
    let mut rows = Vec::new();
    for (offset, assignment) in nodes.iter().enumerate() {
        let node = &market.snapshot.nodes[assignment.node];
        for &device in &assignment.devices {
            let offer = &node.devices[device];
            device_ids.push(offer.device_id.clone());
            rows.push(PlacementRow {
                device_id: offer.device_id.clone(),
                worker_id: node.worker_id.clone(),
                node_index: first_index + offset as u32,
                attempt,
                price_per_hour: offer.price_per_hour,
            });
        }
    }
    (device_ids, rows)
}

/// Gives devices back to the market.
pub async fn release(app: &AppState, device_ids: &[String]) {
    if let Err(error) = app
        .fleet
        .apply_events(device_ids, DeviceEvent::Released, false)
        .await
    {
        tracing::warn!(%error, "could not release devices");
    }
}
