//! Proof-of-compute transcripts: public, so anyone can re-check that a device did the work.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use flotilla_proto::api::{ErrorBody, Page, ProofInfo};
use flotilla_proto::id::IdKind;
use flotilla_proto::time::rfc3339;
use flotilla_store::ProofRow;
use serde::Deserialize;

use super::{PageRequest, check_id};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathId, QueryParams};

/// Filters on the proof list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProofListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Only this device's proofs.
    pub device_id: Option<String>,
}

fn info(row: ProofRow) -> ProofInfo {
    ProofInfo {
        id: row.id,
        device_id: row.device_id,
        worker_id: row.worker_id,
        class: row.class,
        passed: row.passed,
        reason: row.reason,
        elapsed_ms: row.elapsed_ms,
        created_at: rfc3339(row.created_at_ms),
    }
}

/// Every proof attempt, oldest first. No key needed.
#[utoipa::path(get, path = "/api/v1/proofs", params(ProofListQuery), responses((status = 200, body = Page<ProofInfo>)))]
pub async fn list_proofs(
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ProofListQuery>,
) -> ApiResult<Json<Page<ProofInfo>>> {
    let page = PageRequest::from_query(&flotilla_proto::api::PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    })?;
    let rows = app
        .store
        .list_proofs(
            query.device_id.as_deref(),
            page.after.as_deref(),
            page.fetch(),
        )
        .await?;
    Ok(Json(page.finish(rows, |row| row.id.clone(), info)))
}

/// One proof attempt. No key needed.
#[utoipa::path(get, path = "/api/v1/proofs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ProofInfo), (status = 404, body = ErrorBody)))]
pub async fn show_proof(
    State(app): State<AppState>,
    PathId(proof_id): PathId,
) -> ApiResult<Json<ProofInfo>> {
    check_id(IdKind::Proof, "proof", &proof_id)?;
    let (row, _) = app
        .store
        .proof(&proof_id)
        .await?
        .ok_or(ApiError::NotFound("proof"))?;
    Ok(Json(info(row)))
}

/// The coordinator's signature over the transcript: who vouches for its timings.
#[utoipa::path(get, path = "/api/v1/proofs/{id}/signature", params(("id" = String, Path)),
    responses((status = 200, body = flotilla_proto::api::ProofSignature), (status = 404, body = ErrorBody)))]
pub async fn proof_signature(
    State(app): State<AppState>,
    PathId(proof_id): PathId,
) -> ApiResult<axum::Json<flotilla_proto::api::ProofSignature>> {
    use ed25519_dalek::Signer;
    check_id(IdKind::Proof, "proof", &proof_id)?;
    let (_, stored) = app
        .store
        .proof(&proof_id)
        .await?
        .ok_or(ApiError::NotFound("proof"))?;
    let transcript: flotilla_proof::Transcript = serde_json::from_str(&stored)
        .map_err(|e| ApiError::Internal(format!("stored transcript: {e}")))?;
    let message = flotilla_proof::transcript_message(&transcript);
    let signature = app.ledger.signing_key().sign(&message);
    Ok(axum::Json(flotilla_proto::api::ProofSignature {
        proof_id,
        public_key: app.ledger.public_key_hex(),
        signature: hex::encode(signature.to_bytes()),
    }))
}

/// The transcript, exactly as stored: `flotilla verify-proof` re-checks it offline.
#[utoipa::path(get, path = "/api/v1/proofs/{id}/transcript", params(("id" = String, Path)),
    responses((status = 200, description = "the transcript (flotilla_proof::Transcript) as JSON"), (status = 404, body = ErrorBody)))]
pub async fn proof_transcript(
    State(app): State<AppState>,
    PathId(proof_id): PathId,
) -> ApiResult<Response> {
    check_id(IdKind::Proof, "proof", &proof_id)?;
    let (_, transcript) = app
        .store
        .proof(&proof_id)
        .await?
        .ok_or(ApiError::NotFound("proof"))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], transcript).into_response())
}
