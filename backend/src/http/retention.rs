//! Retention: `GET/PUT/PATCH /api/v1/projects/{organisation}/{project}/retention` (reading
//! needs read access to the project, setting its admin), and `DELETE /api/v1/jobs/{id}/artifacts`
//! (the job's project admin). The janitor (`crate::janitor`) does the deleting.

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api as api;

use crate::error::{blocking, ApiError};
use crate::http::auth::Access;
use crate::http::jobs::parse_job_id;
use crate::http::webhooks::path_project;
use crate::http::AppState;
use crate::store::{ExpiredData, JobId, Project, Retention, RetentionLimits, TokenScope};

fn limits_view(l: RetentionLimits) -> api::notifications::RetentionLimits {
    api::notifications::RetentionLimits {
        max_age_days: l.max_age_days,
        keep_last: l.keep_last,
    }
}

fn limits_of(l: api::notifications::RetentionLimits) -> RetentionLimits {
    RetentionLimits {
        max_age_days: l.max_age_days,
        keep_last: l.keep_last,
    }
}

async fn status(
    state: &AppState,
    project: &Project,
    retention: Retention,
) -> Result<api::notifications::RetentionStatus, ApiError> {
    let store = state.store.clone();
    let id = project.id;
    let usage = blocking(move || Ok(store.project_usage()?)).await?;
    let used = usage.iter().find(|u| u.project == id);
    Ok(api::notifications::RetentionStatus {
        project: project.slug(),
        artifacts: limits_view(retention.artifacts),
        logs: limits_view(retention.logs),
        updated_at: retention.updated_at,
        artifact_bytes: used.map_or(0, |u| u.artifact_bytes),
        log_bytes: used.map_or(0, |u| u.log_bytes),
    })
}

/// `GET /api/v1/projects/{organisation}/{project}/retention`.
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (organisation, name) = path.into_inner();
    let access = Access::of(&req, &state).await?;
    let project = path_project(&state, &organisation, &name).await?;
    access.require_visible(
        project.id,
        ApiError::NotFound(format!("project {organisation}/{name}")),
    )?;
    let store = state.store.clone();
    let id = project.id;
    let retention = blocking(move || Ok(store.retention(id)?)).await?;
    Ok(HttpResponse::Ok().json(status(&state, &project, retention).await?))
}

/// `PUT` (or `PATCH`) `/api/v1/projects/{organisation}/{project}/retention`: replaces the
/// policy; a limit left out or `null` is no limit.
pub async fn set(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Json<api::notifications::Retention>,
) -> Result<HttpResponse, ApiError> {
    let (organisation, name) = path.into_inner();
    let access = Access::of(&req, &state).await?;
    let project = path_project(&state, &organisation, &name).await?;
    access.require_act(
        project.id,
        TokenScope::Admin,
        ApiError::NotFound(format!("project {organisation}/{name}")),
    )?;
    let body = body.into_inner();
    let store = state.store.clone();
    let id = project.id;
    let retention = blocking(move || {
        Ok(store.set_retention(id, limits_of(body.artifacts), limits_of(body.logs))?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(status(&state, &project, retention).await?))
}

/// `DELETE /api/v1/jobs/{id}/artifacts`: deletes a finished job's artifacts now.
pub async fn delete_artifacts(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    let access = Access::of(&req, &state).await?;
    let store = state.store.clone();
    let found = blocking(move || Ok(store.job(id)?)).await?;
    let job = access.visible_job(found, id)?;
    access.require_act(
        job.project,
        TokenScope::Admin,
        ApiError::NotFound(format!("job {id}")),
    )?;
    if !job.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "job {id} is {}: its artifacts can be deleted once it has finished",
            job.state
        )));
    }
    // Rows first, then the blobs outside the database permit (see `crate::janitor`).
    let deleted = crate::janitor::delete_job_artifacts(
        &state.store,
        &state.storage,
        id,
        state.config.timings.janitor_interval,
    )
    .await?;
    let store = state.store.clone();
    let expiry = blocking(move || Ok(store.job_expiry(id)?)).await?;
    state.janitor.do_send(crate::janitor::RefreshUsage);
    Ok(
        HttpResponse::Ok().json(api::notifications::DeletedArtifacts {
            job: id.0,
            deleted,
            artifacts_expired_at: expiry.artifacts_expired_at,
        }),
    )
}

/// The answer for an artifact of `job` that is not there: `what` not found, or, when the
/// job's artifacts were deleted, a sentence saying when and why.
pub async fn not_found_or_expired(state: &AppState, job: JobId, what: String) -> ApiError {
    let store = state.store.clone();
    match blocking(move || Ok(store.job_expiry(job)?)).await {
        Ok(ExpiredData {
            artifacts_expired_at: Some(at),
            ..
        }) => ApiError::NotFoundExplained(format!(
            "{what} is gone: the artifacts of job {job} were deleted (by its project's \
             retention or an admin) at {at} ms since the epoch"
        )),
        _ => ApiError::NotFound(what),
    }
}
