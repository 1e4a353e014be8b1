//! Artifacts: upload under the attempt's job token, list, download, and the signed build
//! statement that vouches for them (or, for a job without artifacts such as a plan-mode job,
//! for its outcome).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_protocol::dsse::{DsseSignature, Envelope};
use buildfleet_protocol::ssh_key::{HashAlg, SshSig};
use buildfleet_protocol::{validate_artifact_name, Sha256Digest};

use buildfleet_api as api;

use crate::error::{blocking, ApiError};
use crate::http::auth::{bearer, Access};
use crate::http::jobs::{parse_job_id, ATTEMPT_HEADER};
use crate::http::streaming::{receive, respond, storage_error};
use crate::http::views;
use crate::http::AppState;
use crate::storage::keys;
use crate::store::{
    Artifact, Attempt, AttemptStatement, JobId, NewArtifact, StatementSignature, StoreError,
};

/// Header carrying the SHA-256 the uploader declares for the body.
pub const DIGEST_HEADER: &str = "X-Buildfleet-Sha256";

/// `PUT /api/v1/jobs/{id}/attempts/{attempt}/artifacts/{name}`.
pub async fn upload(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (raw_job, raw_attempt, name) = path.into_inner();
    let job = parse_job_id(&raw_job)?;
    let attempt = Attempt(
        raw_attempt
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("{raw_attempt:?} is not an attempt")))?,
    );
    // Check the token before reading a byte of the body.
    let token = bearer(&req).ok_or(ApiError::Unauthorized)?.to_owned();
    let store = state.store.clone();
    let (token_job, token_attempt) = blocking(move || match store.verify_job_token(job, &token) {
        Ok(found) => Ok(found),
        Err(
            StoreError::InvalidJobToken(_)
            | StoreError::NotFound { .. }
            | StoreError::StaleAttempt { .. },
        ) => Err(job_token_refused(job, attempt)),
        Err(e) => Err(e.into()),
    })
    .await?;
    if token_job != job || token_attempt != attempt {
        // The token is this job's live one, for another attempt than the URL names.
        return Err(ApiError::TokenRefused(format!(
            "the job token is for job {token_job} attempt {token_attempt}, not job {job} \
             attempt {attempt}: a job token is valid for its own attempt only"
        )));
    }
    validate_artifact_name(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let declared: Sha256Digest = req
        .headers()
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::BadRequest(format!("the {DIGEST_HEADER} header is required")))?
        .parse()
        .map_err(|e: buildfleet_protocol::InvalidValue| {
            ApiError::BadRequest(format!("{DIGEST_HEADER}: {e}"))
        })?;
    let received = receive(
        &state.storage,
        payload,
        state.config.limits.max_artifact_bytes,
    )
    .await?;
    if received.sha256 != declared.as_str() {
        state.storage.discard(received.blob);
        return Err(ApiError::DigestMismatch(format!(
            "body has sha256 {}, declared {declared}",
            received.sha256
        )));
    }
    let key = keys::artifact(job, attempt, &name);
    let (store, storage) = (state.store.clone(), state.storage.clone());
    let size = received.size;
    let sha256 = received.sha256.clone();
    let new = NewArtifact {
        job,
        attempt,
        name: name.clone(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        sha256: sha256.clone(),
        storage_key: key.clone(),
    };
    blocking(move || {
        // Fenced first, so a stale attempt cannot overwrite what the current one stored.
        let recorded = store.record_artifact(&new);
        match recorded {
            Ok(_) => {
                storage.commit(received.blob, &key).map_err(storage_error)?;
                Ok(())
            }
            Err(e) => {
                storage.discard(received.blob);
                Err(match e {
                    StoreError::StaleAttempt { .. } => ApiError::TokenRefused(format!(
                        "the job token of job {job} attempt {attempt} has expired: the attempt \
                         ended during the upload"
                    )),
                    other => other.into(),
                })
            }
        }
    })
    .await?;
    state
        .metrics
        .artifact_bytes_uploaded
        .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
    Ok(HttpResponse::Created().json(api::UploadedArtifact { name, size, sha256 }))
}

