//! Jobs: submit, list with filters, get, cancel, retry, and a plan-mode job's plan output.

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::{self as api, ListJobs, SubmitJob};
use buildfleet_protocol::Sha256Digest;
use sha2::{Digest as _, Sha256};

use crate::actors::scheduler::{CancelAttempt, JobQueued};
use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::require;
use crate::http::{views, AppState};
use crate::store::{
    AttemptPlan, BuilderId, CancelResult, Job, JobAttempt, JobFilter, JobId, JobMode, JobState,
    JobTransition, NewJob, Submission, TokenScope,
};

/// Names the attempt whose output a response carries.
pub const ATTEMPT_HEADER: &str = "X-Buildfleet-Attempt";

const DEFAULT_TIMEOUT_SECS: u64 = 3600;
const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// A job with its history, as the JSON answer and the dashboard's job page show it.
#[derive(Debug)]
pub struct JobDetail {
    pub job: Job,
    pub attempts: Vec<JobAttempt>,
    pub events: Vec<JobTransition>,
    pub artifacts: Vec<api::Artifact>,
    /// The plan of a plan-mode job, once an attempt reported it.
    pub plan: Option<AttemptPlan>,
}

impl JobDetail {
    /// The JSON answer: the plan itself is linked, not inlined.
    pub fn into_api(self, public_url: &str) -> api::JobDetail {
        let id = self.job.id;
        api::JobDetail {
            plan_url: self
                .plan
                .map(|_| format!("{public_url}/api/v1/jobs/{id}/plan")),
            job: self.job.into(),
            attempts: self.attempts.into_iter().map(Into::into).collect(),
            events: self.events.into_iter().map(Into::into).collect(),
            artifacts: self.artifacts,
        }
    }
}

pub fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a job id")))
}

fn valid_recipe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_param_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let caller = require(&req, &state, TokenScope::Submit).await?;
    let idempotency = idempotency_key(&req)?.map(|key| {
        let request_sha256 = buildfleet_protocol::hex::encode(&Sha256::digest(&body));
        (key, request_sha256)
    });
    let body: SubmitJob = parse_json(&body)?;
    let source_sha256: Sha256Digest = body
        .source_sha256
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("source_sha256: {e}")))?;
    if !valid_recipe_name(&body.recipe) {
        return Err(ApiError::BadRequest(
            "recipe: 1-64 characters of [A-Za-z0-9._-]".into(),
        ));
    }
    if let Some(key) = body.parameters.keys().find(|k| !valid_param_key(k)) {
        return Err(ApiError::BadRequest(format!(
            "parameter name {key:?}: use [A-Za-z0-9_]"
        )));
    }
    let timeout = body.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
        return Err(ApiError::BadRequest(format!(
            "timeout_secs must be 1..={MAX_TIMEOUT_SECS}"
        )));
    }
    let max_attempts = body.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=20).contains(&max_attempts) {
        return Err(ApiError::BadRequest("max_attempts must be 1..=20".into()));
    }
    if !(-1000..=1000).contains(&body.priority) {
        return Err(ApiError::BadRequest("priority must be -1000..=1000".into()));
    }
    let limit = state.config.limits.max_source_bytes;
    let max_bytes = body.source_max_bytes.unwrap_or(limit);
    if max_bytes == 0 || max_bytes > limit {
        return Err(ApiError::BadRequest(format!(
            "source_max_bytes must be 1..={limit}"
        )));
    }
    let sha256 = source_sha256.to_string();
    let store = state.store.clone();
    let public_url = state.public_url.clone();
    let source_url = body.source_url;
    let job = blocking(move || {
        let source_url = match source_url {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => url,
            Some(url) => {
                return Err(ApiError::BadRequest(format!(
                    "source_url {url:?} is not http(s)"
                )))
            }
            None => {
                store.source(&sha256)?.ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "no uploaded source with sha256 {sha256}; upload it or give source_url"
                    ))
                })?;
                format!("{public_url}/api/v1/sources/{sha256}")
            }
        };
        let new = NewJob {
            source_url,
            source_sha256: sha256,
            source_max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
            recipe: body.recipe,
            parameters: body.parameters,
            required_labels: body.labels,
            mode: body.mode.unwrap_or(JobMode::Build),
            priority: body.priority,
            max_attempts,
            timeout_secs: i64::try_from(timeout).unwrap_or(i64::MAX),
            submitter: caller.0,
        };
        Ok(match idempotency {
            None => Submission::Created(store.submit_job(new)?),
            Some((key, request_sha256)) => store.submit_job_once(new, &key, &request_sha256)?,
        })
    })
    .await?;
    match job {
        Submission::Created(job) => {
            state.scheduler.do_send(JobQueued(job.clone()));
            Ok(HttpResponse::Created().json(api::Job::from(job)))
        }
        Submission::Replayed(job) => Ok(HttpResponse::Ok()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(api::Job::from(job))),
        Submission::KeyReused => Err(ApiError::Unprocessable(
            "this Idempotency-Key was used for a different request".into(),
        )),
    }
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "Idempotency-Key: 1 to 255 visible ASCII characters (e.g. a UUID)".into(),
            )
        })?;
    Ok(Some(key.to_owned()))
}

pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListJobs>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let job_state = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        ),
    };
    let limit = query.limit.unwrap_or(JobFilter::DEFAULT_LIMIT);
    if limit == 0 || limit > JobFilter::MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..={}",
            JobFilter::MAX_LIMIT
        )));
    }
    let filter = JobFilter {
        state: job_state,
        recipe: query.recipe.filter(|r| !r.is_empty()),
        builder: query.builder.map(BuilderId),
        before_id: query.before.map(JobId),
        limit,
    };
    let store = state.store.clone();
    let jobs = blocking(move || Ok(store.list_jobs(&filter)?)).await?;
    let next_before = if jobs.len() == limit {
        jobs.last().map(|j| j.id.0)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(api::JobList {
        jobs: jobs.into_iter().map(Into::into).collect(),
        next_before,
    }))
}

pub async fn load_detail(state: &AppState, id: JobId) -> Result<JobDetail, ApiError> {
    let store = state.store.clone();
    let public_url = state.public_url.clone();
    blocking(move || {
        let job = store
            .job(id)?
            .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
        let plan = match job.mode {
            JobMode::Plan => store.job_plan(id)?,
            JobMode::Build => None,
        };
        Ok(JobDetail {
            plan,
            attempts: store.job_attempts(id)?,
            events: store.job_events(id)?,
            artifacts: store
                .artifacts(id, true)?
                .into_iter()
                .map(|a| views::artifact(&public_url, a))
                .collect::<Result<_, _>>()?,
            job,
        })
    })
    .await
}

pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    let detail = load_detail(&state, id).await?;
    Ok(HttpResponse::Ok().json(detail.into_api(&state.public_url)))
}

/// `GET /api/v1/jobs/{id}/plan`: the plan output of the job's latest attempt that reported
/// one, as text. 404 for a build-mode job and before a plan-mode attempt reported its plan.
pub async fn plan(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    let store = state.store.clone();
    let plan = blocking(move || {
        let job = store
            .job(id)?
            .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
        if job.mode != JobMode::Plan {
            return Err(ApiError::NotFound(format!(
                "job {id} is a build-mode job; only plan-mode jobs have a plan"
            )));
        }
        store.job_plan(id)?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "job {id} has no plan yet: no attempt has reported one"
            ))
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((ATTEMPT_HEADER, plan.attempt.to_string()))
        .body(plan.text))
}

pub async fn cancel(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Submit).await?;
    let id = parse_job_id(&path)?;
    let store = state.store.clone();
    let result = blocking(move || Ok(store.cancel_job(id)?)).await?;
    let job = match result {
        CancelResult::Cancelled(job) => {
            state.job_feed.publish(&job);
            job
        }
        CancelResult::Requested { job, attempt } => {
            if let Some(builder) = attempt.builder {
                state.scheduler.do_send(CancelAttempt {
                    builder,
                    job: job.id,
                    attempt: attempt.attempt,
                });
            }
            job
        }
    };
    Ok(HttpResponse::Accepted().json(api::Job::from(job)))
}

pub async fn retry(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state, TokenScope::Submit).await?;
    let id = parse_job_id(&path)?;
    let store = state.store.clone();
    let job = blocking(move || Ok(store.retry_job(id)?)).await?;
    state.scheduler.do_send(JobQueued(job.clone()));
    Ok(HttpResponse::Ok().json(api::Job::from(job)))
}
