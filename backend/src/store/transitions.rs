//! Job state changes after the claim: accept (running), reject, complete, cancel, retry.
//! Each is one transaction that checks the transition table, applies it as a
//! compare-and-set on the job row and records a job event.

use diesel::prelude::*;

use super::artifacts::{publish_in, Publication};
use super::attempt_outputs::record_outputs;
use super::attempts::{
    attempt_of_row, finish_attempt, live_attempt, record_attempt_cause, JobAttempt,
};
use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::{Attempt, JobId};
use super::jobs::RetryPolicy;
use super::jobs::{load_job, load_job_row, parse_column, record_event, Job, JobRow};
use super::reproduction::{
    agreement, publish_kept, publish_reproduced, record_run, record_signatures, record_verdict,
    runs_of, Agreement, JobRun, ReproductionEvidence, ReproductionVerdict, RunCompletion,
    RunSignature, RunStep,
};
use super::schema::{job_attempts, jobs};
use super::state::{AttemptCause, AttemptOutcome, JobState, OnMismatch, Outcome};
use super::Store;

/// How a builder reports the end of an attempt.
#[derive(Debug, Clone)]
pub struct Completion {
    pub outcome: Outcome,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    /// A verified build statement: publishes the attempt's artifacts in the same transaction
    /// and keeps the statement and plan on the attempt.
    pub publication: Option<Publication>,
}

/// How a failed attempt failed, as a job's retry policy tells failures apart. The builder's
/// error kinds map to these in the scheduler's completion (`failure_of`); a completion
/// without one (success, cancel, timeout, a refused source or statement) is never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The platform's fault: the source could not be fetched, an upload failed, the builder
    /// hit an internal error.
    Infrastructure,
    /// The job's own commands failed with this exit status (`None`: killed by a signal).
    Script { exit_status: Option<i32> },
}

impl FailureKind {
    /// The cause of the attempt that retries this failure, if `policy` retries it.
    pub fn retried_by(self, policy: &RetryPolicy) -> Option<AttemptCause> {
        match self {
            FailureKind::Infrastructure if policy.infrastructure => {
                Some(AttemptCause::RetryAfterInfrastructureError)
            }
            FailureKind::Script { exit_status } if policy.exit_codes.retries(exit_status) => {
                Some(AttemptCause::RetryAfterScriptFailure)
            }
            _ => None,
        }
    }
}

/// What [`Store::cancel_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelResult {
    /// The job was queued and is now cancelled.
    Cancelled(Job),
    /// A builder holds the job: the cancel is recorded on the job; the scheduler tells the
    /// builder, then ends the attempt with [`Outcome::Cancelled`] via
    /// [`Store::complete_attempt`]. Should the builder vanish instead, lease expiry cancels
    /// the job rather than requeueing it.
    Requested { job: Job, attempt: JobAttempt },
}

/// Columns a transition may change besides `state` and `updated_at`. `Some(None)` sets NULL.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = jobs)]
pub(crate) struct JobChanges {
    pub(crate) attempt: Option<i32>,
    pub(crate) failed_attempts: Option<i32>,
    pub(crate) started_at: Option<Option<i64>>,
    pub(crate) finished_at: Option<Option<i64>>,
    pub(crate) cancel_requested_at: Option<Option<i64>>,
    pub(crate) error: Option<Option<String>>,
    pub(crate) builder_id: Option<Option<i64>>,
    pub(crate) retry_not_before: Option<Option<i64>>,
    pub(crate) manual_retries: Option<i32>,
}

impl JobChanges {
    /// Back to the queue for the next attempt, with nothing left of the last one.
    pub(crate) fn requeue(before: &JobRow) -> JobChanges {
        JobChanges {
            attempt: Some(before.attempt + 1),
            started_at: Some(None),
            builder_id: Some(None),
            ..JobChanges::default()
        }
    }

    /// Into a terminal state.
    pub(crate) fn finish(now: i64, error: Option<String>) -> JobChanges {
        JobChanges {
            finished_at: Some(Some(now)),
            error: Some(error),
            // A job cancelled while it waited out a back-off waits for nothing any more.
            retry_not_before: Some(None),
            ..JobChanges::default()
        }
    }
}

