//! Builders: list, admit, enable, disable, drain, pause, resume, remove.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::{self as api, AdmitBuilder};
use buildfleet_protocol::{signing, ControlCommand};

use crate::actors::scheduler::{
    ControlBuilder, LiveBuilder, LiveBuilders, RevokeBuilder, SetBuilderProjects,
};
use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::{require, Access};
use crate::http::views::ProjectNames;
use crate::http::{views, AppState};
use crate::store::{Builder, BuilderId, NewBuilder, Store, TokenScope};

async fn live(state: &AppState) -> Result<BTreeMap<BuilderId, LiveBuilder>, ApiError> {
    state
        .scheduler
        .send(LiveBuilders)
        .await
        .map_err(|_| ApiError::Unavailable("scheduler".into()))
}

fn view(builder: Builder, live: &BTreeMap<BuilderId, LiveBuilder>) -> api::Builder {
    let live = live.get(&builder.id).cloned();
    views::builder(builder, live)
}

fn parse_id(raw: &str) -> Result<BuilderId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a builder id")))
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let store = state.store.clone();
    let (builders, slugs) = blocking(move || visible_builders(&store, &access)).await?;
    let live = live(&state).await?;
    let builders = builders
        .into_iter()
        .map(|b| with_projects(view(b, &live), &slugs))
        .collect();
    Ok(HttpResponse::Ok().json(api::BuilderList { builders }))
}

pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let id = parse_id(&path)?;
    let store = state.store.clone();
    let (builder, slugs) = blocking(move || {
        let seen = ProjectNames::load(&store)?.seen_by(&access);
        let slugs = store.builder_project_slugs()?;
        // A builder private to projects the caller cannot see does not exist for it.
        let builder = store
            .builder_by_id(id)?
            .filter(|b| sees_builder(&seen, slugs.get(&b.id)));
        Ok((builder, only_seen(slugs, &seen)))
    })
    .await?;
    let builder = builder.ok_or_else(|| ApiError::NotFound(format!("builder {id}")))?;
    let live = live(&state).await?;
    Ok(HttpResponse::Ok().json(with_projects(view(builder, &live), &slugs)))
}

/// The projects (`organisation/project`) each private builder serves.
pub type PrivateBuilders = BTreeMap<BuilderId, Vec<String>>;

/// The builders `access` sees, and the projects of every private builder (by builder). The
/// API's listing and the dashboard's builders page both read it, so neither shows a builder
/// the other hides.
pub fn visible_builders(
    store: &Store,
    access: &Access,
) -> Result<(Vec<Builder>, PrivateBuilders), ApiError> {
    let seen = ProjectNames::load(store)?.seen_by(access);
    let slugs = store.builder_project_slugs()?;
    let builders = store
        .list_builders()?
        .into_iter()
        .filter(|b| sees_builder(&seen, slugs.get(&b.id)))
        .collect();
    Ok((builders, only_seen(slugs, &seen)))
}

/// The private builders' projects with the names the caller may not see left out: a builder
/// it sees because it serves one of its projects does not tell it of the others.
fn only_seen(slugs: PrivateBuilders, seen: &BTreeSet<String>) -> PrivateBuilders {
    slugs
        .into_iter()
        .filter_map(|(builder, projects)| {
            let shown: Vec<String> = projects.into_iter().filter(|p| seen.contains(p)).collect();
            (!shown.is_empty()).then_some((builder, shown))
        })
        .collect()
}

/// Whether a caller that sees the projects `seen` sees a builder private to `private_to`
/// (none or empty: shared by all, seen by everyone).
fn sees_builder(seen: &BTreeSet<String>, private_to: Option<&Vec<String>>) -> bool {
    private_to
        .is_none_or(|projects| projects.is_empty() || projects.iter().any(|p| seen.contains(p)))
}

fn with_projects(
    mut builder: api::Builder,
    slugs: &BTreeMap<BuilderId, Vec<String>>,
) -> api::Builder {
    builder.projects = slugs
        .get(&BuilderId(builder.record.id))
        .cloned()
        .unwrap_or_default();
    builder
}

