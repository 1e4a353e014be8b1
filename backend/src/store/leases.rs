//! Leases: a builder holds each live attempt until its lease expires. Heartbeats renew
//! leases; a disconnect shortens them to the grace period; the sweep requeues what expired.

use diesel::prelude::*;
use serde::Serialize;

use super::attempts::{load_attempts, record_attempt_cause, JobAttempt};
use super::connection::{Db, DbConnection};
use super::error::StoreError;
use super::ids::{Attempt, BuilderId, JobId};
use super::jobs::{load_job_row, parse_column, Job};
use super::schema::{job_attempts, jobs};
use super::state::{AttemptCause, AttemptOutcome, JobState};
use super::transitions::{apply_transition, JobChanges};
use super::Store;

/// A lease [`Store::renew_leases`] extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RenewedLease {
    pub job: JobId,
    pub attempt: Attempt,
    pub lease_expires_at: i64,
}

/// An attempt the sweep ended because its lease expired, and where its job went: `queued`
/// for the next attempt, `failed` once `max_attempts` leases were lost, or `cancelled` if a
/// cancel was pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeued {
    pub lost_attempt: Attempt,
    pub builder: Option<BuilderId>,
    pub job: Job,
}

fn live_of(builder: BuilderId) -> job_attempts::BoxedQuery<'static, Db> {
    job_attempts::table
        .filter(job_attempts::builder_id.eq(builder.0))
        .filter(job_attempts::finished_at.is_null())
        .into_boxed()
}

impl Store {
    /// Extends the leases of the named attempts to `now + lease_ms`, for those that are
    /// still live and held by `builder`; returns the ones renewed. An attempt whose lease
    /// ran out but that the sweep has not ended yet is renewed too (a builder that came
    /// back in time).
    pub fn renew_leases(
        &self,
        builder: BuilderId,
        attempts: &[(JobId, Attempt)],
        lease_ms: i64,
        now: i64,
    ) -> Result<Vec<RenewedLease>, StoreError> {
        let lease_expires_at = now.saturating_add(lease_ms);
        self.write(|conn| {
            let mut renewed = Vec::with_capacity(attempts.len());
            for &(job, attempt) in attempts {
                let updated = diesel::update(
                    job_attempts::table
                        .filter(job_attempts::job_id.eq(job.0))
                        .filter(job_attempts::attempt.eq(attempt.0))
                        .filter(job_attempts::builder_id.eq(builder.0))
                        .filter(job_attempts::finished_at.is_null()),
                )
                .set(job_attempts::lease_expires_at.eq(lease_expires_at))
                .execute(conn)?;
                if updated == 1 {
                    renewed.push(RenewedLease {
                        job,
                        attempt,
                        lease_expires_at,
                    });
                }
            }
            Ok(renewed)
        })
    }

    /// Sets the lease of every live attempt of `builder` to `expires_at` (on disconnect:
    /// now + the reconnect grace period). Returns how many attempts that touched.
    pub fn set_builder_lease_expiry(
        &self,
        builder: BuilderId,
        expires_at: i64,
    ) -> Result<usize, StoreError> {
        self.write(|conn| {
            Ok(diesel::update(
                job_attempts::table
                    .filter(job_attempts::builder_id.eq(builder.0))
                    .filter(job_attempts::finished_at.is_null()),
            )
            .set(job_attempts::lease_expires_at.eq(expires_at))
            .execute(conn)?)
        })
    }

    /// Live attempts held by `builder`.
    pub fn active_attempts_for_builder(
        &self,
        builder: BuilderId,
    ) -> Result<Vec<JobAttempt>, StoreError> {
        load_attempts(
            &mut *self.conn()?,
            live_of(builder).order(job_attempts::job_id.asc()),
        )
    }

    /// Every live attempt (recovery after a restart).
    pub fn active_attempts(&self) -> Result<Vec<JobAttempt>, StoreError> {
        load_attempts(
            &mut *self.conn()?,
            job_attempts::table
                .filter(job_attempts::finished_at.is_null())
                .order(job_attempts::job_id.asc())
                .into_boxed(),
        )
    }

