//! A renter's requests for GPUs: submit, list, show (with why it waits), cancel, rate.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use flotilla_proto::api::{
    ErrorBody, FeedbackRequest, Page, PageQuery, PlacedNode, RequestInfo, RequestSpec, Role,
};
use flotilla_proto::id::{IdKind, new_id};
use flotilla_proto::time::{rfc3339, rfc3339_opt};
use flotilla_store::{PlacementRow, REQUEST_PLACED, REQUEST_QUEUED, RequestRow};

use super::{PageRequest, check_id};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody, PathId, QueryParams};
use crate::scheduling::{release, to_request};
use crate::{AppState, now_ms};

/// Queued requests one account may have at once.
pub const QUEUED_PER_ACCOUNT_MAX: u64 = 1_000;

fn guard(caller: &Caller, write: bool) -> ApiResult<()> {
    caller.require_role(Role::Renter)?;
    if write {
        caller.require_write()?;
    }
    Ok(())
}

/// Whether an answer explains a waiting request: one at a time only, since it reads the whole
/// market.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Explain {
    Yes,
    No,
}

/// What answers about requests need beside their rows, read for a whole page at once.
struct Facts {
    placements: HashMap<String, Vec<PlacementRow>>,
    /// Escrow balances of paid requests, by request id.
    escrows: HashMap<String, i64>,
}

async fn facts(app: &AppState, rows: &[RequestRow]) -> ApiResult<Facts> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let escrow_ids: Vec<String> = ids
        .iter()
        .map(|id| flotilla_ledger::AccountId::escrow(id, flotilla_ledger::Token::Iosd).to_string())
        .collect();
    let escrows = app
        .store
        .ledger_balances(&escrow_ids)
        .await?
        .into_iter()
        .map(|account| (account.owner, account.posted))
        .collect();
    Ok(Facts {
        placements: app.store.placements_of(&ids).await?,
        escrows,
    })
}

async fn info(app: &AppState, row: RequestRow, explain: Explain) -> ApiResult<RequestInfo> {
    let facts = facts(app, std::slice::from_ref(&row)).await?;
    info_with(app, row, explain, &facts).await
}

async fn info_with(
    app: &AppState,
    row: RequestRow,
    explain: Explain,
    facts: &Facts,
) -> ApiResult<RequestInfo> {
    let spec: RequestSpec = serde_json::from_str(&row.spec)
        .map_err(|e| ApiError::Internal(format!("stored request spec: {e}")))?;
    // Rows come ordered by node index; indices need not start at 0 after a replacement.
    let mut nodes: Vec<PlacedNode> = Vec::new();
    let mut last_index = None;
    let placements = facts.placements.get(&row.id).cloned().unwrap_or_default();
    for placement in placements {
        let same_node = last_index == Some(placement.node_index);
        last_index = Some(placement.node_index);
        match nodes.last_mut().filter(|_| same_node) {
            Some(node) => {
                node.device_ids.push(placement.device_id);
                node.price_per_hour += placement.price_per_hour;
            }
            None => nodes.push(PlacedNode {
                worker_id: placement.worker_id,
                device_ids: vec![placement.device_id],
                price_per_hour: placement.price_per_hour,
            }),
        }
    }
    let queued = row.state == REQUEST_QUEUED;
    let explanation = if queued && !row.reason.is_empty() && explain == Explain::Yes {
        let request = to_request(&row.id, &row.account_id, &spec, row.created_at_ms)
            .map_err(|e| ApiError::Internal(e.message))?;
        let market = crate::market::load(&app.store).await?;
        let found = flotilla_scheduler::explain::explain(
            &market.snapshot,
            &request.filter,
            request.gpus_per_node,
            request.node_count,
        );
        Some(super::market::explanation(found))
    } else {
        None
    };
    let spec_paid = spec.hours.is_some();
    let escrow_micros = spec_paid.then(|| facts.escrows.get(&row.id).copied().unwrap_or(0));
    Ok(RequestInfo {
        id: row.id,
        state: row.state,
        spec,
        waiting_because: (queued && !row.reason.is_empty()).then_some(row.reason),
        explanation,
        attempt: row.attempt,
        nodes,
        created_at: rfc3339(row.created_at_ms),
        placed_at: rfc3339_opt(row.placed_at_ms),
        feedback_stars: row.feedback_milli.map(|f| (f / 1_000) as u8),
        escrow_micros,
        metered_minutes: spec_paid.then_some(row.metered_minutes),
    })
}

