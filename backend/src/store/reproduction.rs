//! Reproducible jobs (`jobs.reproduce` above 1): the job's runs, one after the other on the
//! ordinary one-attempt-at-a-time machinery, each on a builder independent of every earlier
//! run; and the verdict once the last run ended.
//!
//! A successful run that is not the last is recorded in `job_runs` and the job goes back to
//! `queued` for the next (the attempt cause `reproduction_run`); nothing is published. The
//! claim (`claim.rs`) gives the next run only to a builder that [`is_independent`] of every
//! recorded run. When the last run succeeds the caller (the scheduler's completion) has
//! compared the digests and says what to do ([`RunStep`]); the store records the run and the
//! verdict (`job_reproductions`) in the completion's transaction.

use diesel::prelude::*;

use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::{Attempt, BuilderId, JobId, ProjectId};
use super::jobs::parse_column;
use super::labels::Labels;
use super::schema::{
    artifacts, builders, job_attempts, job_reproductions, job_runs, projects, statement_signatures,
};
use super::state::MAX_REPRODUCE;
use super::Store;

pub use buildfleet_api::{ReproductionEvidence, ReproductionVerdict, RunArtifact};

/// A completed run of a reproducible job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub job: JobId,
    /// 1 for the first run.
    pub run: i32,
    pub attempt: Attempt,
    pub builder: BuilderId,
    /// The independence label's name when the run was recorded, and the builder's value of
    /// it as the operator set it (`None`: the builder had none).
    pub owner_label: String,
    pub owner: Option<String>,
    /// The fingerprint of the key the run's completion was verified against.
    pub signer_fingerprint: Option<String>,
    /// In name order.
    pub artifacts: Vec<RunArtifact>,
    pub finished_at: i64,
}

/// The recorded verdict of a reproducible job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReproductionRecord {
    pub job: JobId,
    pub verdict: ReproductionVerdict,
    pub evidence: ReproductionEvidence,
    pub published_first: bool,
    pub decided_at: i64,
}

/// What the completion of a reproducible job's attempt does, decided by the caller from the
/// runs before it (their number is checked again in the transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStep {
    /// A successful run that is not the last: record it and queue the job for the next.
    Next,
    /// The last run, and every run's artifacts agree: record it and publish.
    Reproduced,
    /// The last run, and the artifacts differ: the job ends `unreproducible` with this
    /// evidence (the first run published only with `on_mismatch: publish_first`).
    Mismatch(ReproductionEvidence),
    /// A run failed after an earlier one succeeded: unless the job's retry policy retries
    /// the failure, the job ends `unreproducible` with this evidence.
    RunFailed(ReproductionEvidence),
}

/// A reproducible job's completion as the store applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCompletion {
    pub step: RunStep,
    /// How many runs the caller saw before this one.
    pub runs_before: usize,
    /// The label that tells builders' owners apart (`[scheduler]
    /// reproduce_independence_label`).
    pub owner_label: String,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = job_runs)]
struct JobRunRow {
    job_id: i64,
    run: i32,
    attempt: i32,
    builder_id: i64,
    owner_label: String,
    owner: Option<String>,
    signer_fingerprint: Option<String>,
    artifacts: String,
    finished_at: i64,
}

impl TryFrom<JobRunRow> for JobRun {
    type Error = StoreError;

    fn try_from(row: JobRunRow) -> Result<Self, StoreError> {
        let artifacts = serde_json::from_str(&row.artifacts).map_err(|e| {
            StoreError::Corrupt(format!("job_runs.artifacts of job {}: {e}", row.job_id))
        })?;
        Ok(JobRun {
            job: JobId(row.job_id),
            run: row.run,
            attempt: Attempt(row.attempt),
            builder: BuilderId(row.builder_id),
            owner_label: row.owner_label,
            owner: row.owner,
            signer_fingerprint: row.signer_fingerprint,
            artifacts,
            finished_at: row.finished_at,
        })
    }
}

