//! A renter's connection to a port of one of its nodes: `GET /clusters/{id}/connect?node=&port=`
//! with `Connection: Upgrade` and `Upgrade: flotilla-tunnel`. The checks come first (the
//! caller's cluster, running, the port declared, the node's worker reachable) and answer as any
//! API error; then `101 Switching Protocols`, and the connection's bytes go both ways through
//! the node's worker's tunnel (`tunnels.rs`). With `standby=true` the checks and the open
//! happen ahead of use: the node is dialled, and the connection counted, from the renter's go
//! byte on (`flotilla connect` keeps a few such connections ready).

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_proto::api::{ClusterSpec, ConnectQuery, ErrorBody, LinkInfo, LinkRequest, Role};
use flotilla_proto::id::IdKind;
use flotilla_proto::wire::{STANDBY_GO, STANDBY_WAIT_MS_MAX};
use flotilla_store::{CLUSTER_RUNNING, RunRow};
use flotilla_tunnel::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::check_id;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, PathId, QueryParams};
use crate::traffic::Metered;
use crate::tunnels::{OpenError, Standby};

/// The protocol name in the `Upgrade` header.
pub const UPGRADE_PROTOCOL: &str = "flotilla-tunnel";

/// The node a connection goes to (its live run, once every check passed), and its cluster's
/// spec.
async fn target(
    app: &AppState,
    account_id: &str,
    cluster_id: &str,
    node: u32,
    port: u16,
) -> ApiResult<(RunRow, ClusterSpec)> {
    check_id(IdKind::Cluster, "cluster", cluster_id)?;
    let cluster = app
        .store
        .cluster(account_id, cluster_id)
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
    if !crate::clusters::declared_ports(&spec).contains(&port) {
        return Err(ApiError::invalid(
            "port",
            "is not one of the ports the cluster declared",
        ));
    }
    let runs = app.store.runs_of_cluster(cluster_id).await?;
    let run = runs
        .into_iter()
        .filter(|run| run.node_rank == node && run.is_live())
        .max_by_key(|run| run.attempt)
        .ok_or_else(|| ApiError::invalid("node", "no node of that rank is running"))?;
    Ok((run, spec))
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
    caller.require_role(Role::Renter)?;
    let (run, _) = target(
        &app,
        caller.account_id(),
        &cluster_id,
        query.node,
        query.port,
    )
    .await?;
    let opened = if query.standby {
        app.tunnels
            .open_standby(&run, query.port)
            .await
            .map(Opened::Standby)
    } else {
        app.tunnels.open(&run, query.port).await.map(Opened::Now)
    }
    .map_err(open_error)?;
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut renter = TokioIo::new(upgraded);
        let mut node = match opened {
            Opened::Now(node) => node,
            Opened::Standby(mut standby) => {
                if !went(&mut renter, &mut standby.stream).await {
                    return;
                }
                app.tunnels.meter(standby, &run)
            }
        };
        let started = Instant::now();
        let idle_timeout = app.config.tunnel_idle_timeout();
        let carried = carry_renter(&mut renter, &mut node, idle_timeout).await;
        let idle = matches!(&carried, Err(e) if e.kind() == std::io::ErrorKind::TimedOut);
        let (up, down) = carried.unwrap_or((0, 0));
        tracing::info!(run_id = %run.id, rank = run.node_rank, port = query.port, bytes_to_node = up, bytes_from_node = down, duration_ms = started.elapsed().as_millis() as u64, closed_idle = idle, "tunnelled connection ended");
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    Ok(response)
}

/// Carries a renter's connection and its node's stream both ways until both end, or until
/// no byte moved for `idle_timeout` (the coordinator's `tunnel_idle_timeout_s`).
async fn carry_renter<R, N>(
    renter: &mut R,
    node: &mut N,
    idle_timeout: Option<Duration>,
) -> std::io::Result<(u64, u64)>
where
    R: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    N: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match idle_timeout {
        Some(timeout) => flotilla_tunnel::carry_until_idle(renter, node, timeout).await,
        None => flotilla_tunnel::carry(renter, node).await,
    }
}

/// A connection's stream to its node: carrying now, or on standby until the renter's go.
enum Opened {
    Now(Metered),
    Standby(Standby),
}

