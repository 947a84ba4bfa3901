//! The HTTP API: routes, the OpenAPI document generated from the handlers, health and metrics.

pub mod accounts;
pub mod audit;
pub mod clusters;
mod convert;
pub mod devices;
pub mod enrollment;
pub mod ledger;
pub mod market;
pub mod proofs;
pub mod proposals;
pub mod requests;
pub mod runs;
pub mod tunnel;
pub mod workers;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use flotilla_proto::api::{self as wire, PageQuery};
use flotilla_proto::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, REQUEST_BODY_BYTES_MAX};
use utoipa::OpenApi;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla coordinator API", description = "Decentralized GPU cloud: accounts, keys, enrollment, workers, devices, audit."),
    paths(
        health,
        accounts::create_account, accounts::me, accounts::login,
        accounts::list_api_keys, accounts::create_api_key, accounts::revoke_api_key,
        enrollment::create_token, enrollment::list_tokens, enrollment::show_token, enrollment::revoke_token,
        enrollment::enroll,
        workers::list_workers, workers::show_worker, workers::rename_worker, workers::pause_worker,
        workers::resume_worker, workers::remove_worker,
        devices::list_devices, devices::show_device, devices::rename_device, devices::pause_device,
        devices::resume_device, devices::remove_device,
        audit::list_audit_events,
        proofs::list_proofs, proofs::show_proof, proofs::proof_transcript,
        proofs::proof_signature,
        market::list_offers, market::market_prices, market::market_supply, market::set_device_price,
        market::set_worker_location,
        requests::create_request, requests::list_requests, requests::show_request,
        requests::cancel_request, requests::give_feedback,
        ledger::wallet, ledger::spending, ledger::history, ledger::transfer, ledger::withdraw, ledger::faucet,
        ledger::deposit, ledger::stake_info, ledger::stake, ledger::unstake, ledger::slash,
        ledger::return_slash, ledger::ledger_info, ledger::epochs, ledger::entry_proof,
        ledger::export,
        proposals::create_proposal, proposals::list_proposals, proposals::show_proposal,
        proposals::vote,
        clusters::quote_cluster, clusters::deploy_cluster, clusters::list_clusters,
        clusters::show_cluster, clusters::terminate_cluster, clusters::extend_cluster,
        clusters::cluster_logs, clusters::rate_nodes,
        runs::put_checkpoint, runs::get_checkpoint, tunnel::connect, tunnel::create_link,
    ),
    components(schemas(wire::ErrorBody, wire::ErrorDetail)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("flt_...")
                    .build(),
            ),
        );
    }
}