/// The job's completed runs, oldest first.
pub(crate) fn runs_of(conn: &mut DbConnection, job: JobId) -> Result<Vec<JobRun>, StoreError> {
    job_runs::table
        .filter(job_runs::job_id.eq(job.0))
        .order(job_runs::run.asc())
        .select(JobRunRow::as_select())
        .load(conn)?
        .into_iter()
        .map(JobRun::try_from)
        .collect()
}

/// Whether a builder (its id and the labels its operator set) may run the next run of a job
/// with `runs`: it built none of them, and where both it and a run's builder carry that
/// run's independence label, their values differ.
pub fn is_independent(builder: BuilderId, operator_labels: &Labels, runs: &[JobRun]) -> bool {
    runs.iter().all(|run| {
        run.builder != builder
            && match (&run.owner, operator_labels.get(&run.owner_label)) {
                (Some(earlier), Some(mine)) => earlier != mine,
                _ => true,
            }
    })
}

/// What the next run of a job with `runs` needs of its builder, for people.
pub fn explain_dependence(runs: &[JobRun]) -> String {
    let owners: Vec<String> = runs
        .iter()
        .filter_map(|r| r.owner.as_ref().map(|o| format!("{}={o}", r.owner_label)))
        .collect();
    let next = runs.len().saturating_add(1);
    if owners.is_empty() {
        format!("run {next} needs a builder that did not build an earlier run")
    } else {
        format!(
            "run {next} needs a builder independent of the earlier runs: another builder, \
             and not {}",
            owners.join(" nor ")
        )
    }
}

/// This attempt's artifacts as a run records them, in name order.
pub(crate) fn attempt_artifacts(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
) -> Result<Vec<RunArtifact>, StoreError> {
    let rows: Vec<(String, i64, String)> = artifacts::table
        .filter(artifacts::job_id.eq(job.0))
        .filter(artifacts::attempt.eq(attempt.0))
        .order(artifacts::name.asc())
        .select((artifacts::name, artifacts::size, artifacts::sha256))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(name, size, sha256)| RunArtifact { name, size, sha256 })
        .collect())
}

/// Records the live attempt `attempt` as run `runs_before + 1` (its builder, the builder's
/// independence label, its artifacts). Fails with a conflict if the runs changed since the
/// caller read them.
pub(crate) fn record_run(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    run: &RunCompletion,
    now: i64,
) -> Result<JobRun, StoreError> {
    let runs = runs_of(conn, job)?;
    if runs.len() != run.runs_before {
        return Err(StoreError::Conflict { job });
    }
    let builder: i64 = job_attempts::table
        .filter(job_attempts::job_id.eq(job.0))
        .filter(job_attempts::attempt.eq(attempt.0))
        .select(job_attempts::builder_id)
        .first::<Option<i64>>(conn)?
        .ok_or_else(|| {
            StoreError::Corrupt(format!("attempt {attempt} of job {job} has no builder"))
        })?;
    let builder_row: Option<(String, String)> = builders::table
        .find(builder)
        .select((builders::labels, builders::fingerprint))
        .first(conn)
        .optional()?;
    let (owner, signer_fingerprint) = match builder_row {
        Some((json, fingerprint)) => (
            super::labels::decode("builders.labels", &json)?
                .get(&run.owner_label)
                .cloned(),
            Some(fingerprint),
        ),
        None => (None, None),
    };
    let artifacts = attempt_artifacts(conn, job, attempt)?;
    let number = i32::try_from(run.runs_before.saturating_add(1))
        .map_err(|_| StoreError::InvalidInput("too many runs".into()))?;
    let encoded = serde_json::to_string(&artifacts)
        .map_err(|e| StoreError::InvalidInput(format!("run artifacts: {e}")))?;
    diesel::insert_into(job_runs::table)
        .values((
            job_runs::job_id.eq(job.0),
            job_runs::run.eq(number),
            job_runs::attempt.eq(attempt.0),
            job_runs::builder_id.eq(builder),
            job_runs::owner_label.eq(&run.owner_label),
            job_runs::owner.eq(&owner),
            job_runs::signer_fingerprint.eq(&signer_fingerprint),
            job_runs::artifacts.eq(&encoded),
            job_runs::finished_at.eq(now),
        ))
        .execute(conn)?;
    Ok(JobRun {
        job,
        run: number,
        attempt,
        builder: BuilderId(builder),
        owner_label: run.owner_label.clone(),
        owner,
        signer_fingerprint,
        artifacts,
        finished_at: now,
    })
}

