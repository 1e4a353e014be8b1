//! `GET /api/v1/artifacts/by-sha256/{hex}`: the jobs that published an artifact with this
//! SHA-256, for `buildfleet verify FILE` (which has the file, not the job).

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_protocol::Sha256Digest;
use serde_json::json;

use crate::error::{blocking, ApiError};
use crate::http::auth::Access;
use crate::http::AppState;

/// Answers `{"sha256", "artifacts": [{"job", "attempt", "name"}]}`, newest job first, with
/// only the jobs the caller may see (a hidden job's artifact is as absent as a missing one);
/// an empty list when none.
pub async fn by_sha256(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let digest: Sha256Digest = path.to_ascii_lowercase().parse().map_err(|_| {
        ApiError::BadRequest(format!("{:?} is not a SHA-256 in hex", path.as_str()))
    })?;
    let store = state.store.clone();
    let hex = digest.to_string();
    let found = blocking(move || Ok(store.published_artifacts_by_sha256(&hex)?)).await?;
    let artifacts: Vec<_> = found
        .into_iter()
        .filter(|a| access.sees(a.project))
        .map(|a| json!({ "job": a.job.0, "attempt": a.attempt.0, "name": a.name }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "sha256": digest.to_string(), "artifacts": artifacts })))
}
