//! Which jobs published an artifact with a given SHA-256 (`buildfleet verify FILE` finds the
//! statement of a file it has only the bytes of).

use diesel::prelude::*;

use super::error::StoreError;
use super::ids::{Attempt, JobId, ProjectId};
use super::schema::{artifacts, jobs};
use super::Store;

/// A published artifact with the digest asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedArtifact {
    pub job: JobId,
    pub project: ProjectId,
    pub attempt: Attempt,
    pub name: String,
}

/// At most this many matches are returned (newest jobs first).
pub const MAX_DIGEST_MATCHES: i64 = 100;

impl Store {
    /// The published artifacts whose SHA-256 is `sha256` (lowercase hex), newest job first,
    /// with each job's project so the caller can leave out what its reader may not see.
    pub fn published_artifacts_by_sha256(
        &self,
        sha256: &str,
    ) -> Result<Vec<PublishedArtifact>, StoreError> {
        let rows: Vec<(i64, i64, i32, String)> = artifacts::table
            .inner_join(jobs::table)
            .filter(artifacts::sha256.eq(sha256))
            .filter(artifacts::published.eq(true))
            .order((artifacts::job_id.desc(), artifacts::name.asc()))
            .limit(MAX_DIGEST_MATCHES)
            .select((
                artifacts::job_id,
                jobs::project_id,
                artifacts::attempt,
                artifacts::name,
            ))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(job, project, attempt, name)| PublishedArtifact {
                job: JobId(job),
                project: ProjectId(project),
                attempt: Attempt(attempt),
                name,
            })
            .collect())
    }
}
