//! Job attempts: one row per time a job was handed to a builder. The attempt number is the
//! fencing token and each attempt carries its own job token (stored hashed).

use diesel::prelude::*;
use serde::Serialize;

use super::connection::{Db, DbConnection};
use super::error::StoreError;
use super::ids::{Attempt, BuilderId, JobId};
use super::jobs::{load_job_row, parse_column, JobRow};
use super::schema::{attempt_causes, job_attempts, jobs};
use super::secret;
use super::state::{AttemptCause, AttemptOutcome};
use super::Store;

/// One hand-over of a job to a builder. Live while `finished_at` is `None`; at most one
/// attempt of a job is live, and it is the job's current attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobAttempt {
    pub job: JobId,
    pub attempt: Attempt,
    /// `None` once the builder was removed.
    pub builder: Option<BuilderId>,
    /// False once the job token was revoked (the attempt ended).
    pub token_valid: bool,
    pub lease_expires_at: i64,
    pub outcome: Option<AttemptOutcome>,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    /// Why it was started (recorded when the job was put back in the queue for it).
    pub started_because: AttemptCause,
    pub assigned_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobAttempt {
    pub fn is_live(&self) -> bool {
        self.finished_at.is_none()
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = job_attempts)]
pub(crate) struct AttemptRow {
    pub(crate) job_id: i64,
    pub(crate) attempt: i32,
    pub(crate) builder_id: Option<i64>,
    pub(crate) job_token_hash: Option<String>,
    pub(crate) lease_expires_at: i64,
    pub(crate) outcome: Option<String>,
    pub(crate) exit_status: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) assigned_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
}

