//! The dashboard's pages. Each handler loads what it shows in one blocking call and renders
//! it; the layout is shared.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use super::error_page::PageError;
use super::job_log::{read_tail, LogView, StoredLog};
use super::job_summary::{self, is_web_link};
use crate::actors::scheduler::{LiveBuilder, LiveBuilders};
use crate::cli::output::size;
use crate::error::{blocking, ApiError};
use crate::http::auth::Access;
use crate::http::builders::visible_builders;
use crate::http::jobs::{load_detail, parse_job_id, resolve_project, JobDetail};
use crate::http::AppState;
use crate::store::{
    AnnotationFilter, Annotations, Attempt, Builder, BuilderId, Job, JobFilter, JobId, JobMode,
    JobState, ProjectId, Store, StoreError, BOOST_PRIORITY,
};

const PAGE_SIZE: usize = 50;

pub(super) fn layout(title: &str, body: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page(title, body).into_string())
}

/// A whole page: the head, the navigation and `body`.
pub(super) fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Buildfleet" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    a.brand href="/" { "Buildfleet" }
                    nav aria-label="Pages" {
                        a href="/" { "Overview" }
                        a href="/builders" { "Builders" }
                        a href="/jobs" { "Jobs" }
                        a href="/submit" { "Submit" }
                        a href="/webhooks" { "Webhooks" }
                        a href="/projects" { "Projects" }
                        a href="/tokens" { "Tokens" }
                    }
                    label.token {
                        span { "Admin token" }
                        input #admin-token type="password" autocomplete="off" placeholder="for changes";
                    }
                }
                main #main tabindex="-1" {
                    div #message hidden {}
                    (body)
                }
            }
        }
    }
}

