//! A supplier's devices: list, show (with telemetry history), rename, pause, resume, remove.

use axum::Json;
use axum::extract::State;
use flotilla_proto::api::{Device, DeviceDetail, ErrorBody, Page, RenameRequest, Role};
use flotilla_proto::id::IdKind;
use flotilla_proto::limits::TELEMETRY_POINTS_MAX;
use serde::Deserialize;
use serde_json::json;

use super::{PageRequest, audit, check_id, check_name, convert};
use crate::device_state::DeviceEvent;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody, PathId, QueryParams};
use crate::fleet::FleetError;
use crate::{AppState, now_ms};

/// Filters on the device list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeviceListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Only this worker's devices.
    pub worker_id: Option<String>,
}

/// How much history `show` returns.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeviceShowQuery {
    /// Newest history points to return (default 60).
    pub history_points: Option<u32>,
}

const HISTORY_POINTS_DEFAULT: u32 = 60;

fn guard(caller: &Caller, device_id: &str, write: bool) -> ApiResult<()> {
    check_id(IdKind::Device, "device", device_id)?;
    caller.require_role(Role::Supplier)?;
    if write {
        caller.require_write()?;
    }
    Ok(())
}

pub(super) async fn load(app: &AppState, caller: &Caller, device_id: &str) -> ApiResult<Device> {
    let row = app
        .store
        .device(caller.account_id(), device_id)
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    let mut devices = [convert::device(row, &app.fleet)];
    with_traffic(app, &mut devices).await?;
    let [device] = devices;
    Ok(device)
}

/// Fills in each device's tunnel traffic.
pub(super) async fn with_traffic(app: &AppState, devices: &mut [Device]) -> ApiResult<()> {
    let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let mut figures = app.store.tunnel_traffic(&ids).await?;
    for device in devices {
        device.tunnel = figures.remove(&device.id).unwrap_or_default();
    }
    Ok(())
}

/// The supplier's devices.
#[utoipa::path(get, path = "/api/v1/devices", params(DeviceListQuery), security(("api_key" = [])), responses((status = 200, body = Page<Device>)))]
pub async fn list_devices(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<DeviceListQuery>,
) -> ApiResult<Json<Page<Device>>> {
    caller.require_role(Role::Supplier)?;
    let page = PageRequest::from_query(&flotilla_proto::api::PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    })?;
    let rows = app
        .store
        .list_devices(
            caller.account_id(),
            query.worker_id.as_deref(),
            page.after.as_deref(),
            page.fetch(),
        )
        .await?;
    let mut page = page.finish(
        rows,
        |row| row.id.clone(),
        |row| convert::device(row, &app.fleet),
    );
    with_traffic(&app, &mut page.items).await?;
    Ok(Json(page))
}

/// One device with its downsampled telemetry history.
#[utoipa::path(get, path = "/api/v1/devices/{id}", params(("id" = String, Path), DeviceShowQuery), security(("api_key" = [])),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorBody)))]
pub async fn show_device(
    State(app): State<AppState>,
    caller: Caller,
    PathId(device_id): PathId,
    QueryParams(query): QueryParams<DeviceShowQuery>,
) -> ApiResult<Json<DeviceDetail>> {
    guard(&caller, &device_id, false)?;
    let points = query.history_points.unwrap_or(HISTORY_POINTS_DEFAULT);
    if points > TELEMETRY_POINTS_MAX {
        return Err(ApiError::invalid(
            "history_points",
            format!("history_points must be at most {TELEMETRY_POINTS_MAX}"),
        ));
    }
    let device = load(&app, &caller, &device_id).await?;
    let history = app
        .store
        .telemetry_history(caller.account_id(), &device_id, points)
        .await?;
    Ok(Json(DeviceDetail {
        device,
        history: history.into_iter().map(convert::telemetry_point).collect(),
    }))
}

/// Renames a device.
#[utoipa::path(post, path = "/api/v1/devices/{id}/rename", params(("id" = String, Path)), request_body = RenameRequest, security(("api_key" = [])),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rename_device(
    State(app): State<AppState>,
    caller: Caller,
    PathId(device_id): PathId,
    JsonBody(request): JsonBody<RenameRequest>,
) -> ApiResult<Json<Device>> {
    guard(&caller, &device_id, true)?;
    check_name("name", &request.name)?;
    if !app
        .store
        .rename_device(caller.account_id(), &device_id, &request.name)
        .await?
    {
        return Err(ApiError::NotFound("device"));
    }
    load(&app, &caller, &device_id).await.map(Json)
}

async fn supplier_event(
    app: &AppState,
    caller: &Caller,
    device_id: &str,
    event: DeviceEvent,
    action: &'static str,
) -> ApiResult<Device> {
    guard(caller, device_id, true)?;
    // Ownership first: the fleet knows every device, the query knows whose it is.
    load(app, caller, device_id).await?;
    app.fleet
        .apply_events(&[device_id.to_owned()], event, true)
        .await
        .map_err(|error| match error {
            FleetError::Refused(refused) => {
                ApiError::conflict("invalid_state", refused.to_string())
            }
            FleetError::Raced(_) => ApiError::conflict("state_changed", error.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
    audit::record(
        app,
        Some(caller),
        &caller.ip,
        action,
        Some(device_id),
        json!({}),
    )
    .await?;
    load(app, caller, device_id).await
}

/// Takes an idle device off the market (409 if it is hired or pending).
#[utoipa::path(post, path = "/api/v1/devices/{id}/pause", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause_device(
    State(app): State<AppState>,
    caller: Caller,
    PathId(device_id): PathId,
) -> ApiResult<Json<Device>> {
    supplier_event(
        &app,
        &caller,
        &device_id,
        DeviceEvent::Paused,
        "device.pause",
    )
    .await
    .map(Json)
}

/// Puts a paused device back on the market.
#[utoipa::path(post, path = "/api/v1/devices/{id}/resume", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume_device(
    State(app): State<AppState>,
    caller: Caller,
    PathId(device_id): PathId,
) -> ApiResult<Json<Device>> {
    supplier_event(
        &app,
        &caller,
        &device_id,
        DeviceEvent::Resumed,
        "device.resume",
    )
    .await
    .map(Json)
}

/// Removes a device; its worker's reports of it are ignored from then on.
#[utoipa::path(post, path = "/api/v1/devices/{id}/remove", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody)))]
pub async fn remove_device(
    State(app): State<AppState>,
    caller: Caller,
    PathId(device_id): PathId,
) -> ApiResult<Json<Device>> {
    guard(&caller, &device_id, true)?;
    let device = load(&app, &caller, &device_id).await?;
    if !app
        .store
        .remove_device(caller.account_id(), &device_id, now_ms())
        .await?
    {
        return Err(ApiError::NotFound("device"));
    }
    app.fleet.forget_device(&device_id);
    audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "device.remove",
        Some(&device_id),
        json!({ "model": device.model }),
    )
    .await?;
    Ok(Json(device))
}