/// A job token that is not the live token of the attempt the URL names: whatever the
/// reason, the same answer (a wrong token learns nothing about the right one).
fn job_token_refused(job: JobId, attempt: Attempt) -> ApiError {
    ApiError::TokenRefused(format!(
        "the job token is not valid for job {job} attempt {attempt}: it is not that attempt's \
         token, or the attempt has ended and its token expired"
    ))
}

async fn published(
    state: &AppState,
    access: Access,
    job: JobId,
) -> Result<Vec<Artifact>, ApiError> {
    let store = state.store.clone();
    blocking(move || {
        access.visible_job(store.job(job)?, job)?;
        Ok(store.artifacts(job, true)?)
    })
    .await
}

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let job = parse_job_id(&path)?;
    let store = state.store.clone();
    let (artifacts, statement) = blocking(move || {
        access.visible_job(store.job(job)?, job)?;
        Ok((store.artifacts(job, true)?, store.job_statement(job)?))
    })
    .await?;
    let artifacts = artifacts
        .into_iter()
        .map(|a| views::artifact(&state.public_url, a))
        .collect::<Result<_, _>>()?;
    // Links only to what `/statement` serves, so a client never follows one into a 404.
    let base = &state.public_url;
    let link = |path: &str| {
        statement
            .as_ref()
            .map(|_| format!("{base}/api/v1/jobs/{job}/{path}"))
    };
    Ok(HttpResponse::Ok().json(api::ArtifactList {
        artifacts,
        statement_attempt: statement.as_ref().map(|s| s.attempt.0),
        statement_url: link("statement"),
        signature_url: link("statement.sig"),
        allowed_signers_url: format!("{base}/api/v1/allowed_signers"),
    }))
}

/// The published artifact `name` of the latest attempt that published artifacts (the one
/// whose statement `/statement` serves).
async fn latest_published(
    state: &AppState,
    access: Access,
    job: JobId,
    name: &str,
) -> Result<Artifact, ApiError> {
    let artifacts = published(state, access, job).await?;
    let latest_attempt = artifacts.iter().map(|a| a.attempt).max();
    artifacts
        .into_iter()
        .filter(|a| Some(a.attempt) == latest_attempt)
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("artifact {name:?} of job {job}")))
}

pub async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let (raw_job, name) = path.into_inner();
    let job = parse_job_id(&raw_job)?;
    validate_artifact_name(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let artifact = match latest_published(&state, access, job, &name).await {
        // Deleted by retention or an admin: say so rather than a bare "not found" (only of a
        // job the caller sees: a hidden one gets the answer of a missing job).
        Err(ApiError::NotFound(what)) if what != format!("job {job}") => {
            return Err(crate::http::retention::not_found_or_expired(&state, job, what).await)
        }
        found => found?,
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/octet-stream")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header((DIGEST_HEADER, artifact.sha256));
    let size = u64::try_from(artifact.size).unwrap_or(0);
    respond(&req, &state.storage, artifact.storage_key, size, response).await
}

/// The statement `/statement` serves (see [`crate::store::Store::job_statement`]).
async fn kept_statement(
    state: &AppState,
    access: Access,
    job: JobId,
) -> Result<AttemptStatement, ApiError> {
    let store = state.store.clone();
    blocking(move || {
        access.visible_job(store.job(job)?, job)?;
        store.job_statement(job)?.ok_or_else(|| {
            ApiError::NotFoundExplained(format!(
                "job {job} has no verified build statement yet: no attempt completed with one"
            ))
        })
    })
    .await
}

/// `GET /api/v1/jobs/{id}/statement`: the exact signed bytes.
pub async fn statement(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let job = parse_job_id(&path)?;
    let kept = kept_statement(&state, access, job).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((ATTEMPT_HEADER, kept.attempt.to_string()))
        .body(kept.statement))
}

