//! Accounts, the caller, login, and API keys.

use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_proto::api::{
    ApiKeyInfo, CreateAccountRequest, CreateAccountResponse, CreateApiKeyRequest, CreatedApiKey,
    ErrorBody, Me, Page, PageQuery, Role, Scope,
};
use flotilla_proto::id::{
    API_KEY_PREFIX, IdKind, new_id, new_secret, secret_display_prefix, secret_hash,
};
use flotilla_proto::limits::SECRET_LIFETIME_S_MAX;
use flotilla_store::{AccountRow, ApiKeyRow, Store, StoreError};
use serde_json::json;

use super::{PageRequest, audit, check_id, check_name, convert};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, ClientIp, JsonBody, MaybeCaller, PathId, QueryParams};
use crate::{AppState, StartError, now_ms};

/// Makes a key for an account; returns the stored row and the secret (shown once).
pub(crate) async fn issue_key(
    store: &Store,
    account_id: &str,
    name: &str,
    scopes: Vec<Scope>,
    expires_in_s: Option<u64>,
) -> Result<(ApiKeyRow, String), StoreError> {
    let secret = new_secret(API_KEY_PREFIX);
    let now = now_ms();
    let row = ApiKeyRow {
        id: new_id(IdKind::ApiKey),
        account_id: account_id.to_owned(),
        name: name.to_owned(),
        prefix: secret_display_prefix(&secret),
        scopes,
        created_at_ms: now,
        expires_at_ms: expires_in_s
            .map(|s| now.saturating_add(i64::try_from(s * 1000).unwrap_or(i64::MAX))),
        revoked_at_ms: None,
        last_used_at_ms: None,
    };
    store.insert_api_key(&row, &secret_hash(&secret)).await?;
    Ok((row, secret))
}

async fn insert_account(
    store: &Store,
    name: &str,
    roles: Vec<Role>,
) -> Result<(AccountRow, ApiKeyRow, String), StoreError> {
    let account = AccountRow {
        id: new_id(IdKind::Account),
        name: name.to_owned(),
        roles,
        created_at_ms: now_ms(),
    };
    store.insert_account(&account).await?;
    let (key, secret) = issue_key(
        store,
        &account.id,
        "default",
        vec![Scope::Read, Scope::Write],
        None,
    )
    .await?;
    Ok((account, key, secret))
}

/// Creates the first admin when the database has none, writing its key to `path` (0600).
pub(crate) async fn bootstrap_admin(store: &Store, path: &Path) -> Result<(), StartError> {
    if store.admin_exists().await? {
        return Ok(());
    }
    let (account, _key, secret) = insert_account(store, "admin", vec![Role::Admin]).await?;
    crate::files::write_private(path, format!("{secret}\n").as_bytes())
        .map_err(StartError::AdminKey)?;
    tracing::info!(account_id = %account.id, path = %path.display(), "created the admin account; its key is in the file");
    Ok(())
}

fn check_roles(roles: &[Role], caller: Option<&Caller>) -> ApiResult<()> {
    if roles.is_empty() {
        return Err(ApiError::invalid(
            "roles",
            "roles must name at least one of renter, supplier",
        ));
    }
    if roles.contains(&Role::Admin) && !caller.is_some_and(|c| c.has_role(Role::Admin)) {
        return Err(ApiError::Forbidden(
            "only an admin can create an admin account".to_owned(),
        ));
    }
    Ok(())
}

/// Signs up. Anyone may create a renter or supplier account (rate limited per address); only
/// an admin may create an admin.
#[utoipa::path(post, path = "/api/v1/accounts", request_body = CreateAccountRequest,
    responses((status = 201, body = CreateAccountResponse), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_account(
    State(app): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    ClientIp(ip): ClientIp,
    JsonBody(request): JsonBody<CreateAccountRequest>,
) -> ApiResult<(StatusCode, Json<CreateAccountResponse>)> {
    check_name("name", &request.name)?;
    check_roles(&request.roles, caller.as_ref())?;
    app.limits
        .signup
        .check(&ip, now_ms())
        .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
    let mut roles = request.roles.clone();
    roles.sort_by_key(|r| r.as_str());
    roles.dedup();
    let (account, key, secret) = insert_account(&app.store, &request.name, roles).await?;
    let detail = json!({ "name": account.name, "roles": account.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>() });
    audit::record(
        &app,
        caller.as_ref(),
        &ip,
        "account.create",
        Some(&account.id),
        detail,
    )
    .await?;
    let api_key = CreatedApiKey {
        key: convert::api_key(key),
        secret,
    };
    Ok((
        StatusCode::CREATED,
        Json(CreateAccountResponse {
            account: convert::account(account),
            api_key,
        }),
    ))
}

fn me_of(caller: Caller) -> Me {
    Me {
        key_id: caller.auth.key.id.clone(),
        scopes: caller.auth.key.scopes.clone(),
        account: convert::account(caller.auth.account),
    }
}

/// The caller's account and key.
#[utoipa::path(get, path = "/api/v1/me", security(("api_key" = [])), responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(me_of(caller))
}

