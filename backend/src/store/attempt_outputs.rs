//! What a verified completion leaves on its attempt besides the outcome: the signed build
//! statement, kept for every outcome so a job without artifacts (plan mode, a failure) still
//! has one to verify, and the plan output of a plan-mode attempt.

use diesel::prelude::*;

use super::artifacts::{Publication, Reproduction};
use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::{Attempt, JobId};
use super::schema::{artifacts, builders, job_attempts, statement_signatures};
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

/// One signature of a job's published statement (`statement_signatures`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSignature {
    /// The signing key's OpenSSH SHA-256 fingerprint (the DSSE keyid).
    pub signer_fingerprint: String,
    pub builder_id: Option<i64>,
    /// The builder's name (`None` when the builder was removed since).
    pub builder_name: Option<String>,
    /// Armored SSHSIG over the statement text.
    pub sshsig: String,
    /// Base64 DSSE signature over PAE of the text; `None` for a buildfleet-statement/v1 text.
    pub dsse_sig: Option<String>,
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
    let reproduction = publication.reproduction.as_ref();
    diesel::update(
        job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(attempt.0)),
    )
    .set((
        job_attempts::statement.eq(&publication.statement),
        job_attempts::statement_signature.eq(&publication.signature),
        job_attempts::plan.eq(publication.plan.as_deref()),
        job_attempts::dsse_signature.eq(publication.dsse_signature.as_deref()),
        job_attempts::reproduction_statement.eq(reproduction.map(|r| r.statement.as_str())),
        job_attempts::reproduction_signature.eq(reproduction.map(|r| r.signature.as_str())),
        job_attempts::reproduction_dsse_signature
            .eq(reproduction.map(|r| r.dsse_signature.as_str())),
    ))
    .execute(conn)?;
    record_signature(conn, job, attempt, publication)
}

/// Makes this attempt's statement signature the job's published one, unless the job's
/// published artifacts belong to another attempt (then `/statement` keeps serving theirs,
/// and so do the signature rows). Runs after `publish_in` in the same transaction.
fn record_signature(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    publication: &Publication,
) -> Result<(), StoreError> {
    let published_elsewhere: i64 = artifacts::table
        .filter(artifacts::job_id.eq(job.0))
        .filter(artifacts::published.eq(true))
        .filter(artifacts::attempt.ne(attempt.0))
        .count()
        .get_result(conn)?;
    if published_elsewhere > 0 {
        return Ok(());
    }
    diesel::delete(statement_signatures::table.filter(statement_signatures::job_id.eq(job.0)))
        .execute(conn)?;
    let Some(signer) = &publication.signer_fingerprint else {
        return Ok(());
    };
    let builder: Option<i64> = job_attempts::table
        .filter(job_attempts::job_id.eq(job.0))
        .filter(job_attempts::attempt.eq(attempt.0))
        .select(job_attempts::builder_id)
        .first::<Option<i64>>(conn)
        .optional()?
        .flatten();
    diesel::insert_into(statement_signatures::table)
        .values((
            statement_signatures::job_id.eq(job.0),
            statement_signatures::signer_fingerprint.eq(signer),
            statement_signatures::builder_id.eq(builder),
            statement_signatures::sshsig.eq(&publication.signature),
            statement_signatures::dsse_sig.eq(publication.dsse_signature.as_deref()),
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

    /// The signatures of the job's published statement (the one [`Store::job_statement`]
    /// returns), by signer fingerprint; empty for jobs published before provenance rows
    /// existed.
    pub fn statement_signatures(&self, job: JobId) -> Result<Vec<StatementSignature>, StoreError> {
        type Row = (String, Option<i64>, Option<String>, String, Option<String>);
        let rows: Vec<Row> = statement_signatures::table
            .left_join(builders::table)
            .filter(statement_signatures::job_id.eq(job.0))
            .order(statement_signatures::signer_fingerprint.asc())
            .select((
                statement_signatures::signer_fingerprint,
                statement_signatures::builder_id,
                builders::name.nullable(),
                statement_signatures::sshsig,
                statement_signatures::dsse_sig,
            ))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(
                |(signer_fingerprint, builder_id, builder_name, sshsig, dsse_sig)| {
                    StatementSignature {
                        signer_fingerprint,
                        builder_id,
                        builder_name,
                        sshsig,
                        dsse_sig,
                    }
                },
            )
            .collect())
    }

    /// The DSSE signature and the reproduction statement kept on an attempt (`None` each
    /// when its builder sent none).
    pub fn attempt_provenance(
        &self,
        job: JobId,
        attempt: Attempt,
    ) -> Result<(Option<String>, Option<Reproduction>), StoreError> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(attempt.0))
            .select((
                job_attempts::dsse_signature,
                job_attempts::reproduction_statement,
                job_attempts::reproduction_signature,
                job_attempts::reproduction_dsse_signature,
            ))
            .first(&mut *self.conn()?)
            .optional()?;
        Ok(match row {
            None => (None, None),
            Some((dsse, statement, signature, dsse_signature)) => {
                let reproduction = match (statement, signature, dsse_signature) {
                    (Some(statement), Some(signature), Some(dsse_signature)) => {
                        Some(Reproduction {
                            statement,
                            signature,
                            dsse_signature,
                        })
                    }
                    _ => None,
                };
                (dsse, reproduction)
            }
        })
    }

    /// The name of the builder that ran an attempt, if it still exists.
    pub fn attempt_builder_name(
        &self,
        job: JobId,
        attempt: Attempt,
    ) -> Result<Option<String>, StoreError> {
        Ok(job_attempts::table
            .inner_join(builders::table.on(job_attempts::builder_id.eq(builders::id.nullable())))
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(attempt.0))
            .select(builders::name)
            .first(&mut *self.conn()?)
            .optional()?)
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
