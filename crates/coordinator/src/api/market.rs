//! The market: offer search with "why no match?", the price index, and the supplier's prices
//! and locations. Search and prices are public, like the Explorer: nothing private is in them.

use axum::Json;
use axum::extract::State;
use flotilla_proto::api::{
    CountrySupplyInfo, Device, ErrorBody, ModelPriceInfo, ModelSupplyInfo, NoMatchExplanation,
    OfferInfo, OfferRelaxation, OfferRemoval, OffersResponse, Role, SetLocationRequest,
    SetPriceRequest, SupplyCountInfo, WorkerDetail,
};
use flotilla_proto::id::IdKind;
use flotilla_scheduler::Tier;
use flotilla_scheduler::explain::{Explanation, explain, format_price};
use flotilla_scheduler::offers::search;
use flotilla_scheduler::prices::{price_index, supply_by_country};
use flotilla_scheduler::query::{SortKey, parse};
use serde::Deserialize;

use super::check_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, ClientIp, JsonBody, PathId, QueryParams};
use crate::market::MarketView;
use crate::{AppState, now_ms};

/// Most offers one search returns.
pub const OFFERS_LIMIT_MAX: u32 = 500;
const OFFERS_LIMIT_DEFAULT: u32 = 50;
/// Most GPUs per node and nodes a search may ask the explanation about.
const GPUS_PER_NODE_MAX: u32 = 64;
const NODES_MAX: u32 = 1_024;
/// Highest asking price accepted: 1,000 USD per hour.
const PRICE_PER_HOUR_MAX: u64 = 1_000 * flotilla_scheduler::PRICE_UNITS_PER_USD;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OfferQuery {
    /// A query in the offer search language, such as `gpu=rtx4090 count>=4 price<0.40`.
    pub q: Option<String>,
    /// price (default), reliability, vram, count or value.
    pub sort: Option<String>,
    pub limit: Option<u32>,
    /// For the explanation when nothing matches: GPUs needed on one worker (default 1).
    pub gpus_per_node: Option<u32>,
    /// For the explanation: workers needed (default 1).
    pub nodes: Option<u32>,
}

/// Counts one public read by `ip` against `limiter`: 429 past its rate.
pub(crate) fn limit_reads(limiter: &crate::ratelimit::RateLimiter, ip: &str) -> ApiResult<()> {
    limiter
        .check(ip, now_ms())
        .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })
}

/// The shared market view: public reads need not rebuild it each time.
async fn view(app: &AppState) -> ApiResult<std::sync::Arc<MarketView>> {
    Ok(app.market.view(&app.store).await?)
}

