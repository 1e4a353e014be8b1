//! Fetching a job's source archive: streamed to disk, bounded by `max_bytes`, and verified
//! against the SHA-256 digest of the assignment before anything unpacks or runs it.

use std::path::Path;

use buildfleet_protocol::{BuildErrorKind, Sha256Digest, SourceSpec};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source URL {0:?} is not http:// or https://")]
    Scheme(String),
    #[error("fetching the source failed: {0}")]
    Fetch(String),
    #[error("the source server answered {status}")]
    Status { status: u16 },
    #[error("the source is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("source digest mismatch: expected sha256 {expected}, got {actual}")]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("cannot write the source to disk: {0}")]
    Io(#[from] std::io::Error),
}

impl SourceError {
    pub fn kind(&self) -> BuildErrorKind {
        match self {
            SourceError::TooLarge { .. } => BuildErrorKind::SourceTooLarge,
            SourceError::DigestMismatch { .. } => BuildErrorKind::SourceDigestMismatch,
            SourceError::Io(_) => BuildErrorKind::Internal,
            SourceError::Scheme(_) | SourceError::Fetch(_) | SourceError::Status { .. } => {
                BuildErrorKind::SourceFetch
            }
        }
    }
}

/// Downloads `spec.url` into `dest` and verifies it; returns its size. On any error the
/// partial file is removed.
pub async fn fetch(
    client: &awc::Client,
    spec: &SourceSpec,
    dest: &Path,
) -> Result<u64, SourceError> {
    let result = fetch_inner(client, spec, dest).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

async fn fetch_inner(
    client: &awc::Client,
    spec: &SourceSpec,
    dest: &Path,
) -> Result<u64, SourceError> {
    let lower = spec.url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(SourceError::Scheme(spec.url.clone()));
    }
    let mut response = client
        .get(spec.url.as_str())
        .send()
        .await
        .map_err(|e| SourceError::Fetch(e.to_string()))?;
    if !response.status().is_success() {
        return Err(SourceError::Status {
            status: response.status().as_u16(),
        });
    }
    let declared = response
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > spec.max_bytes) {
        return Err(SourceError::TooLarge {
            limit: spec.max_bytes,
        });
    }

    let mut file = tokio::fs::File::create(dest).await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = response.next().await {
        let chunk = chunk.map_err(|e| SourceError::Fetch(e.to_string()))?;
        size += chunk.len() as u64;
        // Counted as it streams: a server that lies about (or omits) its length is cut off.
        if size > spec.max_bytes {
            return Err(SourceError::TooLarge {
                limit: spec.max_bytes,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;

    let actual = Sha256Digest::from_bytes(&hasher.finalize().into());
    if actual != spec.sha256 {
        return Err(SourceError::DigestMismatch {
            expected: spec.sha256.clone(),
            actual,
        });
    }
    Ok(size)
}