/// Checks a key and records the login in the audit log (what `flotilla login` calls).
#[utoipa::path(post, path = "/api/v1/login", security(("api_key" = [])), responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn login(State(app): State<AppState>, caller: Caller) -> ApiResult<Json<Me>> {
    audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "login",
        Some(caller.key_id()),
        json!({}),
    )
    .await?;
    Ok(Json(me_of(caller)))
}

/// The caller's API keys (secrets are never shown again).
#[utoipa::path(get, path = "/api/v1/api-keys", params(PageQuery), security(("api_key" = [])), responses((status = 200, body = Page<ApiKeyInfo>)))]
pub async fn list_api_keys(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<ApiKeyInfo>>> {
    let page = PageRequest::from_query(&query)?;
    let rows = app
        .store
        .list_api_keys(caller.account_id(), page.after.as_deref(), page.fetch())
        .await?;
    Ok(Json(page.finish(
        rows,
        |row| row.id.clone(),
        convert::api_key,
    )))
}

/// Creates a key. The secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/api-keys", request_body = CreateApiKeyRequest, security(("api_key" = [])),
    responses((status = 201, body = CreatedApiKey), (status = 422, body = ErrorBody)))]
pub async fn create_api_key(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    caller.require_write()?;
    check_name("name", &request.name)?;
    if request.scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "scopes must name read, write or both",
        ));
    }
    if let Some(lifetime_s) = request.expires_in_s
        && (lifetime_s == 0 || lifetime_s > SECRET_LIFETIME_S_MAX)
    {
        return Err(ApiError::invalid(
            "expires_in_s",
            format!("expires_in_s must be between 1 and {SECRET_LIFETIME_S_MAX}"),
        ));
    }
    // A key never outlives the key that made it, so an expiring key cannot mint a permanent one.
    let expires_in_s = match caller.auth.key.expires_at_ms {
        Some(caller_expires_at_ms) => {
            let caller_left_s = u64::try_from((caller_expires_at_ms - now_ms()) / 1000)
                .unwrap_or(0)
                .max(1);
            Some(
                request
                    .expires_in_s
                    .unwrap_or(caller_left_s)
                    .min(caller_left_s),
            )
        }
        None => request.expires_in_s,
    };
    let (key, secret) = issue_key(
        &app.store,
        caller.account_id(),
        &request.name,
        request.scopes,
        expires_in_s,
    )
    .await?;
    let detail = json!({ "name": key.name, "prefix": key.prefix });
    audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "api_key.create",
        Some(&key.id),
        detail,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: convert::api_key(key),
            secret,
        }),
    ))
}

/// Revokes one of the caller's keys; it is refused from then on.
#[utoipa::path(post, path = "/api/v1/api-keys/{id}/revoke", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ApiKeyInfo), (status = 404, body = ErrorBody)))]
pub async fn revoke_api_key(
    State(app): State<AppState>,
    caller: Caller,
    PathId(key_id): PathId,
) -> ApiResult<Json<ApiKeyInfo>> {
    check_id(IdKind::ApiKey, "api key", &key_id)?;
    caller.require_write()?;
    let key = app
        .store
        .revoke_api_key(caller.account_id(), &key_id, now_ms())
        .await?
        .ok_or(ApiError::NotFound("api key"))?;
    audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "api_key.revoke",
        Some(&key.id),
        json!({ "prefix": key.prefix }),
    )
    .await?;
    Ok(Json(convert::api_key(key)))
}
