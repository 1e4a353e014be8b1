//! Enrolment: a builder admits its own key with an enrolment token the operator issued
//! (`POST /api/v1/enrolment-tokens`), so no key is copied between machines. `run
//! --enrol-token` calls [`enrol`] before connecting: it makes the key when there is none,
//! then presents the token, the builder's name and its public key to `POST /api/v1/enrol`.
//! A key that is already admitted (a restarted builder, whose token may have expired since)
//! is fine.

use std::path::Path;
use std::time::Duration;

use buildfleet_protocol::Fingerprint;
use serde::Deserialize;

use crate::config::{BuilderConfig, CONNECT_PATH};
use crate::http;
use crate::identity::{self, Identity, IdentityError};

/// How long enrolment keeps retrying a backend that cannot be reached or answers 5xx (it may
/// still be starting), before the builder gives up and exits.
const ENROL_PATIENCE: Duration = Duration::from_secs(300);
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What enrolment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolment {
    /// The backend admitted the key now.
    Admitted { fingerprint: Fingerprint },
    /// The key was admitted before; no token use was spent.
    AlreadyAdmitted { fingerprint: Fingerprint },
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] http::TlsError),
    #[error("cannot encode the public key: {0}")]
    Key(String),
    #[error("the backend at {url} did not answer within {patience:?}: {last_error}")]
    Unreachable {
        url: String,
        patience: Duration,
        last_error: String,
    },
    #[error("the backend refused the enrolment token: it is unknown, expired, used up or revoked; ask the operator for a new one")]
    TokenRefused,
    #[error("enrolment refused with HTTP {status}: {message}")]
    Refused { status: u16, message: String },
}

/// The HTTP(S) base URL of the backend whose connect URL is `connect_url`.
pub fn api_base_url(connect_url: &str) -> String {
    let base = connect_url
        .strip_suffix(CONNECT_PATH)
        .unwrap_or(connect_url);
    if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        base.to_owned()
    }
}

/// Makes the key at `config.key_path` if it is missing, then enrols it under `config.name`
/// with `token`.
pub async fn enrol(config: &BuilderConfig, token: &str) -> Result<Enrolment, EnrolError> {
    let (public_key, fingerprint) = ensure_key(&config.key_path, &config.name)?;
    let tls = http::tls_config(config.ca_cert.as_deref())?;
    let client = http::client(&tls);
    // Any replica enrols: a try that gets no answer goes to the next one.
    let bases: Vec<String> = config
        .connect_urls
        .iter()
        .map(|url| api_base_url(url))
        .collect();
    let request = serde_json::json!({
        "token": token,
        "name": config.name,
        "public_key": public_key,
    });
    let (status, body) = with_retries(&bases, |base| {
        client
            .post(format!("{base}/api/v1/enrol"))
            .send_json(&request)
    })
    .await?;
    match status {
        201 => {
            tracing::info!(name = %config.name, %fingerprint, "enrolled with the backend");
            return Ok(Enrolment::Admitted { fingerprint });
        }
        401 => return Err(EnrolError::TokenRefused),
        _ => {}
    }
    // A conflict: either this key is admitted already, or the name belongs to another key.
    if status == 409 && is_admitted(&client, &bases, &fingerprint).await? {
        tracing::info!(%fingerprint, "this key is admitted already");
        return Ok(Enrolment::AlreadyAdmitted { fingerprint });
    }
    Err(EnrolError::Refused {
        status,
        message: error_message(&body),
    })
}

/// The public key line and fingerprint of the key at `path`, generated there first when the
/// file does not exist.
fn ensure_key(path: &Path, name: &str) -> Result<(String, Fingerprint), EnrolError> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
        let key = identity::keygen(path, &format!("buildfleet-builder@{name}"))?;
        tracing::info!(path = %key.private_path.display(), fingerprint = %key.fingerprint, "generated a new key");
        return Ok((key.public_key, key.fingerprint));
    }
    let identity = Identity::load(path)?;
    let public_key = identity
        .key
        .public_key()
        .to_openssh()
        .map_err(|e| EnrolError::Key(e.to_string()))?;
    Ok((public_key, identity.fingerprint))
}

/// Whether the backend lists a builder with `fingerprint` (the builder list is public).
async fn is_admitted(
    client: &awc::Client,
    bases: &[String],
    fingerprint: &Fingerprint,
) -> Result<bool, EnrolError> {
    #[derive(Deserialize)]
    struct Listed {
        fingerprint: String,
    }
    #[derive(Deserialize)]
    struct Builders {
        builders: Vec<Listed>,
    }
    let (status, body) = with_retries(bases, |base| {
        client.get(format!("{base}/api/v1/builders")).send()
    })
    .await?;
    if status != 200 {
        return Err(EnrolError::Refused {
            status,
            message: error_message(&body),
        });
    }
    let listed: Builders = serde_json::from_slice(&body).map_err(|e| EnrolError::Refused {
        status,
        message: format!("unexpected builder list: {e}"),
    })?;
    let wanted = fingerprint.to_string();
    Ok(listed.builders.iter().any(|b| b.fingerprint == wanted))
}

/// Sends the request `send` makes to a backend of `bases` until one answers with anything but
/// a 5xx, each try to the next of them, backing off between tries, for at most
/// [`ENROL_PATIENCE`]; returns the status and body.
async fn with_retries<F, Fut, S>(
    bases: &[String],
    mut send: F,
) -> Result<(u16, Vec<u8>), EnrolError>
where
    F: FnMut(&str) -> Fut,
    Fut: std::future::Future<Output = Result<awc::ClientResponse<S>, awc::error::SendRequestError>>,
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + ENROL_PATIENCE;
    let mut delay = FIRST_RETRY_DELAY;
    let mut turns = bases.iter().cycle();
    loop {
        let Some(base) = turns.next() else {
            return Err(EnrolError::Unreachable {
                url: String::new(),
                patience: ENROL_PATIENCE,
                last_error: "no backend URL is configured".into(),
            });
        };
        let attempt = async {
            let mut response = send(base).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .body()
                .limit(MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_vec()))
        };
        let last_error = match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(Ok((status, body))) if status < 500 => return Ok((status, body)),
            Ok(Ok((status, body))) => format!("HTTP {status}: {}", error_message(&body)),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() + delay > deadline {
            return Err(EnrolError::Unreachable {
                url: base.to_owned(),
                patience: ENROL_PATIENCE,
                last_error,
            });
        }
        tracing::warn!(url = %base, error = %last_error, retry_in = ?delay, "cannot enrol yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// The message of the backend's JSON error body, or the body itself.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_comes_from_the_connect_url() {
        assert_eq!(
            api_base_url("ws://backend:8000/api/v1/builders/connect"),
            "http://backend:8000"
        );
        assert_eq!(
            api_base_url("wss://ci.example/bf/api/v1/builders/connect"),
            "https://ci.example/bf"
        );
    }

    #[test]
    fn error_messages_come_from_the_json_shape() {
        assert_eq!(
            error_message(br#"{"error":{"code":"conflict","message":"taken"}}"#),
            "taken"
        );
        assert_eq!(error_message(b" plain "), "plain");
    }

    #[test]
    fn a_missing_key_is_generated_and_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/builder");
        let (first, fp1) = ensure_key(&path, "b1").expect("generated");
        let (second, fp2) = ensure_key(&path, "b1").expect("loaded");
        assert_eq!(fp1, fp2);
        assert_eq!(
            first.split_whitespace().nth(1),
            second.split_whitespace().nth(1)
        );
    }
}
