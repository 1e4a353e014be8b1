//! Retention of projects' artifacts and logs: the policies, which finished jobs' data has
//! expired, deleting it in small batches (the janitor, `crate::janitor`), the marks a job keeps
//! of what was deleted, and the bytes each project stores. Deleting rows records their blobs
//! for removal in the same transaction (`blob_deletions.rs`).
//!
//! The bytes a project stores are counted from its rows: the sizes of its jobs' artifact rows
//! and the lengths of their log chunk rows. Sources (shared by digest, of no project) and
//! uploads not yet committed are not counted.
//!
//! A finished job's artifacts (logs) expire once it finished longer ago than the max age, or
//! once it is not among the project's newest `keep_last` finished jobs: either limit deletes.
//! Queued and running jobs are never touched.

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::blob_deletions;
use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::{JobId, ProjectId};
use super::schema::{artifacts, job_expirations, jobs, log_chunks, project_retention};
use super::Store;

/// Longest max age accepted, in days (a century).
pub const MAX_AGE_DAYS: i32 = 36_500;
/// Largest `keep_last` accepted.
pub const MAX_KEEP_LAST: i32 = 1_000_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Limits of one kind of data; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionLimits {
    /// 0: deleted as soon as the job has finished (and the janitor comes by).
    pub max_age_days: Option<i32>,
    pub keep_last: Option<i32>,
}

impl RetentionLimits {
    pub fn is_unlimited(&self) -> bool {
        self.max_age_days.is_none() && self.keep_last.is_none()
    }

