//! The registry follower's records: the crate versions it has seen, the builds it queued
//! (each (crate, version, target, recipe) at most once) and where it stands in the index.
//! Discovery and queueing happen in one transaction, so whichever fetch or replica records
//! a version first queues its builds, and nobody queues them twice.

use diesel::prelude::*;

use super::error::StoreError;
use super::jobs::{insert_job, validate, Job, NewJob};
use super::schema::{registry_builds, registry_cursors, registry_versions};
use super::{DbConnection, Store};

/// One version as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexVersion {
    pub version: String,
    /// Lowercase hex SHA-256 of the `.crate` file, from the index's `cksum`.
    pub cksum: String,
    pub yanked: bool,
}

/// What to do with a version seen for the first time and not yanked.
#[derive(Debug, Clone)]
pub enum FirstSight {
    /// It was in the index before following began: remember it, build it only on backfill.
    Existing,
    /// Not built, for this reason (a deny list).
    Skipped(String),
    /// Queue these builds.
    Build(Vec<RegistryBuild>),
}

/// One build of a crate version: the job, and the target it is for (empty: the builder's
/// own) for de-duplication.
#[derive(Debug, Clone)]
pub struct RegistryBuild {
    pub target: String,
    pub job: NewJob,
}

#[derive(Debug, Clone)]
pub struct Observation {
    pub version: IndexVersion,
    pub first_sight: FirstSight,
}

/// A version's standing with the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    Existing,
    /// Its metadata job is queued or running.
    Queued,
    /// The builds its metadata asked for are queued.
    Planned,
    /// It has no binaries: nothing to build.
    Library,
    /// Its metadata job failed.
    Failed,
    Skipped,
    Yanked,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Existing => "existing",
            VersionStatus::Queued => "queued",
            VersionStatus::Planned => "planned",
            VersionStatus::Library => "library",
            VersionStatus::Failed => "failed",
            VersionStatus::Skipped => "skipped",
            VersionStatus::Yanked => "yanked",
        }
    }

    fn parse(raw: &str) -> Result<Self, StoreError> {
        Ok(match raw {
            "existing" => VersionStatus::Existing,
            "queued" => VersionStatus::Queued,
            "planned" => VersionStatus::Planned,
            "library" => VersionStatus::Library,
            "failed" => VersionStatus::Failed,
            "skipped" => VersionStatus::Skipped,
            "yanked" => VersionStatus::Yanked,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "registry_versions.status {other:?}"
                )))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryVersion {
    pub crate_name: String,
    pub version: String,
    pub cksum: String,
    pub yanked: bool,
    pub status: VersionStatus,
    pub reason: Option<String>,
    pub seen_at: i64,
}

/// A queued build of a crate version, and its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryBuildRow {
    pub crate_name: String,
    pub version: String,
    pub target: String,
    pub recipe: String,
    pub job_id: i64,
    pub backfill: bool,
}

/// What a version's metadata decided.
#[derive(Debug, Clone)]
pub enum VersionPlan {
    Builds(Vec<RegistryBuild>),
    /// No binaries to build.
    Library,
    /// The metadata job failed, or its output could not be read.
    Failed(String),
}

/// A version whose metadata job was queued, waiting for its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitingPlan {
    pub crate_name: String,
    pub version: String,
    pub cksum: String,
    pub metadata_job: i64,
    /// The metadata job came from a backfill; so do its follow-ups.
    pub backfill: bool,
}

#[derive(Queryable)]
struct VersionRow {
    crate_name: String,
    version: String,
    cksum: String,
    yanked: bool,
    status: String,
    reason: Option<String>,
    seen_at: i64,
}

impl TryFrom<VersionRow> for RegistryVersion {
    type Error = StoreError;

    fn try_from(row: VersionRow) -> Result<Self, StoreError> {
        Ok(RegistryVersion {
            status: VersionStatus::parse(&row.status)?,
            crate_name: row.crate_name,
            version: row.version,
            cksum: row.cksum,
            yanked: row.yanked,
            reason: row.reason,
            seen_at: row.seen_at,
        })
    }
}

