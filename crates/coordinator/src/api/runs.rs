//! A node run's checkpoints, for its worker: `PUT` keeps the newest archive of the node's
//! checkpoint directory, `GET` returns the newest one of its rank (from any earlier attempt),
//! so a replacement starts where the lost node stopped. The caller shows the run's token
//! (`X-Run-Token`, given in its order); only a live run may store or fetch.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_proto::api::ErrorBody;
use flotilla_proto::id::IdKind;
use flotilla_store::RunRow;

use super::check_id;
use crate::clusters::{CHECKPOINT_BYTES_MAX, run_token};
use crate::error::{ApiError, ApiResult};
use crate::extract::PathId;
use crate::{AppState, now_ms};

/// The run, when the caller holds its token and it is live.
async fn live_run(app: &AppState, run_id: &str, headers: &HeaderMap) -> ApiResult<RunRow> {
    check_id(IdKind::Run, "run", run_id)?;
    let shown = headers
        .get("x-run-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected = run_token(app, run_id);
    if !super::same_secret(shown, &expected) {
        return Err(ApiError::Unauthenticated);
    }
    let run = app
        .store
        .run(run_id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    if !run.is_live() {
        return Err(ApiError::conflict(
            "run_not_live",
            "the run ended or was moved elsewhere",
        ));
    }
    Ok(run)
}

/// Stores a run's newest checkpoint (a tar.gz).
#[utoipa::path(put, path = "/api/v1/runs/{id}/checkpoint", params(("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_checkpoint(
    State(app): State<AppState>,
    PathId(run_id): PathId,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let run = live_run(&app, &run_id, &headers).await?;
    if body.len() as u64 > CHECKPOINT_BYTES_MAX {
        return Err(ApiError::TooLarge(CHECKPOINT_BYTES_MAX as usize));
    }
    app.store.put_checkpoint(&run, &body, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The newest checkpoint of the run's rank.
#[utoipa::path(get, path = "/api/v1/runs/{id}/checkpoint", params(("id" = String, Path)),
    responses((status = 200), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_checkpoint(
    State(app): State<AppState>,
    PathId(run_id): PathId,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = live_run(&app, &run_id, &headers).await?;
    let data = app
        .store
        .checkpoint(&run.cluster_id, run.node_rank)
        .await?
        .ok_or(ApiError::NotFound("checkpoint"))?;
    Ok(([(header::CONTENT_TYPE, "application/gzip")], data).into_response())
}