/// `GET /api/v1/jobs/{id}/statement.sig`: its armored SSHSIG.
pub async fn statement_signature(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let job = parse_job_id(&path)?;
    let kept = kept_statement(&state, access, job).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain")
        .insert_header((ATTEMPT_HEADER, kept.attempt.to_string()))
        .body(kept.signature))
}

/// The signatures of the statement `/statement` serves: the `statement_signatures` rows, or
/// for a job published before they existed, its one stored SSHSIG (signer read from the
/// signature itself, builder from its attempt).
async fn kept_signatures(
    state: &AppState,
    access: Access,
    job: JobId,
) -> Result<(AttemptStatement, Vec<StatementSignature>), ApiError> {
    let kept = kept_statement(state, access, job).await?;
    let store = state.store.clone();
    let attempt = kept.attempt;
    let signature = kept.signature.clone();
    let rows = blocking(move || {
        let rows = store.statement_signatures(job)?;
        if !rows.is_empty() {
            return Ok(rows);
        }
        let signer = SshSig::from_pem(&signature)
            .map(|sig| sig.public_key().fingerprint(HashAlg::Sha256).to_string())
            .map_err(|e| {
                ApiError::from(StoreError::Corrupt(format!(
                    "the stored signature of job {job} does not parse: {e}"
                )))
            })?;
        Ok(vec![StatementSignature {
            signer_fingerprint: signer,
            builder_id: None,
            builder_name: store.attempt_builder_name(job, attempt)?,
            sshsig: signature,
            dsse_sig: None,
        }])
    })
    .await?;
    Ok((kept, rows))
}

/// `GET /api/v1/jobs/{id}/statement.dsse`: the DSSE envelope of the statement `/statement`
/// serves, with every signature of it. A statement signed before DSSE (a
/// `buildfleet-statement/v1` text) has none: 404 with a message, its SSHSIG stays at
/// `/statement.sig`.
pub async fn statement_envelope(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let job = parse_job_id(&path)?;
    let (kept, rows) = kept_signatures(&state, access, job).await?;
    let signatures: Vec<DsseSignature> = rows
        .into_iter()
        .filter_map(|row| {
            row.dsse_sig.map(|sig| DsseSignature {
                keyid: row.signer_fingerprint,
                sig,
            })
        })
        .collect();
    if signatures.is_empty() {
        return Err(ApiError::NotFoundExplained(format!(
            "job {job}'s statement has no DSSE signature: it was signed before statements were \
             in-toto (buildfleet-statement/v1, SSHSIG only); verify it with ssh-keygen from \
             /statement and /statement.sig"
        )));
    }
    let envelope = Envelope::new(kept.statement.as_bytes(), signatures);
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((ATTEMPT_HEADER, kept.attempt.to_string()))
        .body(envelope.to_json()))
}

/// One entry of `GET /api/v1/jobs/{id}/signatures`.
#[derive(Debug, serde::Serialize)]
struct SignatureEntry {
    /// The builder's name; `null` when it was removed since.
    builder: Option<String>,
    /// The signing key's OpenSSH SHA-256 fingerprint.
    fingerprint: String,
    /// Armored SSHSIG over the statement (namespace `buildfleet-statement`).
    signature: String,
}

/// `GET /api/v1/jobs/{id}/signatures`: who signed the statement `/statement` serves, with
/// each armored SSHSIG (for `ssh-keygen -Y verify` per signer).
pub async fn statement_signatures(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let job = parse_job_id(&path)?;
    let (kept, rows) = kept_signatures(&state, access, job).await?;
    let entries: Vec<SignatureEntry> = rows
        .into_iter()
        .map(|row| SignatureEntry {
            builder: row.builder_name,
            fingerprint: row.signer_fingerprint,
            signature: row.sshsig,
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((ATTEMPT_HEADER, kept.attempt.to_string()))
        .json(entries))
}
