//! Streams request bodies into storage and stored blobs into responses, in constant memory,
//! computing SHA-256 on the way in.

use std::sync::Arc;

use actix_web::web;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::storage::{PendingBlob, Storage};

pub struct Received {
    pub blob: PendingBlob,
    pub size: u64,
    pub sha256: String,
}

/// Writes `payload` to a new pending blob, refusing bodies over `max_bytes` (the blob is
/// discarded then). The caller commits or discards the blob.
pub async fn receive(
    storage: &Arc<dyn Storage>,
    mut payload: web::Payload,
    max_bytes: u64,
) -> Result<Received, ApiError> {
    let storage_for_create = storage.clone();
    let pending = web::block(move || storage_for_create.create_pending())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let PendingBlob { file, .. } = &pending;
    let mut out = tokio::fs::File::from_std(file.try_clone().map_err(ApiError::internal)?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let result: Result<(), ApiError> = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(ApiError::PayloadTooLarge { limit: max_bytes });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        out.flush().await.map_err(ApiError::internal)?;
        Ok(())
    }
    .await;
    drop(out);
    match result {
        Ok(()) => Ok(Received {
            blob: pending,
            size,
            sha256: hex::encode(hasher.finalize()),
        }),
        Err(e) => {
            storage.discard(pending);
            Err(e)
        }
    }
}

/// Opens a stored blob as a streamed response body.
pub async fn open_stream(
    storage: &Arc<dyn Storage>,
    key: String,
) -> Result<(u64, tokio_util::io::ReaderStream<tokio::fs::File>), ApiError> {
    let storage = storage.clone();
    let file = web::block(move || storage.open(&key))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::NotFound("stored blob".into()),
            _ => ApiError::internal(e),
        })?;
    let len = file.metadata().map_err(ApiError::internal)?.len();
    Ok((
        len,
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 64 * 1024),
    ))
}