/// Records the job's verdict.
pub(crate) fn record_verdict(
    conn: &mut DbConnection,
    job: JobId,
    verdict: ReproductionVerdict,
    evidence: &ReproductionEvidence,
    published_first: bool,
    now: i64,
) -> Result<(), StoreError> {
    let encoded = serde_json::to_string(evidence)
        .map_err(|e| StoreError::InvalidInput(format!("reproduction evidence: {e}")))?;
    diesel::delete(job_reproductions::table.find(job.0)).execute(conn)?;
    diesel::insert_into(job_reproductions::table)
        .values((
            job_reproductions::job_id.eq(job.0),
            job_reproductions::verdict.eq(verdict.as_str()),
            job_reproductions::evidence.eq(&encoded),
            job_reproductions::published_first.eq(published_first),
            job_reproductions::decided_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Publishes an earlier attempt's artifacts under the statement and signature kept on that
/// attempt by its verified completion (`on_mismatch: publish_first`).
pub(crate) fn publish_kept(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
) -> Result<(), StoreError> {
    let (statement, signature): (Option<String>, Option<String>) = job_attempts::table
        .filter(job_attempts::job_id.eq(job.0))
        .filter(job_attempts::attempt.eq(attempt.0))
        .select((job_attempts::statement, job_attempts::statement_signature))
        .first(conn)?;
    let (Some(statement), Some(signature)) = (statement, signature) else {
        return Err(StoreError::Corrupt(format!(
            "attempt {attempt} of job {job} succeeded without a kept statement"
        )));
    };
    diesel::update(
        artifacts::table
            .filter(artifacts::job_id.eq(job.0))
            .filter(artifacts::attempt.eq(attempt.0)),
    )
    .set((
        artifacts::statement.eq(&statement),
        artifacts::statement_signature.eq(&signature),
        artifacts::published.eq(true),
    ))
    .execute(conn)?;
    Ok(())
}

/// `reproduce` must be from 1 (an ordinary job) to [`MAX_REPRODUCE`].
pub(crate) fn check_reproduce(k: i32) -> Result<(), StoreError> {
    if (1..=MAX_REPRODUCE).contains(&k) {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "reproduce must be from 1 to {MAX_REPRODUCE} independent builders, not {k}"
        )))
    }
}

/// One run's signatures of the job's reproduction statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunSignature {
    pub(crate) builder: BuilderId,
    pub(crate) fingerprint: String,
    pub(crate) sshsig: String,
    pub(crate) dsse_sig: String,
}

/// What the k runs of a reproduced job agreed on.
#[derive(Debug)]
pub(crate) enum Agreement {
    /// Every run signed the same reproduction statement: it is published with every run's
    /// signatures.
    Statement {
        statement: String,
        signature: String,
        signatures: Vec<RunSignature>,
    },
    /// A run's builder sent no reproduction statement (a builder from before them): the
    /// last run's own statement is published, as for an ordinary job.
    NoStatement,
    /// The runs' reproduction statements differ although their artifacts agree.
    Differ(String),
}

