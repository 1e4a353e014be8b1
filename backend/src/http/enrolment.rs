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
use buildfleet_protocol::signing;
use serde::{Deserialize, Serialize};

use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::require;
use crate::http::AppState;
use crate::store::{EnrolmentError, EnrolmentToken, EnrolmentTokenId, NewBuilder, TokenScope};

/// Longest lifetime a token may be given: enrolment tokens are for setting builders up now,
/// not standing credentials.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_TTL_SECS: u64 = 3600;
const MAX_USES: u32 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrolmentToken {
    pub max_uses: u32,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Labels every builder enrolled with this token gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct CreatedEnrolmentToken {
    #[serde(flatten)]
    token: TokenView,
    /// The secret, shown this once.
    #[serde(rename = "token")]
    secret: String,
}

#[derive(Debug, Serialize)]
struct TokenView {
    #[serde(flatten)]
    token: EnrolmentToken,
    usable: bool,
}

impl TokenView {
    fn new(token: EnrolmentToken, now: i64) -> Self {
        TokenView {
            usable: token.is_usable(now),
            token,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrol {
    pub token: String,
    pub name: String,
    /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
}

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
    Ok(HttpResponse::Created().json(CreatedEnrolmentToken {
        token: TokenView::new(token, now),
        secret,
    }))
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let store = state.store.clone();
    let (tokens, now) =
        blocking(move || Ok((store.list_enrolment_tokens()?, store.now_ms()))).await?;
    let views: Vec<_> = tokens.into_iter().map(|t| TokenView::new(t, now)).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "enrolment_tokens": views })))
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
    Ok(HttpResponse::Ok().json(TokenView::new(token, now)))
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
            EnrolmentError::TokenRefused => ApiError::Unauthorized,
            EnrolmentError::AlreadyAdmitted { .. } => ApiError::Conflict(e.to_string()),
            EnrolmentError::Store(e) => e.into(),
        })
    })
    .await?;
    tracing::info!(builder = %builder.name, fingerprint = %builder.fingerprint, token = %token_id, "builder enrolled");
    Ok(HttpResponse::Created().json(serde_json::json!({
        "builder": builder,
        "enrolment_token": token_id,
    })))
}