pub(super) fn state_badge(state: JobState) -> Markup {
    html! { span class={ "state state-" (state.as_str()) } { (state.as_str()) } }
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate for one format.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(super) fn format_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

pub(super) async fn live_builders(
    state: &AppState,
) -> Result<BTreeMap<BuilderId, LiveBuilder>, ApiError> {
    state
        .scheduler
        .send(LiveBuilders)
        .await
        .map_err(|_| ApiError::Unavailable("scheduler".into()))
}

/// The `organisation/project` of every project `access` sees, by id, for job lists.
pub(super) fn project_slugs(
    store: &Store,
    access: &Access,
) -> Result<BTreeMap<ProjectId, String>, StoreError> {
    Ok(store
        .list_projects()?
        .into_iter()
        .filter(|p| access.sees(p.id))
        .map(|p| (p.id, p.slug()))
        .collect())
}

fn jobs_table(
    jobs: &[Job],
    names: &BTreeMap<BuilderId, String>,
    projects: &BTreeMap<ProjectId, String>,
    now: i64,
) -> Markup {
    html! {
        div.table-wrap {
            table.jobs.stack {
                thead { tr { th { "Job" } th { "Project" } th { "What" } th { "State" } th { "Attempt" } th { "Builder" } th { "Submitted (UTC)" } th { "Duration" } } }
                tbody {
                    @for job in jobs {
                        tr {
                            td data-label="Job" { a href={ "/jobs/" (job.id) } { "#" (job.id) } }
                            td.mono data-label="Project" { @if let Some(slug) = projects.get(&job.project) { a href={ "/jobs?project=" (slug) } { (slug) } } }
                            td.what-cell data-label="What" { (job_summary::list_cell(job)) }
                            td data-label="State" { (state_badge(job.state)) }
                            td data-label="Attempt" { (job.attempt) " / " (job.max_attempts) }
                            td data-label="Builder" { @if let Some(b) = job.builder_id { (names.get(&b).map(String::as_str).unwrap_or("?")) } @else { span.muted { "—" } } }
                            td data-label="Submitted" { (format_time(job.created_at)) }
                            td data-label="Duration" { @if let Some(start) = job.started_at { (format_duration(job.finished_at.unwrap_or(now) - start)) } @else { span.muted { "—" } } }
                        }
                    }
                    @if jobs.is_empty() { tr { td colspan="8" .muted { "No jobs." } } }
                }
            }
        }
    }
}

fn builder_names(builders: &[Builder]) -> BTreeMap<BuilderId, String> {
    builders.iter().map(|b| (b.id, b.name.clone())).collect()
}

pub async fn overview(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    // Recent jobs are those the visitor may see; the counts are of the whole fleet's work.
    let access = Access::of_cookie(&req, &state).await?;
    let store = state.store.clone();
    let (counts, builders, projects, recent, finished_hour, now) = blocking(move || {
        let now = store.now_ms();
        Ok((
            store.count_jobs_by_state()?,
            store.list_builders()?,
            project_slugs(&store, &access)?,
            store.list_jobs(&JobFilter {
                limit: 10,
                projects: access.visible_projects(),
                ..JobFilter::default()
            })?,
            store.count_finished_since(now - 3_600_000)?,
            now,
        ))
    })
    .await?;
    let live = live_builders(&state).await?;
    let count = |s: JobState| counts.get(&s).copied().unwrap_or(0);
    let names = builder_names(&builders);
    let body = html! {
        h1 { "Overview" }
        div.cards {
            div.card { div.value #builders-online { (live.len()) } div.label { "builders online of " (builders.len()) } }
            div.card { div.value #queue-depth { (count(JobState::Queued)) } div.label { "queued" } }
            div.card { div.value #running { (count(JobState::Running) + count(JobState::Assigned)) } div.label { "running" } }
            div.card { div.value { (finished_hour) } div.label { "finished in the last hour" } }
            div.card { div.value { (count(JobState::Succeeded)) } div.label { "succeeded in all" } }
            div.card { div.value { (count(JobState::Failed) + count(JobState::TimedOut)) } div.label { "failed or timed out" } }
        }
        h2 { "Recent jobs" }
        (jobs_table(&recent, &names, &projects, now))
        p { a href="/jobs" { "All jobs →" } }
    };
    Ok(layout("Overview", body))
}

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    state: Option<String>,
    recipe: Option<String>,
    builder: Option<String>,
    /// `organisation/project`.
    project: Option<String>,
    /// One `key:value` (or `key`) annotation filter.
    annotation: Option<String>,
    before: Option<i64>,
}

pub async fn jobs(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, PageError> {
    let access = Access::of_cookie(&req, &state).await?;
    let query = query.into_inner();
    let job_state = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        ),
    };
    let builder = match query.builder.as_deref() {
        None | Some("") => None,
        Some(b) => Some(
            b.parse::<BuilderId>()
                .map_err(|_| ApiError::BadRequest(format!("builder {b:?}")))?,
        ),
    };
    let recipe = query.recipe.clone().filter(|r| !r.is_empty());
    let annotation = query
        .annotation
        .clone()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    let annotations = annotation
        .as_deref()
        .map(AnnotationFilter::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let project = query.project.clone().filter(|p| !p.is_empty());
    let mut filter = JobFilter {
        state: job_state,
        recipe: recipe.clone(),
        builder,
        annotations: annotations.into_iter().collect(),
        before_id: query.before.map(JobId),
        limit: PAGE_SIZE,
        projects: access.visible_projects(),
    };
    let store = state.store.clone();
    let wanted = project.clone();
    let (jobs, builders, projects, now) = blocking(move || {
        // A project the visitor cannot see is the API's 404, as if it did not exist.
        if let Some(slug) = &wanted {
            filter.projects = Some(vec![resolve_project(&store, &access, slug)?]);
        }
        // The filter offers only the builders the visitor may see (the API's rule).
        let (builders, _) = visible_builders(&store, &access)?;
        Ok((
            store.list_jobs(&filter)?,
            builders,
            project_slugs(&store, &access)?,
            store.now_ms(),
        ))
    })
    .await?;
    let names = builder_names(&builders);
    let next = (jobs.len() == PAGE_SIZE)
        .then(|| jobs.last().map(|j| j.id.0))
        .flatten();
    let keep = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| format!("&{key}={}", query_value(v)))
            .unwrap_or_default()
    };
    let filters = format!(
        "{}{}{}{}{}",
        keep("project", &project),
        keep("state", &query.state),
        keep("recipe", &recipe),
        keep("builder", &query.builder),
        keep("annotation", &annotation)
    );
    let body = html! {
        h1 { "Jobs" @if let Some(slug) = &project { " of " span.mono { (slug) } } }
        form.filters method="get" action="/jobs" {
            label { "Project"
                select name="project" {
                    option value="" { "any" }
                    @for slug in projects.values() { option value=(slug) selected[project.as_deref() == Some(slug.as_str())] { (slug) } }
                }
            }
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL { option value=(s.as_str()) selected[job_state == Some(*s)] { (s.as_str()) } }
                }
            }
            label { "Recipe" input name="recipe" value=(recipe.clone().unwrap_or_default()) placeholder="any"; }
            label { "Annotation" input name="annotation" value=(annotation.clone().unwrap_or_default()) placeholder="crate:itoa"; }
            label { "Builder"
                select name="builder" {
                    option value="" { "any" }
                    @for b in &builders { option value=(b.id) selected[builder == Some(b.id)] { (b.name) } }
                }
            }
            button type="submit" { "Filter" }
        }
        (jobs_table(&jobs, &names, &projects, now))
        div.pager {
            @if query.before.is_some() { a.button href={ "/jobs?" (filters.trim_start_matches('&')) } { "« Newest" } }
            @if let Some(next) = next { a.button href={ "/jobs?before=" (next) (filters) } { "Older »" } }
        }
    };
    Ok(layout("Jobs", body))
}

