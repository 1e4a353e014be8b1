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
use crate::store::{Builder, BuilderId, JobId, NewBuilder, Store, TokenScope};

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
    let key = parse_one_key(&body.public_key)?;
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
            let (builder, now) = blocking({
                let store = store.clone();
                move || {
                    let builder = store
                        .builder_by_id(id)?
                        .ok_or_else(|| ApiError::NotFound(format!("builder {id}")))?;
                    Ok((builder, store.now_ms()))
                }
            })
            .await?;
            // Steering stays an action on a connected builder (an offline one would learn of
            // it only later, which is not what the operator sees): refused before anything
            // is stored. On PostgreSQL the builder may be connected to another replica, which
            // this one does not see: there it counts as connected while another replica
            // records its heartbeats (`last_seen_at`, written each sweep), and the standing
            // is stored and announced to them all.
            let shared = state.store.backend() == crate::store::Backend::Postgres;
            let elsewhere = shared && heard_of_lately(&state, builder.last_seen_at, now);
            if !elsewhere && !live(&state).await?.contains_key(&id) {
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

/// One OpenSSH public key line. More lines are refused: the key parser would read the rest
/// as the first key's comment, and the stored key would carry them.
fn parse_one_key(text: &str) -> Result<ssh_key::PublicKey, ApiError> {
    if text.trim().lines().count() > 1 {
        return Err(ApiError::BadRequest(
            "public_key: one key on one line: 'ssh-ed25519 AAAA… comment'".into(),
        ));
    }
    signing::parse_public_key(text).map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))
}

fn key_view(key: crate::store::BuilderKey) -> api::builders::BuilderKey {
    api::builders::BuilderKey {
        current: key.is_current(),
        public_key: key.public_key,
        fingerprint: key.fingerprint,
        valid_after: key.valid_after,
        valid_before: key.valid_before,
        revoked_at: key.revoked_at,
        revoked_reason: key.revoked_reason,
    }
}

/// The builder `id` if `access` sees it; the 404 of a missing builder otherwise.
fn visible_builder(store: &Store, access: &Access, id: BuilderId) -> Result<Builder, ApiError> {
    let seen = ProjectNames::load(store)?.seen_by(access);
    let slugs = store.builder_project_slugs()?;
    store
        .builder_by_id(id)?
        .filter(|b| sees_builder(&seen, slugs.get(&b.id)))
        .ok_or_else(|| ApiError::NotFound(format!("builder {id}")))
}

/// A key route's builder: one the caller sees (else 404, as if missing), then, to change its
/// keys, the admin (401 without a token, 403 for a project's token).
async fn key_route_builder(
    req: &HttpRequest,
    state: &AppState,
    raw_id: &str,
    change: bool,
) -> Result<Builder, ApiError> {
    let access = Access::of(req, state).await?;
    let id = parse_id(raw_id)?;
    let store = state.store.clone();
    let checked = access.clone();
    let builder = blocking(move || visible_builder(&store, &checked, id)).await?;
    if change {
        access.require_admin()?;
    }
    Ok(builder)
}

fn key_list(
    builder: &Builder,
    keys: Vec<crate::store::BuilderKey>,
) -> api::builders::BuilderKeyList {
    api::builders::BuilderKeyList {
        builder: builder.id.0,
        name: builder.name.clone(),
        keys: keys.into_iter().map(key_view).collect(),
    }
}

/// `GET /api/v1/builders/{id}/keys`: the builder's keys, oldest first (who sees the builder).
pub async fn keys(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let builder = key_route_builder(&req, &state, &path, false).await?;
    let store = state.store.clone();
    let id = builder.id;
    let keys = blocking(move || Ok(store.builder_keys(id)?)).await?;
    Ok(HttpResponse::Ok().json(key_list(&builder, keys)))
}

