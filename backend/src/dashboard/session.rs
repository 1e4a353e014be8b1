//! The dashboard's session cookie: the browser's copy of the token its script keeps, so pages
//! rendered on the server (and the API reads the script makes without a header, such as the
//! live log's `EventSource`) show what that token may see. `POST /session` with the token as
//! the bearer sets it (after checking it); without one, clears it. The cookie is `HttpOnly`
//! (no script reads it) and `SameSite=Strict`, and the access model lets it read only: every
//! action still needs the bearer header.

use actix_web::cookie::{time::Duration, Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::http::auth::{bearer, Access, SESSION_COOKIE};
use crate::http::AppState;

/// How long a browser keeps the cookie; the token's own expiry and revocation still apply.
const COOKIE_DAYS: i64 = 30;

pub async fn set(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let secure = state.public_url.starts_with("https://");
    let Some(secret) = bearer(&req).filter(|s| !s.is_empty()).map(str::to_owned) else {
        let mut gone = Cookie::build(SESSION_COOKIE, "")
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .finish();
        gone.make_removal();
        return Ok(HttpResponse::NoContent().cookie(gone).finish());
    };
    // A wrong token is refused here (401), not stored to fail quietly on every page.
    Access::from_secret(&state, Some(secret.clone()), false).await?;
    let cookie = Cookie::build(SESSION_COOKIE, secret)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(Duration::days(COOKIE_DAYS))
        .finish();
    Ok(HttpResponse::NoContent().cookie(cookie).finish())
}
