//! Jobs: submission, lookup, listing, history (events) and queue statistics.

use std::collections::BTreeMap;

use diesel::prelude::*;
use serde::Serialize;

use super::annotations::{self, AnnotationFilter, Annotations};
use super::connection::{Db, DbConnection};
use super::error::StoreError;
use super::ids::{Attempt, BuilderId, JobId, ProjectId};
use super::labels::{self, Labels};
use super::schema::{job_annotations, job_events, job_submissions, jobs};
use super::state::{JobMode, JobState, OnMismatch, MAX_REPRODUCE};
use super::Store;
pub use buildfleet_api::RetryPolicy;

/// A job and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    pub id: JobId,
    pub source_url: String,
    /// Lowercase hex SHA-256 of the source archive.
    pub source_sha256: String,
    pub source_max_bytes: i64,
    pub recipe: String,
    pub parameters: Labels,
    /// Labels a builder must offer (same key, same value) to be given this job.
    pub required_labels: Labels,
    /// What the job builds (`crate`, `version`, `commit`, …): fixed at submission, signed
    /// into the build statement.
    pub annotations: Annotations,
    pub mode: JobMode,
    pub priority: i32,
    pub state: JobState,
    /// The current attempt: the live one while assigned or running, the next one while
    /// queued, the last one once terminal.
    pub attempt: Attempt,
    pub max_attempts: i32,
    /// Failed attempts counted against `max_attempts` (lost builders, and the failures the
    /// retry policy retries) since submission or the last manual retry.
    pub failed_attempts: i32,
    /// Which failures retry automatically (a job submitted without one: lost builders only).
    pub retry: RetryPolicy,
    /// Set while the job waits out an automatic retry's back-off; the claim skips it.
    pub retry_not_before: Option<i64>,
    /// Retries asked for through the API, counted apart from automatic attempts.
    pub manual_retries: i32,
    pub timeout_secs: i64,
    pub submitter: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Set when a cancel was asked for while a builder held the job.
    pub cancel_requested_at: Option<i64>,
    pub error: Option<String>,
    /// Builder of the current attempt (or of the last one, once terminal).
    pub builder_id: Option<BuilderId>,
    /// The project the job belongs to: who may see it and act on it, which builders may run
    /// it, and whose fair share its builder time counts against.
    pub project: ProjectId,
    /// How many independent builders must build the job with identical artifacts before it
    /// is published (1: an ordinary job; see `store/reproduction.rs`).
    pub reproduce: i32,
    /// What a disagreement of those builders does.
    pub on_mismatch: OnMismatch,
}

/// A job as submitted.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub source_url: String,
    pub source_sha256: String,
    pub source_max_bytes: i64,
    pub recipe: String,
    pub parameters: Labels,
    pub required_labels: Labels,
    /// Checked by [`annotations::check`] before anything is written.
    pub annotations: Annotations,
    pub mode: JobMode,
    pub priority: i32,
    pub max_attempts: i32,
    /// `None`: the policy of jobs before automatic retries (lost builders only), stored as
    /// NULL.
    pub retry: Option<RetryPolicy>,
    pub timeout_secs: i64,
    pub submitter: String,
    /// Checked to exist by the caller ([`Store::project`]); [`ProjectId::DEFAULT`] when the
    /// submission names none.
    pub project: ProjectId,
    /// Independent builders that must agree (1..=[`MAX_REPRODUCE`]); `None`: the project's
    /// default.
    pub reproduce: Option<i32>,
    pub on_mismatch: OnMismatch,
}

/// Which jobs [`Store::list_jobs`] returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub recipe: Option<String>,
    pub builder: Option<BuilderId>,
    /// Only jobs with every one of these annotations.
    pub annotations: Vec<AnnotationFilter>,
    /// Only jobs of these projects (what the caller may see); `None`: every project.
    pub projects: Option<Vec<ProjectId>>,
    /// Only jobs older than this one (keyset paging: pass the last id of the previous page).
    pub before_id: Option<JobId>,
    /// At most this many; 0 means [`JobFilter::DEFAULT_LIMIT`].
    pub limit: usize,
}

