//! Trust in an `https://` coordinator: the platform's roots, as reqwest has them, plus the
//! certificates of a private CA the network's operator hands out (a self-hosted coordinator's
//! own CA, or a test's). The worker's control channel (a WebSocket) and the HTTP client trust
//! the same set.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ClientError;

/// The most certificates one CA file may hold: a bundle, not a database.
pub const CA_CERTIFICATES_MAX: usize = 64;

/// The CA certificates in `pem`: at least one, at most [`CA_CERTIFICATES_MAX`].
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let mut certificates = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate
            .map_err(|error| ClientError::Tls(format!("the CA file is not PEM: {error}")))?;
        certificates.push(certificate);
        if certificates.len() > CA_CERTIFICATES_MAX {
            return Err(ClientError::Tls(format!(
                "the CA file holds over {CA_CERTIFICATES_MAX} certificates"
            )));
        }
    }
    if certificates.is_empty() {
        return Err(ClientError::Tls(
            "the CA file holds no PEM certificate".to_owned(),
        ));
    }
    Ok(certificates)
}

/// A rustls client configuration that trusts the platform's roots and `extra_roots`.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_error = |error: rustls::Error| ClientError::Tls(error.to_string());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots.iter().cloned(),
        provider.clone(),
    )
    .map_err(tls_error)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A reqwest client builder that trusts `extra_roots` beside the platform's roots.
pub fn http_builder(
    extra_roots: &[CertificateDer<'static>],
) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut builder = reqwest::Client::builder();
    for root in extra_roots {
        let certificate = reqwest::Certificate::from_der(root)
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CA: &[u8] = include_bytes!("../../cli/tests/network/tls/ca.pem");

    #[test]
    fn a_ca_file_reads_as_its_certificates() {
        assert_eq!(ca_certificates(TEST_CA).unwrap().len(), 1);
        let two = [TEST_CA, TEST_CA].concat();
        assert_eq!(ca_certificates(&two).unwrap().len(), 2);
        assert!(client_config(&ca_certificates(TEST_CA).unwrap()).is_ok());
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        for pem in [
            &b""[..],
            b"not a certificate",
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        ] {
            let error = ca_certificates(pem).unwrap_err();
            assert!(matches!(error, ClientError::Tls(_)), "{error}");
        }
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(ca_certificates(broken), Err(ClientError::Tls(_))));
    }

    #[test]
    fn a_bundle_past_the_bound_is_refused() {
        let many = TEST_CA.repeat(CA_CERTIFICATES_MAX + 1);
        assert!(matches!(ca_certificates(&many), Err(ClientError::Tls(_))));
        assert!(ca_certificates(&TEST_CA.repeat(CA_CERTIFICATES_MAX)).is_ok());
    }
}
