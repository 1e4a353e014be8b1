//! The projects page: every project the visitor's session cookie sees, with its visibility,
//! fair-share weight, queued and running jobs, the builder time it used in the fair-share
//! window and the share of it against its share of the weights, and the private builders
//! serving it; each links to its jobs and its webhooks page. With the admin token, `app.js`
//! creates projects and changes their weight and visibility through the API.
//!
//! Shares are among the projects listed, so a visitor learns nothing of the projects it may
//! not see.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};

use super::error_page::PageError;
use super::pages::{format_duration, layout};
use crate::error::{blocking, ApiError};
use crate::http::auth::Access;
use crate::http::builders::visible_builders;
use crate::http::AppState;
use crate::store::{BuilderId, JobState, Project, ProjectId, PROJECT_WEIGHTS as WEIGHTS};

/// One project's row.
struct ProjectRow {
    project: Project,
    queued: i64,
    running: i64,
    used_ms: i64,
    /// Private builders serving it: id and name.
    builders: Vec<(BuilderId, String)>,
}

pub async fn projects(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let access = Access::of_cookie(&req, &state).await?;
    let window_ms = i64::try_from(state.config.scheduler.fair_share_window.as_millis())
        .map_err(ApiError::internal)?;
    let store = state.store.clone();
    let rows = blocking(move || {
        let projects: Vec<Project> = store
            .list_projects()?
            .into_iter()
            .filter(|p| access.sees(p.id))
            .collect();
        let ids: Vec<ProjectId> = projects.iter().map(|p| p.id).collect();
        let used = store.project_usage_in_window(&ids, window_ms)?;
        let queued = store.count_jobs_by_project(JobState::Queued)?;
        let mut running = store.count_jobs_by_project(JobState::Running)?;
        for (project, n) in store.count_jobs_by_project(JobState::Assigned)? {
            *running.entry(project).or_default() += n;
        }
        // Private builders by the project they serve, among those the visitor sees.
        let (builders, private_to) = visible_builders(&store, &access)?;
        let mut serving: BTreeMap<String, Vec<(BuilderId, String)>> = BTreeMap::new();
        for b in &builders {
            for slug in private_to.get(&b.id).into_iter().flatten() {
                serving
                    .entry(slug.clone())
                    .or_default()
                    .push((b.id, b.name.clone()));
            }
        }
        Ok(projects
            .into_iter()
            .map(|project| ProjectRow {
                queued: queued.get(&project.id).copied().unwrap_or(0),
                running: running.get(&project.id).copied().unwrap_or(0),
                used_ms: used.get(&project.id.0).copied().unwrap_or(0),
                builders: serving.remove(&project.slug()).unwrap_or_default(),
                project,
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let total_used: i64 = rows.iter().map(|r| r.used_ms).sum();
    let total_weight: i64 = rows.iter().map(|r| i64::from(r.project.weight)).sum();
    let body = html! {
        h1 { "Projects" }
        p.muted {
            "Builder time is counted over the fair-share window (the last "
            (format_duration(window_ms)) "). A free builder goes to the project with queued work "
            "that used the least time for its weight; shares are among the projects listed here."
        }
        div.table-wrap { table.stack.projects {
            thead { tr {
                th { "Project" } th { "Visibility" } th { "Weight" } th { "Queued" } th { "Running" }
                th { "Builder time" } th { "Share" } th { "Private builders" } th { "Links" }
            } }
            tbody {
                @for row in &rows { (project_row(row, total_used, total_weight)) }
                @if rows.is_empty() { tr { td colspan="9" .muted { "No projects." } } }
            }
        } }
        (admin_forms(&rows))
    };
    Ok(layout("Projects", body))
}

/// `part` of `whole` in whole per cent (0 of nothing is 0).
fn percent(part: i64, whole: i64) -> i64 {
    if whole <= 0 {
        0
    } else {
        (part.saturating_mul(100) + whole / 2) / whole
    }
}

fn project_row(row: &ProjectRow, total_used: i64, total_weight: i64) -> Markup {
    let slug = row.project.slug();
    html! {
        tr #{ "project-" (row.project.id.0) } {
            td data-label="Project" { a.mono href={ "/jobs?project=" (slug) } { (slug) } }
            td data-label="Visibility" { @if row.project.public { "public" } @else { "private" } }
            td data-label="Weight" { (row.project.weight) }
            td data-label="Queued" { a href={ "/jobs?project=" (slug) "&state=queued" } { (row.queued) } }
            td data-label="Running" { (row.running) }
            td data-label="Builder time" { (format_duration(row.used_ms)) }
            td data-label="Share" {
                (percent(row.used_ms, total_used)) " % of the time"
                br;
                span.muted { (percent(i64::from(row.project.weight), total_weight)) " % of the weight" }
            }
            td data-label="Private builders" {
                @if row.builders.is_empty() { span.muted { "none" } }
                @for (i, (id, name)) in row.builders.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href={ "/builders#builder-" (id) } { (name) }
                }
            }
            td data-label="Links" {
                a href={ "/jobs?project=" (slug) } { "Jobs" } " · "
                a href={ "/projects/" (slug) "/webhooks" } { "Webhooks" }
            }
        }
    }
}

/// Creating a project and changing one: the API checks the admin token on submit.
fn admin_forms(rows: &[ProjectRow]) -> Markup {
    html! {
        section #project-admin aria-labelledby="project-admin-heading" {
            h2 #project-admin-heading { "Create or change a project" }
            p.muted { "Needs the admin token (top right)." }
            form #project-create-form .form-grid aria-label="Create a project" {
                label { "Name (organisation/project)"
                    input name="name" required autocomplete="off" spellcheck="false" placeholder="acme/app"
                        pattern="[a-z0-9][a-z0-9_.\\-]*/[a-z0-9][a-z0-9_.\\-]*" title="organisation/project: lowercase letters, digits, '_', '.', '-'";
                }
                label { "Weight" input type="number" name="weight" value="1" min=(WEIGHTS.start()) max=(WEIGHTS.end()) required; }
                label.check { input type="checkbox" name="public"; "Public (readable without a token)" }
                div { button type="submit" { "Create project" } }
            }
            form #project-update-form .form-grid aria-label="Change a project" {
                label { "Project"
                    select name="project" required {
                        @for row in rows { option value=(row.project.slug()) { (row.project.slug()) } }
                    }
                }
                label { "New weight (empty: keep)" input type="number" name="weight" min=(WEIGHTS.start()) max=(WEIGHTS.end()); }
                label { "Visibility"
                    select name="public" {
                        option value="" { "keep" }
                        option value="true" { "public" }
                        option value="false" { "private" }
                    }
                }
                div { button type="submit" { "Change project" } }
            }
        }
    }
}
