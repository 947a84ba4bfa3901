//! Governance: proposals anyone with stake may open, votes weighted by stake as counted when
//! the proposal opened, one per account and changeable until the close, and the tally
//! recorded in the ledger log (by the ledger upkeep).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_ledger::governance::{
    OPTION_BYTES_MAX, OPTIONS_MAX, TEXT_BYTES_MAX, TITLE_BYTES_MAX, Tally,
};
use flotilla_proto::api::{ErrorBody, ProposalCreate, ProposalInfo, VoteRequest};
use flotilla_proto::id::{IdKind, new_id};
use flotilla_proto::time::rfc3339;
use flotilla_store::ProposalRow;

use super::check_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody, PathId};
use crate::{AppState, now_ms};

/// Shortest and longest voting period, in seconds.
pub const VOTING_PERIOD_S_MIN: u64 = 1;
pub const VOTING_PERIOD_S_MAX: u64 = 90 * 24 * 3_600;
/// Proposals one list returns.
const PROPOSALS_LIST_MAX: u32 = 200;

/// `multiline` lets a body keep its line breaks; titles and options are one line.
fn check_text(field: &str, text: &str, bytes_max: usize, multiline: bool) -> ApiResult<()> {
    if text.trim().is_empty() || text.len() > bytes_max {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {bytes_max} bytes"),
        ));
    }
    let bad = |c: char| c.is_control() && !(multiline && matches!(c, '\n' | '\t'));
    if text.chars().any(bad) {
        return Err(ApiError::invalid(field, "must not hold control characters"));
    }
    Ok(())
}

fn validate(create: &ProposalCreate) -> ApiResult<()> {
    check_text("title", &create.title, TITLE_BYTES_MAX, false)?;
    check_text("body", &create.body, TEXT_BYTES_MAX, true)?;
    if !(2..=OPTIONS_MAX).contains(&create.options.len()) {
        return Err(ApiError::invalid("options", "must hold 2 to 16 choices"));
    }
    for option in &create.options {
        check_text("options", option, OPTION_BYTES_MAX, false)?;
    }
    if !(VOTING_PERIOD_S_MIN..=VOTING_PERIOD_S_MAX).contains(&create.voting_period_s) {
        return Err(ApiError::invalid(
            "voting_period_s",
            "must be between 1 second and 90 days",
        ));
    }
    Ok(())
}

async fn info(app: &AppState, caller: &Caller, row: ProposalRow) -> ApiResult<ProposalInfo> {
    let options: Vec<String> = serde_json::from_str(&row.options)
        .map_err(|e| ApiError::Internal(format!("stored options: {e}")))?;
    let tally: Option<Tally> = row
        .tally
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| ApiError::Internal(format!("stored tally: {e}")))?;
    let weight = app
        .store
        .proposal_weight(&row.id, caller.account_id())
        .await?;
    Ok(ProposalInfo {
        my_vote: app.store.vote_of(&row.id, caller.account_id()).await?,
        my_weight_micros: Some(weight),
        id: row.id,
        title: row.title,
        body: row.body,
        options,
        opened_at: rfc3339(row.opened_at_ms),
        closes_at: rfc3339(row.closes_at_ms),
        state: if tally.is_some() { "closed" } else { "open" }.into(),
        option_weights_micros: tally.as_ref().map(|t| t.option_weights.clone()),
        winner: tally
            .as_ref()
            .and_then(|t| t.winner)
            .and_then(|w| u32::try_from(w).ok()),
        tally_seq: row.tally_seq,
    })
}

/// Opens a proposal; stake is counted now for its weights. The caller must hold stake.
#[utoipa::path(post, path = "/api/v1/proposals", request_body = ProposalCreate, security(("api_key" = [])),
    responses((status = 201, body = ProposalInfo), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_proposal(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(create): JsonBody<ProposalCreate>,
) -> ApiResult<(StatusCode, Json<ProposalInfo>)> {
    caller.require_write()?;
    validate(&create)?;
    let stake = flotilla_ledger::AccountId::stake(caller.account_id());
    let staked = crate::ledger::balance(&app.store, &stake)
        .await?
        .available()
        > 0;
    if !staked {
        return Err(ApiError::Forbidden(
            "opening a proposal needs staked IO".into(),
        ));
    }
    let now = now_ms();
    let period_ms = i64::try_from(create.voting_period_s * 1_000).unwrap_or(i64::MAX);
    let row = ProposalRow {
        id: new_id(IdKind::Proposal),
        account_id: caller.account_id().to_owned(),
        title: create.title,
        body: create.body,
        options: serde_json::to_string(&create.options).expect("options serialize"),
        opened_at_ms: now,
        closes_at_ms: now.saturating_add(period_ms),
        tally: None,
        tally_seq: None,
    };
    app.store.insert_proposal(&row).await?;
    Ok((StatusCode::CREATED, Json(info(&app, &caller, row).await?)))
}

/// Proposals, newest first.
#[utoipa::path(get, path = "/api/v1/proposals", security(("api_key" = [])), responses((status = 200, body = [ProposalInfo])))]
pub async fn list_proposals(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ProposalInfo>>> {
    let mut infos = Vec::new();
    for row in app.store.proposals(PROPOSALS_LIST_MAX).await? {
        infos.push(info(&app, &caller, row).await?);
    }
    Ok(Json(infos))
}

async fn find(app: &AppState, id: &str) -> ApiResult<ProposalRow> {
    check_id(IdKind::Proposal, "proposal", id)?;
    app.store
        .proposal(id)
        .await?
        .ok_or(ApiError::NotFound("proposal"))
}

#[utoipa::path(get, path = "/api/v1/proposals/{id}", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ProposalInfo), (status = 404, body = ErrorBody)))]
pub async fn show_proposal(
    State(app): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> ApiResult<Json<ProposalInfo>> {
    let row = find(&app, &id).await?;
    info(&app, &caller, row).await.map(Json)
}

/// Votes (or changes the caller's vote) while the proposal is open.
#[utoipa::path(post, path = "/api/v1/proposals/{id}/votes", request_body = VoteRequest, params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ProposalInfo), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn vote(
    State(app): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(vote): JsonBody<VoteRequest>,
) -> ApiResult<Json<ProposalInfo>> {
    caller.require_write()?;
    let row = find(&app, &id).await?;
    let options: Vec<String> = serde_json::from_str(&row.options)
        .map_err(|e| ApiError::Internal(format!("stored options: {e}")))?;
    if vote.option as usize >= options.len() {
        return Err(ApiError::invalid("option", "no such option"));
    }
    if app.store.proposal_weight(&id, caller.account_id()).await? == 0 {
        return Err(ApiError::Forbidden(
            "only accounts with stake when the proposal opened may vote".into(),
        ));
    }
    if !app
        .store
        .cast_vote(&id, caller.account_id(), vote.option, now_ms())
        .await?
    {
        return Err(ApiError::conflict("proposal_closed", "voting has closed"));
    }
    let row = find(&app, &id).await?;
    info(&app, &caller, row).await.map(Json)
}