impl Store {
    /// Records what the index lists for `krate`: a version seen before only has its
    /// `yanked` flag brought up to date; a new one is recorded (yanked ones as such, never
    /// built) and handled as its [`FirstSight`] says. Returns the jobs queued.
    pub fn record_versions(
        &self,
        registry: &str,
        krate: &str,
        observations: &[Observation],
    ) -> Result<Vec<Job>, StoreError> {
        for observation in observations {
            if let FirstSight::Build(builds) = &observation.first_sight {
                for build in builds {
                    validate(&build.job)?;
                }
            }
        }
        let now = self.now_ms();
        let attempt = || {
            self.write(|conn| {
                let mut queued = Vec::new();
                for observation in observations {
                    queued.extend(record_one(conn, registry, krate, observation, now)?);
                }
                Ok(queued)
            })
        };
        // Two replicas recorded the same version at once (PostgreSQL): the loser's second
        // run finds the winner's row and queues nothing.
        match attempt() {
            Err(StoreError::AlreadyExists { .. }) => attempt(),
            other => other,
        }
    }

    /// Queues the builds of an existing version that are not queued yet (a backfill).
    /// Returns the jobs queued; none when every build was queued before.
    pub fn backfill_version(
        &self,
        registry: &str,
        krate: &str,
        version: &IndexVersion,
        builds: &[RegistryBuild],
    ) -> Result<Vec<Job>, StoreError> {
        for build in builds {
            validate(&build.job)?;
        }
        let now = self.now_ms();
        let attempt = || {
            self.write(|conn| {
                if find_version(conn, registry, krate, &version.version)?.is_none() {
                    insert_version(
                        conn,
                        registry,
                        krate,
                        version,
                        VersionStatus::Existing,
                        None,
                        now,
                    )?;
                }
                let queued = queue_builds(
                    conn,
                    registry,
                    krate,
                    &version.version,
                    builds,
                    BuildOrigin {
                        backfill: true,
                        parent: None,
                    },
                    now,
                )?;
                if !queued.is_empty() {
                    // Its builds follow from the metadata job just queued.
                    diesel::update(registry_versions::table.find((
                        registry,
                        krate,
                        &version.version,
                    )))
                    .set((
                        registry_versions::status.eq(VersionStatus::Queued.as_str()),
                        registry_versions::reason.eq(None::<String>),
                    ))
                    .execute(conn)?;
                }
                Ok(queued)
            })
        };
        match attempt() {
            Err(StoreError::AlreadyExists { .. }) => attempt(),
            other => other,
        }
    }

    /// The versions of `krate` the follower has seen, newest first by when it saw them.
    pub fn registry_versions(
        &self,
        registry: &str,
        krate: &str,
    ) -> Result<Vec<RegistryVersion>, StoreError> {
        registry_versions::table
            .filter(registry_versions::registry.eq(registry))
            .filter(registry_versions::crate_name.eq(krate))
            .order((
                registry_versions::seen_at.desc(),
                registry_versions::version.desc(),
            ))
            .select(version_columns())
            .load::<VersionRow>(&mut *self.conn()?)?
            .into_iter()
            .map(RegistryVersion::try_from)
            .collect()
    }

    /// The latest `limit` versions with `status`, newest first.
    pub fn registry_versions_with_status(
        &self,
        registry: &str,
        status: VersionStatus,
        limit: i64,
    ) -> Result<Vec<RegistryVersion>, StoreError> {
        registry_versions::table
            .filter(registry_versions::registry.eq(registry))
            .filter(registry_versions::status.eq(status.as_str()))
            .order(registry_versions::seen_at.desc())
            .limit(limit)
            .select(version_columns())
            .load::<VersionRow>(&mut *self.conn()?)?
            .into_iter()
            .map(RegistryVersion::try_from)
            .collect()
    }