impl JobFilter {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;
}

/// One recorded state change of a job. `from` is `None` for the submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobTransition {
    pub id: i64,
    pub job: JobId,
    pub attempt: Attempt,
    pub from: Option<JobState>,
    pub to: JobState,
    pub at: i64,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = jobs)]
pub(crate) struct JobRow {
    pub(crate) id: i64,
    pub(crate) source_url: String,
    pub(crate) source_sha256: String,
    pub(crate) source_max_bytes: i64,
    pub(crate) recipe: String,
    pub(crate) parameters: String,
    pub(crate) required_labels: String,
    pub(crate) mode: String,
    pub(crate) priority: i32,
    pub(crate) state: String,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) failed_attempts: i32,
    pub(crate) timeout_secs: i64,
    pub(crate) submitter: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) cancel_requested_at: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) builder_id: Option<i64>,
    pub(crate) annotations: String,
    pub(crate) project_id: i64,
    pub(crate) retry_policy: Option<String>,
    pub(crate) retry_not_before: Option<i64>,
    pub(crate) manual_retries: i32,
    pub(crate) reproduce: i32,
    pub(crate) on_mismatch: String,
}

impl JobRow {
    /// The job's retry policy; NULL is the default (lost builders only).
    pub(crate) fn retry_policy(&self) -> Result<RetryPolicy, StoreError> {
        match &self.retry_policy {
            None => Ok(RetryPolicy::default()),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                StoreError::Corrupt(format!("jobs.retry_policy of job {}: {e}", self.id))
            }),
        }
    }
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self, StoreError> {
        Ok(Job {
            id: JobId(row.id),
            parameters: labels::decode("jobs.parameters", &row.parameters)?,
            required_labels: labels::decode("jobs.required_labels", &row.required_labels)?,
            annotations: labels::decode("jobs.annotations", &row.annotations)?,
            project: ProjectId(row.project_id),
            retry: row.retry_policy()?,
            retry_not_before: row.retry_not_before,
            manual_retries: row.manual_retries,
            reproduce: row.reproduce,
            on_mismatch: parse_column(&row.on_mismatch)?,
            mode: parse_column(&row.mode)?,
            state: parse_column(&row.state)?,
            source_url: row.source_url,
            source_sha256: row.source_sha256,
            source_max_bytes: row.source_max_bytes,
            recipe: row.recipe,
            priority: row.priority,
            attempt: Attempt(row.attempt),
            max_attempts: row.max_attempts,
            failed_attempts: row.failed_attempts,
            timeout_secs: row.timeout_secs,
            submitter: row.submitter,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            cancel_requested_at: row.cancel_requested_at,
            error: row.error,
            builder_id: row.builder_id.map(BuilderId),
        })
    }
}

/// Parses an enum column, calling a bad value what it is: a corrupt row.
pub(crate) fn parse_column<T>(text: &str) -> Result<T, StoreError>
where
    T: std::str::FromStr<Err = super::state::UnknownValue>,
{
    text.parse()
        .map_err(|e: super::state::UnknownValue| StoreError::Corrupt(e.to_string()))
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = job_events)]
struct JobTransitionRow {
    id: i64,
    job_id: i64,
    attempt: i32,
    from_state: Option<String>,
    to_state: String,
    at: i64,
    detail: Option<String>,
}

impl TryFrom<JobTransitionRow> for JobTransition {
    type Error = StoreError;

    fn try_from(row: JobTransitionRow) -> Result<Self, StoreError> {
        Ok(JobTransition {
            id: row.id,
            job: JobId(row.job_id),
            attempt: Attempt(row.attempt),
            from: row.from_state.as_deref().map(parse_column).transpose()?,
            to: parse_column(&row.to_state)?,
            at: row.at,
            detail: row.detail,
        })
    }
}

