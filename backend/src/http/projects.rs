//! Projects: create and change (admin), list and read (what the caller may see).

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::{self as api, CreateProject, UpdateProject};

use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::Access;
use crate::http::AppState;
use crate::store::{parse_project_slug as parse_slug, NewProject, Project, ProjectChanges};

/// Weight of a project created without one.
const DEFAULT_WEIGHT: i32 = 1;

pub fn view(project: Project) -> api::Project {
    api::Project {
        id: project.id.0,
        name: project.slug(),
        organisation: project.organisation,
        public: project.public,
        weight: project.weight,
        created_at: project.created_at,
        reproduce: project.reproduce,
    }
}

/// `POST /api/v1/projects` (admin).
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    Access::of(&req, &state).await?.require_admin()?;
    let body: CreateProject = parse_json(&body)?;
    let (organisation, name) =
        parse_slug(&body.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let new = NewProject {
        organisation: organisation.to_owned(),
        name: name.to_owned(),
        public: body.public,
        weight: body.weight.unwrap_or(DEFAULT_WEIGHT),
    };
    let store = state.store.clone();
    let project = blocking(move || Ok(store.create_project(&new)?)).await?;
    tracing::info!(project = %project.slug(), public = project.public, "project created");
    Ok(HttpResponse::Created().json(view(project)))
}

/// `GET /api/v1/projects`: the projects the caller may see.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let store = state.store.clone();
    let projects = blocking(move || Ok(store.list_projects()?)).await?;
    Ok(HttpResponse::Ok().json(api::ProjectList {
        projects: projects
            .into_iter()
            .filter(|p| access.sees(p.id))
            .map(view)
            .collect(),
    }))
}

/// The project `organisation/project` of the path, if the caller may see it (404 otherwise,
/// the same as for one that does not exist).
async fn visible(
    state: &AppState,
    access: &Access,
    path: (String, String),
) -> Result<Project, ApiError> {
    let slug = format!("{}/{}", path.0, path.1);
    let store = state.store.clone();
    let access = access.clone();
    blocking(move || {
        let found = store
            .project_by_slug(&slug)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        match found {
            Some(project) if access.sees(project.id) => Ok(project),
            _ => Err(ApiError::NotFound(format!("project {slug}"))),
        }
    })
    .await
}

/// `GET /api/v1/projects/{organisation}/{project}`.
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let project = visible(&state, &access, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(view(project)))
}

/// `PATCH /api/v1/projects/{organisation}/{project}` (admin).
pub async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    access.require_admin()?;
    let body: UpdateProject = parse_json(&body)?;
    let project = visible(&state, &access, path.into_inner()).await?;
    let changes = ProjectChanges {
        public: body.public,
        weight: body.weight,
        reproduce: body.reproduce,
    };
    let store = state.store.clone();
    let updated = blocking(move || Ok(store.update_project(project.id, &changes)?)).await?;
    tracing::info!(
        project = %updated.slug(),
        public = updated.public,
        weight = updated.weight,
        "project changed"
    );
    Ok(HttpResponse::Ok().json(view(updated)))
}
