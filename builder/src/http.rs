//! The HTTP/WebSocket client shared by the connection, source fetches and uploads (and the
//! backend's admin CLI): awc on rustls, trusting the webpki roots and the system's store plus
//! an optional operator-supplied CA file, with TCP_NODELAY on every connection.

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

/// The TLS settings of every client Buildfleet makes (the builder's and the admin CLI's):
/// the webpki roots, the system's store (which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`)
/// and an optional CA file.
pub fn tls_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable system certificates are skipped: the webpki roots remain.
    let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
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
    client_with_connect_timeout(tls, Duration::from_secs(30))
}

/// [`client`] with another limit on establishing a connection.
pub fn client_with_connect_timeout(
    tls: &Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .connector(nodelay_tcp_connector())
                .rustls_0_23(tls.clone())
                .timeout(connect_timeout),
        )
        .disable_timeout()
        .finish()
}

/// awc's TCP connector with `TCP_NODELAY` set on each connection. The protocol sends small
/// frames back to back (stage events, then `job_response`): with Nagle's algorithm each one
/// after the first waits for the peer's delayed ACK, up to 40 ms on Linux. The backend's CLI
/// uses it too.
pub fn nodelay_tcp_connector() -> impl actix_service::Service<
    actix_tls::connect::ConnectInfo<awc::http::Uri>,
    Response = actix_tls::connect::Connection<awc::http::Uri, tokio::net::TcpStream>,
    Error = actix_tls::connect::ConnectError,
> + Clone {
    use actix_service::ServiceExt as _;
    actix_tls::connect::Connector::default().service().map(
        |connection: actix_tls::connect::Connection<_, tokio::net::TcpStream>| {
            if let Err(e) = connection.io_ref().set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            connection
        },
    )
}

/// First wait between tries of a request to the backend; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long a request is retried when the caller has no deadline.
const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(600);

/// Whether a failed request may be tried again, and how soon at the earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Never,
    /// A transient failure; the server may have said when (`Retry-After`).
    After(Option<Duration>),
}

impl Retry {
    /// Connect errors, resets, timeouts and broken responses are worth another try; a
    /// request that cannot be built or a TLS setup the server refuses are not.
    pub fn for_send_error(error: &awc::error::SendRequestError) -> Retry {
        use awc::error::{ConnectError, SendRequestError};
        match error {
            SendRequestError::Url(_)
            | SendRequestError::Http(_)
            | SendRequestError::TunnelNotSupported
            | SendRequestError::Connect(
                ConnectError::SslIsNotSupported | ConnectError::Unresolved,
            ) => Retry::Never,
            _ => Retry::After(None),
        }
    }

    /// 408, 429 and every 5xx are transient (a backend restarting, overloaded or without
    /// its database); every other status is an answer.
    pub fn for_status(
        status: awc::http::StatusCode,
        headers: &awc::http::header::HeaderMap,
    ) -> Retry {
        if status == awc::http::StatusCode::REQUEST_TIMEOUT
            || status == awc::http::StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            Retry::After(retry_after(headers))
        } else {
            Retry::Never
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the backend, and ignored).
fn retry_after(headers: &awc::http::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(awc::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The waits between tries of one request: capped exponential backoff with jitter, at least
/// the server's `Retry-After`, and never past the deadline (the job's).
#[derive(Debug)]
pub struct Retrier {
    backoff: crate::connection::Backoff,
    deadline: tokio::time::Instant,
    started: tokio::time::Instant,
    tries: u32,
}

impl Retrier {
    pub fn new(deadline: Option<tokio::time::Instant>) -> Self {
        let now = tokio::time::Instant::now();
        Retrier {
            backoff: crate::connection::Backoff::new(RETRY_FIRST, RETRY_MAX),
            deadline: deadline.unwrap_or(now + DEFAULT_RETRY_BUDGET),
            started: now,
            tries: 1,
        }
    }

    /// Tries made so far.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// Time since the first try.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sleeps before the next try and returns true; returns false at once (giving up) when
    /// the failure is not transient or the next try could not start before the deadline.
    pub async fn wait(&mut self, retry: Retry) -> bool {
        let Retry::After(hint) = retry else {
            return false;
        };
        let delay = self.backoff.next_delay().max(hint.unwrap_or_default());
        if tokio::time::Instant::now() + delay >= self.deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        self.tries += 1;
        true
    }
}
