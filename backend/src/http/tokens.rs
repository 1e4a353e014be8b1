//! API tokens: create (the secret is shown once), list and revoke.
//!
//! The admin manages every token. A project's admin token manages its project's tokens and
//! creates tokens of its project only, with at most its own scope. Other tokens manage none:
//! 403 for a token of a project the caller sees, 404 for a token it cannot see.

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::{self as api, CreateToken};

use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::{Access, Who};
use crate::http::jobs::resolve_project;
use crate::http::views::ProjectNames;
use crate::http::AppState;
use crate::store::{ApiToken, ApiTokenId, ProjectId, TokenScope};

/// Longest description, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 200;
/// Longest lifetime a token may be given: ten years.
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

fn store_scope(scope: api::TokenScope) -> TokenScope {
    match scope {
        api::TokenScope::Read => TokenScope::Read,
        api::TokenScope::Submit => TokenScope::Submit,
        api::TokenScope::Admin => TokenScope::Admin,
    }
}

fn api_scope(scope: TokenScope) -> api::TokenScope {
    match scope {
        TokenScope::Read => api::TokenScope::Read,
        TokenScope::Submit => api::TokenScope::Submit,
        TokenScope::Admin => api::TokenScope::Admin,
    }
}

fn view(token: ApiToken, names: &ProjectNames, now: i64) -> Result<api::ApiToken, ApiError> {
    Ok(api::ApiToken {
        id: token.id.0,
        project: token.project.map(|p| names.name(p)).transpose()?,
        scope: api_scope(token.scope),
        live: token.revoked_at.is_none() && token.expires_at.is_none_or(|at| at > now),
        description: token.description,
        created_at: token.created_at,
        expires_at: token.expires_at,
        revoked_at: token.revoked_at,
    })
}

/// Whose tokens the caller manages: `None` for all (the admin), else one project's.
fn managed(access: &Access) -> Result<Option<ProjectId>, ApiError> {
    access.require_token()?;
    match &access.who {
        Who::Admin { .. } => Ok(None),
        Who::Project {
            project,
            scope: TokenScope::Admin,
            ..
        } => Ok(Some(*project)),
        Who::Project { scope, .. } => Err(ApiError::ScopeTooNarrow(format!(
            "this API token has the {scope} scope; managing tokens needs the admin scope of \
             the project or the admin token"
        ))),
        Who::Anonymous => Err(ApiError::Unauthorized),
    }
}

/// `POST /api/v1/tokens`.
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let manages = managed(&access)?;
    let body: CreateToken = parse_json(&body)?;
    let scope = store_scope(body.scope);
    let description = body.description.trim().to_owned();
    if description.is_empty() || description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ApiError::BadRequest(format!(
            "description must be 1 to {MAX_DESCRIPTION_BYTES} bytes: say what the token is \
             for (it is shown in listings)"
        )));
    }
    let lifetime_ms = match body.expires_in_secs {
        None => None,
        Some(secs) if secs == 0 || secs > MAX_LIFETIME_SECS => {
            return Err(ApiError::BadRequest(format!(
                "expires_in_secs must be 1 to {MAX_LIFETIME_SECS} (ten years); omit it for a \
                 token that lives until revoked"
            )))
        }
        // Bounded above, so the product fits an i64.
        Some(secs) => Some(i64::try_from(secs * 1000).map_err(ApiError::internal)?),
    };
    let store = state.store.clone();
    let (created, secret, names, now) = blocking(move || {
        let project = match (&body.project, manages) {
            (Some(slug), _) => Some(resolve_project(&store, &access, slug)?),
            (None, None) if scope != TokenScope::Admin => {
                return Err(ApiError::BadRequest(format!(
                    "a token of no project has the admin scope only; name the project a \
                     {scope} token is for"
                )))
            }
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ApiError::ScopeTooNarrow(
                    "this is an admin token of one project: it creates tokens of its project \
                     only, not tokens of the whole service; name its project"
                        .into(),
                ))
            }
        };
        if let (Some(own), Some(project)) = (manages, project) {
            if own != project {
                return Err(ApiError::ScopeTooNarrow(
                    "this API token may create tokens of its own project only".into(),
                ));
            }
        }
        let now = store.now_ms();
        let expires_at = lifetime_ms.map(|ms| now.saturating_add(ms));
        let (created, secret) = store.create_api_token(project, scope, &description, expires_at)?;
        Ok((created, secret, ProjectNames::load(&store)?, now))
    })
    .await?;
    tracing::info!(token = %created.id, scope = %created.scope, "api token created");
    Ok(HttpResponse::Created().json(api::CreatedToken {
        token: view(created, &names, now)?,
        secret,
    }))
}

/// `GET /api/v1/tokens`: the tokens the caller manages, newest first.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let manages = managed(&access)?;
    let store = state.store.clone();
    let (tokens, names, now) = blocking(move || {
        let tokens = match manages {
            None => store.list_api_tokens()?,
            Some(project) => store.list_project_api_tokens(project)?,
        };
        Ok((tokens, ProjectNames::load(&store)?, store.now_ms()))
    })
    .await?;
    let tokens = tokens
        .into_iter()
        .rev()
        .map(|t| view(t, &names, now))
        .collect::<Result<_, _>>()?;
    Ok(HttpResponse::Ok().json(api::TokenList { tokens }))
}

/// `DELETE /api/v1/tokens/{id}`: revokes the token (again: no change) and answers it.
pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let manages = managed(&access)?;
    let id: ApiTokenId = path
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{:?} is not a token id", path.as_str())))?;
    let store = state.store.clone();
    let (revoked, names, now) = blocking(move || {
        let not_found = || ApiError::NotFound(format!("api token {id}"));
        let token = store.api_token(id)?.ok_or_else(not_found)?;
        if manages.is_some() && token.project != manages {
            // Another project's token, or one of the whole service: not the caller's to see.
            return Err(not_found());
        }
        let revoked = store.revoke_api_token(id)?;
        Ok((revoked, ProjectNames::load(&store)?, store.now_ms()))
    })
    .await?;
    tracing::info!(token = %revoked.id, "api token revoked");
    Ok(HttpResponse::Ok().json(view(revoked, &names, now)?))
}