    /// The builds queued for `krate`, by version, target and recipe.
    pub fn registry_builds(
        &self,
        registry: &str,
        krate: &str,
    ) -> Result<Vec<RegistryBuildRow>, StoreError> {
        Ok(registry_builds::table
            .filter(registry_builds::registry.eq(registry))
            .filter(registry_builds::crate_name.eq(krate))
            .order(registry_builds::job_id.desc())
            .select((
                registry_builds::crate_name,
                registry_builds::version,
                registry_builds::target,
                registry_builds::recipe,
                registry_builds::job_id,
                registry_builds::backfill,
            ))
            .load::<(String, String, String, String, i64, bool)>(&mut *self.conn()?)?
            .into_iter()
            .map(
                |(crate_name, version, target, recipe, job_id, backfill)| RegistryBuildRow {
                    crate_name,
                    version,
                    target,
                    recipe,
                    job_id,
                    backfill,
                },
            )
            .collect())
    }

    /// Versions whose metadata job was queued and whose plan is not recorded yet, oldest
    /// first, at most `limit`.
    pub fn awaiting_plan(
        &self,
        registry: &str,
        metadata_recipe: &str,
        limit: i64,
    ) -> Result<Vec<AwaitingPlan>, StoreError> {
        let mut conn = self.conn()?;
        let queued: Vec<(String, String, String)> = registry_versions::table
            .filter(registry_versions::registry.eq(registry))
            .filter(registry_versions::status.eq(VersionStatus::Queued.as_str()))
            .order(registry_versions::seen_at.asc())
            .limit(limit)
            .select((
                registry_versions::crate_name,
                registry_versions::version,
                registry_versions::cksum,
            ))
            .load(&mut *conn)?;
        let mut awaiting = Vec::new();
        for (crate_name, version, cksum) in queued {
            let job: Option<(i64, bool)> = registry_builds::table
                .filter(registry_builds::registry.eq(registry))
                .filter(registry_builds::crate_name.eq(&crate_name))
                .filter(registry_builds::version.eq(&version))
                .filter(registry_builds::recipe.eq(metadata_recipe))
                .select((registry_builds::job_id, registry_builds::backfill))
                .first(&mut *conn)
                .optional()?;
            if let Some((metadata_job, backfill)) = job {
                awaiting.push(AwaitingPlan {
                    crate_name,
                    version,
                    cksum,
                    metadata_job,
                    backfill,
                });
            }
        }
        Ok(awaiting)
    }

    /// Records a version's plan and queues its builds as follow-ups of its metadata job, once:
    /// a version no longer awaiting its plan (another replica recorded it) is left alone.
    pub fn plan_version(
        &self,
        registry: &str,
        awaiting: &AwaitingPlan,
        plan: &VersionPlan,
    ) -> Result<Vec<Job>, StoreError> {
        if let VersionPlan::Builds(builds) = plan {
            for build in builds {
                validate(&build.job)?;
            }
        }
        let now = self.now_ms();
        let key = (
            registry,
            awaiting.crate_name.as_str(),
            awaiting.version.as_str(),
        );
        let attempt = || {
            self.write(|conn| {
                let current = find_version(conn, registry, key.1, key.2)?;
                if current.map(|v| v.status) != Some(VersionStatus::Queued) {
                    return Ok(Vec::new());
                }
                let (status, reason, queued) = match plan {
                    VersionPlan::Builds(builds) => {
                        let queued = queue_builds(
                            conn,
                            registry,
                            key.1,
                            key.2,
                            builds,
                            BuildOrigin {
                                backfill: false,
                                parent: Some(awaiting.metadata_job),
                            },
                            now,
                        )?;
                        (VersionStatus::Planned, None, queued)
                    }
                    VersionPlan::Library => (
                        VersionStatus::Library,
                        Some("no binaries to build".to_owned()),
                        Vec::new(),
                    ),
                    VersionPlan::Failed(reason) => {
                        (VersionStatus::Failed, Some(reason.clone()), Vec::new())
                    }
                };
                diesel::update(registry_versions::table.find(key))
                    .set((
                        registry_versions::status.eq(status.as_str()),
                        registry_versions::reason.eq(reason),
                    ))
                    .execute(conn)?;
                Ok(queued)
            })
        };
        match attempt() {
            Err(StoreError::AlreadyExists { .. }) => attempt(),
            other => other,
        }
    }