/// Every route.
pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .route("/accounts", post(accounts::create_account))
        .route("/me", get(accounts::me))
        .route("/login", post(accounts::login))
        .route(
            "/api-keys",
            get(accounts::list_api_keys).post(accounts::create_api_key),
        )
        .route("/api-keys/{id}/revoke", post(accounts::revoke_api_key))
        .route(
            "/enrollment-tokens",
            get(enrollment::list_tokens).post(enrollment::create_token),
        )
        .route("/enrollment-tokens/{id}", get(enrollment::show_token))
        .route(
            "/enrollment-tokens/{id}/revoke",
            post(enrollment::revoke_token),
        )
        .route("/workers/enroll", post(enrollment::enroll))
        .route("/workers/connect", get(enrollment::connect))
        .route("/workers", get(workers::list_workers))
        .route("/workers/{id}", get(workers::show_worker))
        .route("/workers/{id}/rename", post(workers::rename_worker))
        .route("/workers/{id}/pause", post(workers::pause_worker))
        .route("/workers/{id}/resume", post(workers::resume_worker))
        .route("/workers/{id}/remove", post(workers::remove_worker))
        .route("/devices", get(devices::list_devices))
        .route("/devices/{id}", get(devices::show_device))
        .route("/devices/{id}/rename", post(devices::rename_device))
        .route("/devices/{id}/pause", post(devices::pause_device))
        .route("/devices/{id}/resume", post(devices::resume_device))
        .route("/devices/{id}/remove", post(devices::remove_device))
        .route("/devices/{id}/price", post(market::set_device_price))
        .route("/workers/{id}/location", post(market::set_worker_location))
        .route("/offers", get(market::list_offers))
        .route("/market/prices", get(market::market_prices))
        .route("/market/supply", get(market::market_supply))
        .route(
            "/requests",
            post(requests::create_request).get(requests::list_requests),
        )
        .route("/requests/{id}", get(requests::show_request))
        .route("/requests/{id}/cancel", post(requests::cancel_request))
        .route("/requests/{id}/feedback", post(requests::give_feedback))
        .route(
            "/clusters",
            get(clusters::list_clusters).post(clusters::deploy_cluster),
        )
        .route("/clusters/quote", post(clusters::quote_cluster))
        .route("/clusters/{id}", get(clusters::show_cluster))
        .route(
            "/clusters/{id}/terminate",
            post(clusters::terminate_cluster),
        )
        .route("/clusters/{id}/extend", post(clusters::extend_cluster))
        .route("/clusters/{id}/logs", get(clusters::cluster_logs))
        .route("/clusters/{id}/connect", get(tunnel::connect))
        .route("/clusters/{id}/links", post(tunnel::create_link))
        .route("/clusters/{id}/ratings", post(clusters::rate_nodes))
        .route(
            "/runs/{id}/checkpoint",
            get(runs::get_checkpoint)
                .put(runs::put_checkpoint)
                // A checkpoint is the one large body; the default bound holds everywhere else.
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::clusters::CHECKPOINT_BYTES_MAX as usize,
                )),
        )
        .route("/wallet", get(ledger::wallet))
        .route("/wallet/history", get(ledger::history))
        .route("/wallet/spending", get(ledger::spending))
        .route("/wallet/transfers", post(ledger::transfer))
        .route("/wallet/withdrawals", post(ledger::withdraw))
        .route("/wallet/faucet", post(ledger::faucet))
        .route("/wallet/stake", get(ledger::stake_info).post(ledger::stake))
        .route("/wallet/unstake", post(ledger::unstake))
        .route("/ledger", get(ledger::ledger_info))
        .route("/ledger/deposits", post(ledger::deposit))
        .route("/ledger/slashes", post(ledger::slash))
        .route("/ledger/slashes/{id}/return", post(ledger::return_slash))
        .route("/ledger/epochs", get(ledger::epochs))
        .route("/ledger/entries/{id}/proof", get(ledger::entry_proof))
        .route("/ledger/export", get(ledger::export))
        .route(
            "/proposals",
            post(proposals::create_proposal).get(proposals::list_proposals),
        )
        .route("/proposals/{id}", get(proposals::show_proposal))
        .route("/proposals/{id}/votes", post(proposals::vote))
        .route("/audit-events", get(audit::list_audit_events))
        .route("/proofs", get(proofs::list_proofs))
        .route("/proofs/{id}", get(proofs::show_proof))
        .route("/proofs/{id}/transcript", get(proofs::proof_transcript))
        .route("/proofs/{id}/signature", get(proofs::proof_signature))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics_text))
        .route("/t/{cluster}/{node}/{port}", any(tunnel::proxy))
        .route("/t/{cluster}/{node}/{port}/", any(tunnel::proxy))
        .route("/t/{cluster}/{node}/{port}/{*rest}", any(tunnel::proxy))
        .merge(crate::web::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), record_request))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn record_request(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    // Labels come from a closed set: any method name is valid HTTP, and each new label value
    // would be a new time series.
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let response = next.run(request).await;
    let labels = vec![
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    app.metrics.api_requests.get_or_create(&labels).inc();
    app.metrics
        .api_request_duration
        .get_or_create(&labels[..2].to_vec())
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Liveness and version.
#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, body = wire::Health)))]
pub async fn health(State(app): State<AppState>) -> axum::Json<wire::Health> {
    axum::Json(wire::Health {
        status: "ok".to_owned(),
        version: flotilla_proto::AGENT_VERSION.to_owned(),
        database: app.store.backend().as_str().to_owned(),
    })
}

async fn openapi_json() -> Response {
    let body = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    let lanes = i64::try_from(app.tunnels.lanes_open()).unwrap_or(i64::MAX);
    app.metrics.tunnel_lanes.set(lanes);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// A validated page request: how many rows to fetch and where to start.
#[derive(Debug, Clone)]
pub(crate) struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

impl PageRequest {
    pub fn from_query(query: &PageQuery) -> ApiResult<PageRequest> {
        let limit = query.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if limit == 0 || limit > PAGE_LIMIT_MAX {
            return Err(ApiError::invalid(
                "limit",
                format!("limit must be between 1 and {PAGE_LIMIT_MAX}"),
            ));
        }
        let after = query
            .cursor
            .as_deref()
            .map(|cursor| {
                hex::decode(cursor)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        ApiError::invalid("cursor", "cursor is not one this api returned")
                    })
            })
            .transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// Rows to ask the store for: one more than the page, to know whether another follows.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// Cuts the fetched rows to the page and makes the next cursor.
    pub fn finish<R, T>(
        &self,
        mut rows: Vec<R>,
        key: impl Fn(&R) -> String,
        convert: impl Fn(R) -> T,
    ) -> wire::Page<T> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next_cursor = if more {
            rows.last().map(|row| hex::encode(key(row)))
        } else {
            None
        };
        wire::Page {
            items: rows.into_iter().map(convert).collect(),
            next_cursor,
        }
    }
}

/// Checks a user-supplied name.
pub(crate) fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let chars = name.chars().count();
    if chars == 0
        || chars > flotilla_proto::limits::NAME_CHARS_MAX
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            field,
            format!(
                "{field} must be 1 to {} characters without control characters",
                flotilla_proto::limits::NAME_CHARS_MAX
            ),
        ));
    }
    Ok(())
}

/// Checks that a path id has the expected kind; any other answers 404 like a missing object.
/// Whether a secret shown equals the one expected, compared in constant time (the comparison
/// must not tell an attacker how much of a guess was right).
pub(crate) fn same_secret(shown: &str, expected: &str) -> bool {
    shown.len() == expected.len()
        && shown
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub(crate) fn check_id(
    kind: flotilla_proto::id::IdKind,
    what: &'static str,
    id: &str,
) -> ApiResult<()> {
    if flotilla_proto::id::is_id(kind, id) {
        Ok(())
    } else {
        Err(ApiError::NotFound(what))
    }
}
