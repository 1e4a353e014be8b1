//! The registry follower over HTTP: its status, a crate's versions and builds, backfills,
//! and the `crate` field of a submission, resolved through the followed index.

use std::collections::BTreeMap;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::{self as api, SubmitJob};

use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::require;
use crate::http::AppState;
use crate::registry::{Backfill, FollowError, IndexSource, RegistryFollower, Resolve};
use crate::store::{JobId, RegistryVersion, TokenScope, VersionStatus};

/// Latest skipped and queued versions the status shows.
const STATUS_VERSIONS: i64 = 50;

fn follower(state: &AppState) -> Result<&Addr<RegistryFollower>, ApiError> {
    state.registry.as_ref().ok_or_else(|| {
        ApiError::NotFoundExplained(
            "this backend follows no registry: configure [registry] (docs/registry.md)".into(),
        )
    })
}

fn follow_error(e: FollowError) -> ApiError {
    match e {
        FollowError::Index(crate::registry::index::IndexError::CrateName(_))
        | FollowError::VersionReq(..) => ApiError::BadRequest(e.to_string()),
        FollowError::UnknownCrate(_) | FollowError::UnknownVersion(..) => {
            ApiError::NotFoundExplained(e.to_string())
        }
        FollowError::Yanked(..) => ApiError::Unprocessable(e.to_string()),
        FollowError::Fetch { .. } | FollowError::Git(_) | FollowError::Index(_) => {
            ApiError::Unavailable(format!("the registry: {e}"))
        }
        FollowError::Store(e) => e.into(),
        FollowError::Offload(_) => ApiError::internal(anyhow::anyhow!(e.to_string())),
    }
}

/// Fills a submission's source from `crate` (`name@version`) through the followed index and
/// annotates it with the crate and version.
pub async fn resolve_crate(state: &AppState, mut body: SubmitJob) -> Result<SubmitJob, ApiError> {
    let Some(spec) = body.krate.take() else {
        return Ok(body);
    };
    if body.source_url.is_some() || !body.source_sha256.is_empty() {
        return Err(ApiError::BadRequest(
            "crate: give a crate or a source (source_url, source_sha256), not both".into(),
        ));
    }
    let (krate, version) = spec
        .split_once('@')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "crate {spec:?}: expected NAME@VERSION, e.g. itoa@1.0.14"
            ))
        })?;
    let registry = state.registry.as_ref().ok_or_else(|| {
        ApiError::BadRequest(
            "crate: this backend follows no registry; give source_url and source_sha256, or configure [registry]".into(),
        )
    })?;
    let resolved = registry
        .send(Resolve {
            krate: krate.to_owned(),
            version: version.to_owned(),
        })
        .await
        .map_err(|_| ApiError::Unavailable("registry follower".into()))?
        .map_err(follow_error)?;
    for (key, value) in [("crate", &resolved.krate), ("version", &resolved.version)] {
        match body.annotations.get(key) {
            Some(given) if given != value => {
                return Err(ApiError::BadRequest(format!(
                    "annotation {key:?} is {given:?} but crate says {value:?}"
                )))
            }
            _ => {
                body.annotations.insert(key.to_owned(), value.clone());
            }
        }
    }
    body.source_url = Some(resolved.source_url);
    body.source_sha256 = resolved.source_sha256;
    Ok(body)
}

/// `POST /api/v1/registry/backfill` (admin): queues the builds of existing versions at the
/// backfill priority; builds queued before are not queued again.
pub async fn backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Admin).await?;
    let body: api::Backfill = parse_json(&body)?;
    let done = follower(&state)?
        .send(Backfill {
            krate: body.krate.clone(),
            versions: body.versions,
        })
        .await
        .map_err(|_| ApiError::Unavailable("registry follower".into()))?
        .map_err(follow_error)?;
    Ok(HttpResponse::Accepted().json(api::BackfillResult {
        krate: body.krate,
        versions: done.versions,
        queued_jobs: done.queued.iter().map(|j| j.id.0).collect(),
    }))
}

/// `GET /api/v1/registry`.
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(load_status(&state).await?))
}

/// The follower's standing, for the API and the dashboard.
pub async fn load_status(state: &AppState) -> Result<api::RegistryStatus, ApiError> {
    follower(state)?;
    let Some(settings) = state.config.registry.clone() else {
        return Err(ApiError::NotFoundExplained(
            "this backend follows no registry: configure [registry] (docs/registry.md)".into(),
        ));
    };
    let store = state.store.clone();
    let name = settings.name.clone();
    let (cursors, skipped, recent) = blocking(move || {
        Ok((
            store.registry_cursors(&name)?,
            store.registry_versions_with_status(&name, VersionStatus::Skipped, STATUS_VERSIONS)?,
            store.registry_versions_with_status(&name, VersionStatus::Queued, STATUS_VERSIONS)?,
        ))
    })
    .await?;
    let cursor = |key: &str| {
        cursors
            .iter()
            .find(|(name, _, _)| name == key)
            .map(|(_, value, _)| value.clone())
    };
    let (protocol, index) = match &settings.index {
        IndexSource::Git(url) => ("git", url.clone()),
        IndexSource::Sparse(base) => ("sparse", format!("sparse+{base}")),
    };
    Ok(api::RegistryStatus {
        name: settings.name.clone(),
        protocol: protocol.into(),
        index,
        crates: settings.crates.clone(),
        position: cursor("git-head"),
        last_fetch_at: cursor("last-fetch").and_then(|t| t.parse().ok()),
        last_error: cursor("last-error"),
        skipped: skipped
            .into_iter()
            .map(|v| version_view(v, &BTreeMap::new()))
            .collect(),
        recent: recent
            .into_iter()
            .map(|v| version_view(v, &BTreeMap::new()))
            .collect(),
    })
}