    /// Ends every live attempt whose lease expired at or before `now`: the attempt is
    /// marked lost and its token revoked; the job goes back to `queued` with the next attempt
    /// and one more failed attempt, or to `failed` once `max_attempts` attempts were lost.
    /// Each job is its own transaction; a lease renewed meanwhile is left alone. Every
    /// replica sweeps: on PostgreSQL a job whose row another transaction holds is skipped
    /// (`SKIP LOCKED`), and one already ended by another replica fails the attempt check, so
    /// each lost attempt is ended once, by one replica.
    pub fn requeue_expired_leases(&self, now: i64) -> Result<Vec<Requeued>, StoreError> {
        let conn = &mut *self.conn()?;
        let expired: Vec<(i64, i32, Option<i64>)> = job_attempts::table
            .filter(job_attempts::finished_at.is_null())
            .filter(job_attempts::lease_expires_at.le(now))
            .order(job_attempts::lease_expires_at.asc())
            .select((
                job_attempts::job_id,
                job_attempts::attempt,
                job_attempts::builder_id,
            ))
            .load(conn)?;
        let mut requeued = Vec::new();
        for (job, attempt, builder) in expired {
            let (job, attempt) = (JobId(job), Attempt(attempt));
            match self.write(|conn| expire(conn, job, attempt, now)) {
                Ok(job) => requeued.push(Requeued {
                    lost_attempt: attempt,
                    builder: builder.map(BuilderId),
                    job,
                }),
                // Someone else moved the job or renewed the lease first: not ours to end.
                Err(
                    StoreError::Conflict { .. }
                    | StoreError::StaleAttempt { .. }
                    | StoreError::IllegalTransition { .. },
                ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(requeued)
    }
}

impl Store {
    /// The builder came back still holding an attempt whose lease ran out while it was away:
    /// its process lived, so the loss was the network's, not a builder death. The attempt is
    /// marked forgiven and no longer counts against `max_attempts`; a job that failed
    /// only because of lost leases goes back to the queue if the refund leaves it budget.
    /// Returns whether anything was refunded (once per attempt).
    pub fn forgive_lost_attempt(
        &self,
        job: JobId,
        attempt: Attempt,
        builder: BuilderId,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let row = load_job_row(conn, job)?;
            let marked = diesel::update(
                job_attempts::table
                    .filter(job_attempts::job_id.eq(job.0))
                    .filter(job_attempts::attempt.eq(attempt.0))
                    .filter(job_attempts::builder_id.eq(builder.0))
                    .filter(job_attempts::outcome.eq(AttemptOutcome::Lost.as_str()))
                    .filter(job_attempts::forgiven_at.is_null()),
            )
            .set((
                job_attempts::forgiven_at.eq(now),
                job_attempts::error.eq("lease expired while the builder was away; it came back"),
            ))
            .execute(conn)?;
            if marked == 0 || row.failed_attempts == 0 {
                return Ok(marked > 0);
            }
            let failed_attempts = row.failed_attempts - 1;
            let state: JobState = parse_column(&row.state)?;
            let gave_up = state == JobState::Failed
                && row
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("builder lost"));
            if gave_up && failed_attempts < row.max_attempts {
                let changes = JobChanges {
                    failed_attempts: Some(failed_attempts),
                    finished_at: Some(None),
                    error: Some(None),
                    ..JobChanges::requeue(&row)
                };
                let detail = "a lost lease was the network's; retrying";
                let requeued =
                    apply_transition(conn, &row, JobState::Queued, changes, now, Some(detail))?;
                let cause = AttemptCause::RetryAfterLostBuilder;
                record_attempt_cause(conn, job, requeued.attempt, cause)?;
            } else {
                diesel::update(jobs::table.find(job.0))
                    .set(jobs::failed_attempts.eq(failed_attempts))
                    .execute(conn)?;
            }
            Ok(true)
        })
    }
}