/// Compares the reproduction statements of `runs` (the last one is the completing attempt,
/// whose statement is `current`, not yet kept on its attempt row).
pub(crate) fn agreement(
    conn: &mut DbConnection,
    job: JobId,
    runs: &[JobRun],
    current: Option<&super::artifacts::Reproduction>,
) -> Result<Agreement, StoreError> {
    let Some(current) = current else {
        return Ok(Agreement::NoStatement);
    };
    let Some((last, earlier)) = runs.split_last() else {
        return Ok(Agreement::NoStatement);
    };
    let mut signatures = Vec::with_capacity(runs.len());
    for run in earlier {
        let kept: (Option<String>, Option<String>, Option<String>) = job_attempts::table
            .filter(job_attempts::job_id.eq(job.0))
            .filter(job_attempts::attempt.eq(run.attempt.0))
            .select((
                job_attempts::reproduction_statement,
                job_attempts::reproduction_signature,
                job_attempts::reproduction_dsse_signature,
            ))
            .first(conn)?;
        let (Some(statement), Some(sshsig), Some(dsse_sig), Some(fingerprint)) =
            (kept.0, kept.1, kept.2, run.signer_fingerprint.clone())
        else {
            return Ok(Agreement::NoStatement);
        };
        if statement != current.statement {
            return Ok(Agreement::Differ(format!(
                "unreproducible: the reproduction statements of runs {} and {} differ although \
                 their artifacts agree",
                run.run, last.run
            )));
        }
        signatures.push(RunSignature {
            builder: run.builder,
            fingerprint,
            sshsig,
            dsse_sig,
        });
    }
    let Some(fingerprint) = last.signer_fingerprint.clone() else {
        return Ok(Agreement::NoStatement);
    };
    signatures.push(RunSignature {
        builder: last.builder,
        fingerprint,
        sshsig: current.signature.clone(),
        dsse_sig: current.dsse_signature.clone(),
    });
    Ok(Agreement::Statement {
        statement: current.statement.clone(),
        signature: current.signature.clone(),
        signatures,
    })
}

/// Publishes the attempt's artifacts under the reproduction statement every run signed.
pub(crate) fn publish_reproduced(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    statement: &str,
    signature: &str,
) -> Result<(), StoreError> {
    diesel::update(
        artifacts::table
            .filter(artifacts::job_id.eq(job.0))
            .filter(artifacts::attempt.eq(attempt.0)),
    )
    .set((
        artifacts::statement.eq(statement),
        artifacts::statement_signature.eq(signature),
        artifacts::published.eq(true),
    ))
    .execute(conn)?;
    Ok(())
}

