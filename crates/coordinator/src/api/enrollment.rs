//! Enrollment tokens (created by suppliers), enrollment (a worker's first contact), and the
//! worker control channel.

use axum::Json;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::Response;
use flotilla_proto::api::{
    CreateEnrollmentTokenRequest, CreatedEnrollmentToken, EnrollRequest, EnrollResponse,
    EnrollmentTokenInfo, ErrorBody, Page, PageQuery, Role,
};
use flotilla_proto::id::{ENROLLMENT_TOKEN_PREFIX, IdKind, new_id, new_secret, secret_hash};
use flotilla_proto::limits::{FRAME_BYTES_MAX, SECRET_LIFETIME_S_MAX};
use flotilla_proto::wire::verify_enrollment;
use flotilla_store::{EnrollmentTokenRow, WorkerRow};
use serde_json::json;

use super::{PageRequest, audit, check_id, check_name, convert};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, ClientIp, JsonBody, PathId, QueryParams};
use crate::{AppState, now_ms, session};

/// Lifetime of a token when the request names none.
const TOKEN_LIFETIME_S_DEFAULT: u64 = 3600;
/// Socket buffers per worker session: heartbeats are small, and 10,000 sessions must fit in
/// 64 KiB each.
const SESSION_BUFFER_BYTES: usize = 4 * 1024;

fn supplier(caller: &Caller) -> ApiResult<()> {
    caller.require_role(Role::Supplier)
}

/// Creates a single-use enrollment token. The secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", request_body = CreateEnrollmentTokenRequest, security(("api_key" = [])),
    responses((status = 201, body = CreatedEnrollmentToken), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateEnrollmentTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedEnrollmentToken>)> {
    supplier(&caller)?;
    caller.require_write()?;
    let name = request.name.unwrap_or_else(|| "worker".to_owned());
    check_name("name", &name)?;
    let lifetime_s = request.expires_in_s.unwrap_or(TOKEN_LIFETIME_S_DEFAULT);
    if lifetime_s == 0 || lifetime_s > SECRET_LIFETIME_S_MAX {
        return Err(ApiError::invalid(
            "expires_in_s",
            format!("expires_in_s must be between 1 and {SECRET_LIFETIME_S_MAX}"),
        ));
    }
    let now = now_ms();
    app.limits
        .token_create
        .check(caller.account_id(), now)
        .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
    let secret = new_secret(ENROLLMENT_TOKEN_PREFIX);
    let token = EnrollmentTokenRow {
        id: new_id(IdKind::EnrollmentToken),
        account_id: caller.account_id().to_owned(),
        name,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(i64::try_from(lifetime_s * 1000).unwrap_or(i64::MAX)),
        used_at_ms: None,
        used_by_worker_id: None,
        revoked_at_ms: None,
    };
    app.store
        .insert_enrollment_token(&token, &secret_hash(&secret))
        .await?;
    audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "enrollment_token.create",
        Some(&token.id),
        json!({ "name": token.name }),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken {
            token: convert::enrollment_token(token),
            secret,
        }),
    ))
}

/// The supplier's enrollment tokens.
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", params(PageQuery), security(("api_key" = [])),
    responses((status = 200, body = Page<EnrollmentTokenInfo>)))]