fn open_error(error: OpenError) -> ApiError {
    match error {
        OpenError::Refused(reason) => ApiError::conflict("node_refused", reason),
        full @ OpenError::NodeFull { .. } => ApiError::conflict(
            "too_many_connections",
            format!("{full}; close one and try again"),
        ),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// A standby connection's start: whether the renter's go byte came and was passed on to the
/// worker. Not when the byte is another, when either side closed first (the worker sends
/// nothing before the go, so anything from it is its end), or past [`STANDBY_WAIT_MS_MAX`].
async fn went<R>(renter: &mut R, stream: &mut Stream) -> bool
where
    R: AsyncRead + Unpin,
{
    let mut ended = [0u8; 1];
    let go = tokio::select! {
        go = renter.read_u8() => go.ok(),
        _ = stream.read(&mut ended) => None,
        _ = tokio::time::sleep(Duration::from_millis(STANDBY_WAIT_MS_MAX)) => None,
    };
    go == Some(STANDBY_GO) && stream.write_all(&[STANDBY_GO]).await.is_ok()
}

// --- HTTP access -------------------------------------------------------------------------

/// Longest a signed link lives, and how long one lives when the request names nothing.
pub const LINK_TTL_S_MAX: u64 = 24 * 3_600;
pub const LINK_TTL_S_DEFAULT: u64 = 3_600;
/// The query parameter and cookie that carry a signed link's token.
const LINK_PARAM: &str = "flotilla_link";

/// A link's token: its expiry and a keyed hash binding it to the cluster, node and port.
fn link_token(
    app: &AppState,
    cluster_id: &str,
    node: u32,
    port: u16,
    expires_at_ms: i64,
) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"flotilla/link/v1\0")
        .chain_update(app.ledger.signing_key().to_bytes())
        .chain_update(cluster_id.as_bytes())
        .chain_update(node.to_be_bytes())
        .chain_update(port.to_be_bytes())
        .chain_update(expires_at_ms.to_be_bytes())
        .finalize();
    format!("{expires_at_ms}.{}", hex::encode(digest))
}

/// Whether `token` is a live link to this node's port.
fn link_valid(app: &AppState, token: &str, cluster_id: &str, node: u32, port: u16) -> bool {
    let Some(expires_at_ms) = token
        .split_once('.')
        .and_then(|(expiry, _)| expiry.parse::<i64>().ok())
    else {
        return false;
    };
    let expected = link_token(app, cluster_id, node, port, expires_at_ms);
    super::same_secret(token, &expected) && crate::now_ms() < expires_at_ms
}

/// Makes a short-lived link to a port of a node, which works without an API key (for a
/// browser).
#[utoipa::path(post, path = "/api/v1/clusters/{id}/links", params(("id" = String, Path)), request_body = LinkRequest, security(("api_key" = [])),
    responses((status = 201, body = LinkInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_link(
    State(app): State<AppState>,
    caller: Caller,
    PathId(cluster_id): PathId,
    crate::extract::JsonBody(request): crate::extract::JsonBody<LinkRequest>,
) -> ApiResult<(StatusCode, axum::Json<LinkInfo>)> {
    caller.require_role(Role::Renter)?;
    caller.require_write()?;
    let ttl_s = request.ttl_s.unwrap_or(LINK_TTL_S_DEFAULT);
    if ttl_s == 0 || ttl_s > LINK_TTL_S_MAX {
        return Err(ApiError::invalid("ttl_s", "must be between 1 and 86400"));
    }
    target(
        &app,
        caller.account_id(),
        &cluster_id,
        request.node,
        request.port,
    )
    .await?;
    let expires_at_ms = crate::now_ms() + i64::try_from(ttl_s * 1_000).unwrap_or(i64::MAX);
    let token = link_token(&app, &cluster_id, request.node, request.port, expires_at_ms);
    let path = format!(
        "{}?{LINK_PARAM}={token}",
        crate::clusters::port_path(&cluster_id, request.node, request.port)
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(LinkInfo {
            path,
            expires_at: flotilla_proto::time::rfc3339(expires_at_ms),
        }),
    ))
}

/// What `/t/...` was asked for.
#[derive(Debug, serde::Deserialize)]
pub struct ProxyPath {
    cluster: String,
    node: u32,
    port: u16,
    #[serde(default)]
    rest: String,
}

/// Whether a cookie pair (`name=value`) is our link's.
fn is_link_cookie(pair: &str) -> bool {
    pair.strip_prefix(LINK_PARAM)
        .is_some_and(|rest| rest.starts_with('='))
}

/// The link token a request carries, in its query or its cookie.
fn carried_link(request: &Request) -> Option<String> {
    let from_query = request.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| {
            pair.strip_prefix(LINK_PARAM)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    });
    let from_cookie = || {
        request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                pair.trim()
                    .strip_prefix(LINK_PARAM)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            })
    };
    from_query.or_else(from_cookie)
}

/// The node a proxied request may reach (by the caller's API key, or by a live link), and its
/// cluster's spec.
async fn proxy_target(
    app: &AppState,
    request: &mut Request,
    path: &ProxyPath,
) -> ApiResult<(RunRow, ClusterSpec)> {
    if request.headers().contains_key(header::AUTHORIZATION) {
        let (mut parts, body) = std::mem::take(request).into_parts();
        let caller = <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, app,
        )
        .await;
        *request = Request::from_parts(parts, body);
        let caller = caller?;
        caller.require_role(Role::Renter)?;
        return target(
            app,
            caller.account_id(),
            &path.cluster,
            path.node,
            path.port,
        )
        .await;
    }
    let link = carried_link(request).ok_or(ApiError::Unauthenticated)?;
    if !link_valid(app, &link, &path.cluster, path.node, path.port) {
        return Err(ApiError::Unauthenticated);
    }
    let owner = app
        .store
        .cluster_by_id(&path.cluster)
        .await?
        .ok_or(ApiError::NotFound("cluster"))?
        .account_id;
    target(app, &owner, &path.cluster, path.node, path.port).await
}

