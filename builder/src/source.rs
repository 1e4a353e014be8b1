//! Fetching a job's source archive: streamed to disk, bounded by `max_bytes`, and verified
//! against the SHA-256 digest of the assignment before anything unpacks or runs it.
//! Transient failures (connect errors, resets, 5xx, 408, 429) are retried with backoff until
//! the job's deadline, each try downloading from the start.

use std::path::Path;
use std::time::Duration;

use buildfleet_protocol::{BuildErrorKind, Sha256Digest, SourceSpec};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::http::{Retrier, Retry};

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
    #[error("gave up fetching the source after {tries} tries over {:.1} s, as the next one could not start before the job's deadline; last error: {last}", elapsed.as_secs_f64())]
    GaveUp {
        tries: u32,
        elapsed: Duration,
        last: Box<SourceError>,
    },
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
            SourceError::GaveUp { last, .. } => last.kind(),
        }
    }
}

/// Downloads `spec.url` into `dest` and verifies it; returns its size. Transient failures
/// are retried while the next try can start before `deadline` (the job's; `None`: a fixed
/// budget of ten minutes). On any error the partial file is removed.
pub async fn fetch(
    client: &awc::Client,
    spec: &SourceSpec,
    dest: &Path,
    deadline: Option<tokio::time::Instant>,
) -> Result<u64, SourceError> {
    let mut retrier = Retrier::new(deadline);
    let result = loop {
        let (error, retry) = match fetch_once(client, spec, dest).await {
            Ok(size) => break Ok(size),
            Err(failure) => failure,
        };
        if retry == Retry::Never {
            break Err(error);
        }
        tracing::warn!(error = %error, tries = retrier.tries(), "fetching the source failed; retrying");
        if !retrier.wait(retry).await {
            break Err(SourceError::GaveUp {
                tries: retrier.tries(),
                elapsed: retrier.elapsed(),
                last: Box::new(error),
            });
        }
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

/// One try; a failure comes with whether it is worth another.
async fn fetch_once(
    client: &awc::Client,
    spec: &SourceSpec,
    dest: &Path,
) -> Result<u64, (SourceError, Retry)> {
    let lower = spec.url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err((SourceError::Scheme(spec.url.clone()), Retry::Never));
    }
    let mut response = client.get(spec.url.as_str()).send().await.map_err(|e| {
        let retry = Retry::for_send_error(&e);
        (SourceError::Fetch(e.to_string()), retry)
    })?;
    if !response.status().is_success() {
        let retry = Retry::for_status(response.status(), response.headers());
        let error = SourceError::Status {
            status: response.status().as_u16(),
        };
        return Err((error, retry));
    }
    // Only the transfer is retried; what the data says (too large, wrong digest) is final,
    // and so is a local disk error.
    let never = |e: SourceError| (e, Retry::Never);
    let declared = response
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > spec.max_bytes) {
        return Err(never(SourceError::TooLarge {
            limit: spec.max_bytes,
        }));
    }

    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| never(e.into()))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = response.next().await {
        // A body cut off midway (the server restarting) is worth another try.
        let chunk = chunk.map_err(|e| (SourceError::Fetch(e.to_string()), Retry::After(None)))?;
        size += chunk.len() as u64;
        // Counted as it streams: a server that lies about (or omits) its length is cut off.
        if size > spec.max_bytes {
            return Err(never(SourceError::TooLarge {
                limit: spec.max_bytes,
            }));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| never(e.into()))?;
    }
    file.flush().await.map_err(|e| never(e.into()))?;
    file.sync_all().await.map_err(|e| never(e.into()))?;

    let actual = Sha256Digest::from_bytes(&hasher.finalize().into());
    if actual != spec.sha256 {
        return Err(never(SourceError::DigestMismatch {
            expected: spec.sha256.clone(),
            actual,
        }));
    }
    Ok(size)
}
