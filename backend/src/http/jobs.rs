//! Jobs: submit, list with filters, get, cancel, retry, and a plan-mode job's plan output.

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::{self as api, ListJobs, SubmitJob};
use buildfleet_protocol::Sha256Digest;
use sha2::{Digest as _, Sha256};

use crate::actors::scheduler::{CancelAttempt, JobQueued, LiveBuilders};
use crate::error::{blocking, parse_json, ApiError};
use crate::http::auth::Access;
use crate::http::views::ProjectNames;
use crate::http::{views, AppState};
use crate::queue_standing as standing;
use crate::store::{
    check_annotations, AnnotationFilter, AttemptPlan, BuilderId, CancelResult, Job, JobAttempt,
    JobFilter, JobId, JobMode, JobState, JobTransition, NewJob, ProjectId, Store, Submission,
    TokenScope,
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
    /// Its project's name, `organisation/project`.
    pub project: String,
    pub attempts: Vec<JobAttempt>,
    pub events: Vec<JobTransition>,
    pub artifacts: Vec<api::Artifact>,
    /// The plan of a plan-mode job, once an attempt reported it.
    pub plan: Option<AttemptPlan>,
    /// Why it waits, while it is queued.
    pub queue: Option<api::QueueStanding>,
    /// Its place in a chain of jobs (a crate's metadata job and the builds it queued).
    pub follows_from: Option<JobId>,
    pub follow_ups: Vec<JobId>,
    /// What retention deleted of it.
    pub expired: crate::store::ExpiredData,
    /// A reproducible job's runs and verdict.
    pub reproduction: Option<api::Reproduction>,
}