pub(crate) fn load_job_row(conn: &mut DbConnection, id: JobId) -> Result<JobRow, StoreError> {
    jobs::table
        .find(id.0)
        .select(JobRow::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| StoreError::not_found("job", id))
}

pub(crate) fn load_job(conn: &mut DbConnection, id: JobId) -> Result<Job, StoreError> {
    Job::try_from(load_job_row(conn, id)?)
}

pub(crate) fn record_event(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    from: Option<JobState>,
    to: JobState,
    at: i64,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    diesel::insert_into(job_events::table)
        .values((
            job_events::job_id.eq(job.0),
            job_events::attempt.eq(attempt.0),
            job_events::from_state.eq(from.map(JobState::as_str)),
            job_events::to_state.eq(to.as_str()),
            job_events::at.eq(at),
            job_events::detail.eq(detail),
        ))
        .execute(conn)?;
    Ok(())
}

pub(super) fn validate(new: &NewJob) -> Result<(), StoreError> {
    let problem = if new.source_url.trim().is_empty() {
        Some("source_url is empty".to_owned())
    } else if new.source_sha256.len() != 64
        || !new
            .source_sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Some(format!(
            "source_sha256 {:?} is not 64 lowercase hex digits",
            new.source_sha256
        ))
    } else if new.source_max_bytes <= 0 {
        Some("source_max_bytes must be positive".to_owned())
    } else if new.recipe.trim().is_empty() {
        Some("recipe is empty".to_owned())
    } else if new.max_attempts < 1 {
        Some("max_attempts must be at least 1".to_owned())
    } else if new.timeout_secs <= 0 {
        Some("timeout_secs must be positive".to_owned())
    } else if let Some(k) = new.reproduce.filter(|k| !(1..=MAX_REPRODUCE).contains(k)) {
        Some(format!(
            "reproduce must be from 1 to {MAX_REPRODUCE} independent builders, not {k}"
        ))
    } else if new.reproduce.unwrap_or(1) > 1 && new.mode == JobMode::Plan {
        Some("a plan-mode job cannot be reproduced: it publishes no artifacts".to_owned())
    } else if let Err(e) = annotations::check(&new.annotations) {
        Some(e.to_string())
    } else {
        None
    };
    problem.map_or(Ok(()), |p| Err(StoreError::InvalidInput(p)))
}

impl Store {
    /// Queues a job: state `queued`, attempt 1.
    pub fn submit_job(&self, new: NewJob) -> Result<Job, StoreError> {
        validate(&new)?;
        let now = self.now_ms();
        self.write(|conn| insert_job(conn, &new, now))
    }

