//! Logging in to the dashboard: an API key in, a session cookie out.
//!
//! The login form itself is guarded by a double-submit token (a cookie and a field that must
//! match), so another site cannot log a browser into an account of its choosing. A session's
//! cookie is 32 random bytes, stored only as its hash; it stands for the key it was opened with
//! and is re-checked against that key on every request.

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_proto::api::Role;
use flotilla_proto::id::secret_hash;
use flotilla_store::WebSessionRow;
use maud::html;
use serde::Deserialize;

use super::{Face, PageError, PageResult, page, see_other};
use crate::error::ApiError;
use crate::extract::{Caller, ClientIp};
use crate::{AppState, now_ms};

/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;
const SESSION_COOKIE: &str = "flotilla_session";
const LOGIN_CSRF_COOKIE: &str = "flotilla_login_csrf";
/// Longest API key a login form may carry, bytes.
const API_KEY_BYTES_MAX: usize = 256;

/// A signed-in caller: the key's caller, and the token its forms must carry.
pub struct Signed {
    pub caller: Caller,
    pub csrf: String,
    id_hash: String,
}

impl Signed {
    /// Refuses a form whose token is not this session's.
    pub fn check_csrf(&self, shown: &str) -> Result<(), PageError> {
        if crate::api::same_secret(shown, &self.csrf) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "the form's CSRF token is missing or stale; reload the page".into(),
            )
            .into())
        }
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Signed, PageError> {
        signed(parts, app)
            .await?
            .ok_or(PageError(ApiError::Unauthenticated))
    }
}

/// The session, when there is a live one (public pages show who is signed in).
pub struct MaybeSigned(pub Option<Signed>);

impl FromRequestParts<AppState> for MaybeSigned {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<MaybeSigned, PageError> {
        Ok(MaybeSigned(signed(parts, app).await?))
    }
}

async fn signed(parts: &mut Parts, app: &AppState) -> Result<Option<Signed>, PageError> {
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = secret_hash(token);
    let now = now_ms();
    let Some(session) = app
        .store
        .web_session(&id_hash, now)
        .await
        .map_err(ApiError::from)?
    else {
        return Ok(None);
    };
    let Some(auth) = app
        .store
        .authenticate_key(&session.key_hash, now)
        .await
        .map_err(ApiError::from)?
    else {
        return Ok(None);
    };
    let ClientIp(ip) = ClientIp::from_request_parts(parts, app).await?;
    Ok(Some(Signed {
        caller: Caller { auth, ip },
        csrf: session.csrf,
        id_hash,
    }))
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

pub(super) fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system has a random source");
    hex::encode(bytes)
}

/// A cookie of ours: HttpOnly, SameSite=Strict, and Secure when the page came over TLS.
fn set_cookie(name: &str, value: &str, max_age_s: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&text).expect("cookie values are hex")
}

/// Whether the browser reached us over TLS: our own (`--tls-cert`), or a proxy's in front.
fn over_tls(app: &AppState, headers: &HeaderMap) -> bool {
    app.config.tls.is_some() || forwarded_https(headers)
}

/// Whether a TLS proxy in front says it served the browser: `X-Forwarded-Proto` or
/// `Forwarded`. A client that lies only makes its own cookies Secure.
fn forwarded_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| {
            first
                .split(';')
                .any(|pair| pair.trim().eq_ignore_ascii_case("proto=https"))
        });
    forwarded_proto || forwarded
}

fn login_page(csrf: &str, problem: Option<&str>, secure: bool) -> Response {
    let body = html! {
        section {
            @if let Some(problem) = problem {
                p class="error" { (problem) }
            }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                p {
                    label for="api_key" { "API key" } br;
                    input id="api_key" name="api_key" type="password" autocomplete="off" placeholder="flt_...";
                }
                button type="submit" { "Log in" }
            }
            p class="muted" {
                "Create a key with " code { "flotilla api-keys create" } "; "
                code { "flotilla dev" } " writes demo keys to its data directory."
            }
        }
    };
    let mut response = page("Log in", Face::Cloud, None, body).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, csrf, 3_600, secure),
    );
    response
}

pub async fn login_form(State(app): State<AppState>, headers: HeaderMap) -> Response {
    login_page(&random_hex(), None, over_tls(&app, &headers))
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    api_key: String,
    #[serde(default)]
    csrf: String,
}

/// Checks the key; a good one opens a session and goes to the face the account's roles use.
pub async fn login(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let secure = over_tls(&app, &headers);
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !crate::api::same_secret(&form.csrf, expected) {
        return Err(ApiError::Forbidden("the login form is stale; reload it".into()).into());
    }
    let now = now_ms();
    let key = form.api_key.trim();
    let key_hash = secret_hash(key);
    let auth = if key.is_empty() || key.len() > API_KEY_BYTES_MAX {
        None
    } else {
        app.store
            .authenticate_key(&key_hash, now)
            .await
            .map_err(ApiError::from)?
    };
    let Some(auth) = auth else {
        app.limits
            .auth_failures
            .check(&ip, now)
            .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
        let mut response = login_page(
            &random_hex(),
            Some("That key is unknown, revoked or expired."),
            secure,
        );
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    };
    let token = random_hex();
    let session = WebSessionRow {
        key_hash,
        csrf: random_hex(),
        expires_at_ms: now + SESSION_TTL_MS,
    };
    app.store
        .open_web_session(&secret_hash(&token), &session, now)
        .await
        .map_err(ApiError::from)?;
    let caller = Caller { auth, ip };
    crate::api::audit::record(
        &app,
        Some(&caller),
        &caller.ip,
        "login",
        Some(caller.key_id()),
        serde_json::json!({"via": "dashboard"}),
    )
    .await?;
    // Each account lands on the face its roles use.
    let home = if caller.has_role(Role::Renter) {
        "/cloud"
    } else if caller.has_role(Role::Supplier) {
        "/worker"
    } else {
        "/explorer"
    };
    let mut response = see_other(home);
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, SESSION_TTL_MS / 1000, secure),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, "", 0, secure),
    );
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(app): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    app.store
        .close_web_session(&signed.id_hash)
        .await
        .map_err(ApiError::from)?;
    let mut response = see_other("/explorer");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, over_tls(&app, &headers)),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn cookies_are_secure_only_behind_tls() {
        assert!(!forwarded_https(&headers(&[])));
        assert!(forwarded_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(forwarded_https(&headers(&[(
            "x-forwarded-proto",
            "HTTPS, http"
        )])));
        assert!(!forwarded_https(&headers(&[("x-forwarded-proto", "http")])));
        assert!(forwarded_https(&headers(&[(
            "forwarded",
            "for=192.0.2.1;proto=https;by=203.0.113.9"
        )])));
        assert!(!forwarded_https(&headers(&[(
            "forwarded",
            "for=192.0.2.1;proto=http"
        )])));
        let secure = set_cookie("flotilla_session", "ab", 60, true);
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
        let plain = set_cookie("flotilla_session", "ab", 60, false);
        assert!(!plain.to_str().unwrap().contains("Secure"));
        assert!(
            plain
                .to_str()
                .unwrap()
                .contains("HttpOnly; SameSite=Strict")
        );
    }
}
