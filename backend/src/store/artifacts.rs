//! Artifacts: uploaded under a job token while the attempt is live, published once the
//! builder's signed build statement is verified.

use diesel::prelude::*;
use serde::Serialize;

use super::attempts::live_attempt;
use super::connection::{Db, DbConnection};
use super::error::StoreError;
use super::ids::{Attempt, JobId};
use super::schema::artifacts;
use super::Store;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub job: JobId,
    pub attempt: Attempt,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub storage_key: String,
    /// The signed build statement covering this artifact, once published.
    pub statement: Option<String>,
    /// Its SSH signature (armored SSHSIG).
    pub statement_signature: Option<String>,
    pub published: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub job: JobId,
    pub attempt: Attempt,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub storage_key: String,
}

/// A verified build statement and its signature, and what else the completion reported
/// that is kept on the attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    pub statement: String,
    pub signature: String,
    /// The plan output of a plan-mode attempt (not covered by the signature), at most
    /// [`super::MAX_PLAN_BYTES`].
    pub plan: Option<String>,
    /// The DSSE signature of the statement text (base64), for in-toto statements.
    pub dsse_signature: Option<String>,
    /// The signing key's fingerprint: the row of `statement_signatures` this statement
    /// gets when it becomes the job's published one (`None`: no row is written).
    pub signer_fingerprint: Option<String>,
    /// The verified reproduction statement of a succeeded build, with its signatures.
    pub reproduction: Option<Reproduction>,
}

/// A reproduction statement (docs/provenance.md) and its builder's two signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reproduction {
    pub statement: String,
    /// Armored SSHSIG.
    pub signature: String,
    /// Base64 DSSE signature.
    pub dsse_signature: String,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = artifacts)]
struct ArtifactRow {
    job_id: i64,
    attempt: i32,
    name: String,
    size: i64,
    sha256: String,
    storage_key: String,
    statement: Option<String>,
    statement_signature: Option<String>,
    published: bool,
    created_at: i64,
}

impl From<ArtifactRow> for Artifact {
    fn from(row: ArtifactRow) -> Self {
        Artifact {
            job: JobId(row.job_id),
            attempt: Attempt(row.attempt),
            name: row.name,
            size: row.size,
            sha256: row.sha256,
            storage_key: row.storage_key,
            statement: row.statement,
            statement_signature: row.statement_signature,
            published: row.published,
            created_at: row.created_at,
        }
    }
}

/// Names become file names and URL segments: refuse anything that could leave its folder.
fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(StoreError::InvalidInput(format!(
            "artifact name {name:?} is not a plain file name"
        )));
    }
    Ok(())
}

/// Publishes every artifact of the attempt under `publication`. Returns how many.
pub(crate) fn publish_in(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    publication: &Publication,
) -> Result<usize, StoreError> {
    Ok(diesel::update(
        artifacts::table
            .filter(artifacts::job_id.eq(job.0))
            .filter(artifacts::attempt.eq(attempt.0)),
    )
    .set((
        artifacts::statement.eq(&publication.statement),
        artifacts::statement_signature.eq(&publication.signature),
        artifacts::published.eq(true),
    ))
    .execute(conn)?)
}

impl Store {
    /// Records an uploaded artifact of the live attempt (fenced), unpublished. Recording the
    /// same name again with the same content is a no-op (an upload retried after a lost
    /// reply); with different content it is [`StoreError::AlreadyExists`].
    pub fn record_artifact(&self, new: &NewArtifact) -> Result<Artifact, StoreError> {
        validate_name(&new.name)?;
        if new.size < 0 {
            return Err(StoreError::InvalidInput("artifact size is negative".into()));
        }
        let now = self.now_ms();
        self.write(|conn| {
            live_attempt(conn, new.job, new.attempt)?;
            let existing = artifacts::table
                .filter(artifacts::job_id.eq(new.job.0))
                .filter(artifacts::attempt.eq(new.attempt.0))
                .filter(artifacts::name.eq(&new.name))
                .select(ArtifactRow::as_select())
                .first(conn)
                .optional()?;
            if let Some(row) = existing {
                if row.sha256 == new.sha256 && row.size == new.size {
                    return Ok(Artifact::from(row));
                }
                return Err(StoreError::AlreadyExists {
                    entity: "artifact",
                    key: format!("{} of job {} attempt {}", new.name, new.job, new.attempt),
                });
            }
            let row = diesel::insert_into(artifacts::table)
                .values((
                    artifacts::job_id.eq(new.job.0),
                    artifacts::attempt.eq(new.attempt.0),
                    artifacts::name.eq(&new.name),
                    artifacts::size.eq(new.size),
                    artifacts::sha256.eq(&new.sha256),
                    artifacts::storage_key.eq(&new.storage_key),
                    artifacts::published.eq(false),
                    artifacts::created_at.eq(now),
                ))
                .returning(<ArtifactRow as Selectable<Db>>::construct_selection())
                .get_result::<ArtifactRow>(conn)?;
            Ok(Artifact::from(row))
        })
    }

    /// Publishes the live attempt's artifacts under a verified statement (fenced). To do it
    /// in the same transaction as the completion, pass the publication in
    /// [`super::Completion`] instead.
    pub fn publish_artifacts(
        &self,
        job: JobId,
        attempt: Attempt,
        publication: &Publication,
    ) -> Result<usize, StoreError> {
        self.write(|conn| {
            live_attempt(conn, job, attempt)?;
            publish_in(conn, job, attempt, publication)
        })
    }

    /// A job's artifacts by attempt then name; only published ones if `published_only`.
    pub fn artifacts(&self, job: JobId, published_only: bool) -> Result<Vec<Artifact>, StoreError> {
        let mut query = artifacts::table
            .filter(artifacts::job_id.eq(job.0))
            .select(ArtifactRow::as_select())
            .into_boxed();
        if published_only {
            query = query.filter(artifacts::published.eq(true));
        }
        Ok(query
            .order((artifacts::attempt.asc(), artifacts::name.asc()))
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(Artifact::from)
            .collect())
    }

    /// The published artifact `name` of the job's latest attempt that published one.
    pub fn artifact(&self, job: JobId, name: &str) -> Result<Option<Artifact>, StoreError> {
        Ok(artifacts::table
            .filter(artifacts::job_id.eq(job.0))
            .filter(artifacts::name.eq(name))
            .filter(artifacts::published.eq(true))
            .order(artifacts::attempt.desc())
            .select(ArtifactRow::as_select())
            .first(&mut *self.conn()?)
            .optional()?
            .map(Artifact::from))
    }
}