/// Submits a request; the scheduler places it whole when it can.
#[utoipa::path(post, path = "/api/v1/requests", request_body = RequestSpec, security(("api_key" = [])),
    responses((status = 201, body = RequestInfo), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_request(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(spec): JsonBody<RequestSpec>,
) -> ApiResult<(axum::http::StatusCode, Json<RequestInfo>)> {
    guard(&caller, true)?;
    if spec.io_price_micros.is_some() {
        return Err(ApiError::invalid(
            "io_price_micros",
            "is set by the coordinator; requests are paid in IOSD",
        ));
    }
    let id = new_id(IdKind::Request);
    let now = now_ms();
    to_request(&id, caller.account_id(), &spec, now)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    if app.store.queued_request_count(caller.account_id()).await? >= QUEUED_PER_ACCOUNT_MAX {
        return Err(ApiError::conflict(
            "too_many_queued",
            format!("an account may have at most {QUEUED_PER_ACCOUNT_MAX} queued requests"),
        ));
    }
    crate::rent::hold_budget(&app, &id, caller.account_id(), &spec).await?;
    let row = RequestRow {
        id,
        account_id: caller.account_id().to_owned(),
        spec: serde_json::to_string(&spec).expect("specs serialize"),
        state: REQUEST_QUEUED.to_owned(),
        reason: String::new(),
        attempt: 0,
        created_at_ms: now,
        placed_at_ms: None,
        ended_at_ms: None,
        feedback_milli: None,
        metered_minutes: 0,
    };
    if let Err(error) = app.store.insert_request(&row).await {
        crate::rent::release_hold(&app, &row.id).await?;
        return Err(error.into());
    }
    Ok((
        axum::http::StatusCode::CREATED,
        Json(info(&app, row, Explain::Yes).await?),
    ))
}

/// The caller's requests.
#[utoipa::path(get, path = "/api/v1/requests", params(PageQuery), security(("api_key" = [])), responses((status = 200, body = Page<RequestInfo>)))]
pub async fn list_requests(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<RequestInfo>>> {
    guard(&caller, false)?;
    let page = PageRequest::from_query(&query)?;
    let rows = app
        .store
        .list_requests(caller.account_id(), page.after.as_deref(), page.fetch())
        .await?;
    let facts = facts(&app, &rows).await?;
    let mut infos = Vec::with_capacity(rows.len());
    for row in rows {
        infos.push(info_with(&app, row, Explain::No, &facts).await?);
    }
    Ok(Json(page.finish(
        infos,
        |info| info.id.clone(),
        |info| info,
    )))
}

async fn own(app: &AppState, caller: &Caller, request_id: &str) -> ApiResult<RequestRow> {
    check_id(IdKind::Request, "request", request_id)?;
    app.store
        .request(caller.account_id(), request_id)
        .await?
        .ok_or(ApiError::NotFound("request"))
}

/// One request: where it runs, or why it waits and what to relax.
#[utoipa::path(get, path = "/api/v1/requests/{id}", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = RequestInfo), (status = 404, body = ErrorBody)))]
pub async fn show_request(
    State(app): State<AppState>,
    caller: Caller,
    PathId(request_id): PathId,
) -> ApiResult<Json<RequestInfo>> {
    guard(&caller, false)?;
    let row = own(&app, &caller, &request_id).await?;
    info(&app, row, Explain::Yes).await.map(Json)
}

/// Cancels a queued request, or ends a placed one and gives its devices back.
#[utoipa::path(post, path = "/api/v1/requests/{id}/cancel", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = RequestInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_request(
    State(app): State<AppState>,
    caller: Caller,
    PathId(request_id): PathId,
) -> ApiResult<Json<RequestInfo>> {
    guard(&caller, true)?;
    let before = own(&app, &caller, &request_id).await?;
    let spec: RequestSpec = serde_json::from_str(&before.spec)
        .map_err(|e| ApiError::Internal(format!("stored request spec: {e}")))?;
    if before.state == REQUEST_PLACED {
        // Pay the minutes that ran before the cancel; the rest of the escrow returns.
        crate::rent::meter(
            &app,
            &before,
            &spec,
            now_ms(),
            crate::rent::Rounding::EndedMinutes,
        )
        .await?;
    }
    let held: Vec<String> = app
        .store
        .placements(&request_id)
        .await?
        .into_iter()
        .map(|p| p.device_id)
        .collect();
    let Some(previous) = app
        .store
        .cancel_request(caller.account_id(), &request_id, now_ms())
        .await?
    else {
        return Err(ApiError::conflict(
            "not_active",
            "the request already ended",
        ));
    };
    if previous == REQUEST_PLACED {
        release(&app, &held).await;
    }
    if spec.hours.is_some() {
        if previous == REQUEST_PLACED {
            crate::rent::refund(&app, &before).await?;
        } else {
            crate::rent::release_hold(&app, &request_id).await?;
        }
    }
    let row = own(&app, &caller, &request_id).await?;
    info(&app, row, Explain::Yes).await.map(Json)
}

/// Rates a request that ran, 1 to 5 stars; the workers that served it are ranked by it.
#[utoipa::path(post, path = "/api/v1/requests/{id}/feedback", params(("id" = String, Path)), request_body = FeedbackRequest, security(("api_key" = [])),
    responses((status = 200, body = RequestInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn give_feedback(
    State(app): State<AppState>,
    caller: Caller,
    PathId(request_id): PathId,
    JsonBody(feedback): JsonBody<FeedbackRequest>,
) -> ApiResult<Json<RequestInfo>> {
    guard(&caller, true)?;
    if !(1..=5).contains(&feedback.stars) {
        return Err(ApiError::invalid("stars", "must be between 1 and 5"));
    }
    own(&app, &caller, &request_id).await?;
    let milli = u32::from(feedback.stars) * 1_000;
    if !app
        .store
        .set_request_feedback(caller.account_id(), &request_id, milli)
        .await?
    {
        return Err(ApiError::conflict(
            "never_ran",
            "only a request that ran can be rated",
        ));
    }
    let row = own(&app, &caller, &request_id).await?;
    info(&app, row, Explain::Yes).await.map(Json)
}
