//! The HTTP client of the CLI: awc on rustls, the bearer token, and the mapping of API
//! answers to [`CliError`]s (4xx → the API's code and message, 5xx and transport failures →
//! server/network errors), with advice for the usual causes: a missing or refused token
//! (and where it came from), a certificate no trusted CA signed (`--ca-cert`), a backend
//! that is not running, a URL that is not a backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};
use awc::http::{Method, StatusCode};
use awc::ClientRequest;
use bytes::Bytes;
use rustls::CertificateError;
use serde_json::Value;

use super::exit::CliError;
use super::GlobalArgs;
use crate::server::admin_token_path;

/// Bound on one JSON request; uploads, downloads and log streams have none.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JSON answer read into memory (a page of jobs is far smaller).
const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read to explain a failure.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// A response whose body is read as it arrives (decompressed when the server compressed it).
pub type Response = awc::ClientResponse<actix_web::dev::Decompress<actix_web::dev::Payload>>;

/// Reads an API answer as one of the API's bodies; a shape we do not understand is the
/// server's fault.
pub fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, CliError> {
    T::deserialize(value)
        .map_err(|e| CliError::Network(format!("unexpected answer from the backend: {e}")))
}

/// Where the bearer token came from, to say which one to fix when it is refused.
enum TokenSource {
    /// `--token` or `BUILDFLEET_TOKEN`.
    Given,
    /// The `admin-token` file of the data directory.
    File(PathBuf),
    /// None given, and no readable `admin-token` file at this path.
    Absent(PathBuf),
}

/// A client of one backend's `/api/v1`.
pub struct Api {
    client: awc::Client,
    base: String,
    /// Whether `--url` (or `BUILDFLEET_URL`) was given, or the default is in use.
    url_given: bool,
    ca_cert: Option<PathBuf>,
    token: Option<String>,
    token_source: TokenSource,
}

