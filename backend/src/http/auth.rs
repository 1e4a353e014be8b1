//! Who is calling, and what they may see and do.
//!
//! A request carries the admin token from the configuration, an API token from the store, or
//! nothing (the bearer header first; for reads, the dashboard's session cookie as well). From
//! it, [`Access`] says who the caller is:
//!
//! - the **admin**: the admin token, or a live API token of no project with the admin scope.
//!   Sees and may do everything.
//! - a **project token**: a live API token of project P with scope read, submit or admin. Sees
//!   P and the public projects; acts (within its scope) on P only.
//! - **anonymous**: sees the public projects, acts on nothing.
//!
//! What a caller may not see does not exist for it: every refusal about an invisible project
//! is the same 404 as for a thing that is not there (never 403, which would confirm it
//! exists). 403 is kept for a project the caller sees but whose scope is too narrow.

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::error::{blocking, ApiError};
use crate::http::AppState;
use crate::store::{ApiTokenId, Job, ProjectId, TokenScope};

/// The dashboard's session cookie: an API token (or the admin token) the dashboard's script
/// saved, sent by the browser with every page and API read. It grants reading only: an action
/// needs the bearer header, so a page of another site cannot act with it (and it is
/// `SameSite=Strict` besides).
pub const SESSION_COOKIE: &str = "buildfleet_token";

pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn session_cookie(req: &HttpRequest) -> Option<String> {
    req.cookie(SESSION_COOKIE)
        .map(|c| c.value().trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Constant-time comparison, so response timing does not reveal a prefix of the token.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The admin token, or an admin-scoped API token of no project (`token` is then its id).
    Admin { token: Option<ApiTokenId> },
    /// A live API token of one project. A read or submit token of no project (made before
    /// projects existed, when there was only `default/default`) acts in that project.
    Project {
        token: ApiTokenId,
        project: ProjectId,
        scope: TokenScope,
    },
    /// No credentials.
    Anonymous,
}

/// What the caller of one request may see and do.
#[derive(Debug, Clone)]
pub struct Access {
    pub who: Who,
    /// The public projects (unused for the admin, who sees all).
    public: Vec<ProjectId>,
    /// The credentials came from the session cookie: reading only.
    from_cookie: bool,
}

/// The bearer token of an authorised request, recorded as a job's submitter.
pub struct Caller(pub String);

impl Access {
    /// The access of a request. A presented token that is wrong, revoked or expired is a 401
    /// (the caller has to fix it), never a silent downgrade to anonymous.
    pub async fn of(req: &HttpRequest, state: &AppState) -> Result<Access, ApiError> {
        let (secret, from_cookie) = match bearer(req) {
            Some(token) => (Some(token.to_owned()), false),
            None => (session_cookie(req), true),
        };
        Self::from_secret(state, secret, from_cookie).await
    }

    /// The access the session cookie alone gives (for the dashboard's pages).
    pub async fn of_cookie(req: &HttpRequest, state: &AppState) -> Result<Access, ApiError> {
        Self::from_secret(state, session_cookie(req), true).await
    }

    /// The access a secret gives, as [`Access::of`] reads it.
    pub async fn from_secret(
        state: &AppState,
        secret: Option<String>,
        from_cookie: bool,
    ) -> Result<Access, ApiError> {
        if let Some(secret) = &secret {
            if same_secret(secret, &state.admin_token) {
                return Ok(Access {
                    who: Who::Admin { token: None },
                    public: Vec::new(),
                    from_cookie,
                });
            }
        }
        let store = state.store.clone();
        let (token, public) = blocking(move || {
            let token = match &secret {
                Some(secret) => Some(store.verify_api_token(secret, store.now_ms())?),
                None => None,
            };
            Ok((token, store.public_projects()?))
        })
        .await?;
        let who = match token {
            None => Who::Anonymous,
            Some(Some(t)) => match (t.project, t.scope) {
                (None, TokenScope::Admin) => Who::Admin { token: Some(t.id) },
                (project, scope) => Who::Project {
                    token: t.id,
                    project: project.unwrap_or(ProjectId::DEFAULT),
                    scope,
                },
            },
            // A session cookie that went stale (revoked, expired) reads as no credentials: the
            // dashboard stays usable, showing what anyone may see.
            Some(None) if from_cookie => Who::Anonymous,
            // Said apart from a missing token: the caller has one, and it is the one to fix.
            Some(None) => {
                return Err(ApiError::TokenRefused(
                    "the bearer token is wrong: it is neither the admin token nor a live API \
                     token of this backend"
                        .into(),
                ))
            }
        };
        Ok(Access {
            who,
            public,
            from_cookie,
        })
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.who, Who::Admin { .. })
    }

    /// The caller's own project, for a project token.
    pub fn project(&self) -> Option<ProjectId> {
        match self.who {
            Who::Project { project, .. } => Some(project),
            _ => None,
        }
    }

    /// Whether the caller may see `project`'s jobs, logs, artifacts and builders.
    pub fn sees(&self, project: ProjectId) -> bool {
        self.is_admin() || self.project() == Some(project) || self.public.contains(&project)
    }

    /// The projects the caller may see, for a listing's filter; `None`: all of them.
    pub fn visible_projects(&self) -> Option<Vec<ProjectId>> {
        if self.is_admin() {
            return None;
        }
        let mut projects = self.public.clone();
        if let Some(own) = self.project() {
            if !projects.contains(&own) {
                projects.push(own);
            }
        }
        Some(projects)
    }

    /// `not_found` (the answer for a thing that does not exist) unless the caller sees
    /// `project`.
    pub fn require_visible(&self, project: ProjectId, not_found: ApiError) -> Result<(), ApiError> {
        if self.sees(project) {
            Ok(())
        } else {
            Err(not_found)
        }
    }

    /// A job the caller may see; otherwise the same 404 as for a job that does not exist.
    pub fn visible_job(&self, job: Option<Job>, id: crate::store::JobId) -> Result<Job, ApiError> {
        match job {
            Some(job) if self.sees(job.project) => Ok(job),
            _ => Err(ApiError::NotFound(format!("job {id}"))),
        }
    }

    /// The caller may act on `project` with `needed`: `not_found` for a project it cannot see
    /// (anonymous callers too), then 401 without credentials to act with, 403 for a project it
    /// sees with too narrow a scope.
    pub fn require_act(
        &self,
        project: ProjectId,
        needed: TokenScope,
        not_found: ApiError,
    ) -> Result<(), ApiError> {
        // What the caller may not see is not found, before asking for a token: a 401 for a
        // hidden project and a 404 for a missing one would tell anonymous callers it exists.
        if !self.sees(project) {
            return Err(not_found);
        }
        self.require_token()?;
        match &self.who {
            Who::Admin { .. } => Ok(()),
            Who::Project {
                project: own,
                scope,
                ..
            } if *own == project => {
                if scope.allows(needed) {
                    Ok(())
                } else {
                    Err(ApiError::ScopeTooNarrow(format!(
                        "this API token has the {scope} scope; this needs the {needed} scope \
                         or the admin token"
                    )))
                }
            }
            _ => Err(ApiError::ScopeTooNarrow(
                "this API token belongs to another project: it may read this public project \
                 but not act on it"
                    .into(),
            )),
        }
    }

    /// The caller holds `needed` in some project (e.g. to upload a source archive, which
    /// belongs to no project).
    pub fn require_any(&self, needed: TokenScope) -> Result<(), ApiError> {
        self.require_token()?;
        match &self.who {
            Who::Admin { .. } => Ok(()),
            Who::Project { scope, .. } if scope.allows(needed) => Ok(()),
            Who::Project { scope, .. } => Err(ApiError::ScopeTooNarrow(format!(
                "this API token has the {scope} scope; this needs the {needed} scope or the \
                 admin token"
            ))),
            Who::Anonymous => Err(ApiError::Unauthorized),
        }
    }

    /// The caller is the admin (the admin token, or an admin token of no project).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_token()?;
        match &self.who {
            Who::Admin { .. } => Ok(()),
            Who::Project {
                scope: TokenScope::Admin,
                ..
            } => Err(ApiError::ScopeTooNarrow(
                "this API token is an admin token of one project; this needs the admin token \
                 or an admin token of no project"
                    .into(),
            )),
            Who::Project { scope, .. } => Err(ApiError::ScopeTooNarrow(format!(
                "this API token has the {scope} scope; this needs the admin scope or the \
                 admin token"
            ))),
            Who::Anonymous => Err(ApiError::Unauthorized),
        }
    }

    /// Acting needs a bearer token: no credentials, or the session cookie alone, is a 401.
    pub fn require_token(&self) -> Result<(), ApiError> {
        if self.who == Who::Anonymous || self.from_cookie {
            Err(ApiError::Unauthorized)
        } else {
            Ok(())
        }
    }

    /// How the caller is recorded as a job's submitter.
    pub fn caller(&self) -> Caller {
        Caller(match &self.who {
            Who::Admin { token: None } => "admin".into(),
            Who::Admin { token: Some(id) } | Who::Project { token: id, .. } => {
                format!("token:{id}")
            }
            Who::Anonymous => "anonymous".into(),
        })
    }
}

/// A bearer token that allows `needed` in some project (admin: the admin). Kept for handlers
/// whose resource belongs to no project.
pub async fn require(
    req: &HttpRequest,
    state: &AppState,
    needed: TokenScope,
) -> Result<Caller, ApiError> {
    let access = Access::of(req, state).await?;
    match needed {
        TokenScope::Admin => access.require_admin()?,
        _ => access.require_any(needed)?,
    }
    Ok(access.caller())
}
