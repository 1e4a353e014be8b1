//! Builder enrolment: an operator issues a short-lived, use-bounded enrolment token; a builder
//! presents it with its public key and is admitted, so no key is copied by hand.
//!
//! - `POST /api/v1/enrolment-tokens {max_uses, ttl_secs, labels?}` (admin) → the secret, once
//! - `GET /api/v1/enrolment-tokens` (admin) → every token, without secrets
//! - `DELETE /api/v1/enrolment-tokens/{id}` (admin) → revoked
//! - `POST /api/v1/enrol {token, name, public_key}` (the token is the credential) → 201 with
//!   the builder; 409 when the key is already admitted (a restarting builder) or the name is
//!   taken; 401 for a token that is unknown, expired, used up or revoked.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::{self as api, CreateEnrolmentToken, Enrol};
use buildfleet_protocol::signing;

use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::require;
use crate::http::{views, AppState};
use crate::store::{EnrolmentError, EnrolmentTokenId, NewBuilder, TokenScope};

/// Longest lifetime a token may be given: enrolment tokens are for setting builders up now,
/// not standing credentials.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_TTL_SECS: u64 = 3600;
const MAX_USES: u32 = 10_000;

pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let body: CreateEnrolmentToken = parse_json(&body)?;
    if !(1..=MAX_USES).contains(&body.max_uses) {
        return Err(ApiError::BadRequest(format!(
            "max_uses must be between 1 and {MAX_USES}"
        )));
    }
    let ttl_secs = body.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    let store = state.store.clone();
    let (token, secret, now) = blocking(move || {
        let now = store.now_ms();
        // Both bounds are checked above, so neither conversion can fail.
        let ttl_ms = i64::try_from(ttl_secs * 1000).map_err(ApiError::internal)?;
        let max_uses = i32::try_from(body.max_uses).map_err(ApiError::internal)?;
        let (token, secret) = store.create_enrolment_token(max_uses, now + ttl_ms, &body.labels)?;
        Ok((token, secret, now))
    })
    .await?;
    tracing::info!(token = %token.id, max_uses = token.max_uses, expires_at = token.expires_at, "enrolment token created");
    Ok(HttpResponse::Created().json(api::CreatedEnrolmentToken {
        token: views::enrolment_token(token, now),
        secret,
    }))
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let store = state.store.clone();
    let (tokens, now) =
        blocking(move || Ok((store.list_enrolment_tokens()?, store.now_ms()))).await?;
    let enrolment_tokens = tokens
        .into_iter()
        .map(|t| views::enrolment_token(t, now))
        .collect();
    Ok(HttpResponse::Ok().json(api::EnrolmentTokenList { enrolment_tokens }))
}

pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let id: EnrolmentTokenId = path
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{:?} is not an enrolment token id", *path)))?;
    let store = state.store.clone();
    let (token, now) =
        blocking(move || Ok((store.revoke_enrolment_token(id)?, store.now_ms()))).await?;
    tracing::info!(token = %token.id, "enrolment token revoked");
    Ok(HttpResponse::Ok().json(views::enrolment_token(token, now)))
}

pub async fn enrol(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let body: Enrol = parse_json(&body)?;
    signing::validate_builder_name(&body.name).map_err(|e| ApiError::BadRequest(e.into()))?;
    let key = signing::parse_public_key(&body.public_key)
        .map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))?;
    let new = NewBuilder {
        name: body.name,
        public_key: key.to_openssh().map_err(ApiError::internal)?,
        fingerprint: signing::fingerprint(&key).to_string(),
        labels: BTreeMap::new(),
    };
    let store = state.store.clone();
    let token = body.token;
    let (builder, token_id) = blocking(move || {
        store.enrol_builder(&token, new).map_err(|e| match e {
            // One answer for the four cases, so a guess learns nothing about real tokens.
            EnrolmentError::TokenRefused => ApiError::TokenRefused(
                "the enrolment token is not valid: it is unknown to this backend, used up, \
                 revoked or expired; ask the operator for a new one"
                    .into(),
            ),
            EnrolmentError::AlreadyAdmitted { .. } => ApiError::Conflict(e.to_string()),
            EnrolmentError::Store(e) => e.into(),
        })
    })
    .await?;
    tracing::info!(builder = %builder.name, fingerprint = %builder.fingerprint, token = %token_id, "builder enrolled");
    Ok(HttpResponse::Created().json(api::Enrolled {
        builder: builder.into(),
        enrolment_token: token_id.0,
    }))
}
