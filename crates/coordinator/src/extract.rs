//! Request extractors: the caller (from the bearer key), JSON bodies with field-level errors,
//! and the client's address.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use flotilla_proto::api::{Role, Scope};
use flotilla_proto::id::{API_KEY_PREFIX, secret_hash};
use flotilla_proto::time::now_unix_ms;
use flotilla_store::AuthenticatedKey;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// How stale `last_used_at` may get before a request refreshes it.
const KEY_TOUCH_GRANULARITY_MS: i64 = 60_000;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub auth: AuthenticatedKey,
    pub ip: String,
}

impl Caller {
    pub fn account_id(&self) -> &str {
        &self.auth.account.id
    }

    pub fn key_id(&self) -> &str {
        &self.auth.key.id
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.auth.account.roles.contains(&role)
    }

    /// Refuses callers without `role` (403).
    pub fn require_role(&self, role: Role) -> Result<(), ApiError> {
        if self.has_role(role) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "this action needs the {} role",
            role.as_str()
        )))
    }

    /// Refuses keys without write scope (403).
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.auth.key.scopes.contains(&Scope::Write) {
            return Ok(());
        }
        Err(ApiError::Forbidden(
            "this action needs an api key with write scope".to_owned(),
        ))
    }
}

/// The client's address, for rate limits and the audit log.
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<ClientIp, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string());
        Ok(ClientIp(ip))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Caller, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, app).await?;
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|secret| secret.starts_with(API_KEY_PREFIX));
        let now_ms = now_unix_ms();
        let auth = match secret {
            Some(secret) => {
                app.store
                    .authenticate_key(&secret_hash(secret), now_ms)
                    .await?
            }
            None => None,
        };
        let Some(auth) = auth else {
            // Failed attempts are limited per address, so keys cannot be guessed at speed.
            app.limits
                .auth_failures
                .check(&ip, now_ms)
                .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
            return Err(ApiError::Unauthenticated);
        };
        // Only a stale stamp costs a write, so reads stay reads.
        let stale = auth
            .key
            .last_used_at_ms
            .is_none_or(|at| now_ms - at >= KEY_TOUCH_GRANULARITY_MS);
        if stale {
            app.store
                .touch_api_key(&auth.key.id, now_ms, KEY_TOUCH_GRANULARITY_MS)
                .await?;
        }
        Ok(Caller { auth, ip })
    }
}

/// A JSON body, decoded with the path of the failing field in the error.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::Malformed {
                message: "content type must be application/json".to_owned(),
                field: None,
            });
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(flotilla_proto::limits::REQUEST_BODY_BYTES_MAX)
                } else {
                    ApiError::Malformed {
                        message: format!("could not read the body: {rejection}"),
                        field: None,
                    }
                }
            })?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// Decodes JSON, naming the field at fault.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        // For an unknown field, make sure the path ends with the field's own name.
        let field = match unknown_field_name(&message) {
            Some(name) if path == "." => Some(name.to_owned()),
            Some(name) if !path.ends_with(name) => Some(format!("{path}.{name}")),
            _ => (path != ".").then_some(path),
        };
        ApiError::Malformed {
            message: format!("invalid json body: {message}"),
            field,
        }
    })?;
    // Trailing bytes after the document are an error too, not silently ignored.
    deserializer.end().map_err(|e| ApiError::Malformed {
        message: format!("invalid json body: {e}"),
        field: None,
    })?;
    Ok(value)
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api::RenameRequest;

    #[test]
    fn errors_name_the_field() {
        let error = decode_json::<RenameRequest>(br#"{"name": "a", "state": "idle"}"#).unwrap_err();
        match error {
            ApiError::Malformed { field, .. } => assert_eq!(field.as_deref(), Some("state")),
            other => panic!("unexpected {other:?}"),
        }
        let error = decode_json::<RenameRequest>(br#"{"name": 5}"#).unwrap_err();
        match error {
            ApiError::Malformed { field, .. } => assert_eq!(field.as_deref(), Some("name")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode_json::<RenameRequest>(b"\xff\x00").is_err());
        assert!(decode_json::<RenameRequest>(br#"{"name": "a"} trailing"#).is_err());
        assert!(decode_json::<RenameRequest>(br#" {"name": "a"} "#).is_ok());
    }
}

/// Query parameters, with a JSON error when they do not parse.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<QueryParams<T>, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| QueryParams(query.0))
            .map_err(|rejection| ApiError::Malformed {
                message: rejection.body_text().to_lowercase(),
                field: None,
            })
    }
}

/// The caller if the request carries credentials; a request with bad credentials is refused
/// rather than treated as anonymous.
#[derive(Debug)]
pub struct MaybeCaller(pub Option<Caller>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<MaybeCaller, ApiError> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybeCaller(None));
        }
        Caller::from_request_parts(parts, app)
            .await
            .map(|caller| MaybeCaller(Some(caller)))
    }
}

/// The `{id}` of a route, with a JSON 404 when it does not decode (e.g. `%FF`).
#[derive(Debug)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathId, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|path| PathId(path.0))
            .map_err(|_| ApiError::NotFound("object"))
    }
}