/// Moves the job in `before` to `to`: checks the transition table, updates the row only if it
/// still holds `before`'s state and attempt (a concurrent writer makes this fail instead of
/// being overwritten), and records the event under `before`'s attempt.
pub(crate) fn apply_transition(
    conn: &mut DbConnection,
    before: &JobRow,
    to: JobState,
    changes: JobChanges,
    now: i64,
    detail: Option<&str>,
) -> Result<Job, StoreError> {
    let job = JobId(before.id);
    let from: JobState = parse_column(&before.state)?;
    if !from.can_become(to) {
        return Err(StoreError::IllegalTransition { job, from, to });
    }
    let updated = diesel::update(
        jobs::table
            .filter(jobs::id.eq(before.id))
            .filter(jobs::state.eq(&before.state))
            .filter(jobs::attempt.eq(before.attempt)),
    )
    .set((
        jobs::state.eq(to.as_str()),
        jobs::updated_at.eq(now),
        &changes,
    ))
    .execute(conn)?;
    if updated == 0 {
        return Err(explain_lost_race(conn, before, to)?);
    }
    record_event(
        conn,
        job,
        Attempt(before.attempt),
        Some(from),
        to,
        now,
        detail,
    )?;
    load_job(conn, job)
}

/// The compare-and-set found the row changed (PostgreSQL, a concurrent transaction
/// committed first): name the refusal the caller would get if it came second.
fn explain_lost_race(
    conn: &mut DbConnection,
    before: &JobRow,
    to: JobState,
) -> Result<StoreError, StoreError> {
    let job = JobId(before.id);
    let now = load_job_row(conn, job)?;
    if now.attempt != before.attempt {
        return Ok(StoreError::StaleAttempt {
            job,
            attempt: Attempt(before.attempt),
            current: Attempt(now.attempt),
        });
    }
    let from: JobState = parse_column(&now.state)?;
    if from != parse_column::<JobState>(&before.state)? && !from.can_become(to) {
        return Ok(StoreError::IllegalTransition { job, from, to });
    }
    Ok(StoreError::Conflict { job })
}

fn require_state(row: &JobRow, allowed: &[JobState], to: JobState) -> Result<JobState, StoreError> {
    let from: JobState = parse_column(&row.state)?;
    if allowed.contains(&from) {
        Ok(from)
    } else {
        Err(StoreError::IllegalTransition {
            job: JobId(row.id),
            from,
            to,
        })
    }
}