    /// Submits many jobs in one transaction: all of them or, on an error, none.
    pub fn submit_jobs(&self, news: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
        for new in &news {
            validate(new)?;
        }
        let now = self.now_ms();
        self.write(|conn| {
            news.iter()
                .map(|new| insert_job(conn, new, now))
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Submits a job once per idempotency key: the first request with `key` creates the job,
    /// a later one with the same request (same `request_sha256`) gets that job back, and one
    /// with another request is refused. Keys are forgotten after [`IDEMPOTENCY_KEY_TTL_MS`].
    pub fn submit_job_once(
        &self,
        new: NewJob,
        key: &str,
        request_sha256: &str,
    ) -> Result<Submission, StoreError> {
        validate(&new)?;
        let now = self.now_ms();
        let attempt = || {
            self.write(|conn| {
                diesel::delete(
                    job_submissions::table
                        .filter(job_submissions::created_at.lt(now - IDEMPOTENCY_KEY_TTL_MS)),
                )
                .execute(conn)?;
                let earlier: Option<(String, i64)> = job_submissions::table
                    .find(key)
                    .select((job_submissions::request_sha256, job_submissions::job_id))
                    .first(conn)
                    .optional()?;
                if let Some((hash, job)) = earlier {
                    return if hash == request_sha256 {
                        Ok(Submission::Replayed(load_job(conn, JobId(job))?))
                    } else {
                        Ok(Submission::KeyReused)
                    };
                }
                let job = insert_job(conn, &new, now)?;
                diesel::insert_into(job_submissions::table)
                    .values((
                        job_submissions::idempotency_key.eq(key),
                        job_submissions::request_sha256.eq(request_sha256),
                        job_submissions::job_id.eq(job.id.0),
                        job_submissions::created_at.eq(now),
                    ))
                    .execute(conn)?;
                Ok(Submission::Created(job))
            })
        };
        match attempt() {
            // Two first requests raced on PostgreSQL: the loser finds the winner's job.
            Err(StoreError::Database(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ))) => attempt(),
            other => other,
        }
    }
}

/// How long an idempotency key of a job submission is remembered.
pub const IDEMPOTENCY_KEY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// What [`Store::submit_job_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    Created(Job),
    /// The key was seen with the same request: its job, unchanged.
    Replayed(Job),
    /// The key was seen with a different request.
    KeyReused,
}

pub(super) fn insert_job(
    conn: &mut DbConnection,
    new: &NewJob,
    now: i64,
) -> Result<Job, StoreError> {
    let parameters = labels::encode(&new.parameters)?;
    let required_labels = labels::encode(&new.required_labels)?;
    let annotations_json = labels::encode(&new.annotations)?;
    let retry_policy = new
        .retry
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::InvalidInput(format!("retry: {e}")))?;
    // A plan-mode job publishes nothing, so a project's default does not make it reproduce.
    let reproduce = match new.reproduce {
        Some(k) => k,
        None if new.mode == JobMode::Plan => 1,
        None => super::reproduction::project_default(conn, new.project)?,
    };
    {
        {
            let row = diesel::insert_into(jobs::table)
                .values((
                    jobs::source_url.eq(&new.source_url),
                    jobs::source_sha256.eq(&new.source_sha256),
                    jobs::source_max_bytes.eq(new.source_max_bytes),
                    jobs::recipe.eq(&new.recipe),
                    jobs::parameters.eq(&parameters),
                    jobs::required_labels.eq(&required_labels),
                    jobs::annotations.eq(&annotations_json),
                    jobs::project_id.eq(new.project.0),
                    jobs::retry_policy.eq(&retry_policy),
                    jobs::reproduce.eq(reproduce),
                    jobs::on_mismatch.eq(new.on_mismatch.as_str()),
                    jobs::mode.eq(new.mode.as_str()),
                    jobs::priority.eq(new.priority),
                    jobs::state.eq(JobState::Queued.as_str()),
                    jobs::attempt.eq(Attempt::FIRST.0),
                    jobs::max_attempts.eq(new.max_attempts),
                    jobs::failed_attempts.eq(0),
                    jobs::timeout_secs.eq(new.timeout_secs),
                    jobs::submitter.eq(&new.submitter),
                    jobs::created_at.eq(now),
                    jobs::updated_at.eq(now),
                ))
                .returning(<JobRow as Selectable<Db>>::construct_selection())
                .get_result::<JobRow>(conn)?;
            let job = Job::try_from(row)?;
            annotations::insert(conn, job.id, &job.annotations)?;
            record_event(conn, job.id, job.attempt, None, JobState::Queued, now, None)?;
            Ok(job)
        }
    }
}