/// Takes the job's row lock for this transaction, on PostgreSQL without waiting
/// (`FOR UPDATE SKIP LOCKED`): every replica sweeps, and a job another one is ending is
/// skipped rather than waited for (its compare-and-set would lose afterwards anyway). The job
/// row comes first, as in every other transition, so no lock cycle forms. SQLite has one
/// writer: nothing to skip.
fn lock_job_or_skip(conn: &mut DbConnection, job: JobId) -> Result<bool, StoreError> {
    match conn {
        DbConnection::Postgresql(pg) => {
            let locked: Vec<i64> = jobs::table
                .find(job.0)
                .select(jobs::id)
                .for_update()
                .skip_locked()
                .load(pg)?;
            Ok(!locked.is_empty())
        }
        DbConnection::Sqlite(_) => Ok(true),
    }
}

fn expire(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    now: i64,
) -> Result<Job, StoreError> {
    if !lock_job_or_skip(conn, job)? {
        // Another replica's sweep (or a writer finishing the job) holds it: theirs to end.
        return Err(StoreError::Conflict { job });
    }
    let row = load_job_row(conn, job)?;
    let state: JobState = parse_column(&row.state)?;
    if row.attempt != attempt.0 || !state.is_active() {
        return Err(StoreError::Conflict { job });
    }
    // Only an attempt that ran counts against max_attempts: an assignment the builder never
    // accepted (its `jobs` frame lost with a connection) did no work and is simply requeued.
    let ran = state != JobState::Assigned;
    let failed_attempts = row.failed_attempts + i32::from(ran);
    let (to, changes, detail) = if row.cancel_requested_at.is_some() {
        let changes = JobChanges::finish(now, Some("cancelled; builder lost".into()));
        (JobState::Cancelled, changes, "lease expired".to_owned())
    } else if !ran {
        let changes = JobChanges::requeue(&row);
        (
            JobState::Queued,
            changes,
            "lease expired before the builder accepted".to_owned(),
        )
    } else if failed_attempts >= row.max_attempts || !row.retry_policy()?.lost_builder {
        let error = format!("builder lost {failed_attempts} time(s); giving up");
        let changes = JobChanges {
            failed_attempts: Some(failed_attempts),
            ..JobChanges::finish(now, Some(error.clone()))
        };
        (JobState::Failed, changes, error)
    } else {
        let changes = JobChanges {
            failed_attempts: Some(failed_attempts),
            ..JobChanges::requeue(&row)
        };
        (JobState::Queued, changes, "lease expired".to_owned())
    };
    // The job row first (it locks it on PostgreSQL), then the attempt: the same order as
    // every other transition, so two transactions never wait on each other in a cycle.
    let job_now = apply_transition(conn, &row, to, changes, now, Some(&detail))?;
    if to == JobState::Queued {
        // Lost before the builder accepted it: offered again, not a retry.
        let cause = if ran {
            AttemptCause::RetryAfterLostBuilder
        } else {
            AttemptCause::Reassigned
        };
        record_attempt_cause(conn, job, job_now.attempt, cause)?;
    }
    let ended = diesel::update(
        job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(attempt.0))
            .filter(job_attempts::finished_at.is_null())
            .filter(job_attempts::lease_expires_at.le(now)),
    )
    .set((
        job_attempts::outcome.eq(AttemptOutcome::Lost.as_str()),
        job_attempts::error.eq("lease expired"),
        job_attempts::finished_at.eq(now),
        job_attempts::job_token_hash.eq(None::<String>),
    ))
    .execute(conn)?;
    if ended == 0 {
        // Renewed after we listed it: roll the transition back.
        return Err(StoreError::Conflict { job });
    }
    // A lost attempt held its slot too: it counts against the project's fair share.
    super::fair_share::record_attempt_usage(conn, job, attempt, now)?;
    Ok(job_now)
}