fn bounded(field: &str, value: Option<u32>, default: u32, max: u32) -> ApiResult<u32> {
    let value = value.unwrap_or(default);
    if value == 0 || value > max {
        return Err(ApiError::invalid(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(value)
}

pub(super) fn explanation(found: Explanation) -> NoMatchExplanation {
    NoMatchExplanation {
        offers_total: found.offers_total,
        offers_matching: found.offers_matching,
        nodes_matching: found.nodes_matching,
        nodes_needed: found.nodes_needed,
        removed: found
            .removed
            .into_iter()
            .map(|r| OfferRemoval {
                constraint: r.constraint,
                offers: r.offers,
            })
            .collect(),
        relaxations: found
            .relaxations
            .into_iter()
            .map(|r| OfferRelaxation {
                summary: r.to_string(),
                drop: r.drop,
                offers: r.offers,
                nodes: r.nodes,
                cheapest_per_hour: r.cheapest_per_hour,
            })
            .collect(),
    }
}

/// Searches the offers; when nothing matches, says which constraint removed what and which
/// relaxation would match, cheapest first.
#[utoipa::path(get, path = "/api/v1/offers", params(OfferQuery), responses((status = 200, body = OffersResponse), (status = 400, body = ErrorBody)))]
pub async fn list_offers(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    QueryParams(query): QueryParams<OfferQuery>,
) -> ApiResult<Json<OffersResponse>> {
    limit_reads(&app.limits.market_reads, &ip)?;
    let filter = parse(query.q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid("q", e.to_string()))?;
    let sort = match query.sort.as_deref() {
        None => SortKey::Price,
        Some(text) => SortKey::parse(text).ok_or_else(|| {
            ApiError::invalid("sort", format!("must be one of {}", SortKey::NAMES))
        })?,
    };
    let limit = bounded("limit", query.limit, OFFERS_LIMIT_DEFAULT, OFFERS_LIMIT_MAX)?;
    let gpus_per_node = bounded("gpus_per_node", query.gpus_per_node, 1, GPUS_PER_NODE_MAX)?;
    let nodes = bounded("nodes", query.nodes, 1, NODES_MAX)?;
    let market = view(&app).await?;
    let rows = search(&market.snapshot, &filter, sort, limit as usize);
    let offers: Vec<OfferInfo> = rows
        .into_iter()
        .map(|row| OfferInfo {
            worker_id: market.snapshot.nodes[row.node].worker_id.clone(),
            simulated: market.simulated.contains(&(row.node, row.model.clone())),
            model: row.model,
            count: row.count,
            memory_bytes: row.memory_bytes,
            price_usd: format_price(row.price_per_hour),
            price_per_hour: row.price_per_hour,
            perf_ops_per_s: row.perf_ops_per_s,
            region: row.region,
            country: row.country,
            tier: row.tier.as_str().to_owned(),
            reliability_ppm: row.reliability_ppm,
            completed: market.snapshot.nodes[row.node].completed,
            feedback_milli: row.feedback_milli,
        })
        .collect();
    let explanation = offers
        .is_empty()
        .then(|| explanation(explain(&market.snapshot, &filter, gpus_per_node, nodes)));
    Ok(Json(OffersResponse {
        offers,
        explanation,
    }))
}

/// The price index: per model, the median ask, the hired share and the trend.
#[utoipa::path(get, path = "/api/v1/market/prices", responses((status = 200, body = Vec<ModelPriceInfo>)))]
pub async fn market_prices(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
) -> ApiResult<Json<Vec<ModelPriceInfo>>> {
    limit_reads(&app.limits.market_reads, &ip)?;
    let market = view(&app).await?;
    let current = price_index(&market.snapshot, &[]);
    let baseline = app.prices.baseline(now_ms(), &current);
    let index = price_index(&market.snapshot, &baseline);
    Ok(Json(
        index
            .into_iter()
            .map(|p| ModelPriceInfo {
                median_ask_usd: format_price(p.median_ask_per_hour),
                model: p.model,
                devices: p.devices,
                hired: p.hired,
                median_ask_per_hour: p.median_ask_per_hour,
                cheapest_ask_per_hour: p.cheapest_ask_per_hour,
                hired_ppm: p.hired_ppm,
                trend_ppm: p.trend_ppm,
            })
            .collect(),
    ))
}

fn supply_count(count: &flotilla_scheduler::prices::SupplyCount) -> SupplyCountInfo {
    SupplyCountInfo {
        suppliers: count.suppliers,
        devices: count.devices,
        hired: count.hired,
        idle: count.devices - count.hired,
    }
}

/// The supply by country and model: verified suppliers, devices offered, hired and idle.
#[utoipa::path(get, path = "/api/v1/market/supply", responses((status = 200, body = Vec<CountrySupplyInfo>)))]
pub async fn market_supply(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
) -> ApiResult<Json<Vec<CountrySupplyInfo>>> {
    limit_reads(&app.limits.market_reads, &ip)?;
    let market = view(&app).await?;
    let supply = supply_by_country(&market.snapshot);
    Ok(Json(
        supply
            .iter()
            .map(|country| CountrySupplyInfo {
                country: country.country.clone(),
                total: supply_count(&country.total),
                models: country
                    .models
                    .iter()
                    .map(|(model, count)| ModelSupplyInfo {
                        model: model.clone(),
                        count: supply_count(count),
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// Sets a device's asking price (or withdraws it with `null`).
#[utoipa::path(post, path = "/api/v1/devices/{id}/price", request_body = SetPriceRequest, security(("api_key" = [])), responses((status = 200, body = Device), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_device_price(
    State(app): State<AppState>,
    caller: Caller,
    PathId(device_id): PathId,
    JsonBody(request): JsonBody<SetPriceRequest>,
) -> ApiResult<Json<Device>> {
    check_id(IdKind::Device, "device", &device_id)?;
    caller.require_role(Role::Supplier)?;
    caller.require_write()?;
    if let Some(price) = request.price_per_hour
        && (price == 0 || price > PRICE_PER_HOUR_MAX)
    {
        return Err(ApiError::invalid(
            "price_per_hour",
            format!("must be between 1 and {PRICE_PER_HOUR_MAX} IOSD base units"),
        ));
    }
    if !app
        .store
        .set_device_price(caller.account_id(), &device_id, request.price_per_hour)
        .await?
    {
        return Err(ApiError::NotFound("device"));
    }
    super::devices::load(&app, &caller, &device_id)
        .await
        .map(Json)
}

/// Longest region name, in bytes.
const REGION_BYTES_MAX: usize = 32;

/// Whether `text` is a region (or a continent): lower-case words joined by '-'.
pub(crate) fn is_region(text: &str) -> bool {
    text.len() <= REGION_BYTES_MAX
        && !text.is_empty()
        && text
            .split('-')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

fn check_location(request: &SetLocationRequest) -> ApiResult<()> {
    if !is_region(&request.region) {
        return Err(ApiError::invalid(
            "region",
            "must be lower-case words joined by '-', such as eu-west (at most 32 characters)",
        ));
    }
    if request.country.len() != 2 || !request.country.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ApiError::invalid(
            "country",
            "must be an ISO 3166 alpha-2 code in lower case",
        ));
    }
    if Tier::parse(&request.tier).is_none() {
        return Err(ApiError::invalid(
            "tier",
            "must be low, medium, high or ultra",
        ));
    }
    Ok(())
}

/// Sets where a worker is and its connectivity tier.
#[utoipa::path(post, path = "/api/v1/workers/{id}/location", request_body = SetLocationRequest, security(("api_key" = [])), responses((status = 200, body = WorkerDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_worker_location(
    State(app): State<AppState>,
    caller: Caller,
    PathId(worker_id): PathId,
    JsonBody(request): JsonBody<SetLocationRequest>,
) -> ApiResult<Json<WorkerDetail>> {
    check_id(IdKind::Worker, "worker", &worker_id)?;
    caller.require_role(Role::Supplier)?;
    caller.require_write()?;
    check_location(&request)?;
    let location = flotilla_store::WorkerLocation {
        region: request.region,
        country: request.country,
        tier: request.tier,
    };
    if !app
        .store
        .set_worker_location(caller.account_id(), &worker_id, &location)
        .await?
    {
        return Err(ApiError::NotFound("worker"));
    }
    super::workers::detail(&app, caller.account_id(), &worker_id)
        .await
        .map(Json)
}