impl Store {
    /// The builder accepted the assignment: `assigned → running`; idempotent for an attempt
    /// that already runs.
    pub fn mark_running(&self, job: JobId, attempt: Attempt) -> Result<Job, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let (row, _) = live_attempt(conn, job, attempt)?;
            // A repeated accept of the live attempt changes nothing.
            if parse_column::<JobState>(&row.state)? == JobState::Running {
                return load_job(conn, job);
            }
            let changes = JobChanges {
                started_at: Some(Some(now)),
                ..JobChanges::default()
            };
            let job_now = apply_transition(conn, &row, JobState::Running, changes, now, None)?;
            diesel::update(
                job_attempts::table
                    .filter(job_attempts::job_id.eq(job.0))
                    .filter(job_attempts::attempt.eq(attempt.0)),
            )
            .set(job_attempts::started_at.eq(now))
            .execute(conn)?;
            Ok(job_now)
        })
    }

    /// The builder turned the assignment down: `assigned → queued` with the next attempt.
    /// Does not count against `max_attempts` (the job never ran). A job whose cancel was
    /// requested is cancelled instead.
    pub fn reject_assignment(
        &self,
        job: JobId,
        attempt: Attempt,
        reason: &str,
    ) -> Result<Job, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let (row, _) = live_attempt(conn, job, attempt)?;
            require_state(&row, &[JobState::Assigned], JobState::Queued)?;
            let job_now = if row.cancel_requested_at.is_some() {
                let changes = JobChanges::finish(now, Some("cancelled".into()));
                apply_transition(conn, &row, JobState::Cancelled, changes, now, Some(reason))?
            } else {
                let changes = JobChanges::requeue(&row);
                let requeued =
                    apply_transition(conn, &row, JobState::Queued, changes, now, Some(reason))?;
                record_attempt_cause(conn, job, requeued.attempt, AttemptCause::Reassigned)?;
                requeued
            };
            finish_attempt(
                conn,
                job,
                attempt,
                AttemptOutcome::Rejected,
                None,
                Some(reason),
                now,
            )?;
            Ok(job_now)
        })
    }

    /// The builder reports the end of its attempt: the job becomes terminal, the attempt
    /// records the outcome and its token is revoked.
    pub fn complete_attempt(
        &self,
        job: JobId,
        attempt: Attempt,
        completion: Completion,
    ) -> Result<Job, StoreError> {
        self.complete_attempt_or_retry(job, attempt, completion, None)
    }

    /// As [`Store::complete_attempt`], for a failure of kind `failure`: if the job's retry
    /// policy retries that kind, no cancel is pending and fewer than `max_attempts` attempts
    /// will have failed, the job goes back to `queued` for its next attempt instead, not to
    /// be handed out before its back-off ends (`retry_not_before`); the failure counts in
    /// `failed_attempts` either way.
    pub fn complete_attempt_or_retry(
        &self,
        job: JobId,
        attempt: Attempt,
        completion: Completion,
        failure: Option<FailureKind>,
    ) -> Result<Job, StoreError> {
        self.complete_run(job, attempt, completion, failure, None)
    }

    /// As [`Store::complete_attempt_or_retry`], for a job with `reproduce` above 1 when
    /// `run` is given (see `reproduction.rs`): a successful run is recorded and either queues
    /// the job for its next run (nothing published) or ends it as the caller decided from
    /// the digests; a failure that would end the job after an earlier run succeeded ends it
    /// `unreproducible` instead of `failed`.
    pub fn complete_run(
        &self,
        job: JobId,
        attempt: Attempt,
        completion: Completion,
        failure: Option<FailureKind>,
        run: Option<RunCompletion>,
    ) -> Result<Job, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let (row, _) = live_attempt(conn, job, attempt)?;
            let retried = match failure {
                Some(kind)
                    if completion.outcome == Outcome::Failed
                        && row.cancel_requested_at.is_none() =>
                {
                    kind.retried_by(&row.retry_policy()?)
                }
                _ => None,
            };
            let run = run.as_ref().filter(|_| row.reproduce > 1);
            let mut signatures = None;
            let publish_now = match run {
                Some(run) if completion.outcome == Outcome::Succeeded => {
                    let publication = completion.publication.as_ref().ok_or_else(|| {
                        StoreError::InvalidInput(
                            "a reproducible job's run succeeded without a verified statement"
                                .into(),
                        )
                    })?;
                    let recorded = record_run(conn, job, attempt, run, now)?;
                    let ended = end_run(
                        conn,
                        &row,
                        &completion,
                        &recorded,
                        &run.step,
                        publication,
                        now,
                    )?;
                    ended.map(|(job_now, sigs)| {
                        signatures = sigs;
                        job_now
                    })
                }
                _ => None,
            };
            // A failure after an earlier run succeeded ends the job unreproducible, unless
            // the retry policy retries it and a retry is left (then only this run repeats).
            let gives_up =
                retried.is_some() && row.failed_attempts.saturating_add(1) >= row.max_attempts;
            let run_failed = match run.map(|r| &r.step) {
                Some(RunStep::RunFailed(evidence))
                    if completion.outcome == Outcome::Failed && (retried.is_none() || gives_up) =>
                {
                    Some(evidence)
                }
                _ => None,
            };
            let job_now = match (publish_now, run_failed, retried) {
                (Some(job_now), _, _) => job_now,
                (None, Some(evidence), _) => {
                    let published = publish_first_run(conn, &row)?;
                    let changes = JobChanges {
                        failed_attempts: retried.map(|_| row.failed_attempts.saturating_add(1)),
                        ..JobChanges::finish(now, Some(evidence.summary.clone()))
                    };
                    record_verdict(
                        conn,
                        job,
                        ReproductionVerdict::RunFailed,
                        evidence,
                        published,
                        now,
                    )?;
                    apply_transition(
                        conn,
                        &row,
                        JobState::Unreproducible,
                        changes,
                        now,
                        Some(&evidence.summary),
                    )?
                }
                (None, None, Some(cause)) => retry_or_give_up(conn, &row, &completion, cause, now)?,
                (None, None, None) => {
                    let to = completion.outcome.job_state();
                    let changes = JobChanges::finish(now, completion.error.clone());
                    let job_now = apply_transition(conn, &row, to, changes, now, None)?;
                    if let Some(publication) = &completion.publication {
                        publish_in(conn, job, attempt, publication)?;
                    }
                    job_now
                }
            };
            finish_attempt(
                conn,
                job,
                attempt,
                completion.outcome.into(),
                completion.exit_status,
                completion.error.as_deref(),
                now,
            )?;
            if let Some(publication) = &completion.publication {
                record_outputs(conn, job, attempt, publication)?;
            }
            // A reproduced job's statement carries every run's signature (after
            // record_outputs, which keeps this attempt's own signature only).
            if let Some(signatures) = &signatures {
                record_signatures(conn, job, signatures)?;
            }
            Ok(job_now)
        })
    }

    /// Cancels a job: at once if queued; if a builder holds it, records the request and
    /// returns the live attempt (see [`CancelResult::Requested`]). A terminal job is an
    /// [`StoreError::IllegalTransition`].
    pub fn cancel_job(&self, job: JobId) -> Result<CancelResult, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let row = load_job_row(conn, job)?;
            let from = require_state(
                &row,
                &[JobState::Queued, JobState::Assigned, JobState::Running],
                JobState::Cancelled,
            )?;
            if from == JobState::Queued {
                let changes = JobChanges::finish(now, Some("cancelled".into()));
                let job_now =
                    apply_transition(conn, &row, JobState::Cancelled, changes, now, None)?;
                return Ok(CancelResult::Cancelled(job_now));
            }
            let (row, attempt_row) = live_attempt(conn, job, Attempt(row.attempt))?;
            if row.cancel_requested_at.is_none() {
                diesel::update(jobs::table.find(job.0))
                    .set((jobs::cancel_requested_at.eq(now), jobs::updated_at.eq(now)))
                    .execute(conn)?;
            }
            Ok(CancelResult::Requested {
                job: load_job(conn, job)?,
                attempt: attempt_of_row(conn, attempt_row)?,
            })
        })
    }

    /// Puts a failed, cancelled or timed-out job back in the queue with the next attempt and
    /// a fresh retry budget.
    pub fn retry_job(&self, job: JobId) -> Result<Job, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let row = load_job_row(conn, job)?;
            require_state(
                &row,
                &[JobState::Failed, JobState::Cancelled, JobState::TimedOut],
                JobState::Queued,
            )?;
            // A manual retry is counted apart and gives the automatic retries afresh, so
            // failed_attempts never exceeds max_attempts.
            let changes = JobChanges {
                failed_attempts: Some(0),
                manual_retries: Some(row.manual_retries.saturating_add(1)),
                finished_at: Some(None),
                cancel_requested_at: Some(None),
                error: Some(None),
                retry_not_before: Some(None),
                ..JobChanges::requeue(&row)
            };
            let requeued =
                apply_transition(conn, &row, JobState::Queued, changes, now, Some("retry"))?;
            record_attempt_cause(conn, job, requeued.attempt, AttemptCause::ManualRetry)?;
            Ok(requeued)
        })
    }
}

