//! A renter's clusters: quote, deploy (idempotent), list, show, logs, extend, terminate.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use flotilla_ledger::{AccountId, Kind, Outcome, Transfer, TransferError};

use crate::rent::Payment;
use flotilla_proto::api::{
    ClusterInfo, ClusterNodeInfo, ClusterQuote, ClusterSpec, ErrorBody, ExtendRequest, LogLine,
    LogPage, LogQuery, Page, PageQuery, PortLink, RateNodesRequest, RequestSpec, Role,
};
use flotilla_proto::id::{IdKind, new_id};
use flotilla_proto::time::{rfc3339, rfc3339_opt};
use flotilla_store::{
    CLUSTER_DEPLOYING, CLUSTER_RUNNING, ClusterRow, REQUEST_PLACED, REQUEST_QUEUED, RequestRow,
    RunRow,
};

use super::{PageRequest, check_id};
use crate::clusters::{CLUSTER_TERMINATED, check_spec, without_secrets};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody, PathId, QueryParams};
use crate::scheduling::{describe, to_request};
use crate::{AppState, now_ms};

/// Log lines one answer carries at most, and by default.
pub const LOG_LINES_MAX: u32 = 5_000;
pub const LOG_LINES_DEFAULT: u32 = 1_000;

fn guard(caller: &Caller, write: bool) -> ApiResult<()> {
    caller.require_role(Role::Renter)?;
    if write {
        caller.require_write()?;
    }
    Ok(())
}

/// Plans the cluster alone over the market now: its price, or why nothing matches.
async fn quote_now(
    app: &AppState,
    account_id: &str,
    spec: &ClusterSpec,
    request: &RequestSpec,
) -> ApiResult<ClusterQuote> {
    let now = now_ms();
    let shape = crate::clusters::planned_shape(request);
    let planned = to_request("clu_quote", account_id, &shape, now)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let market = crate::market::load(&app.store).await?;
    let plan = flotilla_scheduler::plan(&market.snapshot, std::slice::from_ref(&planned), now);
    let mut answer = ClusterQuote {
        placeable: false,
        rent_per_hour: 0,
        hours: spec.hours,
        rent_micros: 0,
        fee_micros: 0,
        total_micros: 0,
        token: spec.token.clone(),
        io_price_micros: request.io_price_micros,
        colocation: request
            .colocation
            .clone()
            .unwrap_or_else(|| "one_region".to_owned()),
        waiting_because: None,
        explanation: None,
    };
    let Some(placement) = plan.placements.first() else {
        answer.waiting_because = plan.waiting.first().map(|w| describe(&w.reason));
        let found = flotilla_scheduler::explain::explain(
            &market.snapshot,
            &planned.filter,
            planned.gpus_per_node,
            planned.node_count,
        );
        answer.explanation = Some(super::market::explanation(found));
        return Ok(answer);
    };
    let prices: Vec<u64> = placement
        .nodes
        .iter()
        .map(|node| {
            let offers = &market.snapshot.nodes[node.node].devices;
            node.devices.iter().map(|d| offers[*d].price_per_hour).sum()
        })
        .collect();
    let cost = Payment::of(request)
        .quote(&prices, spec.hours, &app.config.fees)
        .ok_or_else(|| ApiError::invalid("hours", "the rent is too large"))?;
    answer.placeable = true;
    answer.rent_per_hour = prices.iter().sum();
    answer.rent_micros = cost.rent_micros;
    answer.fee_micros = cost.fee_micros;
    answer.total_micros = cost.total_micros;
    Ok(answer)
}

/// Quotes the spec; a multi-node spec that names no colocation and finds no one region with
/// room is quoted again spread over regions, and `request` becomes that.
async fn quote_any_region(
    app: &AppState,
    account_id: &str,
    spec: &ClusterSpec,
    request: &mut RequestSpec,
) -> ApiResult<ClusterQuote> {
    let together = quote_now(app, account_id, spec, request).await?;
    if together.placeable || spec.colocation.is_some() || spec.nodes < 2 {
        return Ok(together);
    }
    let spread = RequestSpec {
        colocation: Some("spread".to_owned()),
        ..request.clone()
    };
    let apart = quote_now(app, account_id, spec, &spread).await?;
    if !apart.placeable {
        return Ok(together);
    }
    *request = spread;
    Ok(apart)
}

