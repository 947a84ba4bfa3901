//! HTTPS on the coordinator's own listener, for a network with no TLS proxy in front: the API,
//! the dashboard, worker sessions (`wss://`) and renters' tunnel upgrades all go over it, so
//! API keys, session cookies and tunnelled bytes never cross the network in the clear.
//!
//! Handshakes run in their own tasks, at most [`HANDSHAKES_MAX`] at once and each for at most
//! [`HANDSHAKE_TIMEOUT_MS`], so a client that opens a connection and says nothing holds up
//! neither the accept loop nor anyone else's handshake.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes in flight at once; past it, connections wait in the kernel's accept queue.
pub const HANDSHAKES_MAX: usize = 256;
/// Time a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// The most certificates in the chain file.
const CHAIN_CERTIFICATES_MAX: usize = 16;
/// Pause after an accept error that is not the peer's (out of file descriptors, say).
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// The certificate chain and private key files (PEM) the coordinator serves HTTPS with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The coordinator's certificate first, then its issuers.
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
}

/// Why the TLS files could not serve.
#[derive(Debug, thiserror::Error)]
#[error("tls file {path}: {detail}")]
pub struct TlsError {
    pub path: PathBuf,
    pub detail: String,
}

fn tls_error(path: &Path, detail: impl ToString) -> TlsError {
    TlsError {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// The acceptor for `files`: HTTP/1.1 only (ALPN), TLS 1.2 and 1.3.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let chain_path = &files.certificate_chain;
    let mut chain = Vec::new();
    let certificates =
        CertificateDer::pem_file_iter(chain_path).map_err(|e| tls_error(chain_path, e))?;
    for certificate in certificates {
        chain.push(certificate.map_err(|e| tls_error(chain_path, e))?);
        if chain.len() > CHAIN_CERTIFICATES_MAX {
            let detail = format!("over {CHAIN_CERTIFICATES_MAX} certificates");
            return Err(tls_error(chain_path, detail));
        }
    }
    if chain.is_empty() {
        return Err(tls_error(chain_path, "no PEM certificate"));
    }
    let key_path = &files.private_key;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| tls_error(key_path, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(chain_path, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_error(key_path, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener that hands axum connections whose TLS handshake is done.
pub struct TlsListener<F> {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    /// Applied to each accepted socket before its handshake (no delay, keepalive).
    configure: F,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl<F: FnMut(&TcpStream)> TlsListener<F> {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor, configure: F) -> TlsListener<F> {
        TlsListener {
            tcp,
            acceptor,
            configure,
            handshakes: JoinSet::new(),
        }
    }

    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        (self.configure)(&tcp);
        let acceptor = self.acceptor.clone();
        let limit = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
        self.handshakes.spawn(async move {
            match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "tls handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "tls handshake timed out");
                    None
                }
            }
        });
    }
}

impl<F> axum::serve::Listener for TlsListener<F>
where
    F: FnMut(&TcpStream) + Send + 'static,
{
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < HANDSHAKES_MAX;
            tokio::select! {
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((tcp, peer)) => self.start_handshake(tcp, peer),
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../cli/tests/network/tls")
            .join(name)
    }

    #[test]
    fn the_test_files_make_an_acceptor() {
        let files = TlsFiles {
            certificate_chain: fixture("cert.pem"),
            private_key: fixture("key.pem"),
        };
        assert!(acceptor(&files).is_ok());
    }

    #[test]
    fn unusable_files_name_the_file_at_fault() {
        let missing = TlsFiles {
            certificate_chain: fixture("missing.pem"),
            private_key: fixture("key.pem"),
        };
        let error = acceptor(&missing).err().unwrap();
        assert!(error.path.ends_with("missing.pem"), "{error}");
        // A certificate where the key should be.
        let swapped = TlsFiles {
            certificate_chain: fixture("cert.pem"),
            private_key: fixture("ca.pem"),
        };
        let error = acceptor(&swapped).err().unwrap();
        assert!(error.path.ends_with("ca.pem"), "{error}");
        // A key where the chain should be: no certificate in it.
        let no_chain = TlsFiles {
            certificate_chain: fixture("key.pem"),
            private_key: fixture("key.pem"),
        };
        let error = acceptor(&no_chain).err().unwrap();
        assert!(error.detail.contains("no PEM certificate"), "{error}");
        // The CA's certificate does not match the coordinator's key.
        let mismatched = TlsFiles {
            certificate_chain: fixture("ca.pem"),
            private_key: fixture("key.pem"),
        };
        assert!(acceptor(&mismatched).is_err());
    }
}