/// A failed attempt whose kind the job's policy retries: back to `queued` after the back-off
/// while the budget lasts, else `failed` with the failure counted.
fn retry_or_give_up(
    conn: &mut DbConnection,
    row: &JobRow,
    completion: &Completion,
    cause: AttemptCause,
    now: i64,
) -> Result<Job, StoreError> {
    let failed_attempts = row.failed_attempts.saturating_add(1);
    let what = completion.error.as_deref().unwrap_or("failed");
    if failed_attempts >= row.max_attempts {
        let detail = format!(
            "{what}; no automatic retry left ({failed_attempts} of at most {} attempts failed)",
            row.max_attempts
        );
        let changes = JobChanges {
            failed_attempts: Some(failed_attempts),
            ..JobChanges::finish(now, completion.error.clone())
        };
        return apply_transition(conn, row, JobState::Failed, changes, now, Some(&detail));
    }
    let policy = row.retry_policy()?;
    // The n-th counted failure waits initial × 2^(n-1), capped.
    let earlier_failures = u32::try_from(row.failed_attempts).unwrap_or(0);
    let wait_ms = i64::try_from(policy.backoff_ms(earlier_failures)).unwrap_or(i64::MAX);
    let detail = format!(
        "{what}; {} in {wait_ms} ms ({failed_attempts} of at most {} attempts failed)",
        cause.as_str().replace('_', " "),
        row.max_attempts
    );
    let changes = JobChanges {
        failed_attempts: Some(failed_attempts),
        retry_not_before: Some((wait_ms > 0).then(|| now.saturating_add(wait_ms))),
        ..JobChanges::requeue(row)
    };
    let requeued = apply_transition(conn, row, JobState::Queued, changes, now, Some(&detail))?;
    record_attempt_cause(conn, requeued.id, requeued.attempt, cause)?;
    Ok(requeued)
}