impl Store {
    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match load_job(&mut *self.conn()?, id) {
            Ok(job) => Ok(Some(job)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Jobs matching `filter`, newest first.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let limit = match filter.limit {
            0 => JobFilter::DEFAULT_LIMIT,
            n => n.min(JobFilter::MAX_LIMIT),
        };
        let mut query = jobs::table.select(JobRow::as_select()).into_boxed();
        if let Some(state) = filter.state {
            query = query.filter(jobs::state.eq(state.as_str()));
        }
        if let Some(recipe) = &filter.recipe {
            query = query.filter(jobs::recipe.eq(recipe.clone()));
        }
        if let Some(builder) = filter.builder {
            query = query.filter(jobs::builder_id.eq(builder.0));
        }
        if let Some(projects) = &filter.projects {
            query = query
                .filter(jobs::project_id.eq_any(projects.iter().map(|p| p.0).collect::<Vec<_>>()));
        }
        if let Some(before) = filter.before_id {
            query = query.filter(jobs::id.lt(before.0));
        }
        // Each annotation filter is one range of the index (key, value_sha256, job_id), cut at
        // the page's `before`: PostgreSQL walks it newest first and stops at the limit, SQLite
        // reads the range into a sorted list first (EXPLAIN checked on both). Subqueries stay
        // unboxed: a boxed one is not a fragment of both backends.
        let before = filter.before_id.map_or(i64::MAX, |b| b.0);
        for wanted in &filter.annotations {
            let with_key = job_annotations::table
                .select(job_annotations::job_id)
                .filter(job_annotations::key.eq(wanted.key.clone()))
                .filter(job_annotations::job_id.lt(before));
            query =
                match &wanted.value {
                    Some(value) => query.filter(jobs::id.eq_any(with_key.filter(
                        job_annotations::value_sha256.eq(annotations::value_digest(value)),
                    ))),
                    None => query.filter(jobs::id.eq_any(with_key)),
                };
        }
        query
            .order(jobs::id.desc())
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(Job::try_from)
            .collect()
    }

    /// Ends the back-off of queued jobs whose `retry_not_before` has come (at or before
    /// `now`), so the claim may hand them out; returns how many. The scheduler's sweep calls
    /// it and dispatches when any were released.
    pub fn release_backed_off_jobs(&self, now: i64) -> Result<usize, StoreError> {
        // A read first (the partial index makes it cheap), so a sweep with nothing to release
        // costs no write transaction.
        let due: Option<i64> = jobs::table
            .filter(jobs::retry_not_before.le(now))
            .filter(jobs::state.eq(JobState::Queued.as_str()))
            .select(jobs::id)
            .first(&mut *self.conn()?)
            .optional()?;
        if due.is_none() {
            return Ok(0);
        }
        self.write(|conn| {
            Ok(diesel::update(
                jobs::table
                    .filter(jobs::retry_not_before.le(now))
                    .filter(jobs::state.eq(JobState::Queued.as_str())),
            )
            .set(jobs::retry_not_before.eq(None::<i64>))
            .execute(conn)?)
        })
    }

    /// A job's recorded state changes, oldest first.
    pub fn job_events(&self, id: JobId) -> Result<Vec<JobTransition>, StoreError> {
        job_events::table
            .filter(job_events::job_id.eq(id.0))
            .order(job_events::id.asc())
            .select(JobTransitionRow::as_select())
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(JobTransition::try_from)
            .collect()
    }

    /// How many jobs are in each state (every state present, zero included).
    pub fn count_jobs_by_state(&self) -> Result<BTreeMap<JobState, i64>, StoreError> {
        let rows: Vec<(String, i64)> = jobs::table
            .group_by(jobs::state)
            .select((jobs::state, diesel::dsl::count_star()))
            .load(&mut *self.conn()?)?;
        let mut counts: BTreeMap<JobState, i64> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
        for (state, count) in rows {
            counts.insert(parse_column(&state)?, count);
        }
        Ok(counts)
    }

    /// Jobs of `state` by project (projects with none are absent).
    pub fn count_jobs_by_project(
        &self,
        state: JobState,
    ) -> Result<BTreeMap<ProjectId, i64>, StoreError> {
        let rows: Vec<(i64, i64)> = jobs::table
            .filter(jobs::state.eq(state.as_str()))
            .group_by(jobs::project_id)
            .select((jobs::project_id, diesel::dsl::count_star()))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(|(p, n)| (ProjectId(p), n)).collect())
    }

    /// Jobs waiting for a builder.
    pub fn queue_depth(&self) -> Result<i64, StoreError> {
        Ok(jobs::table
            .filter(jobs::state.eq(JobState::Queued.as_str()))
            .count()
            .get_result(&mut *self.conn()?)?)
    }
}