/// `GET /api/v1/crates/{name}`: the versions seen (newest first) with their builds.
pub async fn crate_detail(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(load_crate(&state, path.into_inner()).await?))
}

/// What the follower saw of a crate and built of it, for the API and the dashboard.
pub async fn load_crate(state: &AppState, krate: String) -> Result<api::CrateDetail, ApiError> {
    follower(state)?;
    let Some(settings) = state.config.registry.clone() else {
        return Err(ApiError::NotFoundExplained(
            "this backend follows no registry: configure [registry] (docs/registry.md)".into(),
        ));
    };
    crate::registry::index::check_crate_name(&krate)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let store = state.store.clone();
    let name = settings.name.clone();
    let lookup = krate.clone();
    let (versions, builds) = blocking(move || {
        let versions = store.registry_versions(&name, &lookup)?;
        let mut builds: BTreeMap<String, Vec<api::CrateBuild>> = BTreeMap::new();
        for build in store.registry_builds(&name, &lookup)? {
            let Some(job) = store.job(JobId(build.job_id))? else {
                continue;
            };
            builds
                .entry(build.version.clone())
                .or_default()
                .push(api::CrateBuild {
                    target: build.target,
                    recipe: build.recipe,
                    job: build.job_id,
                    state: job.state,
                    backfill: build.backfill,
                });
        }
        Ok((versions, builds))
    })
    .await?;
    if versions.is_empty() {
        return Err(ApiError::NotFoundExplained(format!(
            "the registry follower has not seen crate {krate}: follow it (registry.crates) or backfill it"
        )));
    }
    Ok(api::CrateDetail {
        krate: versions.first().map_or(krate, |v| v.crate_name.clone()),
        registry: settings.name,
        versions: versions
            .into_iter()
            .map(|v| version_view(v, &builds))
            .collect(),
    })
}

fn version_view(
    v: RegistryVersion,
    builds: &BTreeMap<String, Vec<api::CrateBuild>>,
) -> api::CrateVersion {
    api::CrateVersion {
        builds: builds.get(&v.version).cloned().unwrap_or_default(),
        krate: v.crate_name,
        version: v.version,
        cksum: v.cksum,
        yanked: v.yanked,
        status: v.status.as_str().into(),
        reason: v.reason,
        seen_at: v.seen_at,
    }
}

/// What a binstall URL asks for beside the archive.
#[derive(Debug, Clone, Copy)]
enum BinstallFile {
    Archive,
    Statement,
    Signature,
}

/// `GET /api/v1/crates/{name}/{version}/{target}/{file}`: stable URLs of the newest
/// successful build of a version for a target, for cargo-binstall's `pkg-url` (`download`:
/// the `.tar.gz` of its binaries) and for verifiers (`statement`, `statement.sig`). Each
/// redirects to the job's own URL, so there is one download path (ranges, digests).
pub async fn binstall(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (krate, version, target, file) = path.into_inner();
    let wanted = match file.as_str() {
        "download" => BinstallFile::Archive,
        "statement" => BinstallFile::Statement,
        "statement.sig" => BinstallFile::Signature,
        other => {
            return Err(ApiError::NotFoundExplained(format!(
                "a crate build has no {other:?}: it offers download, statement and statement.sig"
            )))
        }
    };
    follower(&state)?;
    let Some(settings) = state.config.registry.clone() else {
        return Err(ApiError::NotFoundExplained(
            "this backend follows no registry: configure [registry] (docs/registry.md)".into(),
        ));
    };
    crate::registry::index::check_crate_name(&krate)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let store = state.store.clone();
    let public_url = state.public_url.clone();
    let (lookup_crate, lookup_version, lookup_target) =
        (krate.clone(), version.clone(), target.clone());
    let found = blocking(move || {
        for id in store.registry_build_jobs(
            &settings.name,
            &lookup_crate,
            &lookup_version,
            &lookup_target,
        )? {
            let id = JobId(id);
            let Some(job) = store.job(id)? else { continue };
            if job.state != crate::store::JobState::Succeeded {
                continue;
            }
            let archive = store
                .artifacts(id, true)?
                .into_iter()
                .find(|a| a.name.ends_with(".tar.gz") || a.name.ends_with(".tgz"));
            if let Some(archive) = archive {
                return Ok(Some((
                    id,
                    crate::http::views::artifact(&public_url, archive)?.url,
                )));
            }
        }
        Ok(None)
    })
    .await?;
    let Some((job, archive_url)) = found else {
        return Err(ApiError::NotFoundExplained(format!(
            "{krate} {version} has no successful build for {target} (yet)"
        )));
    };
    let location = match wanted {
        BinstallFile::Archive => archive_url,
        BinstallFile::Statement => format!("{}/api/v1/jobs/{job}/statement", state.public_url),
        BinstallFile::Signature => format!("{}/api/v1/jobs/{job}/statement.sig", state.public_url),
    };
    Ok(HttpResponse::Found()
        .insert_header(("Location", location))
        .insert_header(("X-Buildfleet-Job", job.to_string()))
        .finish())
}
