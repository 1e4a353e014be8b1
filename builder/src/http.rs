//! The HTTP/WebSocket client shared by the connection, source fetches and uploads: awc on
//! rustls, trusting the webpki roots plus an optional operator-supplied CA file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA certificates from {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// The TLS settings of every client this builder makes.
pub fn tls_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_cert {
        let ca_error = |message: String| TlsError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client without a total request timeout: sources and artifacts may be large, and
/// every caller bounds its request by the job's own stop signal instead.
pub fn client(tls: &Arc<rustls::ClientConfig>) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .rustls_0_23(tls.clone())
                .timeout(Duration::from_secs(30)),
        )
        .disable_timeout()
        .finish()
}