    /// A registry job's place in its chain: the job it follows from, and its follow-ups.
    pub fn job_chain(&self, job: i64) -> Result<(Option<i64>, Vec<i64>), StoreError> {
        let mut conn = self.conn()?;
        let parent: Option<Option<i64>> = registry_builds::table
            .filter(registry_builds::job_id.eq(job))
            .select(registry_builds::parent_job_id)
            .first(&mut *conn)
            .optional()?;
        let children = registry_builds::table
            .filter(registry_builds::parent_job_id.eq(job))
            .order(registry_builds::job_id.asc())
            .select(registry_builds::job_id)
            .load(&mut *conn)?;
        Ok((parent.flatten(), children))
    }

    /// The jobs of a version's builds for `target`, newest first.
    pub fn registry_build_jobs(
        &self,
        registry: &str,
        krate: &str,
        version: &str,
        target: &str,
    ) -> Result<Vec<i64>, StoreError> {
        Ok(registry_builds::table
            .filter(registry_builds::registry.eq(registry))
            .filter(registry_builds::crate_name.eq(krate))
            .filter(registry_builds::version.eq(version))
            .filter(registry_builds::target.eq(target))
            .order(registry_builds::job_id.desc())
            .select(registry_builds::job_id)
            .load(&mut *self.conn()?)?)
    }

    pub fn registry_cursor(
        &self,
        registry: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(registry_cursors::table
            .find((registry, name))
            .select(registry_cursors::value)
            .first(&mut *self.conn()?)
            .optional()?)
    }

    /// Every cursor of `registry` with when it was written.
    pub fn registry_cursors(
        &self,
        registry: &str,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(registry_cursors::table
            .filter(registry_cursors::registry.eq(registry))
            .order(registry_cursors::name.asc())
            .select((
                registry_cursors::name,
                registry_cursors::value,
                registry_cursors::updated_at,
            ))
            .load(&mut *self.conn()?)?)
    }

    pub fn set_registry_cursor(
        &self,
        registry: &str,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let updated = diesel::update(registry_cursors::table.find((registry, name)))
                .set((
                    registry_cursors::value.eq(value),
                    registry_cursors::updated_at.eq(now),
                ))
                .execute(conn)?;
            if updated == 0 {
                diesel::insert_into(registry_cursors::table)
                    .values((
                        registry_cursors::registry.eq(registry),
                        registry_cursors::name.eq(name),
                        registry_cursors::value.eq(value),
                        registry_cursors::updated_at.eq(now),
                    ))
                    .execute(conn)?;
            }
            Ok(())
        })
    }

    pub fn delete_registry_cursor(&self, registry: &str, name: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            diesel::delete(registry_cursors::table.find((registry, name))).execute(conn)?;
            Ok(())
        })
    }
}

#[allow(clippy::type_complexity)]
fn version_columns() -> (
    registry_versions::crate_name,
    registry_versions::version,
    registry_versions::cksum,
    registry_versions::yanked,
    registry_versions::status,
    registry_versions::reason,
    registry_versions::seen_at,
) {
    (
        registry_versions::crate_name,
        registry_versions::version,
        registry_versions::cksum,
        registry_versions::yanked,
        registry_versions::status,
        registry_versions::reason,
        registry_versions::seen_at,
    )
}

