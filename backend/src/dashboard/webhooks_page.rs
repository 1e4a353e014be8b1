//! Notifications and storage pages: `/webhooks` lists the projects the viewer sees with the
//! bytes each stores and its retention; `/projects/{organisation}/{project}/webhooks` shows a
//! project's usage and retention, and, to its admin (the session's token), its webhooks with
//! their latest deliveries and every try, with the forms that add and remove a webhook and
//! replace the retention policy (`app.js` sends them to the API with the bearer token; a new
//! webhook's secret is shown once).

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
    Delivery, Project, ProjectId, ProjectUsage, Retention, RetentionLimits, TokenScope, Webhook,
    WEBHOOK_EVENTS,
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

/// What a policy keeps, for the project's storage table.
fn kept(l: &RetentionLimits) -> String {
    if l.is_unlimited() {
        "all kept".into()
    } else {
        format!("kept: {}", limits(l))
    }
}

/// Whether the visitor may change `project`'s webhooks and retention (and delete its jobs'
/// artifacts): the admin, or an admin token of the project, as the API decides.
pub(super) fn may_administer(access: &Access, project: ProjectId) -> bool {
    match &access.who {
        Who::Admin { .. } => true,
        Who::Project {
            project: own,
            scope,
            ..
        } => *own == project && scope.allows(TokenScope::Admin),
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
    let admin = may_administer(&access, project.id);
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
    // The page depends on the visitor's token: entering one renders it again (`app.js`).
    html! {
        h1 data-token-page { (project.slug()) }
        h2 { "Storage" }
        div.table-wrap { table #storage { tbody {
            tr { th { "Artifacts" } td { (bytes(usage.map_or(0, |u| u.artifact_bytes))) " — " (kept(&retention.artifacts)) } }
            tr { th { "Logs" } td { (bytes(usage.map_or(0, |u| u.log_bytes))) " — " (kept(&retention.logs)) } }
        } } }
        @if admin { (retention_form(project, retention)) }
        h2 { "Webhooks" }
        @if !admin {
            p.muted { "Webhooks and their deliveries are shown to the project's admin: enter an admin token above." }
        } @else {
            (webhook_form(project))
            div #created-webhook .message hidden role="status" {
                p { strong { "New webhook's secret: copy it now. It will not be shown again." } }
                code #webhook-secret {}
                p { button.secondary #copy-webhook-secret type="button" { "Copy" } }
            }
            @if hooks.is_empty() {
                p.muted #no-webhooks { "None yet." }
            }
            @for (hook, deliveries) in hooks {
                section.webhook #{ "webhook-" (hook.id) } {
                    h3.mono.wrap { "#" (hook.id) " " (hook.url) }
                    p {
                        (hook.events.join(", "))
                        @if !hook.enabled { " — " span.blocked { "disabled" } }
                    }
                    p.actions {
                        button.danger type="button"
                            data-action={ "/api/v1/projects/" (project.slug()) "/webhooks/" (hook.id) } data-method="DELETE"
                            aria-label={ "Remove webhook " (hook.id) }
                            data-error-box={ "webhook-" (hook.id) "-error" }
                            data-confirm={ "Remove #" (hook.id) " and its deliveries? Press again to confirm" } { "Remove" }
                        span.form-error #{ "webhook-" (hook.id) "-error" } role="alert" hidden {}
                    }
                    (deliveries_table(deliveries))
                }
            }
        }
    }
}

/// A retention field's value: its limit, or `none`.
fn limit_value(limit: Option<i32>) -> String {
    limit.map_or_else(|| "none".to_owned(), |n| n.to_string())
}

/// The project's whole retention policy in one form (the API replaces the policy as a whole).
fn retention_form(project: &Project, retention: &Retention) -> Markup {
    let field = |name: &str, text: &str, value: Option<i32>| {
        html! {
            label { (text)
                input name=(name) value=(limit_value(value)) autocomplete="off" spellcheck="false"
                    inputmode="numeric" pattern="[Nn][Oo][Nn][Ee]|[0-9]+" title="a whole number, or none for no limit";
            }
        }
    };
    html! {
        h3 { "Retention policy" }
        form #retention-form .form-grid data-project=(project.slug()) aria-label="Retention policy" {
            fieldset {
                legend { "Artifacts" }
                div.form-grid.inner {
                    (field("artifacts_max_age_days", "Max age (days)", retention.artifacts.max_age_days))
                    (field("artifacts_keep_last", "Keep the last (jobs)", retention.artifacts.keep_last))
                }
            }
            fieldset {
                legend { "Logs" }
                div.form-grid.inner {
                    (field("logs_max_age_days", "Max age (days)", retention.logs.max_age_days))
                    (field("logs_keep_last", "Keep the last (jobs)", retention.logs.keep_last))
                }
            }
            p.hint.wide {
                "A finished job's data goes when it is older than the max age or not among the "
                "last jobs kept; none (or nothing) lifts a limit. Saving replaces the whole policy."
            }
            div.wide {
                button type="submit" { "Save retention" }
                p.form-error role="alert" hidden {}
            }
        }
    }
}

/// Adding a webhook: its URL, the events it wants, and a secret (generated when empty).
fn webhook_form(project: &Project) -> Markup {
    html! {
        h3 { "Add a webhook" }
        form #webhook-form .form-grid data-project=(project.slug()) aria-label="Add a webhook" {
            label.wide { "URL"
                input type="url" name="url" required maxlength="2048" autocomplete="off" spellcheck="false" placeholder="https://ci.example/hooks/buildfleet";
            }
            fieldset {
                legend { "Events" }
                @for event in WEBHOOK_EVENTS {
                    label.check { input type="checkbox" name="events" value=(event) checked; (event) }
                }
            }
            label { "Secret (empty: generated)"
                input name="secret" autocomplete="off" spellcheck="false" minlength="16" maxlength="256";
            }
            div.wide {
                button type="submit" { "Add webhook" }
                p.form-error role="alert" hidden {}
            }
        }
    }
}

fn deliveries_table(deliveries: &[Delivery]) -> Markup {
    html! {
        @if deliveries.is_empty() {
            p.muted { "No deliveries yet." }
        } @else {
            div.table-wrap { table.stack.deliveries {
                thead { tr { th { "Delivery" } th { "Job" } th { "Event" } th { "Status" } th { "Tries" } } }
                tbody { @for d in deliveries {
                    tr {
                        td.mono data-label="Delivery" { (d.id) }
                        td data-label="Job" { a href={ "/jobs/" (d.job) } { (d.job) } }
                        td data-label="Event" { (d.event) }
                        td data-label="Status" {
                            @if let Some(at) = d.delivered_at { "delivered " (format_time(at)) }
                            @else if let Some(at) = d.next_attempt_at { "next try " (format_time(at)) }
                            @else { span.blocked { "given up" } }
                        }
                        td data-label="Tries" { @for t in &d.tries {
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