/// `POST /api/v1/builders/{id}/keys` (admin): rotate the builder to a new key. The old key's
/// validity ends now; a session authenticated with it is closed, so the builder connects
/// again with its new key.
pub async fn rotate_key(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let builder = key_route_builder(&req, &state, &path, true).await?;
    let body: api::builders::RotateBuilderKey = parse_json(&body)?;
    let key = parse_one_key(&body.public_key)?;
    let public_key = key.to_openssh().map_err(ApiError::internal)?;
    let fingerprint = signing::fingerprint(&key).to_string();
    let store = state.store.clone();
    let id = builder.id;
    let (builder, keys) =
        blocking(move || Ok(store.rotate_builder_key(id, &public_key, &fingerprint)?)).await?;
    state.scheduler.do_send(RevokeBuilder(id));
    tracing::info!(builder = %builder.name, fingerprint = %builder.fingerprint, "builder key rotated");
    Ok(HttpResponse::Created().json(key_list(&builder, keys)))
}

/// `POST /api/v1/builders/{id}/keys/{fingerprint}/revoke` (admin): revoke one of the
/// builder's keys with a reason. Its statements no longer verify; revoking the current key
/// also ends the builder's session, and it cannot connect until a new key is rotated in.
pub async fn revoke_key(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, fingerprint) = path.into_inner();
    let fingerprint = percent_decoded(&fingerprint)?;
    let builder = key_route_builder(&req, &state, &raw_id, true).await?;
    let body: api::builders::RevokeBuilderKey = parse_json(&body)?;
    let store = state.store.clone();
    let id = builder.id;
    let revoked = blocking(move || {
        let revocation = store.revoke_builder_key(id, &fingerprint, &body.reason)?;
        Ok((revocation, store.builder_keys(id)?))
    })
    .await?;
    let (revocation, keys) = revoked;
    if revocation.was_current {
        state.scheduler.do_send(RevokeBuilder(id));
    }
    tracing::warn!(builder = %builder.name, fingerprint = %revocation.key.fingerprint, "builder key revoked");
    Ok(HttpResponse::Ok().json(key_list(&builder, keys)))
}

/// A path segment with any percent-escapes left in it decoded (a fingerprint's '/', '+' and
/// '=' arrive escaped from careful clients and as they are from others).
fn percent_decoded(raw: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest(format!("{raw:?} is not a key fingerprint"));
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// A key that signed a job's statement and was revoked since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSigner {
    pub builder: String,
    pub fingerprint: String,
    pub reason: String,
}

/// The fingerprints of the keys that made the armored SSHSIG signatures in `armored` (one or
/// several blocks); blocks that do not parse are skipped (the statement was verified when it
/// was stored).
pub fn sshsig_signers(armored: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
    const END: &str = "-----END SSH SIGNATURE-----";
    let mut found = Vec::new();
    let mut rest = armored;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + len + END.len()];
        if let Ok(sig) = ssh_key::SshSig::from_pem(block) {
            let key = ssh_key::PublicKey::from(sig.public_key().clone());
            let fingerprint = signing::fingerprint(&key).to_string();
            if !found.contains(&fingerprint) {
                found.push(fingerprint);
            }
        }
        rest = &rest[start + len + END.len()..];
    }
    found
}

/// Whether some replica heard from a builder within a heartbeat timeout and two sweeps (the
/// sweep records contact at most one interval late).
fn heard_of_lately(state: &AppState, last_seen_at: Option<i64>, now_ms: i64) -> bool {
    let timings = &state.config.timings;
    let window = timings.heartbeat_timeout + timings.sweep_interval * 2;
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    last_seen_at.is_some_and(|seen| now_ms.saturating_sub(seen) <= window_ms)
}

/// The revoked keys among those that signed `statement` (the job page marks the job).
pub fn revoked_signers(
    store: &Store,
    job: JobId,
    statement: Option<&crate::store::AttemptStatement>,
) -> Result<Vec<RevokedSigner>, ApiError> {
    let Some(statement) = statement else {
        return Ok(Vec::new());
    };
    // A reproduced job's statement carries a signature per run: every signer counts.
    let mut signers: Vec<String> = store
        .statement_signatures(job)?
        .into_iter()
        .map(|s| s.signer_fingerprint)
        .collect();
    if signers.is_empty() {
        signers = sshsig_signers(&statement.signature);
    }
    Ok(store
        .builder_keys_by_fingerprint(&signers)?
        .into_iter()
        .filter_map(|(builder, key)| {
            Some(RevokedSigner {
                builder,
                reason: key.revoked_reason?,
                fingerprint: key.fingerprint,
            })
        })
        .collect())
}
