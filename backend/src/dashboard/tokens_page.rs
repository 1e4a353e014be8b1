//! The tokens page: the API tokens the session cookie's token manages (the admin: all; a
//! project's admin token: its project's), each with its project, scope, description, times
//! and whether it is live, and a form to create one. The list renders on the server from the
//! cookie, which reads only; `app.js` creates and revokes with the bearer header, and shows a
//! new token's secret once.

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};

use super::error_page::PageError;
use super::job_summary::time;
use super::pages::{layout, project_slugs};
use crate::error::blocking;
use crate::http::auth::{Access, Who};
use crate::http::AppState;
use crate::store::{ApiToken, ProjectId, TokenScope};

/// Whose tokens a visitor manages, as `GET /api/v1/tokens` decides it.
enum Manages {
    All,
    Project(ProjectId),
    /// A token that may not manage tokens, with its scope.
    Nothing(TokenScope),
    /// No token in the cookie.
    NoToken,
}

fn manages(access: &Access) -> Manages {
    match &access.who {
        Who::Admin { .. } => Manages::All,
        Who::Project {
            project,
            scope: TokenScope::Admin,
            ..
        } => Manages::Project(*project),
        Who::Project { scope, .. } => Manages::Nothing(*scope),
        Who::Anonymous => Manages::NoToken,
    }
}

pub async fn tokens(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let access = Access::of_cookie(&req, &state).await?;
    let body = match manages(&access) {
        Manages::NoToken => html! {
            h1 data-token-page { "Tokens" }
            p.empty #tokens-need-token {
                "A token is needed to see and manage API tokens: enter the admin token, or an "
                "admin token of a project, in the field at the top right."
            }
        },
        Manages::Nothing(scope) => html! {
            h1 data-token-page { "Tokens" }
            p.empty #tokens-need-token {
                "This browser's token has the " (scope) " scope: managing tokens needs the admin "
                "token or an admin token of a project. Enter one at the top right."
            }
        },
        manages => {
            let store = state.store.clone();
            let reader = access.clone();
            let (tokens, projects, now) = blocking(move || {
                let tokens = match manages {
                    Manages::Project(project) => store.list_project_api_tokens(project)?,
                    _ => store.list_api_tokens()?,
                };
                Ok((tokens, project_slugs(&store, &reader)?, store.now_ms()))
            })
            .await?;
            let slug = |p: Option<ProjectId>| match p {
                Some(p) => projects.get(&p).cloned().unwrap_or_else(|| format!("#{p}")),
                None => "(whole service)".to_owned(),
            };
            // Newest first, as the API lists them.
            let rows: Vec<Markup> = tokens
                .iter()
                .rev()
                .map(|t| token_row(t, &slug(t.project), now))
                .collect();
            html! {
                h1 data-token-page { "Tokens" }
                p.muted {
                    "API tokens act for a project with a scope: read (its private jobs, logs and "
                    "artifacts), submit (also submit, cancel and retry), admin (also manage its tokens). "
                    "Only a hash of each secret is stored."
                }
                div #created-token .message hidden role="status" {
                    p { strong { "New token: copy it now. It will not be shown again." } }
                    code #created-secret {}
                    p { button.secondary #copy-secret type="button" { "Copy" } }
                }
                div.table-wrap { table.stack.api-tokens {
                    thead { tr {
                        th { "Token" } th { "Project" } th { "Scope" } th { "Description" }
                        th { "Created (UTC)" } th { "Expires" } th { "Status" } th { "Action" }
                    } }
                    tbody {
                        @for row in &rows { (row) }
                        @if rows.is_empty() { tr { td colspan="8" .muted { "No tokens yet." } } }
                    }
                } }
                (create_form(&manages_projects(&projects, &access), access.is_admin()))
            }
        }
    };
    Ok(layout("Tokens", body))
}

/// The projects a new token may be made for: every one for the admin, else the own.
fn manages_projects(
    projects: &std::collections::BTreeMap<ProjectId, String>,
    access: &Access,
) -> Vec<String> {
    let mut slugs: Vec<(bool, String)> = projects
        .iter()
        .filter(|(id, _)| access.is_admin() || access.project() == Some(**id))
        .map(|(id, slug)| (*id != ProjectId::DEFAULT, slug.clone()))
        .collect();
    slugs.sort();
    slugs.into_iter().map(|(_, slug)| slug).collect()
}

fn token_row(t: &ApiToken, project: &str, now: i64) -> Markup {
    let status = if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "live"
    };
    html! {
        tr #{ "api-token-" (t.id) } {
            td data-label="Token" { "#" (t.id) }
            td.mono data-label="Project" { (project) }
            td data-label="Scope" { (t.scope) }
            td data-label="Description" { (t.description) }
            td data-label="Created" { (time(t.created_at)) }
            td data-label="Expires" { @match t.expires_at { Some(at) => (time(at)), None => span.muted { "never" } } }
            td data-label="Status" { span class={ "state state-token-" (status) } { (status) } }
            td data-label="Action" {
                @if status != "revoked" {
                    button.danger type="button" data-action={ "/api/v1/tokens/" (t.id) } data-method="DELETE"
                        aria-label={ "Revoke token " (t.id) }
                        data-confirm={ "Revoke #" (t.id) "? Press again to confirm" } { "Revoke" }
                }
            }
        }
    }
}

/// `whole_service`: the visitor is the admin, who may also make admin tokens of no project.
fn create_form(projects: &[String], whole_service: bool) -> Markup {
    html! {
        section #token-create aria-labelledby="token-create-heading" {
            h2 #token-create-heading { "Create a token" }
            form #token-form .form-grid {
                label { "Project"
                    select name="project" {
                        @for slug in projects { option value=(slug) { (slug) } }
                        @if whole_service { option value="" { "(whole service: admin scope only)" } }
                    }
                }
                label { "Scope"
                    select name="scope" {
                        option value="read" { "read" }
                        option value="submit" selected { "submit" }
                        option value="admin" { "admin" }
                    }
                }
                label { "Description" input name="description" required maxlength="200" autocomplete="off" placeholder="CI of acme/app"; }
                label { "Expires"
                    select name="expires_in_secs" {
                        option value="86400" { "in 1 day" }
                        option value="2592000" { "in 30 days" }
                        option value="7776000" selected { "in 90 days" }
                        option value="31536000" { "in 1 year" }
                        option value="" { "never (until revoked)" }
                    }
                }
                div { button type="submit" { "Create token" } }
            }
        }
    }
}
