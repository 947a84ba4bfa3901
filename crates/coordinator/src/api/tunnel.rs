//! A renter's connection to a port of one of its nodes: `GET /clusters/{id}/connect?node=&port=`
//! with `Connection: Upgrade` and `Upgrade: flotilla-tunnel`. The checks come first (the
//! caller's cluster, running, the port declared, the node's worker reachable) and answer as any
//! API error; then `101 Switching Protocols`, and the connection's bytes go both ways through
//! the node's worker's tunnel (`tunnels.rs`).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_proto::api::{ClusterSpec, ConnectQuery, ErrorBody, Role};
use flotilla_proto::id::IdKind;
use flotilla_store::{CLUSTER_RUNNING, RunRow};
use hyper_util::rt::TokioIo;

use super::check_id;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, PathId, QueryParams};
use crate::tunnels::OpenError;

/// The protocol name in the `Upgrade` header.
pub const UPGRADE_PROTOCOL: &str = "flotilla-tunnel";

/// The node a connection goes to: its live run, once every check passed.
async fn target(
    app: &AppState,
    caller: &Caller,
    cluster_id: &str,
    query: &ConnectQuery,
) -> ApiResult<RunRow> {
    caller.require_role(Role::Renter)?;
    check_id(IdKind::Cluster, "cluster", cluster_id)?;
    let cluster = app
        .store
        .cluster(caller.account_id(), cluster_id)
        .await?
        .ok_or(ApiError::NotFound("cluster"))?;
    if cluster.state != CLUSTER_RUNNING {
        return Err(ApiError::conflict(
            "not_running",
            format!(
                "the cluster is {}; only a running cluster is reachable",
                cluster.state
            ),
        ));
    }
    let spec: ClusterSpec = serde_json::from_str(&cluster.spec)
        .map_err(|e| ApiError::Internal(format!("stored cluster spec: {e}")))?;
    if !spec.ports.contains(&query.port) {
        return Err(ApiError::invalid(
            "port",
            "is not one of the ports the cluster declared",
        ));
    }
    let runs = app
        .store
        .runs_of(&[cluster_id.to_owned()])
        .await?
        .remove(cluster_id)
        .unwrap_or_default();
    runs.into_iter()
        .filter(|run| run.node_rank == query.node && run.is_live())
        .max_by_key(|run| run.attempt)
        .ok_or_else(|| ApiError::invalid("node", "no node of that rank is running"))
}

/// Connects the caller to a port of one of its running nodes.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/connect", params(("id" = String, Path), ConnectQuery), security(("api_key" = [])),
    responses((status = 101, description = "the connection's bytes follow"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn connect(
    State(app): State<AppState>,
    caller: Caller,
    PathId(cluster_id): PathId,
    QueryParams(query): QueryParams<ConnectQuery>,
    mut request: Request,
) -> ApiResult<Response> {
    let wants_tunnel = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if !wants_tunnel {
        return Err(ApiError::invalid(
            "Upgrade",
            "must be flotilla-tunnel (use flotilla connect)",
        ));
    }
    let run = target(&app, &caller, &cluster_id, &query).await?;
    let stream = app
        .tunnels
        .open(&run.worker_id, &run.id, query.port)
        .await
        .map_err(|error| match error {
            OpenError::Refused(reason) => ApiError::conflict("node_refused", reason),
            other => ApiError::Unavailable(other.to_string()),
        })?;
    let upgrade = hyper::upgrade::on(&mut request);
    let metrics = app.metrics.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let started = Instant::now();
        let mut renter = TokioIo::new(upgraded);
        let mut node = stream;
        let (up, down) = tokio::io::copy_bidirectional(&mut renter, &mut node)
            .await
            .unwrap_or((0, 0));
        metrics.tunnel_bytes(up, down);
        tracing::info!(run_id = %run.id, rank = run.node_rank, port = query.port, bytes_to_node = up, bytes_from_node = down, duration_ms = started.elapsed().as_millis() as u64, "tunnelled connection ended");
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    Ok(response)
}