fn record_one(
    conn: &mut DbConnection,
    registry: &str,
    krate: &str,
    observation: &Observation,
    now: i64,
) -> Result<Vec<Job>, StoreError> {
    let version = &observation.version;
    if let Some(known) = find_version(conn, registry, krate, &version.version)? {
        if known.yanked != version.yanked {
            diesel::update(registry_versions::table.find((registry, krate, &version.version)))
                .set(registry_versions::yanked.eq(version.yanked))
                .execute(conn)?;
        }
        return Ok(Vec::new());
    }
    if version.yanked {
        insert_version(
            conn,
            registry,
            krate,
            version,
            VersionStatus::Yanked,
            None,
            now,
        )?;
        return Ok(Vec::new());
    }
    match &observation.first_sight {
        FirstSight::Existing => {
            insert_version(
                conn,
                registry,
                krate,
                version,
                VersionStatus::Existing,
                None,
                now,
            )?;
            Ok(Vec::new())
        }
        FirstSight::Skipped(reason) => {
            insert_version(
                conn,
                registry,
                krate,
                version,
                VersionStatus::Skipped,
                Some(reason),
                now,
            )?;
            Ok(Vec::new())
        }
        FirstSight::Build(builds) => {
            insert_version(
                conn,
                registry,
                krate,
                version,
                VersionStatus::Queued,
                None,
                now,
            )?;
            queue_builds(
                conn,
                registry,
                krate,
                &version.version,
                builds,
                BuildOrigin {
                    backfill: false,
                    parent: None,
                },
                now,
            )
        }
    }
}

fn find_version(
    conn: &mut DbConnection,
    registry: &str,
    krate: &str,
    version: &str,
) -> Result<Option<RegistryVersion>, StoreError> {
    registry_versions::table
        .find((registry, krate, version))
        .select(version_columns())
        .first::<VersionRow>(conn)
        .optional()?
        .map(RegistryVersion::try_from)
        .transpose()
}

fn insert_version(
    conn: &mut DbConnection,
    registry: &str,
    krate: &str,
    version: &IndexVersion,
    status: VersionStatus,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    diesel::insert_into(registry_versions::table)
        .values((
            registry_versions::registry.eq(registry),
            registry_versions::crate_name.eq(krate),
            registry_versions::version.eq(&version.version),
            registry_versions::cksum.eq(&version.cksum),
            registry_versions::yanked.eq(version.yanked),
            registry_versions::status.eq(status.as_str()),
            registry_versions::reason.eq(reason),
            registry_versions::seen_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Why builds are queued: a backfill or not, and the job they follow from.
#[derive(Debug, Clone, Copy)]
struct BuildOrigin {
    backfill: bool,
    parent: Option<i64>,
}

/// Inserts the jobs of the builds not queued before; returns them.
fn queue_builds(
    conn: &mut DbConnection,
    registry: &str,
    krate: &str,
    version: &str,
    builds: &[RegistryBuild],
    origin: BuildOrigin,
    now: i64,
) -> Result<Vec<Job>, StoreError> {
    let mut queued = Vec::new();
    for build in builds {
        let key = (
            registry,
            krate,
            version,
            build.target.as_str(),
            build.job.recipe.as_str(),
        );
        let exists = registry_builds::table
            .find(key)
            .select(registry_builds::job_id)
            .first::<i64>(conn)
            .optional()?
            .is_some();
        if exists {
            continue;
        }
        let job = insert_job(conn, &build.job, now)?;
        diesel::insert_into(registry_builds::table)
            .values((
                registry_builds::registry.eq(registry),
                registry_builds::crate_name.eq(krate),
                registry_builds::version.eq(version),
                registry_builds::target.eq(&build.target),
                registry_builds::recipe.eq(&build.job.recipe),
                registry_builds::job_id.eq(job.id.0),
                registry_builds::backfill.eq(origin.backfill),
                registry_builds::parent_job_id.eq(origin.parent),
            ))
            .execute(conn)?;
        queued.push(job);
    }
    Ok(queued)
}