impl Api {
    pub fn new(global: &GlobalArgs) -> Result<Api, CliError> {
        let url = global.url.as_deref().unwrap_or(GlobalArgs::DEFAULT_URL);
        let base = url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--url {url:?}: use http://host:port or https://host:port"
            )));
        }
        let (token, token_source) = match &global.token {
            Some(token) => (Some(token.trim().to_owned()), TokenSource::Given),
            // A backend on this machine keeps its generated admin token there.
            None => {
                let path = admin_token_path(
                    global
                        .data_dir
                        .as_deref()
                        .unwrap_or(Path::new(GlobalArgs::DEFAULT_DATA_DIR)),
                );
                match std::fs::read_to_string(&path) {
                    Ok(token) => (Some(token.trim().to_owned()), TokenSource::File(path)),
                    Err(_) => (None, TokenSource::Absent(path)),
                }
            }
        };
        Ok(Api {
            client: http_client(global.ca_cert.as_deref())?,
            base,
            url_given: global.url.is_some(),
            ca_cert: global.ca_cert.clone(),
            token: token.filter(|t| !t.is_empty()),
            token_source,
        })
    }

    /// The client, for requests to other hosts (crate downloads).
    pub fn http(&self) -> &awc::Client {
        &self.client
    }

    fn request(&self, method: Method, path: &str) -> ClientRequest {
        let request = self
            .client
            .request(method, format!("{}/api/v1{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// A transfer that broke after the request went out.
    fn unreachable(&self, e: impl std::fmt::Display) -> CliError {
        CliError::Network(format!("cannot reach the backend at {}: {e}", self.base))
    }

    /// A request that could not be made, with what to do about the usual causes.
    fn send_failed(&self, e: SendRequestError) -> CliError {
        let tls = tls_failure(&e).is_some();
        let hint = self.send_failure_hint(&e);
        let error = match self.unreachable(e) {
            CliError::Network(message) if tls => CliError::Tls(message),
            other => other,
        };
        match hint {
            Some(hint) => error.hint(hint),
            None => error,
        }
    }

    fn send_failure_hint(&self, e: &SendRequestError) -> Option<String> {
        let SendRequestError::Connect(ConnectError::Io(io)) = e else {
            return None;
        };
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return Some(if self.url_given {
                format!("is the backend running, and listening at {}?", self.base)
            } else {
                format!(
                    "no --url was given, so {} was tried; give the backend's address with \
                     --url or BUILDFLEET_URL",
                    self.base
                )
            });
        }
        match tls_failure(e)? {
            // A bad signature: a trusted CA of the same name did not sign it (regenerated?).
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => Some(match &self.ca_cert {
                Some(path) => format!(
                    "the backend's certificate is not signed by the CA in --ca-cert {} (nor \
                     by one this machine trusts); give the CA certificate that signed it",
                    path.display()
                ),
                None => "the backend's certificate is not signed by a CA this machine trusts; \
                         give the CA certificate (PEM) that signed it with --ca-cert or \
                         BUILDFLEET_CA_CERT"
                    .to_owned(),
            }),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => Some(
                "the backend's certificate is for another name; use the host name it was \
                 issued for in --url"
                    .to_owned(),
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => Some("the backend's certificate has expired; the operator must renew it".into()),
            rustls::Error::InvalidMessage(_) => Some(format!(
                "the backend did not answer TLS; if it serves plain HTTP, use --url {}",
                self.base.replacen("https://", "http://", 1)
            )),
            _ => None,
        }
    }

    /// Passes a 2xx response on; turns any other into the error it describes (4xx → the
    /// API's code and message, 5xx → a server error), with advice where there is some.
    async fn checked(&self, mut response: Response) -> Result<Response, CliError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response
            .body()
            .limit(MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<Value>(&body) {
            Ok(value) if value["error"]["code"].is_string() => (
                value["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                value["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ => (
                format!("http_{}", status.as_u16()),
                match String::from_utf8_lossy(&body).trim() {
                    "" => status.canonical_reason().unwrap_or("error").to_owned(),
                    text => text.chars().take(200).collect(),
                },
            ),
        };
        let status = status.as_u16();
        if !(400..500).contains(&status) {
            let error = CliError::Server {
                status,
                code,
                message,
            };
            return Err(if status == 503 {
                error.hint(
                    "the backend or its database is starting, stopping or overloaded; try \
                     again shortly",
                )
            } else {
                error.hint("the backend's log says what went wrong")
            });
        }
        let error = CliError::Api {
            status,
            code,
            message,
        };
        Err(match status {
            401 => error.hint(self.token_hint()),
            _ => error,
        })
    }

    /// What to do about a refused (or missing) bearer token, by where it came from.
    fn token_hint(&self) -> String {
        match (&self.token, &self.token_source) {
            (Some(_), TokenSource::Given) => {
                "check the token given with --token or BUILDFLEET_TOKEN, or leave both unset \
                 to use <data-dir>/admin-token"
                    .to_owned()
            }
            (Some(_), TokenSource::File(path)) => format!(
                "the token was read from {}, which is not a token of the backend at {}; give \
                 --token, or --data-dir of that backend",
                path.display(),
                self.base
            ),
            (_, TokenSource::File(path) | TokenSource::Absent(path)) => format!(
                "give a token with --token or BUILDFLEET_TOKEN; on the backend's machine the \
                 admin token is in <data-dir>/admin-token (there is none at {})",
                path.display()
            ),
            (None, TokenSource::Given) => {
                "--token (or BUILDFLEET_TOKEN) is empty; give the token itself".to_owned()
            }
        }
    }

    /// An answer that is not the API's JSON: the URL probably points elsewhere.
    fn not_the_api(&self, content_type: &str, e: impl std::fmt::Display) -> CliError {
        CliError::Network(format!(
            "{} did not answer as a Buildfleet backend: the answer is not JSON ({}: {e})",
            self.base,
            if content_type.is_empty() {
                "no content type"
            } else {
                content_type
            }
        ))
        .hint(
            "check --url (or BUILDFLEET_URL): it is the backend's base URL, e.g. http://host:8000",
        )
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::GET, path, None)
            .await?
            .ok_or_else(|| CliError::Network(format!("GET {path}: empty answer")))
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Option<Value>, CliError> {
        self.call(Method::POST, path, body).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Option<Value>, CliError> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Option<Value>, CliError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Option<Value>, CliError> {
        self.call(Method::DELETE, path, None).await
    }

    /// A JSON request; `None` for `204 No Content`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, CliError> {
        let request = self.request(method, path).timeout(REQUEST_TIMEOUT);
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = self.checked(sent.map_err(|e| self.send_failed(e))?).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        self.read_json(&mut response).await.map(Some)
    }

    async fn read_json(&self, response: &mut Response) -> Result<Value, CliError> {
        let content_type = content_type(response);
        let bytes = response
            .body()
            .limit(MAX_JSON_BYTES)
            .await
            .map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.not_the_api(&content_type, e))
    }

    /// A GET whose body the caller reads (bytes or a stream); no overall timeout.
    pub async fn get_response(&self, path: &str) -> Result<Response, CliError> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .map_err(|e| self.send_failed(e))?;
        self.checked(response).await
    }

    /// Opens a server-sent event stream, resuming after `last_event_id` when given.
    pub async fn get_events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<Response, CliError> {
        let mut request = self
            .request(Method::GET, path)
            .insert_header(("Accept", "text/event-stream"));
        if let Some(id) = last_event_id {
            request = request.insert_header(("Last-Event-ID", id));
        }
        let response = request.send().await.map_err(|e| self.send_failed(e))?;
        self.checked(response).await
    }

    /// A GET of a small non-JSON body (a statement, a signature, a page of log).
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, CliError> {
        let mut response = self.get_response(path).await?;
        response
            .body()
            .limit(MAX_JSON_BYTES)
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// Streams `file` as the body of `POST path` and answers the JSON reply.
    pub async fn upload(&self, path: &str, file: &Path) -> Result<Value, CliError> {
        let opened = tokio::fs::File::open(file)
            .await
            .map_err(|e| CliError::io(format!("opening {}", file.display()), e))?;
        let len = opened
            .metadata()
            .await
            .map_err(|e| CliError::io(format!("reading {}", file.display()), e))?
            .len();
        let body = actix_web::body::SizedStream::new(
            len,
            tokio_util::io::ReaderStream::with_capacity(opened, 64 * 1024),
        );
        let response = self
            .request(Method::POST, path)
            .content_type("application/octet-stream")
            .send_body(body)
            .await
            .map_err(|e| self.send_failed(e))?;
        let mut response = self.checked(response).await?;
        self.read_json(&mut response).await
    }
}

/// The TLS error under a failed connection, if TLS refused it.
fn tls_failure(e: &SendRequestError) -> Option<&rustls::Error> {
    let SendRequestError::Connect(ConnectError::Io(io)) = e else {
        return None;
    };
    // tokio-rustls hands TLS failures over as the I/O error's source.
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

fn content_type(response: &Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The client every Buildfleet tool uses (`buildfleet_builder::http`): the webpki roots, the
/// system's store (which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`) and an optional CA file.
/// No overall timeout on the client: JSON calls set their own, transfers and log streams last.
pub fn http_client(ca_cert: Option<&Path>) -> Result<awc::Client, CliError> {
    let tls = buildfleet_builder::http::tls_config(ca_cert).map_err(|e| match e {
        buildfleet_builder::http::TlsError::CaFile { path, message } => {
            CliError::Usage(format!("--ca-cert {path}: {message}"))
        }
        other => CliError::Io(other.to_string()),
    })?;
    Ok(buildfleet_builder::http::client_with_connect_timeout(
        &tls,
        CONNECT_TIMEOUT,
    ))
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