/// The job page's own query: which attempt's log it shows, and a search in it.
#[derive(Debug, Deserialize)]
pub struct JobQuery {
    attempt: Option<String>,
    q: Option<String>,
}

pub async fn job(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<JobQuery>,
) -> Result<HttpResponse, PageError> {
    let access = Access::of_cookie(&req, &state).await?;
    let id = parse_job_id(&path)?;
    let detail: JobDetail = load_detail(&state, &access, id).await?;
    let job = &detail.job;
    let attempt = match query.attempt.as_deref() {
        None | Some("") => job.attempt,
        Some(raw) => raw
            .parse::<i32>()
            .ok()
            .filter(|a| (1..=job.attempt.0).contains(a))
            .map(Attempt)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "attempt {raw:?}: job {id} has attempts 1 to {}",
                    job.attempt
                ))
            })?,
    };
    let search = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let (store, storage) = (state.store.clone(), state.storage.clone());
    let (builders, log, now, revoked) = blocking(move || {
        let chunks = store.log_chunks(id)?;
        let log: StoredLog = read_tail(&*storage, &chunks, attempt).map_err(ApiError::internal)?;
        let statement = store.job_statement(id)?;
        let revoked = crate::http::builders::revoked_signers(&store, id, statement.as_ref())?;
        Ok((store.list_builders()?, log, store.now_ms(), revoked))
    })
    .await?;
    let names = builder_names(&builders);
    let public_url = &state.public_url;
    let signer = job
        .builder_id
        .and_then(|b| names.get(&b))
        .cloned()
        .unwrap_or_else(|| "<builder>".into());
    let log_view = LogView {
        job,
        attempts: &detail.attempts,
        attempt,
        log: &log,
        search,
    };
    let may_delete_artifacts =
        job.state.is_terminal() && super::webhooks_page::may_administer(&access, job.project);
    let body = html! {
        (job_summary::head(job, &detail.project, &detail.attempts, &names, now, access.is_admin()))
        @for r in &revoked {
            p.job-error.revoked-signer { "Signed by a revoked key: " (r.reason) " (builder " (r.builder) ", key " span.mono { (r.fingerprint) } "). Its statement no longer verifies." }
        }
        div.table-wrap { table.details { tbody {
            tr { th { "Source" } td.mono { (job.source_url) br; "sha256:" (job.source_sha256) } }
            tr { th { "Parameters" } td.mono { @if job.parameters.is_empty() { span.muted { "none" } } (job.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")) } }
            tr { th { "Required labels" } td.mono { @if job.required_labels.is_empty() { span.muted { "none" } } (pairs(&job.required_labels)) } }
            tr { th { "Priority" } td #job-priority {
                @if job.priority == BOOST_PRIORITY { "boosted (ahead of every project's work)" } @else { (job.priority) }
            } }
            tr { th { "Timeout" } td { (format_duration(job.timeout_secs.saturating_mul(1000))) } }
        } } }
        (super::waiting::section(detail.queue.as_ref()))
        (super::chain::section(detail.follows_from, &detail.follow_ups))
        (super::reproduction::section(detail.reproduction.as_ref()))
        @if !job.annotations.is_empty() {
            h2 { "Annotations" }
            (annotations_table(&job.annotations))
        }
        (log_view.render())
        h2 { "Artifacts" }
        @if detail.artifacts.is_empty() {
            @if let Some(at) = detail.expired.artifacts_expired_at {
                p.muted #artifacts-deleted { "Deleted " (job_summary::time(at)) ", by the project's retention or an admin." }
            } @else {
                p.muted { "No published artifacts." }
            }
        } @else {
            div.table-wrap { table.stack #artifacts {
                thead { tr { th { "Name" } th { "Size" } th { "SHA-256" } } }
                tbody { @for a in &detail.artifacts {
                    tr { td data-label="Name" { a href=(a.url) { (a.name) } } td data-label="Size" { (size(a.size)) } td.mono data-label="SHA-256" { (a.sha256) } }
                } }
            } }
            @if may_delete_artifacts {
                p.actions {
                    button.danger #delete-artifacts type="button" data-action={ "/api/v1/jobs/" (job.id) "/artifacts" } data-method="DELETE"
                        data-error-box="delete-artifacts-error"
                        data-confirm={ "Delete " (detail.artifacts.len()) " artifact" @if detail.artifacts.len() != 1 { "s" } " for good? Press again to confirm" } { "Delete artifacts" }
                    span.form-error #delete-artifacts-error role="alert" hidden {}
                }
            }
            (provenance_links(job.id, detail.artifacts.first().map(|a| a.name.as_str())))
            h2 { "Verify with OpenSSH" }
            pre.log { (verify_instructions(public_url, job.id, &signer, detail.artifacts.first().map(|a| a.name.as_str()))) }
        }
        @if job.mode == JobMode::Plan {
            h2 { "Plan" }
            @if let Some(plan) = &detail.plan {
                p.muted { "Reported by attempt " (plan.attempt) " · " a href={ "/api/v1/jobs/" (job.id) "/plan" } { "text" } }
                pre.log #plan { (plan.text) }
                // The plan was stored with a verified statement; it signs the outcome and
                // mode, not the plan text.
                h2 { "Verify the statement with OpenSSH" }
                p.muted { "The signed statement covers the job, attempt, source, recipe, mode, annotations, outcome and (no) artifacts; not the plan text." }
                pre.log { (verify_instructions(public_url, job.id, &signer, None)) }
            } @else {
                p.muted { "No plan reported yet." }
            }
        }
        h2 { "Timeline" }
        div.table-wrap { table.stack {
            thead { tr { th { "Time (UTC)" } th { "Attempt" } th { "Change" } th { "Detail" } } }
            tbody { @for e in &detail.events {
                tr {
                    td data-label="Time" { (format_time(e.at)) }
                    td data-label="Attempt" { (e.attempt) }
                    td data-label="Change" { @if let Some(from) = e.from { (from.as_str()) " → " } (state_badge(e.to)) }
                    td.mono data-label="Detail" { (e.detail.clone().unwrap_or_default()) }
                }
            } }
        } }
        h2 { "Attempts" }
        div.table-wrap { table.stack {
            thead { tr { th { "Attempt" } th { "Builder" } th { "Assigned (UTC)" } th { "Outcome" } th { "Exit" } th { "Error" } th { "Log" } } }
            tbody { @for a in &detail.attempts {
                tr {
                    td data-label="Attempt" { (a.attempt) }
                    td data-label="Builder" { @if let Some(b) = a.builder { (names.get(&b).map(String::as_str).unwrap_or("?")) } }
                    td data-label="Assigned" { (format_time(a.assigned_at)) }
                    td data-label="Outcome" { @if let Some(o) = a.outcome { (o.as_str()) } @else { span.muted { "in progress" } } }
                    td data-label="Exit" { @if let Some(x) = a.exit_status { (x) } }
                    td.mono data-label="Error" { (a.error.clone().unwrap_or_default()) }
                    td data-label="Log" { a href={ "/api/v1/jobs/" (job.id) "/log?attempt=" (a.attempt) "&format=text" } { "text" } }
                }
            } }
        } }
    };
    Ok(layout(&job_summary::title(job), body))
}