/// What deploying this spec would cost now, or why nothing matches.
#[utoipa::path(post, path = "/api/v1/clusters/quote", request_body = ClusterSpec, security(("api_key" = [])),
    responses((status = 200, body = ClusterQuote), (status = 422, body = ErrorBody)))]
pub async fn quote_cluster(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(spec): JsonBody<ClusterSpec>,
) -> ApiResult<Json<ClusterQuote>> {
    guard(&caller, false)?;
    let mut request = check_spec(&spec)?;
    request.io_price_micros = io_price(&app, &spec.token)?;
    quote_any_region(&app, caller.account_id(), &spec, &mut request)
        .await
        .map(Json)
}

/// Deploys a cluster: quotes it, holds the total in escrow, and queues it for placement. With
/// an `Idempotency-Key`, a retry answers the cluster the first call made (200).
#[utoipa::path(post, path = "/api/v1/clusters", request_body = ClusterSpec, security(("api_key" = [])),
    responses((status = 201, body = ClusterInfo), (status = 200, body = ClusterInfo), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn deploy_cluster(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(spec): JsonBody<ClusterSpec>,
) -> ApiResult<(StatusCode, Json<ClusterInfo>)> {
    guard(&caller, true)?;
    let account_id = caller.account_id();
    let idempotency_key = super::ledger::idempotency_key(account_id, &headers)?;
    if let Some(key) = &idempotency_key
        && let Some(row) = app
            .store
            .cluster_by_idempotency_key(account_id, key)
            .await?
    {
        return Ok((StatusCode::OK, Json(info(&app, row).await?)));
    }
    let mut request = check_spec(&spec)?;
    request.io_price_micros = io_price(&app, &spec.token)?;
    if app.store.queued_request_count(account_id).await? >= super::requests::QUEUED_PER_ACCOUNT_MAX
    {
        return Err(ApiError::conflict(
            "too_many_queued",
            "too many clusters and requests wait for placement",
        ));
    }
    let priced = quote_any_region(&app, account_id, &spec, &mut request).await?;
    if !priced.placeable {
        return Err(no_match(&priced));
    }
    request.budget_per_hour = Some(request.budget_per_hour.unwrap_or(priced.rent_per_hour));
    let id = new_id(IdKind::Cluster);
    crate::rent::hold_budget(&app, &id, account_id, &request).await?;
    let now = now_ms();
    let request_row = RequestRow {
        id: id.clone(),
        account_id: account_id.to_owned(),
        spec: serde_json::to_string(&request).expect("specs serialize"),
        state: REQUEST_QUEUED.to_owned(),
        reason: String::new(),
        attempt: 0,
        created_at_ms: now,
        placed_at_ms: None,
        ended_at_ms: None,
        feedback_milli: None,
        metered_minutes: 0,
    };
    let shown = ClusterSpec {
        budget_per_hour: request.budget_per_hour,
        ..without_secrets(&spec)
    };
    let cluster = ClusterRow {
        id: id.clone(),
        account_id: account_id.to_owned(),
        name: spec.name.clone(),
        kind: spec.kind.clone(),
        spec: serde_json::to_string(&shown).expect("specs serialize"),
        secret_env: serde_json::to_string(&spec.secret_env).expect("maps serialize"),
        state: CLUSTER_DEPLOYING.to_owned(),
        ended_because: String::new(),
        idempotency_key: idempotency_key.clone(),
        created_at_ms: now,
        running_at_ms: None,
        ended_at_ms: None,
    };
    if let Err(error) = app.store.insert_cluster(&request_row, &cluster).await {
        crate::rent::release_hold(&app, &id).await?;
        // Two deploys with one key raced: the other one's cluster is the answer.
        if let Some(key) = &idempotency_key
            && let Some(row) = app
                .store
                .cluster_by_idempotency_key(account_id, key)
                .await?
        {
            return Ok((StatusCode::OK, Json(info(&app, row).await?)));
        }
        return Err(error.into());
    }
    tracing::info!(cluster_id = %id, nodes = spec.nodes, "cluster deployed");
    app.schedule_now.notify_one();
    Ok((StatusCode::CREATED, Json(info(&app, cluster).await?)))
}

/// The price IO converts at for a cluster paid in `token`: none for IOSD; refused where the
/// coordinator names no IO price.
fn io_price(app: &AppState, token: &str) -> ApiResult<Option<u64>> {
    match token {
        "IOSD" => Ok(None),
        "IO" => app.config.io_price_micros.map(Some).ok_or_else(|| {
            ApiError::invalid(
                "token",
                "this coordinator takes rent in IOSD only (no IO price)",
            )
        }),
        _ => Err(ApiError::invalid("token", "must be IOSD or IO")),
    }
}

fn no_match(priced: &ClusterQuote) -> ApiError {
    let mut message = format!(
        "no devices match now: {}",
        priced
            .waiting_because
            .as_deref()
            .unwrap_or("nothing is offered")
    );
    if let Some(relax) = priced
        .explanation
        .as_ref()
        .and_then(|e| e.relaxations.first())
    {
        message.push_str(&format!("; {}", relax.summary));
    }
    ApiError::conflict("no_match", message)
}

/// The caller's clusters.
#[utoipa::path(get, path = "/api/v1/clusters", params(PageQuery), security(("api_key" = [])), responses((status = 200, body = Page<ClusterInfo>)))]
pub async fn list_clusters(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<ClusterInfo>>> {
    guard(&caller, false)?;
    let page = PageRequest::from_query(&query)?;
    let rows = app
        .store
        .list_clusters(caller.account_id(), page.after.as_deref(), page.fetch())
        .await?;
    let infos = infos(&app, rows).await?;
    Ok(Json(page.finish(
        infos,
        |info| info.id.clone(),
        |info| info,
    )))
}

async fn own(app: &AppState, caller: &Caller, cluster_id: &str) -> ApiResult<ClusterRow> {
    check_id(IdKind::Cluster, "cluster", cluster_id)?;
    app.store
        .cluster(caller.account_id(), cluster_id)
        .await?
        .ok_or(ApiError::NotFound("cluster"))
}

/// One cluster: its nodes' runs, its money, why it waits or ended.
#[utoipa::path(get, path = "/api/v1/clusters/{id}", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ClusterInfo), (status = 404, body = ErrorBody)))]
pub async fn show_cluster(
    State(app): State<AppState>,
    caller: Caller,
    PathId(cluster_id): PathId,
) -> ApiResult<Json<ClusterInfo>> {
    guard(&caller, false)?;
    let row = own(&app, &caller, &cluster_id).await?;
    info(&app, row).await.map(Json)
}

/// Stops every node and returns the unused escrow.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/terminate", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ClusterInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn terminate_cluster(
    State(app): State<AppState>,
    caller: Caller,
    PathId(cluster_id): PathId,
) -> ApiResult<Json<ClusterInfo>> {
    guard(&caller, true)?;
    let row = own(&app, &caller, &cluster_id).await?;
    if row.state != CLUSTER_DEPLOYING && row.state != CLUSTER_RUNNING {
        return Err(ApiError::conflict(
            "not_active",
            "the cluster already ended",
        ));
    }
    crate::clusters::end(&app, &row, CLUSTER_TERMINATED, "terminated by its renter").await?;
    let row = own(&app, &caller, &cluster_id).await?;
    info(&app, row).await.map(Json)
}

/// Adds hours to a placed cluster; their rent is moved into its escrow at once.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/extend", params(("id" = String, Path)), request_body = ExtendRequest, security(("api_key" = [])),
    responses((status = 200, body = ClusterInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn extend_cluster(
    State(app): State<AppState>,
    caller: Caller,
    PathId(cluster_id): PathId,
    JsonBody(extension): JsonBody<ExtendRequest>,
) -> ApiResult<Json<ClusterInfo>> {
    guard(&caller, true)?;
    let row = own(&app, &caller, &cluster_id).await?;
    let request = app
        .store
        .request(caller.account_id(), &cluster_id)
        .await?
        .ok_or(ApiError::NotFound("cluster"))?;
    if row.state != CLUSTER_RUNNING && row.state != CLUSTER_DEPLOYING {
        return Err(ApiError::conflict(
            "not_active",
            "the cluster already ended",
        ));
    }
    if request.state != REQUEST_PLACED {
        return Err(ApiError::conflict(
            "not_placed",
            "a cluster can be extended once it is placed",
        ));
    }
    let mut spec: ClusterSpec = serde_json::from_str(&row.spec)
        .map_err(|e| ApiError::Internal(format!("stored cluster spec: {e}")))?;
    let mut request_spec: RequestSpec = serde_json::from_str(&request.spec)
        .map_err(|e| ApiError::Internal(format!("stored request spec: {e}")))?;
    if extension.from_hours.is_some_and(|seen| seen != spec.hours) {
        return Err(ApiError::conflict(
            "stale",
            format!(
                "the cluster has {} paid hours now, not the {} this extension was made from",
                spec.hours,
                extension.from_hours.unwrap_or_default()
            ),
        ));
    }
    let total = spec
        .hours
        .checked_add(extension.hours)
        .filter(|h| extension.hours > 0 && *h <= crate::rent::HOURS_MAX)
        .ok_or_else(|| ApiError::invalid("hours", "must be at least 1, and 720 in all at most"))?;
    let placements = app.store.placements(&cluster_id).await?;
    let payment = Payment::of(&request_spec);
    let prices: Vec<u64> = crate::rent::node_prices(&placements)
        .into_values()
        .collect();
    let cost = payment
        .quote(&prices, extension.hours, &app.config.fees)
        .ok_or_else(|| ApiError::invalid("hours", "the rent is too large"))?;
    // Named by the new total: a retried extension pays once.
    let pay = Transfer::moving(
        format!("extend-{cluster_id}-{total}"),
        Kind::Escrow,
        AccountId::main(caller.account_id(), payment.token),
        payment.escrow(&cluster_id),
        cost.total_micros,
    )
    .with_reference(cluster_id.clone());
    match app.ledger.submit_one(pay).await? {
        Outcome::Applied(_) | Outcome::Duplicate { .. } => {}
        Outcome::Refused(TransferError::InsufficientFunds { .. }) => {
            return Err(ApiError::conflict(
                "insufficient_funds",
                "the extension's rent and fees are more than the funds available",
            ));
        }
        Outcome::Refused(error) => return Err(ApiError::Internal(error.to_string())),
    }
    spec.hours = total;
    request_spec.hours = Some(total);
    app.store
        .set_cluster_specs(
            &cluster_id,
            &serde_json::to_string(&spec).expect("specs serialize"),
            &serde_json::to_string(&request_spec).expect("specs serialize"),
        )
        .await?;
    let row = own(&app, &caller, &cluster_id).await?;
    info(&app, row).await.map(Json)
}

/// A cluster's output, in order; `after` continues from an earlier answer.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/logs", params(("id" = String, Path), LogQuery), security(("api_key" = [])),
    responses((status = 200, body = LogPage), (status = 404, body = ErrorBody)))]
pub async fn cluster_logs(
    State(app): State<AppState>,
    caller: Caller,
    PathId(cluster_id): PathId,
    QueryParams(query): QueryParams<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    guard(&caller, false)?;
    let row = own(&app, &caller, &cluster_id).await?;
    let limit = query.limit.unwrap_or(LOG_LINES_DEFAULT);
    if limit == 0 || limit > LOG_LINES_MAX {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {LOG_LINES_MAX}"),
        ));
    }
    let after = query.after.unwrap_or(0).max(0);
    let ended = row.state != CLUSTER_DEPLOYING && row.state != CLUSTER_RUNNING;
    let rows = app
        .store
        .logs(&cluster_id, after, query.node, limit)
        .await?;
    let next_after = rows.last().map_or(after, |r| r.seq);
    let lines = rows
        .into_iter()
        .map(|r| LogLine {
            seq: r.seq,
            node_rank: r.node_rank,
            attempt: r.attempt,
            stream: r.stream,
            at: rfc3339(r.at_ms),
            text: r.text,
        })
        .collect();
    Ok(Json(LogPage {
        lines,
        next_after,
        ended,
    }))
}

