//! Source archives uploaded by submitters, stored content-addressed by SHA-256.

use actix_web::body::SizedStream;
use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_protocol::Sha256Digest;

use crate::error::{blocking, ApiError};
use crate::http::auth::require;
use crate::http::streaming::{open_stream, receive, storage_error};
use crate::http::AppState;
use crate::storage::keys;
use crate::store::TokenScope;

/// `POST /api/v1/sources`: the body is the archive. Answers its digest and URL.
pub async fn upload(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Submit).await?;
    let received = receive(
        &state.storage,
        payload,
        state.config.limits.max_source_bytes,
    )
    .await?;
    if received.size == 0 {
        state.storage.discard(received.blob);
        return Err(ApiError::BadRequest("the source archive is empty".into()));
    }
    let (sha256, size) = (received.sha256.clone(), received.size);
    let key = keys::source(&sha256);
    let (store, storage) = (state.store.clone(), state.storage.clone());
    let stored_key = key.clone();
    let answer = buildfleet_api::UploadedSource {
        url: format!("{}/api/v1/sources/{sha256}", state.public_url),
        sha256: sha256.clone(),
        size,
    };
    blocking(move || {
        storage
            .commit(received.blob, &stored_key)
            .map_err(storage_error)?;
        store.put_source(
            &sha256,
            i64::try_from(size).unwrap_or(i64::MAX),
            &stored_key,
        )?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Created().json(answer))
}

/// `GET /api/v1/sources/{sha256}`: public, like the artifacts built from it.
pub async fn download(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sha256: Sha256Digest = path
        .parse()
        .map_err(|e: buildfleet_protocol::InvalidValue| ApiError::BadRequest(e.to_string()))?;
    let store = state.store.clone();
    let digest = sha256.to_string();
    let source = blocking(move || Ok(store.source(&digest)?))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("source {sha256}")))?;
    let blob = open_stream(&state.storage, source.storage_key, None).await?;
    let (len, body) = (blob.range.end - blob.range.start, blob.body);
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("X-Buildfleet-Sha256", sha256.to_string()))
        .body(SizedStream::new(len, body)))
}