pub async fn list_tokens(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<EnrollmentTokenInfo>>> {
    supplier(&caller)?;
    let page = PageRequest::from_query(&query)?;
    let rows = app
        .store
        .list_enrollment_tokens(caller.account_id(), page.after.as_deref(), page.fetch())
        .await?;
    Ok(Json(page.finish(
        rows,
        |row| row.id.clone(),
        convert::enrollment_token,
    )))
}

/// One enrollment token.
#[utoipa::path(get, path = "/api/v1/enrollment-tokens/{id}", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = EnrollmentTokenInfo), (status = 404, body = ErrorBody)))]
pub async fn show_token(
    State(app): State<AppState>,
    caller: Caller,
    PathId(token_id): PathId,
) -> ApiResult<Json<EnrollmentTokenInfo>> {
    check_id(IdKind::EnrollmentToken, "enrollment token", &token_id)?;
    supplier(&caller)?;
    let token = app
        .store
        .enrollment_token(caller.account_id(), &token_id)
        .await?
        .ok_or(ApiError::NotFound("enrollment token"))?;
    Ok(Json(convert::enrollment_token(token)))
}

/// Revokes an unused token.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens/{id}/revoke", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = EnrollmentTokenInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_token(
    State(app): State<AppState>,
    caller: Caller,
    PathId(token_id): PathId,
) -> ApiResult<Json<EnrollmentTokenInfo>> {
    check_id(IdKind::EnrollmentToken, "enrollment token", &token_id)?;
    supplier(&caller)?;
    caller.require_write()?;
    let token = app
        .store
        .revoke_enrollment_token(caller.account_id(), &token_id, now_ms())
        .await?
        .ok_or(ApiError::NotFound("enrollment token"))?;
    if token.revoked_at_ms.is_none() {
        return Err(ApiError::conflict(
            "token_already_used",
            format!("enrollment token {token_id} was already used"),
        ));
    }
    audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "enrollment_token.revoke",
        Some(&token.id),
        json!({}),
    )
    .await?;
    Ok(Json(convert::enrollment_token(token)))
}

/// A worker enrolls: it presents a live token and its new public key, signed by the private
/// half. The token is used up whether or not the worker ever connects.
#[utoipa::path(post, path = "/api/v1/workers/enroll", request_body = EnrollRequest,
    responses((status = 201, body = EnrollResponse), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn enroll(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(request): JsonBody<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    let now = now_ms();
    app.limits
        .enroll
        .check(&ip, now)
        .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
    check_name("hostname", &request.hostname)?;
    if !request.token.starts_with(ENROLLMENT_TOKEN_PREFIX) {
        return Err(ApiError::invalid(
            "token",
            "token is not an enrollment token",
        ));
    }
    verify_enrollment(&request.token, &request.public_key, &request.signature)
        .map_err(|e| ApiError::invalid("signature", format!("enrollment signature: {e}")))?;
    // Per supplier too, so one supplier's tokens spread over many addresses cannot flood the
    // network with new identities.
    let token_hash = secret_hash(&request.token);
    if let Some(supplier_id) = app.store.enrollment_token_owner(&token_hash).await? {
        app.limits
            .enroll_per_supplier
            .check(&supplier_id, now)
            .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
    }
    let worker = WorkerRow {
        id: new_id(IdKind::Worker),
        account_id: String::new(),
        name: request.hostname.clone(),
        hostname: request.hostname.clone(),
        public_key: request.public_key.to_lowercase(),
        agent_version: String::new(),
        paused: false,
        created_at_ms: now,
        last_seen_at_ms: None,
        removed_at_ms: None,
        device_count: 0,
        region: String::new(),
        country: String::new(),
        tier: "low".to_owned(),
    };
    let Some(worker) = app.store.enroll_worker(&token_hash, &worker, now).await? else {
        audit::record(
            &app,
            None,
            &ip,
            "worker.enroll_refused",
            None,
            json!({ "hostname": request.hostname }),
        )
        .await?;
        return Err(ApiError::TokenRefused);
    };
    app.metrics.enrollments.inc();
    let detail = json!({ "hostname": worker.hostname, "account_id": worker.account_id });
    audit::record(&app, None, &ip, "worker.enroll", Some(&worker.id), detail).await?;
    tracing::info!(worker_id = %worker.id, account_id = %worker.account_id, "worker enrolled");
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            worker_id: worker.id,
            account_id: worker.account_id,
        }),
    ))
}

/// The worker control channel (WebSocket). Authentication happens inside: every message is
/// signed by the worker's enrolled key (see `flotilla_proto::wire`).
pub async fn connect(
    State(app): State<AppState>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| ApiError::Malformed {
        message: format!(
            "the worker control channel is a websocket: {}",
            rejection.body_text().to_lowercase()
        ),
        field: None,
    })?;
    let shutdown = app.shutdown.clone();
    Ok(upgrade
        .max_message_size(FRAME_BYTES_MAX)
        .max_frame_size(FRAME_BYTES_MAX)
        .read_buffer_size(SESSION_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| session::run(socket, app, shutdown)))
}