impl JobAttempt {
    /// The attempt in `row`, started for `cause`.
    pub(crate) fn from_row(row: AttemptRow, cause: AttemptCause) -> Result<Self, StoreError> {
        Ok(JobAttempt {
            started_because: cause,
            job: JobId(row.job_id),
            attempt: Attempt(row.attempt),
            builder: row.builder_id.map(BuilderId),
            token_valid: row.job_token_hash.is_some(),
            lease_expires_at: row.lease_expires_at,
            outcome: row.outcome.as_deref().map(parse_column).transpose()?,
            exit_status: row.exit_status,
            error: row.error,
            assigned_at: row.assigned_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

pub(crate) fn load_attempts(
    conn: &mut DbConnection,
    query: job_attempts::BoxedQuery<'_, Db>,
) -> Result<Vec<JobAttempt>, StoreError> {
    let rows: Vec<AttemptRow> = query.select(AttemptRow::as_select()).load(conn)?;
    let mut jobs_of_rows: Vec<i64> = rows.iter().map(|row| row.job_id).collect();
    jobs_of_rows.sort_unstable();
    jobs_of_rows.dedup();
    let mut causes = std::collections::HashMap::new();
    // Bounded: a job has a handful of attempts, and callers load one job's or one builder's.
    for chunk in jobs_of_rows.chunks(500) {
        let found: Vec<(i64, i32, String)> = attempt_causes::table
            .filter(attempt_causes::job_id.eq_any(chunk))
            .select((
                attempt_causes::job_id,
                attempt_causes::attempt,
                attempt_causes::cause,
            ))
            .load(conn)?;
        for (job, attempt, cause) in found {
            causes.insert((job, attempt), parse_column::<AttemptCause>(&cause)?);
        }
    }
    rows.into_iter()
        .map(|row| {
            // No recorded cause: nothing put the job back for this attempt, so it is the first.
            let cause = causes
                .get(&(row.job_id, row.attempt))
                .copied()
                .unwrap_or(AttemptCause::First);
            JobAttempt::from_row(row, cause)
        })
        .collect()
}

/// The attempt in `row` with its recorded cause.
pub(crate) fn attempt_of_row(
    conn: &mut DbConnection,
    row: AttemptRow,
) -> Result<JobAttempt, StoreError> {
    let cause: Option<String> = attempt_causes::table
        .filter(attempt_causes::job_id.eq(row.job_id))
        .filter(attempt_causes::attempt.eq(row.attempt))
        .select(attempt_causes::cause)
        .first(conn)
        .optional()?;
    let cause = cause
        .as_deref()
        .map(parse_column)
        .transpose()?
        .unwrap_or(AttemptCause::First);
    JobAttempt::from_row(row, cause)
}

/// Records why the job's attempt `attempt` will be started; written in the transaction that
/// puts the job back in the queue for it.
pub(crate) fn record_attempt_cause(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    cause: AttemptCause,
) -> Result<(), StoreError> {
    // A requeue always moves to a new attempt number, so there is normally nothing to
    // replace; the delete makes a repeated write harmless on both backends.
    diesel::delete(
        attempt_causes::table
            .filter(attempt_causes::job_id.eq(job.0))
            .filter(attempt_causes::attempt.eq(attempt.0)),
    )
    .execute(conn)?;
    diesel::insert_into(attempt_causes::table)
        .values((
            attempt_causes::job_id.eq(job.0),
            attempt_causes::attempt.eq(attempt.0),
            attempt_causes::cause.eq(cause.as_str()),
        ))
        .execute(conn)?;
    Ok(())
}

/// The fence: the job and its attempt row, provided `attempt` is the job's current attempt
/// and still live. Anything else is [`StoreError::StaleAttempt`].
pub(crate) fn live_attempt(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
) -> Result<(JobRow, AttemptRow), StoreError> {
    let job_row = load_job_row(conn, job)?;
    let stale = || StoreError::StaleAttempt {
        job,
        attempt,
        current: Attempt(job_row.attempt),
    };
    if job_row.attempt != attempt.0 {
        return Err(stale());
    }
    let row = job_attempts::table
        .filter(job_attempts::job_id.eq(job.0))
        .filter(job_attempts::attempt.eq(attempt.0))
        .select(AttemptRow::as_select())
        .first(conn)
        .optional()?;
    match row {
        Some(row) if row.finished_at.is_none() => Ok((job_row, row)),
        // Not handed out yet (queued), or already over.
        _ => Err(stale()),
    }
}

/// Ends a live attempt and revokes its token. Returns false if it was not live (a
/// concurrent writer ended it first).
pub(crate) fn finish_attempt(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    outcome: AttemptOutcome,
    exit_status: Option<i32>,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let updated = diesel::update(
        job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(attempt.0))
            .filter(job_attempts::finished_at.is_null()),
    )
    .set((
        job_attempts::outcome.eq(outcome.as_str()),
        job_attempts::exit_status.eq(exit_status),
        job_attempts::error.eq(error),
        job_attempts::finished_at.eq(now),
        job_attempts::job_token_hash.eq(None::<String>),
    ))
    .execute(conn)?;
    if updated == 1 {
        // Its builder time counts against the project's fair share.
        super::fair_share::record_attempt_usage(conn, job, attempt, now)?;
    }
    Ok(updated == 1)
}

impl Store {
    /// Every attempt of a job, oldest first.
    pub fn job_attempts(&self, job: JobId) -> Result<Vec<JobAttempt>, StoreError> {
        load_attempts(
            &mut *self.conn()?,
            job_attempts::table
                .filter(job_attempts::job_id.eq(job.0))
                .order(job_attempts::attempt.asc())
                .into_boxed(),
        )
    }

    /// Checks a job token: valid only for the job's current, live attempt. Returns that
    /// attempt. Every failure (unknown job, revoked or wrong token) is
    /// [`StoreError::InvalidJobToken`], so a caller can't probe which it was.
    pub fn verify_job_token(
        &self,
        job: JobId,
        token: &str,
    ) -> Result<(JobId, Attempt), StoreError> {
        let conn = &mut *self.conn()?;
        let current: Option<i32> = jobs::table
            .find(job.0)
            .select(jobs::attempt)
            .first(conn)
            .optional()?;
        let Some(current) = current else {
            return Err(StoreError::InvalidJobToken(job));
        };
        let stored: Option<Option<String>> = job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(current))
            .filter(job_attempts::finished_at.is_null())
            .select(job_attempts::job_token_hash)
            .first(conn)
            .optional()?;
        match stored.flatten() {
            Some(stored) if secret::hashes_match(&stored, &secret::hash(token)) => {
                Ok((job, Attempt(current)))
            }
            _ => Err(StoreError::InvalidJobToken(job)),
        }
    }
}