/// The request as the node's server sees it: its own path (or the whole path, for a server
/// that serves under its public prefix), no credentials of ours. The server's own cookies go
/// through; ours do not.
fn outgoing(request: Request, path: &ProxyPath, whole_path: bool) -> Request {
    let (mut parts, body) = request.into_parts();
    let query: Vec<&str> = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with(LINK_PARAM))
        .collect();
    let mut uri = if whole_path {
        format!(
            "{}{}",
            crate::clusters::port_path(&path.cluster, path.node, path.port),
            path.rest
        )
    } else {
        format!("/{}", path.rest)
    };
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&query.join("&"));
    }
    parts.uri = uri
        .parse()
        .unwrap_or_else(|_| axum::http::Uri::from_static("/"));
    parts.headers.remove(header::AUTHORIZATION);
    let theirs: Vec<String> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !is_link_cookie(pair))
        .map(str::to_owned)
        .collect();
    parts.headers.remove(header::COOKIE);
    if let Ok(cookies) = HeaderValue::from_str(&theirs.join("; "))
        && !theirs.is_empty()
    {
        parts.headers.insert(header::COOKIE, cookies);
    }
    if let Ok(host) = HeaderValue::from_str(&format!("127.0.0.1:{}", path.port)) {
        parts.headers.insert(header::HOST, host);
    }
    Request::from_parts(parts, body)
}

/// `/t/CLUSTER/NODE/PORT/...`: an HTTP request (WebSockets included) to a port of a node.
pub async fn proxy(
    State(app): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<ProxyPath>,
    mut request: Request,
) -> ApiResult<Response> {
    check_id(IdKind::Cluster, "cluster", &path.cluster)?;
    let (run, spec) = proxy_target(&app, &mut request, &path).await?;
    let whole_path = crate::clusters::serves_under_prefix(&spec, path.node, path.port);
    let link = carried_link(&request);
    let stream = app
        .tunnels
        .open(&run, path.port)
        .await
        .map_err(open_error)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the node's server: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let renter_upgrade = request
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let mut response = sender
        .send_request(outgoing(request, &path, whole_path))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the node's server: {e}")))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(renter_upgrade) = renter_upgrade
    {
        let node_upgrade = hyper::upgrade::on(&mut response);
        let idle_timeout = app.config.tunnel_idle_timeout();
        tokio::spawn(async move {
            if let (Ok(renter), Ok(node)) = (renter_upgrade.await, node_upgrade.await) {
                let (mut renter, mut node) = (TokioIo::new(renter), TokioIo::new(node));
                let _ = carry_renter(&mut renter, &mut node, idle_timeout).await;
            }
        });
    }
    let (mut parts, body) = response.into_parts();
    // A link opened once keeps working for the page's own requests, for this port only.
    // Secure when we serve TLS ourselves: a browser then never sends the link over plain HTTP.
    let secure = if app.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    if let Some(token) = link
        && let Ok(cookie) = HeaderValue::from_str(&format!(
            "{LINK_PARAM}={token}; Path={}; HttpOnly; SameSite=Lax{secure}",
            crate::clusters::port_path(&path.cluster, path.node, path.port)
        ))
    {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    Ok(Response::from_parts(parts, axum::body::Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxied(whole_path: bool) -> Request {
        let request = Request::builder()
            .uri("/t/clu_x/0/8888/lab/tree?flotilla_link=secret&a=1")
            .header(header::AUTHORIZATION, "Bearer key")
            .header(header::COOKIE, "_xsrf=abc; flotilla_link=secret")
            .header(header::COOKIE, "theme=dark")
            .body(axum::body::Body::empty())
            .unwrap();
        let path = ProxyPath {
            cluster: "clu_x".into(),
            node: 0,
            port: 8888,
            rest: "lab/tree".into(),
        };
        outgoing(request, &path, whole_path)
    }

    #[test]
    fn the_node_sees_its_own_path_and_cookies_but_none_of_our_credentials() {
        let request = proxied(false);
        assert_eq!(request.uri(), "/lab/tree?a=1");
        assert!(!request.headers().contains_key(header::AUTHORIZATION));
        let cookies: Vec<&str> = request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["_xsrf=abc; theme=dark"]);
        assert_eq!(request.headers()[header::HOST], "127.0.0.1:8888");
    }

    #[test]
    fn a_server_under_its_prefix_gets_the_path_whole() {
        assert_eq!(proxied(true).uri(), "/t/clu_x/0/8888/lab/tree?a=1");
    }
}
