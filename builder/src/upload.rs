//! Uploading one artifact: `PUT {upload_url}/{name}` with the job token and the declared
//! digest, the body streamed from disk with a known length.

use std::time::Duration;

use awc::body::SizedStream;
use buildfleet_protocol::{ArtifactDigest, BuildErrorKind};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::artifacts::PreparedArtifact;

/// Header carrying the SHA-256 the builder declares for the body.
pub const SHA256_HEADER: &str = "X-Buildfleet-Sha256";
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("uploading {name:?} failed: {message}")]
    Transport { name: String, message: String },
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

/// Uploads `artifact`, retrying transport errors and 5xx answers a few times.
pub async fn upload(
    client: &awc::Client,
    upload_url: &str,
    job_token: &str,
    artifact: &PreparedArtifact,
) -> Result<ArtifactDigest, UploadError> {
    let mut attempt = 1;
    loop {
        match upload_once(client, upload_url, job_token, artifact).await {
            Ok(digest) => return Ok(digest),
            Err(e) if attempt < ATTEMPTS && is_retryable(&e) => {
                tracing::warn!(error = %e, attempt, "upload failed; retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_retryable(error: &UploadError) -> bool {
    match error {
        UploadError::Transport { .. } => true,
        UploadError::Refused { status, .. } => *status >= 500,
        UploadError::DigestDiffers { .. } => false,
    }
}

async fn upload_once(
    client: &awc::Client,
    upload_url: &str,
    job_token: &str,
    artifact: &PreparedArtifact,
) -> Result<ArtifactDigest, UploadError> {
    let name = artifact.name.clone();
    let transport = |message: String| UploadError::Transport {
        name: name.clone(),
        message,
    };
    let file = tokio::fs::File::open(&artifact.file)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let body = SizedStream::new(artifact.size, ReaderStream::new(file));
    let url = format!("{}/{}", upload_url.trim_end_matches('/'), artifact.name);
    let mut response = client
        .put(url)
        .insert_header(("Authorization", format!("Bearer {job_token}")))
        .insert_header((SHA256_HEADER, artifact.sha256.as_str()))
        .insert_header(("Content-Type", "application/octet-stream"))
        .send_body(body)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = response.status();
    let body = response.body().limit(64 * 1024).await.unwrap_or_default();
    if !status.is_success() {
        return Err(UploadError::Refused {
            name: name.clone(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(500).collect(),
        });
    }
    // An answer without the digest is taken at its word; one with another digest is not.
    if let Ok(stored) = serde_json::from_slice::<Stored>(&body) {
        if stored.sha256 != artifact.sha256.as_str() {
            return Err(UploadError::DigestDiffers {
                name: name.clone(),
                stored: stored.sha256,
                ours: artifact.sha256.to_string(),
            });
        }
    }
    Ok(ArtifactDigest {
        name,
        size: artifact.size,
        sha256: artifact.sha256.clone(),
    })
}
