//! The audit log: recording, and the admin's read endpoint.

use axum::Json;
use axum::extract::State;
use flotilla_proto::api::{AuditEvent, Page, PageQuery, Role};
use flotilla_proto::id::{IdKind, new_id};
use flotilla_store::NewAuditEvent;

use super::PageRequest;
use super::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, QueryParams};
use crate::{AppState, now_ms};

/// Records an action by `caller` on `target_id`. `detail` must never hold a secret.
pub(crate) async fn record(
    app: &AppState,
    caller: Option<&Caller>,
    ip: &str,
    action: &'static str,
    target_id: Option<&str>,
    detail: serde_json::Value,
) -> ApiResult<()> {
    let event = NewAuditEvent {
        actor_account_id: caller.map(|c| c.account_id().to_owned()),
        actor_key_id: caller.map(|c| c.key_id().to_owned()),
        source_ip: Some(ip.to_owned()),
        action,
        target_id: target_id.map(str::to_owned),
        detail,
    };
    app.store
        .insert_audit_event(&new_id(IdKind::AuditEvent), now_ms(), &event)
        .await?;
    Ok(())
}

/// The audit log, newest first. Admins only.
#[utoipa::path(get, path = "/api/v1/audit-events", params(PageQuery), security(("api_key" = [])),
    responses((status = 200, body = Page<AuditEvent>), (status = 403, body = flotilla_proto::api::ErrorBody)))]
pub async fn list_audit_events(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<AuditEvent>>> {
    caller.require_role(Role::Admin)?;
    let page = PageRequest::from_query(&query)?;
    let before = match &page.after {
        Some(cursor) => {
            let (at_ms, id) = cursor.split_once('/').ok_or_else(|| {
                ApiError::invalid("cursor", "cursor is not one this api returned")
            })?;
            Some((
                at_ms.parse::<i64>().map_err(|_| {
                    ApiError::invalid("cursor", "cursor is not one this api returned")
                })?,
                id.to_owned(),
            ))
        }
        None => None,
    };
    let rows = app
        .store
        .list_audit_events(
            before.as_ref().map(|(at, id)| (*at, id.as_str())),
            page.fetch(),
        )
        .await?;
    Ok(Json(page.finish(
        rows,
        |row| format!("{}/{}", row.at_ms, row.id),
        convert::audit_event,
    )))
}