impl JobDetail {
    /// The JSON answer: the plan itself is linked, not inlined.
    pub fn into_api(self, public_url: &str) -> api::JobDetail {
        let id = self.job.id;
        api::JobDetail {
            plan_url: self
                .plan
                .map(|_| format!("{public_url}/api/v1/jobs/{id}/plan")),
            job: views::job_view(self.job, self.project),
            attempts: self.attempts.into_iter().map(Into::into).collect(),
            events: self.events.into_iter().map(Into::into).collect(),
            artifacts: self.artifacts,
            queue: self.queue,
            follows_from: self.follows_from.map(|j| j.0),
            follow_ups: self.follow_ups.iter().map(|j| j.0).collect(),
            artifacts_expired_at: self.expired.artifacts_expired_at,
            logs_expired_at: self.expired.logs_expired_at,
            reproduction: self.reproduction,
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

/// Most jobs one `POST /api/v1/jobs` with an array may carry.
pub const MAX_BATCH: usize = 1000;

/// `POST /api/v1/jobs`: one job (an object), or many in one request and one transaction (an
/// array, all or none: a bad entry refuses the batch and names its index).
pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    access.require_token()?;
    let idempotency = idempotency_key(&req)?.map(|key| {
        let request_sha256 = buildfleet_protocol::hex::encode(&Sha256::digest(&body));
        (key, request_sha256)
    });
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        if idempotency.is_some() {
            return Err(ApiError::BadRequest(
                "Idempotency-Key applies to one job; submit a batch without it".into(),
            ));
        }
        return submit_batch(&state, access, &body).await;
    }
    let body: SubmitJob = parse_json(&body)?;
    let body = crate::http::registry::resolve_crate(&state, body).await?;
    let checked = check_submission(&state, body, access.caller().0)?;
    let store = state.store.clone();
    let public_url = state.public_url.clone();
    let (job, names) = blocking(move || {
        let new = checked.resolve(&store, &public_url, &access)?;
        let job = match idempotency {
            None => Submission::Created(store.submit_job(new)?),
            Some((key, request_sha256)) => store.submit_job_once(new, &key, &request_sha256)?,
        };
        Ok((job, ProjectNames::load(&store)?))
    })
    .await?;
    match job {
        Submission::Created(job) => {
            state.scheduler.do_send(JobQueued(vec![job.clone()]));
            Ok(HttpResponse::Created().json(names.job(job)?))
        }
        Submission::Replayed(job) => Ok(HttpResponse::Ok()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(names.job(job)?)),
        Submission::KeyReused => Err(ApiError::Unprocessable(
            "this Idempotency-Key was used for a different request".into(),
        )),
    }
}

async fn submit_batch(
    state: &AppState,
    access: Access,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let submitter = access.caller().0;
    let bodies: Vec<SubmitJob> = parse_json(body)?;
    if bodies.is_empty() || bodies.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1..={MAX_BATCH} jobs, not {}",
            bodies.len()
        )));
    }
    let checked = bodies
        .into_iter()
        .enumerate()
        .map(|(index, body)| {
            check_submission(state, body, submitter.clone()).map_err(|e| at_index(index, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let store = state.store.clone();
    let public_url = state.public_url.clone();
    let (jobs, names) = blocking(move || {
        let news = checked
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                c.resolve(&store, &public_url, &access)
                    .map_err(|e| at_index(index, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((store.submit_jobs(news)?, ProjectNames::load(&store)?))
    })
    .await?;
    state.scheduler.do_send(JobQueued(jobs.clone()));
    let jobs: Vec<api::Job> = names.jobs(jobs)?;
    Ok(HttpResponse::Created().json(jobs))
}

/// A refusal of one entry of a batch names the entry.
fn at_index(index: usize, error: ApiError) -> ApiError {
    match error {
        ApiError::BadRequest(message) => ApiError::BadRequest(format!("[{index}]: {message}")),
        other => other,
    }
}

/// A submission whose fields were checked; its source is resolved against the store.
struct CheckedSubmission {
    source_url: Option<String>,
    /// The project the submission names, if it names one.
    project: Option<String>,
    job: NewJob,
}

/// The longest part of a refused value quoted back in a message.
const QUOTED_VALUE_CHARS: usize = 80;

/// A submission's `source_sha256`, refused with a sentence that names the value.
fn parse_source_sha256(given: &str) -> Result<Sha256Digest, ApiError> {
    if given.is_empty() {
        return Err(ApiError::BadRequest(
            "source_sha256 is missing: give the SHA-256 of the source archive (64 lowercase \
             hex characters)"
                .into(),
        ));
    }
    given.parse().map_err(|_| {
        let shown: String = given.chars().take(QUOTED_VALUE_CHARS).collect();
        let cut = if shown.len() < given.len() { "…" } else { "" };
        ApiError::BadRequest(format!(
            "source_sha256 {shown:?}{cut} is not a SHA-256 digest: expected 64 lowercase hex \
             characters"
        ))
    })
}

/// Most exit statuses one `retry.exit_codes` may list.
const MAX_RETRY_EXIT_CODES: usize = 64;
/// The longest first back-off, and the longest cap, a submission may ask for.
const MAX_BACKOFF_INITIAL_MS: u64 = 60 * 60 * 1000;
const MAX_BACKOFF_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// A submission's `retry`, refused with a sentence naming what is wrong.
fn check_retry_policy(policy: &api::RetryPolicy, max_attempts: i32) -> Result<(), ApiError> {
    let refuse = |message: String| Err(ApiError::BadRequest(message));
    if let api::ExitCodes::Listed(codes) = &policy.exit_codes {
        if codes.len() > MAX_RETRY_EXIT_CODES {
            return refuse(format!(
                "retry.exit_codes lists {} exit statuses; at most {MAX_RETRY_EXIT_CODES} may be \
                 given (use \"any\" to retry every script failure)",
                codes.len()
            ));
        }
        if let Some(code) = codes.iter().find(|c| !(1..=255).contains(*c)) {
            return refuse(format!(
                "retry.exit_codes: {code} is not the exit status of a failed script; give \
                 statuses from 1 to 255, or \"any\""
            ));
        }
    }
    if policy.backoff_initial_ms > MAX_BACKOFF_INITIAL_MS {
        return refuse(format!(
            "retry.backoff_initial_ms is {} ms; the first back-off may be at most \
             {MAX_BACKOFF_INITIAL_MS} ms (one hour)",
            policy.backoff_initial_ms
        ));
    }
    if policy.backoff_max_ms > MAX_BACKOFF_MAX_MS {
        return refuse(format!(
            "retry.backoff_max_ms is {} ms; the back-off may grow to at most \
             {MAX_BACKOFF_MAX_MS} ms (one day)",
            policy.backoff_max_ms
        ));
    }
    if policy.backoff_max_ms < policy.backoff_initial_ms {
        return refuse(format!(
            "retry.backoff_max_ms ({} ms) is shorter than retry.backoff_initial_ms ({} ms); \
             the cap must be at least the first back-off",
            policy.backoff_max_ms, policy.backoff_initial_ms
        ));
    }
    let retries_failures = policy.infrastructure || policy.exit_codes != api::ExitCodes::default();
    if retries_failures && max_attempts < 2 {
        return refuse(
            "retry asks for failures to be retried, but max_attempts is 1, so no attempt would \
             be left for a retry; give max_attempts of 2 or more"
                .into(),
        );
    }
    Ok(())
}

fn check_submission(
    state: &AppState,
    body: SubmitJob,
    submitter: String,
) -> Result<CheckedSubmission, ApiError> {
    if body.krate.is_some() {
        return Err(ApiError::BadRequest(
            "crate: submit a crate by name alone, not in a batch".into(),
        ));
    }
    let source_sha256 = parse_source_sha256(&body.source_sha256)?;
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
    check_annotations(&body.annotations).map_err(|e| ApiError::BadRequest(e.to_string()))?;
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
    if let Some(policy) = &body.retry {
        check_retry_policy(policy, max_attempts)?;
    }
    if !(-1000..=1000).contains(&body.priority) {
        return Err(ApiError::BadRequest("priority must be -1000..=1000".into()));
    }
    let reproduce = body.reproduce;
    if let Some(k) = reproduce.filter(|k| !(1..=crate::store::MAX_REPRODUCE).contains(k)) {
        return Err(ApiError::BadRequest(format!(
            "reproduce must be from 1 to {} independent builders, not {k}",
            crate::store::MAX_REPRODUCE
        )));
    }
    if body.on_mismatch.is_some() && reproduce.is_some_and(|k| k < 2) {
        return Err(ApiError::BadRequest(
            "on_mismatch is for a job reproduced by 2 or more builders (reproduce)".into(),
        ));
    }
    let limit = state.config.limits.max_source_bytes;
    let max_bytes = body.source_max_bytes.unwrap_or(limit);
    if max_bytes == 0 || max_bytes > limit {
        return Err(ApiError::BadRequest(format!(
            "source_max_bytes must be 1..={limit}"
        )));
    }
    if let Some(url) = &body.source_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::BadRequest(format!(
                "source_url {url:?} is not http(s)"
            )));
        }
    }
    // Both bounded above by checks that fit i64 (limits are configured in i64 range).
    let source_max_bytes = i64::try_from(max_bytes)
        .map_err(|_| ApiError::BadRequest("source_max_bytes is too large".into()))?;
    let timeout_secs = i64::try_from(timeout)
        .map_err(|_| ApiError::BadRequest("timeout_secs is too large".into()))?;
    Ok(CheckedSubmission {
        source_url: body.source_url,
        project: body.project,
        job: NewJob {
            source_url: String::new(),
            source_sha256: source_sha256.to_string(),
            source_max_bytes,
            recipe: body.recipe,
            parameters: body.parameters,
            required_labels: body.labels,
            annotations: body.annotations,
            mode: body.mode.unwrap_or(JobMode::Build),
            priority: body.priority,
            max_attempts,
            retry: body.retry,
            timeout_secs,
            submitter,
            project: crate::store::ProjectId::DEFAULT,
            reproduce,
            on_mismatch: body.on_mismatch.unwrap_or_default(),
        },
    })
}

impl CheckedSubmission {
    /// The job with its project (the named one, else the caller's, else `default/default`;
    /// the caller must be allowed to submit there) and its source URL: the given one, or the
    /// uploaded source's (which must exist).
    fn resolve(self, store: &Store, public_url: &str, access: &Access) -> Result<NewJob, ApiError> {
        let mut job = self.job;
        job.project = match &self.project {
            Some(slug) => resolve_project(store, access, slug)?,
            None => access.project().unwrap_or(ProjectId::DEFAULT),
        };
        let not_found = match &self.project {
            Some(slug) => ApiError::NotFound(format!("project {slug}")),
            None => ApiError::NotFound("project default/default".into()),
        };
        access.require_act(job.project, TokenScope::Submit, not_found)?;
        job.source_url = match self.source_url {
            Some(url) => url,
            None => {
                let sha256 = &job.source_sha256;
                store.source(sha256)?.ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "no uploaded source with sha256 {sha256}; upload it or give source_url"
                    ))
                })?;
                format!("{public_url}/api/v1/sources/{sha256}")
            }
        };
        Ok(job)
    }
}