/// A job's annotations, one row each. An http(s) value is a link; every value is escaped
/// (maud), and a message keeps its lines.
fn annotations_table(annotations: &Annotations) -> Markup {
    html! {
        div.table-wrap { table.annotations { tbody {
            @for (key, value) in annotations {
                tr {
                    th.mono { (key) }
                    td.mono {
                        @if is_web_link(value) {
                            a href=(value) rel="nofollow noopener noreferrer" { (value) }
                        } @else {
                            (value)
                        }
                    }
                }
            }
        } } }
    }
}

/// Percent-encodes a value for a pager link's query (a filter may hold `&`, `=`, spaces).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The published statement in its three forms, and the one command that checks an artifact
/// against all of them (every signer, at its signing time).
fn provenance_links(job: JobId, artifact: Option<&str>) -> Markup {
    html! {
        h2 { "Provenance" }
        p {
            a href={ "/api/v1/jobs/" (job) "/statement" } { "statement" } " (in-toto, SLSA provenance) · "
            a href={ "/api/v1/jobs/" (job) "/statement.dsse" } { "DSSE envelope" } " · "
            a href={ "/api/v1/jobs/" (job) "/signatures" } { "SSH signatures" } " (one per builder that built or reproduced it)"
        }
        pre.log { "buildfleet verify " (artifact.unwrap_or("ARTIFACT")) " --job " (job) }
    }
}

/// The commands that check a job's statement (and `artifact` against it, if given).
fn verify_instructions(
    public_url: &str,
    job: JobId,
    signer: &str,
    artifact: Option<&str>,
) -> String {
    let statement = format!(
        "curl -fsS {public_url}/api/v1/jobs/{job}/statement -o statement.json\n\
         curl -fsS {public_url}/api/v1/jobs/{job}/statement.sig -o statement.json.sig\n\
         curl -fsS {public_url}/api/v1/allowed_signers -o allowed_signers\n\
         ssh-keygen -Y verify -f allowed_signers -I {signer} -n buildfleet-statement -s statement.json.sig < statement.json"
    );
    match artifact {
        Some(artifact) => format!(
            "curl -fsSO {public_url}/api/v1/jobs/{job}/artifacts/{artifact}\n\
             {statement}\n\
             sha256sum {artifact}   # must equal the digest for \"{artifact}\" in statement.json"
        ),
        None => statement,
    }
}

/// Labels as `k=v, k=v`.
pub(super) fn pairs(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