/// The published reproduction statement's signatures, one row per run (by key).
pub(crate) fn record_signatures(
    conn: &mut DbConnection,
    job: JobId,
    signatures: &[RunSignature],
) -> Result<(), StoreError> {
    diesel::delete(statement_signatures::table.filter(statement_signatures::job_id.eq(job.0)))
        .execute(conn)?;
    for signature in signatures {
        diesel::delete(
            statement_signatures::table
                .filter(statement_signatures::job_id.eq(job.0))
                .filter(statement_signatures::signer_fingerprint.eq(&signature.fingerprint)),
        )
        .execute(conn)?;
        diesel::insert_into(statement_signatures::table)
            .values((
                statement_signatures::job_id.eq(job.0),
                statement_signatures::signer_fingerprint.eq(&signature.fingerprint),
                statement_signatures::builder_id.eq(signature.builder.0),
                statement_signatures::sshsig.eq(&signature.sshsig),
                statement_signatures::dsse_sig.eq(&signature.dsse_sig),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The project's default `reproduce` for jobs that name none.
pub(crate) fn project_default(
    conn: &mut DbConnection,
    project: ProjectId,
) -> Result<i32, StoreError> {
    Ok(projects::table
        .find(project.0)
        .select(projects::reproduce)
        .first::<i32>(conn)
        .optional()?
        .unwrap_or(1))
}

impl Store {
    /// The job's completed runs, oldest first (none for an ordinary job).
    pub fn job_runs(&self, job: JobId) -> Result<Vec<JobRun>, StoreError> {
        runs_of(&mut *self.conn()?, job)
    }

    /// The job's reproduction verdict, once its last run ended.
    pub fn job_reproduction(&self, job: JobId) -> Result<Option<ReproductionRecord>, StoreError> {
        let row: Option<(String, String, bool, i64)> = job_reproductions::table
            .find(job.0)
            .select((
                job_reproductions::verdict,
                job_reproductions::evidence,
                job_reproductions::published_first,
                job_reproductions::decided_at,
            ))
            .first(&mut *self.conn()?)
            .optional()?;
        row.map(|(verdict, evidence, published_first, decided_at)| {
            Ok(ReproductionRecord {
                job,
                verdict: parse_column(&verdict)?,
                evidence: serde_json::from_str(&evidence).map_err(|e| {
                    StoreError::Corrupt(format!("job_reproductions.evidence of job {job}: {e}"))
                })?,
                published_first,
                decided_at,
            })
        })
        .transpose()
    }

    /// What `GET /jobs/{id}` and the job page show of a reproducible job: its runs (with
    /// their builders' names), and the verdict with its evidence once decided. `None` for an
    /// ordinary job.
    pub fn reproduction_of(
        &self,
        job: &super::jobs::Job,
    ) -> Result<Option<buildfleet_api::Reproduction>, StoreError> {
        if job.reproduce <= 1 {
            return Ok(None);
        }
        let record = self.job_reproduction(job.id)?;
        let runs = self
            .job_runs(job.id)?
            .into_iter()
            .map(|run| {
                Ok(buildfleet_api::ReproductionRun {
                    run: run.run,
                    attempt: run.attempt.0,
                    builder: run.builder.0,
                    builder_name: self.builder_by_id(run.builder)?.map(|b| b.name),
                    owner_label: run.owner_label,
                    owner: run.owner,
                    artifacts: run.artifacts,
                    finished_at: run.finished_at,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (verdict, evidence, published_first) = match record {
            Some(r) => {
                // The evidence of a disagreement; a reproduced job's record says only that.
                let evidence = (r.verdict != ReproductionVerdict::Reproduced).then_some(r.evidence);
                (Some(r.verdict), evidence, r.published_first)
            }
            None => (None, None, false),
        };
        Ok(Some(buildfleet_api::Reproduction {
            required: job.reproduce,
            on_mismatch: job.on_mismatch,
            runs,
            verdict,
            published_first,
            evidence,
        }))
    }

    /// The project's default `reproduce` for jobs submitted without one.
    pub fn project_reproduce(&self, project: ProjectId) -> Result<i32, StoreError> {
        project_default(&mut *self.conn()?, project)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(builder: i64, owner: Option<&str>) -> JobRun {
        JobRun {
            job: JobId(1),
            run: 1,
            attempt: Attempt(1),
            builder: BuilderId(builder),
            owner_label: "owner".into(),
            owner: owner.map(str::to_owned),
            signer_fingerprint: None,
            artifacts: vec![],
            finished_at: 0,
        }
    }

    #[test]
    fn independence_is_another_builder_and_another_owner_where_both_have_one() {
        let owned = |o: &str| Labels::from([("owner".to_owned(), o.to_owned())]);
        let runs = [run(1, Some("alice"))];
        assert!(
            !is_independent(BuilderId(1), &owned("bob"), &runs),
            "same builder"
        );
        assert!(
            !is_independent(BuilderId(2), &owned("alice"), &runs),
            "same owner"
        );
        assert!(is_independent(BuilderId(2), &owned("bob"), &runs));
        assert!(
            is_independent(BuilderId(2), &Labels::new(), &runs),
            "no label"
        );
        let unlabelled = [run(1, None)];
        assert!(is_independent(BuilderId(2), &owned("alice"), &unlabelled));
        assert!(!is_independent(BuilderId(1), &Labels::new(), &unlabelled));
        assert!(
            is_independent(BuilderId(1), &Labels::new(), &[]),
            "first run"
        );
        assert_eq!(
            explain_dependence(&runs),
            "run 2 needs a builder independent of the earlier runs: another builder, and not owner=alice"
        );
    }
}
