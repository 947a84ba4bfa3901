//! A supplier's workers: list, show, rename, pause, resume, remove.

use axum::Json;
use axum::extract::State;
use flotilla_proto::api::{ErrorBody, Page, PageQuery, RenameRequest, Role, Worker, WorkerDetail};
use flotilla_proto::id::IdKind;
use flotilla_proto::limits::DEVICES_PER_WORKER_MAX;
use serde_json::json;

use super::{PageRequest, audit, check_id, check_name, convert};
use crate::device_state::DeviceEvent;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody, PathId, QueryParams};
use crate::{AppState, now_ms};

/// Checks the caller may manage workers and that the id has the right shape.
fn guard(caller: &Caller, worker_id: &str, write: bool) -> ApiResult<()> {
    check_id(IdKind::Worker, "worker", worker_id)?;
    caller.require_role(Role::Supplier)?;
    if write {
        caller.require_write()?;
    }
    Ok(())
}

pub(super) async fn detail(
    app: &AppState,
    account_id: &str,
    worker_id: &str,
) -> ApiResult<WorkerDetail> {
    let worker = app
        .store
        .worker(account_id, worker_id)
        .await?
        .ok_or(ApiError::NotFound("worker"))?;
    let devices = app
        .store
        .list_devices(
            account_id,
            Some(worker_id),
            None,
            DEVICES_PER_WORKER_MAX as u32,
        )
        .await?;
    let mut devices: Vec<_> = devices
        .into_iter()
        .map(|row| convert::device(row, &app.fleet))
        .collect();
    super::devices::with_traffic(app, &mut devices).await?;
    Ok(WorkerDetail {
        worker: convert::worker(worker, &app.fleet),
        devices,
    })
}

/// The supplier's workers.
#[utoipa::path(get, path = "/api/v1/workers", params(PageQuery), security(("api_key" = [])), responses((status = 200, body = Page<Worker>)))]
pub async fn list_workers(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<Worker>>> {
    caller.require_role(Role::Supplier)?;
    let page = PageRequest::from_query(&query)?;
    let rows = app
        .store
        .list_workers(caller.account_id(), page.after.as_deref(), page.fetch())
        .await?;
    Ok(Json(page.finish(
        rows,
        |row| row.id.clone(),
        |row| convert::worker(row, &app.fleet),
    )))
}

/// One worker with its devices.
#[utoipa::path(get, path = "/api/v1/workers/{id}", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WorkerDetail), (status = 404, body = ErrorBody)))]
pub async fn show_worker(
    State(app): State<AppState>,
    caller: Caller,
    PathId(worker_id): PathId,
) -> ApiResult<Json<WorkerDetail>> {
    guard(&caller, &worker_id, false)?;
    Ok(Json(detail(&app, caller.account_id(), &worker_id).await?))
}

/// Renames a worker.
#[utoipa::path(post, path = "/api/v1/workers/{id}/rename", params(("id" = String, Path)), request_body = RenameRequest, security(("api_key" = [])),
    responses((status = 200, body = WorkerDetail), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rename_worker(
    State(app): State<AppState>,
    caller: Caller,
    PathId(worker_id): PathId,
    JsonBody(request): JsonBody<RenameRequest>,
) -> ApiResult<Json<WorkerDetail>> {
    guard(&caller, &worker_id, true)?;
    check_name("name", &request.name)?;
    if !app
        .store
        .rename_worker(caller.account_id(), &worker_id, &request.name)
        .await?
    {
        return Err(ApiError::NotFound("worker"));
    }
    Ok(Json(detail(&app, caller.account_id(), &worker_id).await?))
}

async fn set_paused(
    app: &AppState,
    caller: &Caller,
    worker_id: &str,
    paused: bool,
) -> ApiResult<WorkerDetail> {
    guard(caller, worker_id, true)?;
    if !app
        .store
        .set_worker_paused(caller.account_id(), worker_id, paused)
        .await?
    {
        return Err(ApiError::NotFound("worker"));
    }
    let device_ids = app.fleet.worker_device_ids(worker_id);
    let event = if paused {
        DeviceEvent::Paused
    } else {
        DeviceEvent::Resumed
    };
    // Devices that cannot take the event (hired, pending) keep their state.
    app.fleet
        .apply_events(&device_ids, event, false)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let action = if paused {
        "worker.pause"
    } else {
        "worker.resume"
    };
    audit::record(
        app,
        Some(caller),
        &caller.ip,
        action,
        Some(worker_id),
        json!({}),
    )
    .await?;
    detail(app, caller.account_id(), worker_id).await
}

/// Pauses every idle device of the worker.
#[utoipa::path(post, path = "/api/v1/workers/{id}/pause", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WorkerDetail), (status = 404, body = ErrorBody)))]
pub async fn pause_worker(
    State(app): State<AppState>,
    caller: Caller,
    PathId(worker_id): PathId,
) -> ApiResult<Json<WorkerDetail>> {
    Ok(Json(set_paused(&app, &caller, &worker_id, true).await?))
}

/// Resumes every paused device of the worker.
#[utoipa::path(post, path = "/api/v1/workers/{id}/resume", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WorkerDetail), (status = 404, body = ErrorBody)))]
pub async fn resume_worker(
    State(app): State<AppState>,
    caller: Caller,
    PathId(worker_id): PathId,
) -> ApiResult<Json<WorkerDetail>> {
    Ok(Json(set_paused(&app, &caller, &worker_id, false).await?))
}

/// Removes a worker and its devices; its key is refused from then on.
#[utoipa::path(post, path = "/api/v1/workers/{id}/remove", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Worker), (status = 404, body = ErrorBody)))]
pub async fn remove_worker(
    State(app): State<AppState>,
    caller: Caller,
    PathId(worker_id): PathId,
) -> ApiResult<Json<Worker>> {
    guard(&caller, &worker_id, true)?;
    let worker = app
        .store
        .worker(caller.account_id(), &worker_id)
        .await?
        .ok_or(ApiError::NotFound("worker"))?;
    if !app
        .store
        .remove_worker(caller.account_id(), &worker_id, now_ms())
        .await?
    {
        return Err(ApiError::NotFound("worker"));
    }
    app.fleet.forget_worker(&worker_id);
    audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "worker.remove",
        Some(&worker_id),
        json!({ "hostname": worker.hostname }),
    )
    .await?;
    Ok(Json(convert::worker(worker, &app.fleet)))
}
