//! The HTTP client of the CLI: awc on rustls, the bearer token, and the mapping of API
//! answers to [`CliError`]s (4xx → the API's code and message, 5xx and transport failures →
//! server/network errors).

use std::path::Path;

use std::time::Duration;

use awc::http::{Method, StatusCode};
use awc::ClientRequest;
use bytes::Bytes;
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

/// A client of one backend's `/api/v1`.
pub struct Api {
    client: awc::Client,
    base: String,
    token: Option<String>,
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
        let token = match &global.token {
            Some(token) => Some(token.trim().to_owned()),
            // A backend on this machine keeps its generated admin token there.
            None => std::fs::read_to_string(admin_token_path(
                global
                    .data_dir
                    .as_deref()
                    .unwrap_or(Path::new(GlobalArgs::DEFAULT_DATA_DIR)),
            ))
            .ok()
            .map(|t| t.trim().to_owned()),
        }
        .filter(|t| !t.is_empty());
        Ok(Api {
            client: http_client(global.ca_cert.as_deref())?,
            base,
            token,
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

    fn unreachable(&self, e: impl std::fmt::Display) -> CliError {
        CliError::Network(format!("cannot reach the backend at {}: {e}", self.base))
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::GET, path, None)
            .await?
            .ok_or_else(|| CliError::Network(format!("GET {path}: empty answer")))
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Option<Value>, CliError> {
        self.call(Method::POST, path, body).await
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
        let mut response = checked(sent.map_err(|e| self.unreachable(e))?).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = response
            .body()
            .limit(MAX_JSON_BYTES)
            .await
            .map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CliError::Network(format!("the backend answered invalid JSON: {e}")))
    }

    /// A GET whose body the caller reads (bytes or a stream); no overall timeout.
    pub async fn get_response(&self, path: &str) -> Result<Response, CliError> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        checked(response).await
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
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        checked(response).await
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
            .map_err(|e| self.unreachable(e))?;
        let mut response = checked(response).await?;
        let bytes = response
            .body()
            .limit(MAX_JSON_BYTES)
            .await
            .map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::Network(format!("the backend answered invalid JSON: {e}")))
    }
}

/// Passes a 2xx response on; turns any other into the error it describes.
async fn checked(mut response: Response) -> Result<Response, CliError> {
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
                text => text.to_owned(),
            },
        ),
    };
    let status = status.as_u16();
    Err(if (400..500).contains(&status) {
        CliError::Api {
            status,
            code,
            message,
        }
    } else {
        CliError::Server {
            status,
            code,
            message,
        }
    })
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
