//! Uploading one artifact: `PUT {upload_url}/{name}` with the job token and the declared
//! digest, the body streamed from disk with a known length. Transient failures (the backend
//! restarting, 5xx, 408, 429) are retried with backoff until the job's deadline; each try
//! streams the file again from its start (the backend keeps nothing of a broken PUT).

use std::time::Duration;

use awc::body::SizedStream;
use buildfleet_protocol::{ArtifactDigest, BuildErrorKind};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::artifacts::PreparedArtifact;
use crate::backends::Backends;
use crate::http::{Retrier, Retry};

/// Header carrying the SHA-256 the builder declares for the body.
pub const SHA256_HEADER: &str = "X-Buildfleet-Sha256";

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("uploading {name:?} failed: {message}")]
    Transport { name: String, message: String },
    #[error("cannot read the artifact {name:?}: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error("uploading {name:?} was refused with {status}: {body}")]
    Refused {
        name: String,
        status: u16,
        body: String,
    },
    #[error("the backend stored {name:?} with another digest ({stored}) than ours ({ours})")]
    DigestDiffers {
        name: String,
        stored: String,
        ours: String,
    },
    #[error("gave up uploading {name:?} after {tries} tries over {:.1} s, as the next one could not start before the job's deadline; last error: {last}", elapsed.as_secs_f64())]
    GaveUp {
        name: String,
        tries: u32,
        elapsed: Duration,
        last: Box<UploadError>,
    },
}

impl UploadError {
    pub fn kind(&self) -> BuildErrorKind {
        BuildErrorKind::Upload
    }
}

#[derive(Debug, Deserialize)]
struct Stored {
    sha256: String,
}

/// Uploads `artifact`, retrying transient failures with backoff while the next try can
/// start before `deadline` (the job's; `None`: a fixed budget of ten minutes).
pub async fn upload(
    client: &awc::Client,
    backends: &Backends,
    upload_url: &str,
    job_token: &str,
    artifact: &PreparedArtifact,
    deadline: Option<tokio::time::Instant>,
) -> Result<ArtifactDigest, UploadError> {
    let mut retrier = Retrier::new(deadline);
    loop {
        let (error, retry) =
            match upload_once(client, &backends.route(upload_url), job_token, artifact).await {
                Ok(digest) => return Ok(digest),
                Err(failure) => failure,
            };
        if retry == Retry::Never {
            return Err(error);
        }
        tracing::warn!(error = %error, tries = retrier.tries(), "upload failed; retrying");
        if !retrier.wait(retry).await {
            return Err(UploadError::GaveUp {
                name: artifact.name.clone(),
                tries: retrier.tries(),
                elapsed: retrier.elapsed(),
                last: Box::new(error),
            });
        }
    }
}

/// One try; a failure comes with whether it is worth another.
async fn upload_once(
    client: &awc::Client,
    upload_url: &str,
    job_token: &str,
    artifact: &PreparedArtifact,
) -> Result<ArtifactDigest, (UploadError, Retry)> {
    let name = artifact.name.clone();
    let file = tokio::fs::File::open(&artifact.file)
        .await
        .map_err(|source| {
            let error = UploadError::Read {
                name: name.clone(),
                source,
            };
            (error, Retry::Never)
        })?;
    let body = SizedStream::new(artifact.size, ReaderStream::new(file));
    let url = format!("{}/{}", upload_url.trim_end_matches('/'), artifact.name);
    let mut response = client
        .put(url)
        .insert_header(("Authorization", format!("Bearer {job_token}")))
        .insert_header((SHA256_HEADER, artifact.sha256.as_str()))
        .insert_header(("Content-Type", "application/octet-stream"))
        .send_body(body)
        .await
        .map_err(|e| {
            let retry = Retry::for_send_error(&e);
            let error = UploadError::Transport {
                name: name.clone(),
                message: e.to_string(),
            };
            (error, retry)
        })?;
    let status = response.status();
    let retry = Retry::for_status(status, response.headers());
    let body = response.body().limit(64 * 1024).await.unwrap_or_default();
    if !status.is_success() {
        let error = UploadError::Refused {
            name: name.clone(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(500).collect(),
        };
        return Err((error, retry));
    }
    // An answer without the digest is taken at its word; one with another digest is not.
    if let Ok(stored) = serde_json::from_slice::<Stored>(&body) {
        if stored.sha256 != artifact.sha256.as_str() {
            let error = UploadError::DigestDiffers {
                name: name.clone(),
                stored: stored.sha256,
                ours: artifact.sha256.to_string(),
            };
            return Err((error, Retry::Never));
        }
    }
    Ok(ArtifactDigest {
        name,
        size: artifact.size,
        sha256: artifact.sha256.clone(),
    })
}