/// `PUT /api/v1/builders/{id}/projects` (admin): makes the builder private to the named
/// projects, or shared by all again with `[]`. Stored first, then the scheduler is told, so
/// a connected builder's next claim already follows it.
pub async fn set_projects(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let id = parse_id(&path)?;
    let body: api::SetBuilderProjects = parse_json(&body)?;
    let store = state.store.clone();
    let projects = blocking(move || {
        if store.builder_by_id(id)?.is_none() {
            return Err(ApiError::NotFound(format!("builder {id}")));
        }
        let mut projects = Vec::with_capacity(body.projects.len());
        for slug in &body.projects {
            let project = store
                .project_by_slug(slug)
                .map_err(|e| ApiError::BadRequest(format!("projects: {e}")))?
                .ok_or_else(|| {
                    ApiError::NotFoundExplained(format!("there is no project {slug:?}"))
                })?;
            if !projects.contains(&project.id) {
                projects.push(project.id);
            }
        }
        store.set_builder_projects(id, &projects)?;
        Ok(projects)
    })
    .await?;
    state
        .scheduler
        .send(SetBuilderProjects {
            builder: id,
            projects,
        })
        .await
        .map_err(|_| ApiError::Unavailable("scheduler".into()))?;
    get(req, state, path).await
}

pub async fn admit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let body: AdmitBuilder = parse_json(&body)?;
    signing::validate_builder_name(&body.name).map_err(|e| ApiError::BadRequest(e.into()))?;
    let key = signing::parse_public_key(&body.public_key)
        .map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))?;
    let new = NewBuilder {
        name: body.name,
        public_key: key.to_openssh().map_err(ApiError::internal)?,
        fingerprint: signing::fingerprint(&key).to_string(),
        labels: body.labels,
    };
    let store = state.store.clone();
    let builder = blocking(move || Ok(store.admit_builder(new)?)).await?;
    tracing::info!(builder = %builder.name, fingerprint = %builder.fingerprint, "builder admitted");
    Ok(HttpResponse::Created().json(view(builder, &BTreeMap::new())))
}

/// `POST /api/v1/builders/{id}/{enable|disable|drain|pause|resume}`.
pub async fn act(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let (raw_id, action) = path.into_inner();
    let id = parse_id(&raw_id)?;
    let store = state.store.clone();
    match action.as_str() {
        "enable" | "disable" => {
            let enabled = action == "enable";
            blocking(move || Ok(store.set_builder_enabled(id, enabled)?)).await?;
            if !enabled {
                state.scheduler.do_send(RevokeBuilder(id));
            }
        }
        "drain" | "pause" | "resume" => {
            blocking({
                let store = store.clone();
                move || {
                    store
                        .builder_by_id(id)?
                        .ok_or_else(|| ApiError::NotFound(format!("builder {id}")))
                }
            })
            .await?;
            // Steering stays an action on a connected builder (an offline one would learn of
            // it only later, which is not what the operator sees): refused before anything
            // is stored.
            if !live(&state).await?.contains_key(&id) {
                return Err(ApiError::Conflict(format!("builder {id} is not connected")));
            }
            let command = match action.as_str() {
                "drain" => ControlCommand::Drain,
                "pause" => ControlCommand::Pause,
                _ => ControlCommand::Resume,
            };
            // Stored first, so the standing outlives the session and a restart of the
            // backend; a builder that disconnects meanwhile gets it when it registers again.
            let builder = blocking(move || Ok(store.control_builder(id, command)?)).await?;
            state
                .scheduler
                .send(ControlBuilder {
                    builder: id,
                    command,
                    standing: builder.control,
                })
                .await
                .map_err(|_| ApiError::Unavailable("scheduler".into()))?;
        }
        other => return Err(ApiError::NotFound(format!("builder action {other:?}"))),
    }
    get(req, state, web::Path::from(raw_id)).await
}

pub async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let id = parse_id(&path)?;
    let store = state.store.clone();
    blocking(move || Ok(store.remove_builder(id)?)).await?;
    state.scheduler.do_send(RevokeBuilder(id));
    Ok(HttpResponse::NoContent().finish())
}