    fn check(&self, what: &str) -> Result<(), StoreError> {
        if let Some(days) = self.max_age_days {
            if !(0..=MAX_AGE_DAYS).contains(&days) {
                return Err(StoreError::InvalidInput(format!(
                    "{what}.max_age_days {days} is outside 0..={MAX_AGE_DAYS}"
                )));
            }
        }
        if let Some(keep) = self.keep_last {
            if !(0..=MAX_KEEP_LAST).contains(&keep) {
                return Err(StoreError::InvalidInput(format!(
                    "{what}.keep_last {keep} is outside 0..={MAX_KEEP_LAST}"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub project: ProjectId,
    pub artifacts: RetentionLimits,
    pub logs: RetentionLimits,
    /// `None`: never set (everything is kept).
    pub updated_at: Option<i64>,
}

/// When a job's artifacts and logs were deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredData {
    pub artifacts_expired_at: Option<i64>,
    pub logs_expired_at: Option<i64>,
}

/// Bytes a project stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectUsage {
    pub project: ProjectId,
    pub artifact_bytes: i64,
    pub log_bytes: i64,
}

/// Which kind of data a retention pass deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Artifacts,
    Logs,
}

type RetentionRow = (i64, Option<i32>, Option<i32>, Option<i32>, Option<i32>, i64);

fn retention_from_row(row: RetentionRow) -> Retention {
    let (project, a_age, a_keep, l_age, l_keep, updated_at) = row;
    Retention {
        project: ProjectId(project),
        artifacts: RetentionLimits {
            max_age_days: a_age,
            keep_last: a_keep,
        },
        logs: RetentionLimits {
            max_age_days: l_age,
            keep_last: l_keep,
        },
        updated_at: Some(updated_at),
    }
}

#[derive(QueryableByName)]
struct ProjectBytes {
    #[diesel(sql_type = BigInt)]
    project_id: i64,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

fn bytes_by_project(conn: &mut DbConnection, sql: &str) -> Result<Vec<ProjectBytes>, StoreError> {
    Ok(match conn {
        DbConnection::Postgresql(pg) => diesel::sql_query(sql).load(pg)?,
        DbConnection::Sqlite(lite) => diesel::sql_query(sql).load(lite)?,
    })
}

/// Upserts a job's expiry mark for `kind`.
fn mark_expired(
    conn: &mut DbConnection,
    job: JobId,
    kind: DataKind,
    at: i64,
) -> Result<(), StoreError> {
    let exists = job_expirations::table
        .filter(job_expirations::job_id.eq(job.0))
        .select(job_expirations::job_id)
        .first::<i64>(conn)
        .optional()?
        .is_some();
    if !exists {
        diesel::insert_into(job_expirations::table)
            .values(job_expirations::job_id.eq(job.0))
            .execute(conn)?;
    }
    let target = job_expirations::table.filter(job_expirations::job_id.eq(job.0));
    match kind {
        DataKind::Artifacts => diesel::update(target)
            .set(job_expirations::artifacts_expired_at.eq(Some(at)))
            .execute(conn)?,
        DataKind::Logs => diesel::update(target)
            .set(job_expirations::logs_expired_at.eq(Some(at)))
            .execute(conn)?,
    };
    Ok(())
}

impl Store {
    /// A project's retention; unlimited when never set.
    pub fn retention(&self, project: ProjectId) -> Result<Retention, StoreError> {
        Ok(project_retention::table
            .filter(project_retention::project_id.eq(project.0))
            .first::<RetentionRow>(&mut *self.conn()?)
            .optional()?
            .map(retention_from_row)
            .unwrap_or(Retention {
                project,
                artifacts: RetentionLimits::default(),
                logs: RetentionLimits::default(),
                updated_at: None,
            }))
    }

    pub fn set_retention(
        &self,
        project: ProjectId,
        artifacts: RetentionLimits,
        logs: RetentionLimits,
    ) -> Result<Retention, StoreError> {
        artifacts.check("artifacts")?;
        logs.check("logs")?;
        let now = self.now_ms();
        self.write(|conn| {
            diesel::delete(
                project_retention::table.filter(project_retention::project_id.eq(project.0)),
            )
            .execute(conn)?;
            diesel::insert_into(project_retention::table)
                .values((
                    project_retention::project_id.eq(project.0),
                    project_retention::artifacts_max_age_days.eq(artifacts.max_age_days),
                    project_retention::artifacts_keep_last.eq(artifacts.keep_last),
                    project_retention::logs_max_age_days.eq(logs.max_age_days),
                    project_retention::logs_keep_last.eq(logs.keep_last),
                    project_retention::updated_at.eq(now),
                ))
                .execute(conn)?;
            Ok(())
        })?;
        Ok(Retention {
            project,
            artifacts,
            logs,
            updated_at: Some(now),
        })
    }

    /// The policies that limit something.
    pub fn retention_policies(&self) -> Result<Vec<Retention>, StoreError> {
        Ok(project_retention::table
            .order(project_retention::project_id.asc())
            .load::<RetentionRow>(&mut *self.conn()?)?
            .into_iter()
            .map(retention_from_row)
            .filter(|r| !r.artifacts.is_unlimited() || !r.logs.is_unlimited())
            .collect())
    }

    /// Up to `limit` finished jobs of `project` whose `kind` of data has expired under
    /// `limits` and still exists, oldest first.
    pub fn expired_jobs(
        &self,
        project: ProjectId,
        kind: DataKind,
        limits: RetentionLimits,
        limit: i64,
    ) -> Result<Vec<JobId>, StoreError> {
        if limits.is_unlimited() {
            return Ok(Vec::new());
        }
        let now = self.now_ms();
        let conn = &mut *self.conn()?;
        let finished = || {
            jobs::table
                .filter(jobs::project_id.eq(project.0))
                .filter(jobs::finished_at.is_not_null())
        };
        // The newest finished job outside the kept ones: it and everything older expire.
        let keep_cutoff = match limits.keep_last {
            Some(keep) => finished()
                .order((jobs::finished_at.desc(), jobs::id.desc()))
                .offset(i64::from(keep))
                .select((jobs::finished_at, jobs::id))
                .first::<(Option<i64>, i64)>(conn)
                .optional()?
                .map(|(at, id)| (at.unwrap_or(0), id)),
            None => None,
        };
        let age_cutoff = limits
            .max_age_days
            .map(|days| now - i64::from(days) * DAY_MS);
        if keep_cutoff.is_none() && age_cutoff.is_none() {
            return Ok(Vec::new());
        }
        let mut query = finished().into_boxed();
        query = match (age_cutoff, keep_cutoff) {
            (Some(age), Some((at, id))) => query.filter(
                jobs::finished_at
                    .le(age)
                    .or(jobs::finished_at.lt(at))
                    .or(jobs::finished_at.eq(at).and(jobs::id.le(id))),
            ),
            (Some(age), None) => query.filter(jobs::finished_at.le(age)),
            (None, Some((at, id))) => query.filter(
                jobs::finished_at
                    .lt(at)
                    .or(jobs::finished_at.eq(at).and(jobs::id.le(id))),
            ),
            (None, None) => return Ok(Vec::new()),
        };
        query = match kind {
            DataKind::Artifacts => query.filter(diesel::dsl::exists(
                artifacts::table.filter(artifacts::job_id.eq(jobs::id)),
            )),
            DataKind::Logs => query.filter(diesel::dsl::exists(
                log_chunks::table.filter(log_chunks::job_id.eq(jobs::id)),
            )),
        };
        Ok(query
            .order((jobs::finished_at.asc(), jobs::id.asc()))
            .limit(limit)
            .select(jobs::id)
            .load::<i64>(conn)?
            .into_iter()
            .map(JobId)
            .collect())
    }

    /// Deletes the artifact rows of finished `jobs` and marks them expired, and records their
    /// blobs for removal (leased to the caller until `lease_until`), in one transaction;
    /// answers the keys recorded, which the caller removes after the commit (so a failed
    /// transaction never leaves rows pointing at removed blobs) and then forgets. A job not
    /// finished is left alone.
    pub fn delete_artifacts(
        &self,
        jobs_to_clear: &[JobId],
        lease_until: i64,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.now_ms();
        let ids: Vec<i64> = jobs_to_clear.iter().map(|j| j.0).collect();
        self.write(|conn| {
            let finished: Vec<i64> = jobs::table
                .filter(jobs::id.eq_any(&ids))
                .filter(jobs::finished_at.is_not_null())
                .select(jobs::id)
                .load(conn)?;
            let mut keys: Vec<String> = artifacts::table
                .filter(artifacts::job_id.eq_any(&finished))
                .select(artifacts::storage_key)
                .load(conn)?;
            keys.sort();
            keys.dedup();
            diesel::delete(artifacts::table.filter(artifacts::job_id.eq_any(&finished)))
                .execute(conn)?;
            for job in &finished {
                mark_expired(conn, JobId(*job), DataKind::Artifacts, now)?;
            }
            blob_deletions::record(conn, &keys, now, lease_until)?;
            Ok(keys)
        })
    }

    /// Deletes the log chunk rows of finished `jobs` and marks them expired, in one
    /// transaction that also records for removal each location (a log object, a segment) no
    /// row points into any more, leased to the caller until `lease_until`; answers those.
    pub fn delete_logs(
        &self,
        jobs_to_clear: &[JobId],
        lease_until: i64,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.now_ms();
        let ids: Vec<i64> = jobs_to_clear.iter().map(|j| j.0).collect();
        self.write(|conn| {
            let finished: Vec<i64> = jobs::table
                .filter(jobs::id.eq_any(&ids))
                .filter(jobs::finished_at.is_not_null())
                .select(jobs::id)
                .load(conn)?;
            let mut locations: Vec<String> = log_chunks::table
                .filter(log_chunks::job_id.eq_any(&finished))
                .select(log_chunks::location)
                .distinct()
                .load(conn)?;
            locations.sort();
            diesel::delete(log_chunks::table.filter(log_chunks::job_id.eq_any(&finished)))
                .execute(conn)?;
            for job in &finished {
                mark_expired(conn, JobId(*job), DataKind::Logs, now)?;
            }
            // A shared segment other jobs' rows still point into stays; it is recorded when
            // the last of them goes.
            let used = blob_deletions::log_locations_in_use(conn, &locations)?;
            let unused: Vec<String> = locations
                .into_iter()
                .filter(|l| !used.contains(l))
                .collect();
            blob_deletions::record(conn, &unused, now, lease_until)?;
            Ok(unused)
        })
    }

    /// What of a job's data was deleted.
    pub fn job_expiry(&self, job: JobId) -> Result<ExpiredData, StoreError> {
        Ok(job_expirations::table
            .filter(job_expirations::job_id.eq(job.0))
            .select((
                job_expirations::artifacts_expired_at,
                job_expirations::logs_expired_at,
            ))
            .first::<(Option<i64>, Option<i64>)>(&mut *self.conn()?)
            .optional()?
            .map(|(a, l)| ExpiredData {
                artifacts_expired_at: a,
                logs_expired_at: l,
            })
            .unwrap_or_default())
    }

    /// Bytes of artifacts and logs stored per project (projects storing nothing are absent).
    pub fn project_usage(&self) -> Result<Vec<ProjectUsage>, StoreError> {
        let conn = &mut *self.conn()?;
        let artifacts = bytes_by_project(
            conn,
            "SELECT jobs.project_id AS project_id, \
             CAST(COALESCE(SUM(artifacts.size), 0) AS BIGINT) AS bytes \
             FROM artifacts JOIN jobs ON jobs.id = artifacts.job_id GROUP BY jobs.project_id",
        )?;
        let logs = bytes_by_project(
            conn,
            "SELECT jobs.project_id AS project_id, \
             CAST(COALESCE(SUM(log_chunks.length), 0) AS BIGINT) AS bytes \
             FROM log_chunks JOIN jobs ON jobs.id = log_chunks.job_id GROUP BY jobs.project_id",
        )?;
        let mut usage: std::collections::BTreeMap<i64, ProjectUsage> = Default::default();
        for row in artifacts {
            usage
                .entry(row.project_id)
                .or_insert_with(|| ProjectUsage {
                    project: ProjectId(row.project_id),
                    artifact_bytes: 0,
                    log_bytes: 0,
                })
                .artifact_bytes = row.bytes;
        }
        for row in logs {
            usage
                .entry(row.project_id)
                .or_insert_with(|| ProjectUsage {
                    project: ProjectId(row.project_id),
                    artifact_bytes: 0,
                    log_bytes: 0,
                })
                .log_bytes = row.bytes;
        }
        Ok(usage.into_values().collect())
    }
}
