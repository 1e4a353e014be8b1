//! Bearer-token checks: the admin token from the configuration, or an API token from the
//! store with a scope that allows the action. Reads need no token.

use actix_web::HttpRequest;

use crate::error::{blocking, ApiError};
use crate::http::AppState;
use crate::store::TokenScope;

pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Constant-time comparison, so response timing does not reveal a prefix of the token.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who made an authorised request (recorded as a job's submitter).
pub struct Caller(pub String);

pub async fn require(
    req: &HttpRequest,
    state: &AppState,
    needed: TokenScope,
) -> Result<Caller, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?.to_owned();
    if same_secret(&token, &state.admin_token) {
        return Ok(Caller("admin".into()));
    }
    let store = state.store.clone();
    let found = blocking(move || Ok(store.verify_api_token(&token, store.now_ms())?)).await?;
    match found {
        Some(t) if t.scope.allows(needed) => Ok(Caller(format!("token:{}", t.id))),
        Some(t) => Err(ApiError::ScopeTooNarrow(format!(
            "this API token has the {} scope; this needs the {needed} scope or the admin token",
            t.scope
        ))),
        // Said apart from a missing token: the caller has one, and it is the one to fix.
        None => Err(ApiError::TokenRefused(
            "the bearer token is wrong: it is neither the admin token nor a live API token \
             of this backend"
                .into(),
        )),
    }
}