/// The project named `slug`, if the caller may see it; otherwise the same 404 whether it
/// exists or not. A malformed name is a 400.
pub fn resolve_project(store: &Store, access: &Access, slug: &str) -> Result<ProjectId, ApiError> {
    let project = store
        .project_by_slug(slug)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    match project {
        Some(p) if access.sees(p.id) => Ok(p.id),
        _ => Err(ApiError::NotFound(format!("project {slug}"))),
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

/// The query of `GET /api/v1/jobs`. A form decoder (`web::Query`) cannot put a repeated
/// `annotation` into a field, so those are taken out first and the rest decoded as usual
/// (unknown parameters still refused).
fn list_query(query_string: &str) -> Result<ListJobs, ApiError> {
    let invalid = |e: actix_web::error::QueryPayloadError| {
        ApiError::BadRequest(format!("invalid query: {e}"))
    };
    let mut annotation = Vec::new();
    let mut rest = Vec::new();
    for segment in query_string.split('&').filter(|s| !s.is_empty()) {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(segment)
            .map_err(invalid)?
            .into_inner();
        match pairs.as_slice() {
            [(key, value)] if key == "annotation" => annotation.push(value.clone()),
            _ => rest.push(segment),
        }
    }
    let mut query = web::Query::<ListJobs>::from_query(&rest.join("&"))
        .map_err(invalid)?
        .into_inner();
    query.annotation = annotation;
    Ok(query)
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let mut query = list_query(req.query_string())?;
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
    query.annotation.retain(|a| !a.is_empty());
    let annotations = AnnotationFilter::parse_all(&query.annotation)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let filter = JobFilter {
        state: job_state,
        recipe: query.recipe.filter(|r| !r.is_empty()),
        builder: query.builder.map(BuilderId),
        annotations,
        before_id: query.before.map(JobId),
        limit,
        projects: access.visible_projects(),
    };
    let store = state.store.clone();
    let project = query.project.filter(|p| !p.is_empty());
    let (jobs, names) = blocking(move || {
        let mut filter = filter;
        if let Some(slug) = &project {
            filter.projects = Some(vec![resolve_project(&store, &access, slug)?]);
        }
        Ok((store.list_jobs(&filter)?, ProjectNames::load(&store)?))
    })
    .await?;
    let next_before = if jobs.len() == limit {
        jobs.last().map(|j| j.id.0)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(api::JobList {
        jobs: names.jobs(jobs)?,
        next_before,
    }))
}

/// A job the caller may see, with its history; 404 for one it may not see.
pub async fn load_detail(
    state: &AppState,
    access: &Access,
    id: JobId,
) -> Result<JobDetail, ApiError> {
    let store = state.store.clone();
    let public_url = state.public_url.clone();
    let access = access.clone();
    let mut detail = blocking(move || {
        let job = access.visible_job(store.job(id)?, id)?;
        let project = ProjectNames::load(&store)?.name(job.project)?;
        let plan = match job.mode {
            JobMode::Plan => store.job_plan(id)?,
            JobMode::Build => None,
        };
        let (follows_from, follow_ups) = store.job_chain(id.0)?;
        Ok(JobDetail {
            project,
            follows_from: follows_from.map(JobId),
            follow_ups: follow_ups.into_iter().map(JobId).collect(),
            plan,
            attempts: store.job_attempts(id)?,
            events: store.job_events(id)?,
            artifacts: store
                .artifacts(id, true)?
                .into_iter()
                .map(|a| views::artifact(&public_url, a))
                .collect::<Result<_, _>>()?,
            queue: None,
            expired: store.job_expiry(id)?,
            reproduction: store.reproduction_of(&job)?,
            job,
        })
    })
    .await?;
    if detail.job.state == JobState::Queued {
        detail.queue = Some(queue_standing(state, detail.job.clone()).await?);
    }
    Ok(detail)
}

/// Where a queued job stands among the work its matching builders could take.
async fn queue_standing(state: &AppState, job: Job) -> Result<api::QueueStanding, ApiError> {
    let live = state
        .scheduler
        .send(LiveBuilders)
        .await
        .map_err(|_| ApiError::Unavailable("scheduler".into()))?;
    let store = state.store.clone();
    blocking(move || {
        let recipes = standing::competing_recipes(&standing::matching_online(&job, &live));
        let ahead = if recipes.is_empty() {
            Vec::new()
        } else {
            store.queued_ahead(&job, &recipes, standing::AHEAD_CAP)?
        };
        let krate = job.annotations.get("crate").map(String::as_str);
        let mut run_times = match krate {
            Some(krate) => {
                store.recent_run_times(&job.recipe, Some(krate), standing::RUN_TIME_SAMPLES)?
            }
            None => Vec::new(),
        };
        if run_times.len() < standing::MIN_CRATE_SAMPLES {
            run_times = store.recent_run_times(&job.recipe, None, standing::RUN_TIME_SAMPLES)?;
        }
        let admitted = store.list_builders()?;
        let runs = store.job_runs(job.id)?;
        let project = store
            .project(job.project)?
            .map_or_else(|| format!("#{}", job.project.0), |p| p.slug());
        let facts = standing::QueueFacts {
            admitted: &admitted,
            ahead: &ahead,
            run_times: &run_times,
            project: &project,
            now_ms: store.now_ms(),
            runs: &runs,
        };
        Ok(standing::standing(&job, &live, &facts))
    })
    .await
}

pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let id = parse_job_id(&path)?;
    let detail = load_detail(&state, &access, id).await?;
    Ok(HttpResponse::Ok().json(detail.into_api(&state.public_url)))
}

/// `GET /api/v1/jobs/{id}/plan`: the plan output of the job's latest attempt that reported
/// one, as text. 404 for a build-mode job and before a plan-mode attempt reported its plan.
pub async fn plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let id = parse_job_id(&path)?;
    let store = state.store.clone();
    let plan = blocking(move || {
        let job = access.visible_job(store.job(id)?, id)?;
        if job.mode != JobMode::Plan {
            return Err(ApiError::NotFoundExplained(format!(
                "job {id} is a build-mode job: only a plan-mode job has a plan"
            )));
        }
        store.job_plan(id)?.ok_or_else(|| {
            ApiError::NotFoundExplained(format!(
                "job {id} has no plan yet: it is {} and no attempt has reported one",
                job.state
            ))
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((ATTEMPT_HEADER, plan.attempt.to_string()))
        .body(plan.text))
}

/// `POST /api/v1/jobs/{id}/boost` (the admin token only): puts a queued job ahead of every
/// project's work, whatever the fair shares say (docs/api.md). No dispatch is needed: a job
/// waits only while no builder that could run it has a free slot, and the next one freed
/// takes boosted work first.
pub async fn boost(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    crate::http::auth::require(&req, &state, crate::store::TokenScope::Admin).await?;
    let id = parse_job_id(&path)?;
    let store = state.store.clone();
    match blocking(move || Ok(store.boost_job(id)?)).await? {
        Ok(()) => {}
        Err(crate::store::BoostRefused::NoSuchJob) => {
            return Err(ApiError::NotFound(format!("job {id}")))
        }
        Err(crate::store::BoostRefused::NotQueued(job_state)) => {
            return Err(ApiError::Conflict(format!(
                "job {id} is {job_state}: only a queued job can be boosted"
            )))
        }
    }
    get(req, state, path).await
}

pub async fn cancel(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let id = parse_job_id(&path)?;
    let names = require_act_on_job(&state, access, id).await?;
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
    Ok(HttpResponse::Accepted().json(names.job(job)?))
}

pub async fn retry(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = Access::of(&req, &state).await?;
    let id = parse_job_id(&path)?;
    let names = require_act_on_job(&state, access, id).await?;
    let store = state.store.clone();
    let job = blocking(move || Ok(store.retry_job(id)?)).await?;
    state.scheduler.do_send(JobQueued(vec![job.clone()]));
    Ok(HttpResponse::Ok().json(names.job(job)?))
}

/// The caller may cancel or retry job `id` (the submit scope of its project): 401 without a
/// token, the 404 of a missing job for one it cannot see, 403 for too narrow a scope. Answers
/// the project names for the reply.
async fn require_act_on_job(
    state: &AppState,
    access: Access,
    id: JobId,
) -> Result<ProjectNames, ApiError> {
    access.require_token()?;
    let store = state.store.clone();
    blocking(move || {
        let job = access.visible_job(store.job(id)?, id)?;
        access.require_act(
            job.project,
            TokenScope::Submit,
            ApiError::NotFound(format!("job {id}")),
        )?;
        Ok(ProjectNames::load(&store)?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(given: &str) -> String {
        match parse_source_sha256(given) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{given:?}: {other:?}"),
        }
    }

    #[test]
    fn a_bad_source_digest_is_named_in_a_sentence() {
        assert_eq!(
            refusal("xyz"),
            "source_sha256 \"xyz\" is not a SHA-256 digest: expected 64 lowercase hex characters"
        );
        assert!(refusal(&"AB".repeat(32))
            .starts_with(&format!("source_sha256 \"{}\"", "AB".repeat(32))));
        assert!(refusal("").starts_with("source_sha256 is missing"));
        let long = refusal(&"z".repeat(500));
        assert!(
            long.contains(&format!("\"{}\"… is not", "z".repeat(QUOTED_VALUE_CHARS))),
            "{long}"
        );
        assert_eq!(
            parse_source_sha256(&"ab".repeat(32)).unwrap().as_str(),
            "ab".repeat(32)
        );
    }
}