/// Most characters of a rating's comment.
pub const RATING_COMMENT_CHARS_MAX: usize = 1_000;

/// Rates the suppliers of an ended cluster's nodes, 1 to 5 stars each; the scheduler ranks
/// their offers by it.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/ratings", params(("id" = String, Path)), request_body = RateNodesRequest, security(("api_key" = [])),
    responses((status = 200, body = ClusterInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rate_nodes(
    State(app): State<AppState>,
    caller: Caller,
    PathId(cluster_id): PathId,
    JsonBody(request): JsonBody<RateNodesRequest>,
) -> ApiResult<Json<ClusterInfo>> {
    guard(&caller, true)?;
    let row = own(&app, &caller, &cluster_id).await?;
    if row.state == CLUSTER_DEPLOYING || row.state == CLUSTER_RUNNING {
        return Err(ApiError::conflict(
            "not_ended",
            "a cluster's nodes are rated once it ended",
        ));
    }
    let runs = app.store.runs_of_cluster(&cluster_id).await?;
    for rating in &request.ratings {
        if !(1..=5).contains(&rating.stars) {
            return Err(ApiError::invalid("stars", "must be between 1 and 5"));
        }
        if rating.comment.chars().count() > RATING_COMMENT_CHARS_MAX {
            return Err(ApiError::invalid("comment", "is at most 1,000 characters"));
        }
        // The rank's newest run that started is the supplier the renter saw.
        let served = runs
            .iter()
            .filter(|r| r.node_rank == rating.node_rank && r.started_at_ms.is_some())
            .max_by_key(|r| r.attempt)
            .ok_or_else(|| ApiError::invalid("node_rank", "no node of that rank ran"))?;
        app.store
            .rate_node(
                &cluster_id,
                rating.node_rank,
                &served.worker_id,
                rating.stars,
                &rating.comment,
                now_ms(),
            )
            .await?;
    }
    info(&app, row).await.map(Json)
}

fn node_info(run: &RunRow, devices: &HashMap<u32, Vec<String>>) -> ClusterNodeInfo {
    ClusterNodeInfo {
        rank: run.node_rank,
        attempt: run.attempt,
        run_id: run.id.clone(),
        worker_id: run.worker_id.clone(),
        device_ids: devices.get(&run.node_index).cloned().unwrap_or_default(),
        state: run.state.clone(),
        exit_code: run.exit_code,
        reason: run.reason.clone(),
        started_at: rfc3339_opt(run.started_at_ms),
        ended_at: rfc3339_opt(run.ended_at_ms),
        rating_stars: None,
        tunnel: Default::default(),
    }
}

/// The `/t/` path of each port the renter declared on each node, and of each server Flotilla
/// started on the head, named.
fn port_links(cluster_id: &str, nodes: &[ClusterNodeInfo], spec: &ClusterSpec) -> Vec<PortLink> {
    let started = crate::clusters::started_services(spec);
    let link = |node_rank: u32, port: u16, name: Option<&str>| PortLink {
        node_rank,
        port,
        name: name.map(str::to_owned),
        path: crate::clusters::port_path(cluster_id, node_rank, port),
    };
    let declared = nodes.iter().flat_map(|node| {
        spec.ports
            .iter()
            .filter(|port| !started.iter().any(|(p, _)| p == *port))
            .map(move |port| link(node.rank, *port, None))
    });
    let head = nodes.iter().any(|node| node.rank == 0);
    let services = started
        .iter()
        .filter(|_| head)
        .map(|(port, name)| link(0, *port, Some(name)));
    declared.chain(services).collect()
}

async fn info(app: &AppState, row: ClusterRow) -> ApiResult<ClusterInfo> {
    let mut infos = infos(app, vec![row]).await?;
    Ok(infos.pop().expect("one info per row"))
}

/// What `infos` shows beside the cluster rows, read for all of them at once.
struct ClusterFacts {
    requests: HashMap<String, RequestRow>,
    runs: HashMap<String, Vec<RunRow>>,
    placements: HashMap<String, Vec<flotilla_store::PlacementRow>>,
    ratings: HashMap<String, HashMap<u32, (u8, String)>>,
}

/// The clusters' answers, in the rows' order, with a fixed number of reads however many there
/// are (a page of a list would otherwise cost six reads per cluster).
async fn infos(app: &AppState, rows: Vec<ClusterRow>) -> ApiResult<Vec<ClusterInfo>> {
    let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
    let mut facts = ClusterFacts {
        requests: app.store.requests_by_ids(&ids).await?,
        runs: app.store.runs_of(&ids).await?,
        placements: app.store.placements_of(&ids).await?,
        ratings: app.store.node_ratings_of(&ids).await?,
    };
    let mut infos = Vec::with_capacity(rows.len());
    for row in rows {
        infos.push(info_from(&mut facts, row)?);
    }
    let run_ids: Vec<String> = infos
        .iter()
        .flat_map(|info| info.nodes.iter().map(|node| node.run_id.clone()))
        .collect();
    let mut traffic = app.store.tunnel_traffic(&run_ids).await?;
    let escrows: Vec<AccountId> = infos
        .iter()
        .map(|info| payment_of(facts.requests.get(&info.id)).escrow(&info.id))
        .collect();
    let balances = crate::ledger::balances(&app.store, &escrows).await?;
    for (info, escrow) in infos.iter_mut().zip(&escrows) {
        for node in &mut info.nodes {
            node.tunnel = traffic.remove(&node.run_id).unwrap_or_default();
        }
        info.escrow_micros = balances
            .get(&escrow.to_string())
            .map_or(0, |balance| balance.available());
    }
    Ok(infos)
}

fn payment_of(request: Option<&RequestRow>) -> Payment {
    request.map_or(Payment::of(&RequestSpec::default()), Payment::of_row)
}

/// One cluster's answer from its row and facts, before its tunnel traffic and escrow.
fn info_from(facts: &mut ClusterFacts, row: ClusterRow) -> ApiResult<ClusterInfo> {
    let spec: ClusterSpec = serde_json::from_str(&row.spec)
        .map_err(|e| ApiError::Internal(format!("stored cluster spec: {e}")))?;
    let secrets: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&row.secret_env).unwrap_or_default();
    let request = facts.requests.get(&row.id);
    let runs = facts.runs.remove(&row.id).unwrap_or_default();
    let mut devices: HashMap<u32, Vec<String>> = HashMap::new();
    let mut rent_per_hour = 0;
    for placement in facts.placements.remove(&row.id).unwrap_or_default() {
        rent_per_hour += placement.price_per_hour;
        devices
            .entry(placement.node_index)
            .or_default()
            .push(placement.device_id);
    }
    // The newest run of each rank.
    let mut nodes: Vec<ClusterNodeInfo> = Vec::new();
    for run in &runs {
        match nodes.last_mut() {
            Some(last) if last.rank == run.node_rank => *last = node_info(run, &devices),
            _ => nodes.push(node_info(run, &devices)),
        }
    }
    let ratings = facts.ratings.remove(&row.id).unwrap_or_default();
    for node in &mut nodes {
        node.rating_stars = ratings.get(&node.rank).map(|(stars, _)| *stars);
    }
    let port_links = if row.state == CLUSTER_RUNNING {
        port_links(&row.id, &nodes, &spec)
    } else {
        Vec::new()
    };
    let waiting = request
        .filter(|r| r.state == REQUEST_QUEUED && !r.reason.is_empty())
        .map(|r| r.reason.clone());
    Ok(ClusterInfo {
        id: row.id,
        name: row.name,
        kind: row.kind,
        state: row.state,
        spec,
        secret_env_names: secrets.into_keys().collect(),
        nodes,
        port_links,
        waiting_because: waiting,
        rent_per_hour,
        escrow_micros: 0,
        metered_minutes: request.map_or(0, |r| r.metered_minutes),
        created_at: rfc3339(row.created_at_ms),
        running_at: rfc3339_opt(row.running_at_ms),
        ended_at: rfc3339_opt(row.ended_at_ms),
        ended_because: (!row.ended_because.is_empty()).then_some(row.ended_because),
    })
}