/// A job ended (or requeued) by a run, with the signatures of a published reproduction
/// statement when there is one.
type EndedRun = (Job, Option<Vec<RunSignature>>);

/// A reproducible job's successful run, recorded as `recorded`: queues the job for its next
/// run, or ends it as `step` says (publishing what it says). `None` for a step that does not
/// apply to a success (the completion then ends the job as an ordinary one would). With the
/// job, the signatures of a published reproduction statement, to record once the attempt's
/// outputs are kept.
fn end_run(
    conn: &mut DbConnection,
    row: &JobRow,
    completion: &Completion,
    recorded: &JobRun,
    step: &RunStep,
    publication: &Publication,
    now: i64,
) -> Result<Option<EndedRun>, StoreError> {
    let job = JobId(row.id);
    let required = row.reproduce;
    match step {
        RunStep::Next => {
            let detail = format!(
                "run {} of {required} succeeded on builder {}; waiting for an independent builder",
                recorded.run, recorded.builder
            );
            let requeued = apply_transition(
                conn,
                row,
                JobState::Queued,
                JobChanges::requeue(row),
                now,
                Some(&detail),
            )?;
            record_attempt_cause(conn, job, requeued.attempt, AttemptCause::ReproductionRun)?;
            Ok(Some((requeued, None)))
        }
        RunStep::Reproduced => {
            let runs = runs_of(conn, job)?;
            let agreed = agreement(conn, job, &runs, publication.reproduction.as_ref())?;
            if let Agreement::Differ(summary) = agreed {
                let evidence = ReproductionEvidence {
                    summary,
                    ..ReproductionEvidence::default()
                };
                return end_mismatch(conn, row, &evidence, now).map(|j| Some((j, None)));
            }
            let detail = format!("reproduced by {} of {required} builders", recorded.run);
            let changes = JobChanges::finish(now, completion.error.clone());
            let done =
                apply_transition(conn, row, JobState::Succeeded, changes, now, Some(&detail))?;
            let attempt = Attempt(row.attempt);
            let signatures = match agreed {
                Agreement::Statement {
                    statement,
                    signature,
                    signatures,
                } => {
                    publish_reproduced(conn, job, attempt, &statement, &signature)?;
                    Some(signatures)
                }
                Agreement::NoStatement | Agreement::Differ(_) => {
                    publish_in(conn, job, attempt, publication)?;
                    None
                }
            };
            let evidence = ReproductionEvidence {
                summary: format!(
                    "{} independent builders produced identical artifacts",
                    recorded.run
                ),
                ..ReproductionEvidence::default()
            };
            record_verdict(
                conn,
                job,
                ReproductionVerdict::Reproduced,
                &evidence,
                false,
                now,
            )?;
            Ok(Some((done, signatures)))
        }
        RunStep::Mismatch(evidence) => {
            end_mismatch(conn, row, evidence, now).map(|j| Some((j, None)))
        }
        RunStep::RunFailed(_) => Ok(None),
    }
}

/// The runs disagree: `unreproducible`, with the first run published only for
/// `on_mismatch: publish_first`.
fn end_mismatch(
    conn: &mut DbConnection,
    row: &JobRow,
    evidence: &ReproductionEvidence,
    now: i64,
) -> Result<Job, StoreError> {
    let job = JobId(row.id);
    let published = publish_first_run(conn, row)?;
    let changes = JobChanges::finish(now, Some(evidence.summary.clone()));
    let done = apply_transition(
        conn,
        row,
        JobState::Unreproducible,
        changes,
        now,
        Some(&evidence.summary),
    )?;
    record_verdict(
        conn,
        job,
        ReproductionVerdict::Mismatch,
        evidence,
        published,
        now,
    )?;
    Ok(done)
}

/// `on_mismatch: publish_first`: publishes the first run's artifacts under its own statement.
/// Returns whether it did.
fn publish_first_run(conn: &mut DbConnection, row: &JobRow) -> Result<bool, StoreError> {
    let job = JobId(row.id);
    if parse_column::<OnMismatch>(&row.on_mismatch)? != OnMismatch::PublishFirst {
        return Ok(false);
    }
    let Some(first) = runs_of(conn, job)?.into_iter().next() else {
        return Ok(false);
    };
    publish_kept(conn, job, first.attempt)?;
    Ok(true)
}
