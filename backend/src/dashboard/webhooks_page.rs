//! Notifications and storage pages: `/webhooks` lists the projects the viewer sees with the
//! bytes each stores and its retention; `/projects/{organisation}/{project}/webhooks` shows a
//! project's usage and retention, and, to its admin (the session's token), its webhooks with
//! their latest deliveries and every try.

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};

use super::error_page::PageError;
use super::pages::{format_time, layout};
use crate::cli::output::size;
use crate::error::{blocking, ApiError};
use crate::http::auth::{Access, Who};
use crate::http::webhooks::path_project;
use crate::http::AppState;
use crate::store::{
    Delivery, Project, ProjectUsage, Retention, RetentionLimits, TokenScope, Webhook,
};

fn bytes(value: i64) -> String {
    size(u64::try_from(value).unwrap_or(0))
}

fn limits(l: &RetentionLimits) -> String {
    let mut parts = Vec::new();
    if let Some(days) = l.max_age_days {
        parts.push(format!("{days} days"));
    }
    if let Some(keep) = l.keep_last {
        parts.push(format!("the last {keep} jobs"));
    }
    if parts.is_empty() {
        "kept".into()
    } else {
        parts.join(", at most ")
    }
}

fn may_administer(access: &Access, project: &Project) -> bool {
    match &access.who {
        Who::Admin { .. } => true,
        Who::Project {
            project: own,
            scope,
            ..
        } => *own == project.id && scope.allows(TokenScope::Admin),
        Who::Anonymous => false,
    }
}

/// `GET /webhooks`: every visible project's storage and retention.
pub async fn overview(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let access = Access::of_cookie(&req, &state).await?;
    let store = state.store.clone();
    let (projects, usage, policies) = blocking(move || {
        Ok((
            store.list_projects()?,
            store.project_usage()?,
            store.retention_policies()?,
        ))
    })
    .await?;
    let body = html! {
        h1 { "Webhooks and storage" }
        div.table-wrap { table {
            thead { tr { th { "Project" } th { "Artifacts" } th { "Logs" } th { "Artifacts kept" } th { "Logs kept" } } }
            tbody { @for project in projects.iter().filter(|p| access.sees(p.id)) {
                @let used = usage.iter().find(|u| u.project == project.id);
                @let policy = policies.iter().find(|r| r.project == project.id);
                tr {
                    td { a href={ "/projects/" (project.slug()) "/webhooks" } { (project.slug()) } }
                    td { (bytes(used.map_or(0, |u| u.artifact_bytes))) }
                    td { (bytes(used.map_or(0, |u| u.log_bytes))) }
                    td { (policy.map_or("kept".into(), |r| limits(&r.artifacts))) }
                    td { (policy.map_or("kept".into(), |r| limits(&r.logs))) }
                }
            } }
        } }
    };
    Ok(layout("Webhooks and storage", body))
}

/// `GET /projects/{organisation}/{project}/webhooks`.
pub async fn project_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let (organisation, name) = path.into_inner();
    let access = Access::of_cookie(&req, &state).await?;
    let project = path_project(&state, &organisation, &name).await?;
    access.require_visible(
        project.id,
        ApiError::NotFound(format!("project {organisation}/{name}")),
    )?;
    let admin = may_administer(&access, &project);
    let store = state.store.clone();
    let id = project.id;
    let (retention, usage, hooks) = blocking(move || {
        let usage = store.project_usage()?.into_iter().find(|u| u.project == id);
        let hooks = if admin {
            store
                .webhooks(id)?
                .into_iter()
                .map(|h| {
                    let deliveries = store.webhook_deliveries(h.id)?;
                    Ok((h, deliveries))
                })
                .collect::<Result<Vec<_>, ApiError>>()?
        } else {
            Vec::new()
        };
        Ok((store.retention(id)?, usage, hooks))
    })
    .await?;
    let title = format!("{} webhooks", project.slug());
    Ok(layout(
        &title,
        render(&project, &retention, usage.as_ref(), admin, &hooks),
    ))
}

fn render(
    project: &Project,
    retention: &Retention,
    usage: Option<&ProjectUsage>,
    admin: bool,
    hooks: &[(Webhook, Vec<Delivery>)],
) -> Markup {
    html! {
        h1 { (project.slug()) }
        h2 { "Storage" }
        div.table-wrap { table { tbody {
            tr { th { "Artifacts" } td { (bytes(usage.map_or(0, |u| u.artifact_bytes))) " — kept: " (limits(&retention.artifacts)) } }
            tr { th { "Logs" } td { (bytes(usage.map_or(0, |u| u.log_bytes))) " — kept: " (limits(&retention.logs)) } }
        } } }
        h2 { "Webhooks" }
        @if !admin {
            p.muted { "Webhooks and their deliveries are shown to the project's admin: enter an admin token above." }
        } @else if hooks.is_empty() {
            p.muted { "None. Add one with POST /api/v1/projects/" (project.slug()) "/webhooks." }
        } @else {
            @for (hook, deliveries) in hooks {
                h3.mono.wrap { "#" (hook.id) " " (hook.url) }
                p {
                    (hook.events.join(", "))
                    @if !hook.enabled { " — " span.blocked { "disabled" } }
                }
                (deliveries_table(deliveries))
            }
        }
    }
}

fn deliveries_table(deliveries: &[Delivery]) -> Markup {
    html! {
        @if deliveries.is_empty() {
            p.muted { "No deliveries yet." }
        } @else {
            div.table-wrap { table {
                thead { tr { th { "Delivery" } th { "Job" } th { "Event" } th { "Status" } th { "Tries" } } }
                tbody { @for d in deliveries {
                    tr {
                        td.mono { (d.id) }
                        td { a href={ "/jobs/" (d.job) } { (d.job) } }
                        td { (d.event) }
                        td {
                            @if let Some(at) = d.delivered_at { "delivered " (format_time(at)) }
                            @else if let Some(at) = d.next_attempt_at { "next try " (format_time(at)) }
                            @else { span.blocked { "given up" } }
                        }
                        td { @for t in &d.tries {
                            div.mono {
                                (t.attempt) ". " (format_time(t.at)) " "
                                @if let Some(status) = t.status { (status) " " }
                                @if let Some(error) = &t.error { span.blocked { (error) } }
                                " (" (t.duration_ms) " ms)"
                            }
                        } }
                    }
                } }
            } }
        }
    }
}
