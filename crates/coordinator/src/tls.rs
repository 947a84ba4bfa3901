//! HTTPS on the coordinator's own listener, for a network with no TLS proxy in front: the API,
//! the dashboard, worker sessions (`wss://`) and renters' tunnel upgrades all go over it, so
//! API keys, session cookies and tunnelled bytes never cross the network in the clear.
//!
//! Handshakes run in their own tasks, at most [`HANDSHAKES_MAX`] at once and each for at most
//! [`HANDSHAKE_TIMEOUT_MS`], so a client that opens a connection and says nothing holds up
//! neither the accept loop nor anyone else's handshake.
//!
//! A renewed certificate is served without a restart (which would drop every worker's session
//! and every renter's tunnel): the files are read again on SIGHUP, and when their modification
//! times change (checked every [`RELOAD_CHECK_INTERVAL_MS`], so a renewal tool that only
//! replaces the files needs no hook). A reload that fails keeps the previous certificate.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes in flight at once; past it, connections wait in the kernel's accept queue.
pub const HANDSHAKES_MAX: usize = 256;
/// Time a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// The most certificates in the chain file.
const CHAIN_CERTIFICATES_MAX: usize = 16;
/// How often the files' modification times are compared with those last loaded.
pub const RELOAD_CHECK_INTERVAL_MS: u64 = 60_000;

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

/// The chain in `path`: at least one certificate, at most [`CHAIN_CERTIFICATES_MAX`].
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut chain = Vec::new();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|e| tls_error(path, e))? {
        chain.push(certificate.map_err(|e| tls_error(path, e))?);
        if chain.len() > CHAIN_CERTIFICATES_MAX {
            let detail = format!("over {CHAIN_CERTIFICATES_MAX} certificates");
            return Err(tls_error(path, detail));
        }
    }
    if chain.is_empty() {
        return Err(tls_error(path, "no PEM certificate"));
    }
    Ok(chain)
}

/// The certificate the coordinator serves, replaced in place by a reload.
#[derive(Debug)]
pub struct ServedCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times when read.
    modified: [Option<SystemTime>; 2],
}

impl ServedCertificate {
    fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
        let modified = files_modified(files);
        let chain = read_chain(&files.certificate_chain)?;
        let key_path = &files.private_key;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| tls_error(key_path, e))?;
        // Also checks that the key is the certificate's.
        let key =
            CertifiedKey::from_der(chain, key, provider).map_err(|e| tls_error(key_path, e))?;
        Ok(Loaded {
            key: Arc::new(key),
            modified,
        })
    }

    /// Reads the files again; on failure the previous certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = ServedCertificate::load(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(())
    }

    /// Whether the files changed since they were last read.
    fn changed(&self) -> bool {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.modified != files_modified(&self.files)
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(current.key.clone())
    }
}

fn files_modified(files: &TlsFiles) -> [Option<SystemTime>; 2] {
    [&files.certificate_chain, &files.private_key]
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
}

/// The acceptor for `files` (HTTP/1.1 only by ALPN, TLS 1.2 and 1.3), and the certificate it
/// serves, for [`keep_fresh`].
pub fn acceptor(files: &TlsFiles) -> Result<(TlsAcceptor, Arc<ServedCertificate>), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let served = Arc::new(ServedCertificate {
        current: RwLock::new(ServedCertificate::load(files, &provider)?),
        files: files.clone(),
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&files.certificate_chain, e))?
        .with_no_client_auth()
        .with_cert_resolver(served.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), served))
}

/// Reloads `served` on SIGHUP and when its files change, until `shutdown`.
pub async fn keep_fresh(served: Arc<ServedCertificate>, mut shutdown: watch::Receiver<bool>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: the certificate reloads on change only");
            None
        }
    };
    let mut check = tokio::time::interval(Duration::from_millis(RELOAD_CHECK_INTERVAL_MS));
    loop {
        let asked = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            Some(()) = async { hangups.as_mut()?.recv().await } => true,
            _ = check.tick() => false,
        };
        if !asked && !served.changed() {
            continue;
        }
        match served.reload() {
            Ok(()) => tracing::info!("tls certificate reloaded"),
            Err(error) => {
                tracing::warn!(%error, "tls certificate not reloaded; serving the previous one")
            }
        }
    }
}

/// A listener that hands axum connections whose TLS handshake is done, accepting TCP
/// connections from `L` (which sets their socket options and retries its own accept errors).
pub struct TlsListener<L> {
    tcp: L,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl<L> TlsListener<L> {
    pub fn new(tcp: L, acceptor: TlsAcceptor) -> TlsListener<L> {
        TlsListener {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }

    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
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

impl<L> axum::serve::Listener for TlsListener<L>
where
    L: axum::serve::Listener<Io = TcpStream, Addr = SocketAddr>,
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
                (tcp, peer) = self.tcp.accept(), if room => self.start_handshake(tcp, peer),
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
        let (_, served) = acceptor(&files).unwrap();
        assert!(!served.changed(), "just read");
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

    fn served_certificate(served: &ServedCertificate) -> CertificateDer<'static> {
        let current = served.current.read().unwrap();
        current.key.cert[0].clone()
    }

    #[test]
    fn a_reload_serves_the_new_files_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            certificate_chain: dir.path().join("chain.pem"),
            private_key: dir.path().join("key.pem"),
        };
        let install = |prefix: &str| {
            for (name, path) in [
                ("cert.pem", &files.certificate_chain),
                ("key.pem", &files.private_key),
            ] {
                std::fs::copy(fixture(&format!("{prefix}{name}")), path).unwrap();
            }
        };
        install("");
        let (_, served) = acceptor(&files).unwrap();
        let first = served_certificate(&served);
        assert_eq!(first, read_chain(&fixture("cert.pem")).unwrap()[0]);

        // Renewed: new files, a new modification time.
        std::thread::sleep(Duration::from_millis(20));
        install("second-");
        let later = SystemTime::now() + Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&files.certificate_chain)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(served.changed());
        served.reload().unwrap();
        let second = served_certificate(&served);
        assert_eq!(second, read_chain(&fixture("second-cert.pem")).unwrap()[0]);
        assert!(!served.changed());

        // A half-written renewal (the key not yet the certificate's) is refused; the served
        // certificate stays.
        std::fs::copy(fixture("cert.pem"), &files.certificate_chain).unwrap();
        let error = served.reload().unwrap_err();
        assert!(error.path.ends_with("key.pem"), "{error}");
        assert_eq!(served_certificate(&served), second);
        std::fs::write(&files.certificate_chain, "garbage").unwrap();
        assert!(served.reload().is_err());
        assert_eq!(served_certificate(&served), second);
    }
}
