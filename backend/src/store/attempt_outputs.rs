//! What a verified completion leaves on its attempt besides the outcome: the signed build
//! statement, kept for every outcome so a job without artifacts (plan mode, a failure) still
//! has one to verify, and the plan output of a plan-mode attempt.

use diesel::prelude::*;

use super::artifacts::Publication;
use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::{Attempt, JobId};
use super::schema::{artifacts, job_attempts};
use super::Store;

/// The largest plan output kept, in bytes (UTF-8). A plan is a short description of the
/// commands and artifacts; this bounds what one completion can make the database hold.
pub const MAX_PLAN_BYTES: usize = 64 * 1024;

/// A signed build statement and the attempt it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptStatement {
    pub attempt: Attempt,
    /// The statement text exactly as signed.
    pub statement: String,
    /// Its armored SSHSIG.
    pub signature: String,
}

/// The plan output of a plan-mode attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPlan {
    pub attempt: Attempt,
    pub text: String,
}

/// Keeps the verified statement and plan on the attempt (in the completion's transaction).
pub(crate) fn record_outputs(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    publication: &Publication,
) -> Result<(), StoreError> {
    if let Some(plan) = &publication.plan {
        if plan.len() > MAX_PLAN_BYTES {
            return Err(StoreError::InvalidInput(format!(
                "the plan output is {} bytes, over the limit of {MAX_PLAN_BYTES}",
                plan.len()
            )));
        }
    }
    diesel::update(
        job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(attempt.0)),
    )
    .set((
        job_attempts::statement.eq(&publication.statement),
        job_attempts::statement_signature.eq(&publication.signature),
        job_attempts::plan.eq(publication.plan.as_deref()),
    ))
    .execute(conn)?;
    Ok(())
}

type StatementColumns = (i32, Option<String>, Option<String>);

impl Store {
    /// The statement `/statement` serves: that of the attempt whose artifacts are published
    /// (the latest such attempt), else that of the latest attempt with a verified completion.
    /// `None` while no completion of the job was verified.
    pub fn job_statement(&self, job: JobId) -> Result<Option<AttemptStatement>, StoreError> {
        let conn = &mut *self.conn()?;
        // Artifacts first: their rows hold the statement that vouches for them, also for
        // attempts finished before statements were kept on the attempt.
        let published: Option<StatementColumns> = artifacts::table
            .filter(artifacts::job_id.eq(job.0))
            .filter(artifacts::published.eq(true))
            .order(artifacts::attempt.desc())
            .select((
                artifacts::attempt,
                artifacts::statement,
                artifacts::statement_signature,
            ))
            .first(conn)
            .optional()?;
        let found = match published {
            Some(row) => Some(row),
            None => job_attempts::table
                .filter(job_attempts::job_id.eq(job.0))
                .filter(job_attempts::statement.is_not_null())
                .filter(job_attempts::statement_signature.is_not_null())
                .order(job_attempts::attempt.desc())
                .select((
                    job_attempts::attempt,
                    job_attempts::statement,
                    job_attempts::statement_signature,
                ))
                .first(conn)
                .optional()?,
        };
        Ok(match found {
            Some((attempt, Some(statement), Some(signature))) => Some(AttemptStatement {
                attempt: Attempt(attempt),
                statement,
                signature,
            }),
            _ => None,
        })
    }

    /// The plan output of the job's latest attempt that reported one.
    pub fn job_plan(&self, job: JobId) -> Result<Option<AttemptPlan>, StoreError> {
        let found: Option<(i32, Option<String>)> = job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::plan.is_not_null())
            .order(job_attempts::attempt.desc())
            .select((job_attempts::attempt, job_attempts::plan))
            .first(&mut *self.conn()?)
            .optional()?;
        Ok(found.and_then(|(attempt, text)| {
            text.map(|text| AttemptPlan {
                attempt: Attempt(attempt),
                text,
            })
        }))
    }
}
