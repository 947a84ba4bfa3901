//! A typed HTTP client for the coordinator API. The CLI, the worker's enrollment, tests and
//! benchmarks all speak to the coordinator through it, so the API has one client to keep true.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::api::ErrorBody;
use flotilla_proto::secret::Secret;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod fdpass;
mod socket_upgrade;
pub mod tls;

/// A connection after `101 Switching Protocols` ([`Client::upgrade`]): bytes both ways.
pub use reqwest::Upgraded;

/// Time one request may take.
const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator answered with an error body.
    #[error("{message} ({code}, http {status}{})", field.as_ref().map(|f| format!(", field {f}")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error("cannot reach the coordinator at {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("unexpected answer from the coordinator: {0}")]
    Decode(String),
    /// What was asked cannot be done with this coordinator (its URL's scheme, say).
    #[error("{0}")]
    Unsupported(String),
    /// A CA file that could not serve, or a TLS setup that failed.
    #[error("tls: {0}")]
    Tls(String),
}

impl ClientError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client bound to one coordinator and, optionally, one API key.
#[derive(Debug, Clone)]
pub struct Client {
    base_url: String,
    api_key: Option<Secret>,
    http: reqwest::Client,
    /// For upgraded connections (tunnels), which must outlive `http`'s request timeout. Built
    /// once, on first use, and shared by clones: building one loads the TLS roots, which costs
    /// milliseconds that every tunnelled connection would otherwise pay.
    upgrades: Arc<std::sync::OnceLock<reqwest::Client>>,
    /// Trusted beside the platform's roots ([`Client::with_ca`]).
    extra_roots: Arc<[CertificateDer<'static>]>,
}

impl Client {
    pub fn new(base_url: &str, api_key: Option<String>) -> Client {
        Client::trusting(base_url, api_key, Vec::new())
            .expect("an http client with default tls builds")
    }

    /// A client for a coordinator whose certificate a private CA signed: it trusts the CA
    /// certificates in `ca_pem` beside the platform's roots.
    pub fn with_ca(
        base_url: &str,
        api_key: Option<String>,
        ca_pem: &[u8],
    ) -> Result<Client, ClientError> {
        Client::trusting(base_url, api_key, tls::ca_certificates(ca_pem)?)
    }

    fn trusting(
        base_url: &str,
        api_key: Option<String>,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<Client, ClientError> {
        let extra_roots: Arc<[CertificateDer<'static>]> = extra_roots.into();
        let http = tls::http_builder(&extra_roots)?
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        Ok(Client {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.map(Secret::new),
            http,
            upgrades: Arc::default(),
            extra_roots,
        })
    }

    /// The CA certificates trusted beside the platform's roots.
    pub fn extra_roots(&self) -> &[CertificateDer<'static>] {
        &self.extra_roots
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The same coordinator with another key.
    pub fn with_key(&self, api_key: &str) -> Client {
        Client {
            api_key: Some(Secret::new(api_key)),
            ..self.clone()
        }
    }

    /// GET `path` (relative to `/api/v1`, or absolute from `/` for `/api/`, `/t/` and
    /// `/metrics`).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    /// POST a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// POST a JSON body that moves money, with an `Idempotency-Key` so a retry applies once.
    pub async fn post_idempotent<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: &str,
    ) -> Result<T, ClientError> {
        let request = self
            .http
            .post(self.url(path))
            .header("Idempotency-Key", idempotency_key)
            .json(body);
        self.send(request).await
    }

    /// GET `path` as text (the ledger export), checking the status like [`Client::get`].
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let bytes: Vec<u8> = self.send_raw(self.http.get(self.url(path))).await?;
        String::from_utf8(bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// PUT raw bytes; the answer's bytes come back.
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.send_raw(self.http.put(self.url(path)).body(body))
            .await
    }

    /// POST with an empty JSON object.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.post(path, &serde_json::json!({})).await
    }

    /// A transport failure, with every cause: reqwest's own message alone hides why (an
    /// unknown certificate issuer, a refused connection).
    fn transport(&self, error: &dyn std::error::Error) -> ClientError {
        let mut detail = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Transport {
            url: self.base_url.clone(),
            detail,
        }
    }

    fn url(&self, path: &str) -> String {
        // `/t/...` reaches a node's port through the tunnel.
        if path.starts_with("/api/") || path.starts_with("/t/") || path == "/metrics" {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}/api/v1/{}", self.base_url, path.trim_start_matches('/'))
        }
    }

    /// GET `path` asking to switch to `protocol` (`Connection: Upgrade`); the upgraded
    /// connection's bytes are the caller's. An error answer comes back as [`ClientError::Api`].
    /// The connection has no overall timeout, only one for connecting.
    pub async fn upgrade(&self, path: &str, protocol: &str) -> Result<Upgraded, ClientError> {
        let transport = |e: reqwest::Error| self.transport(&e);
        let http = match self.upgrades.get() {
            Some(http) => http,
            None => {
                let built = tls::http_builder(&self.extra_roots)?
                    .connect_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
                    .build()
                    .map_err(transport)?;
                self.upgrades.get_or_init(|| built)
            }
        };
        let mut request = http
            .get(self.url(path))
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(transport)?;
        if response.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let bytes = response.bytes().await.map_err(transport)?;
            return Err(api_error(status.as_u16(), &bytes));
        }
        response.upgrade().await.map_err(transport)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let bytes = self.send_raw(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn send_raw(&self, mut request: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        Ok(bytes.to_vec())
    }
}

/// An error answer's body as a [`ClientError::Api`].
fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
            field: body.error.field,
        },
        Err(_) => ClientError::Api {
            status,
            code: "http_error".to_owned(),
            message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
            field: None,
        },
    }
}

/// The WebSocket URL of the worker control channel for a coordinator URL.
pub fn control_channel_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/api/v1/workers/connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let client = Client::new("http://h:1/", None);
        assert_eq!(client.url("devices"), "http://h:1/api/v1/devices");
        assert_eq!(client.url("/api/v1/health"), "http://h:1/api/v1/health");
        assert_eq!(client.url("/metrics"), "http://h:1/metrics");
        assert_eq!(
            control_channel_url("http://h:1"),
            "ws://h:1/api/v1/workers/connect"
        );
        assert_eq!(
            control_channel_url("https://h"),
            "wss://h/api/v1/workers/connect"
        );
    }
}
