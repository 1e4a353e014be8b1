//! Admitted builders: identity (SSH key fingerprint), labels, enabled flag, last contact, and
//! the operator's pause or drain.

use buildfleet_protocol::ControlCommand;
use diesel::prelude::*;
use serde::Serialize;

use super::builder_keys::{self, key_holder, record_key};
use super::connection::{Db, DbConnection};
use super::error::StoreError;
use super::ids::BuilderId;
use super::labels::{self, Labels};
use super::schema::{builders, job_attempts};
use super::Store;

/// A builder an operator admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Builder {
    pub id: BuilderId,
    pub name: String,
    /// The OpenSSH public key line, as admitted.
    pub public_key: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    pub enabled: bool,
    pub labels: Labels,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    /// The operator's pause or drain, kept across the builder's sessions and backend restarts.
    pub control: BuilderControl,
}

/// A builder's standing as the operator set it: pause, drain, or neither (resume clears both).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuilderControl {
    pub paused: bool,
    pub draining: bool,
}

impl BuilderControl {
    /// The standing after an operator's command.
    pub fn after(self, command: ControlCommand) -> BuilderControl {
        match command {
            ControlCommand::Drain => BuilderControl {
                draining: true,
                ..self
            },
            ControlCommand::Pause => BuilderControl {
                paused: true,
                ..self
            },
            ControlCommand::Resume => BuilderControl::default(),
        }
    }

    /// The one command that brings a builder to this standing: pause over drain over resume.
    pub fn command(self) -> ControlCommand {
        match (self.paused, self.draining) {
            (true, _) => ControlCommand::Pause,
            (false, true) => ControlCommand::Drain,
            (false, false) => ControlCommand::Resume,
        }
    }

    /// The `builders.control` column: NULL when the builder takes jobs.
    fn encode(self) -> Option<&'static str> {
        match (self.paused, self.draining) {
            (false, false) => None,
            (true, false) => Some("paused"),
            (false, true) => Some("draining"),
            (true, true) => Some("paused,draining"),
        }
    }

    fn decode(column: Option<&str>) -> Result<BuilderControl, StoreError> {
        let (paused, draining) = match column {
            None => (false, false),
            Some("paused") => (true, false),
            Some("draining") => (false, true),
            Some("paused,draining") => (true, true),
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "builders.control: {other:?} is not paused, draining or paused,draining"
                )))
            }
        };
        Ok(BuilderControl { paused, draining })
    }
}

/// What an operator admits. The store does not parse keys: the caller passes the key and its
/// fingerprint.
#[derive(Debug, Clone)]
pub struct NewBuilder {
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub labels: Labels,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = builders)]
struct BuilderRow {
    id: i64,
    name: String,
    public_key: String,
    fingerprint: String,
    enabled: bool,
    labels: String,
    created_at: i64,
    last_seen_at: Option<i64>,
    control: Option<String>,
}

impl TryFrom<BuilderRow> for Builder {
    type Error = StoreError;

    fn try_from(row: BuilderRow) -> Result<Self, StoreError> {
        Ok(Builder {
            id: BuilderId(row.id),
            labels: labels::decode("builders.labels", &row.labels)?,
            control: BuilderControl::decode(row.control.as_deref())?,
            name: row.name,
            public_key: row.public_key,
            fingerprint: row.fingerprint,
            enabled: row.enabled,
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
        })
    }
}

fn load_one(
    conn: &mut DbConnection,
    query: builders::BoxedQuery<'_, Db>,
) -> Result<Option<Builder>, StoreError> {
    query
        .select(BuilderRow::as_select())
        .first(conn)
        .optional()?
        .map(Builder::try_from)
        .transpose()
}

pub(crate) fn require_builder(
    conn: &mut DbConnection,
    id: BuilderId,
) -> Result<Builder, StoreError> {
    load_one(
        conn,
        builders::table.filter(builders::id.eq(id.0)).into_boxed(),
    )?
    .ok_or_else(|| StoreError::not_found("builder", id))
}

impl Store {
    /// Admits a builder, enabled. Names and fingerprints are unique.
    pub fn admit_builder(&self, new: NewBuilder) -> Result<Builder, StoreError> {
        if new.name.trim().is_empty() {
            return Err(StoreError::InvalidInput("builder name is empty".into()));
        }
        if !new.fingerprint.starts_with("SHA256:") {
            return Err(StoreError::InvalidInput(format!(
                "fingerprint {:?} is not of the form SHA256:…",
                new.fingerprint
            )));
        }
        let now = self.now_ms();
        let labels = labels::encode(&new.labels)?;
        self.write(|conn| {
            let taken = holder_of(conn, &new.name, &new.fingerprint)?;
            if let Some((name, _)) = taken {
                let key = if name == new.name {
                    format!("named {name:?}")
                } else {
                    format!("with fingerprint {}", new.fingerprint)
                };
                return Err(StoreError::AlreadyExists {
                    entity: "builder",
                    key,
                });
            }
            let row = diesel::insert_into(builders::table)
                .values((
                    builders::name.eq(&new.name),
                    builders::public_key.eq(&new.public_key),
                    builders::fingerprint.eq(&new.fingerprint),
                    builders::enabled.eq(true),
                    builders::labels.eq(&labels),
                    builders::created_at.eq(now),
                ))
                .returning(<BuilderRow as Selectable<Db>>::construct_selection())
                .get_result::<BuilderRow>(conn)?;
            // The first entry of the builder's key history, valid from its admission.
            record_key(
                conn,
                BuilderId(row.id),
                &new.public_key,
                &new.fingerprint,
                now,
            )?;
            Builder::try_from(row)
        })
    }

    pub fn builder_by_id(&self, id: BuilderId) -> Result<Option<Builder>, StoreError> {
        load_one(
            &mut *self.conn()?,
            builders::table.filter(builders::id.eq(id.0)).into_boxed(),
        )
    }

    pub fn builder_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Builder>, StoreError> {
        load_one(
            &mut *self.conn()?,
            builders::table
                .filter(builders::fingerprint.eq(fingerprint))
                .into_boxed(),
        )
    }

    /// The builder that authenticates with `fingerprint`: its current key, unless revoked (a
    /// revoked key authenticates no one; a rotated-out key is no longer the builder's
    /// fingerprint at all).
    pub fn builder_to_authenticate(
        &self,
        fingerprint: &str,
    ) -> Result<Option<Builder>, StoreError> {
        let mut conn = self.conn()?;
        let builder = load_one(
            &mut conn,
            builders::table
                .filter(builders::fingerprint.eq(fingerprint))
                .into_boxed(),
        )?;
        match builder {
            Some(b) if !builder_keys::is_revoked(&mut conn, fingerprint)? => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    pub fn builder_by_name(&self, name: &str) -> Result<Option<Builder>, StoreError> {
        load_one(
            &mut *self.conn()?,
            builders::table.filter(builders::name.eq(name)).into_boxed(),
        )
    }

    /// All builders, by name.
    pub fn list_builders(&self) -> Result<Vec<Builder>, StoreError> {
        builders::table
            .order(builders::name.asc())
            .select(BuilderRow::as_select())
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(Builder::try_from)
            .collect()
    }

    /// Enables or disables a builder. A disabled builder keeps its running attempts but is
    /// handed no new work.
    pub fn set_builder_enabled(&self, id: BuilderId, enabled: bool) -> Result<Builder, StoreError> {
        self.update_builder(id, |conn| {
            diesel::update(builders::table.find(id.0))
                .set(builders::enabled.eq(enabled))
                .execute(conn)
        })
    }

    /// Applies an operator's pause, drain or resume to the stored standing and returns the
    /// builder with its new standing (the scheduler is told after this commits).
    pub fn control_builder(
        &self,
        id: BuilderId,
        command: ControlCommand,
    ) -> Result<Builder, StoreError> {
        self.write(|conn| {
            let standing = require_builder(conn, id)?.control.after(command);
            diesel::update(builders::table.find(id.0))
                .set(builders::control.eq(standing.encode()))
                .execute(conn)?;
            require_builder(conn, id)
        })
    }

    /// Replaces a builder's labels (builders announce them when they connect).
    pub fn set_builder_labels(
        &self,
        id: BuilderId,
        labels: &Labels,
    ) -> Result<Builder, StoreError> {
        let encoded = labels::encode(labels)?;
        self.update_builder(id, |conn| {
            diesel::update(builders::table.find(id.0))
                .set(builders::labels.eq(&encoded))
                .execute(conn)
        })
    }

    /// Records contact from a builder now.
    pub fn touch_builder_last_seen(&self, id: BuilderId) -> Result<(), StoreError> {
        let now = self.now_ms();
        let updated = self.write(|conn| {
            Ok(diesel::update(builders::table.find(id.0))
                .set(builders::last_seen_at.eq(now))
                .execute(conn)?)
        })?;
        if updated == 0 {
            return Err(StoreError::not_found("builder", id));
        }
        Ok(())
    }

    /// Records contact from many builders at `at_ms` in one statement (the scheduler flushes
    /// the contacts it saw since its last sweep). Builders removed meanwhile are skipped.
    /// Returns how many rows it updated.
    pub fn touch_builders_last_seen(
        &self,
        ids: &[BuilderId],
        at_ms: i64,
    ) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        self.write(|conn| {
            let mut updated = 0;
            // Bounded statements: SQLite limits the number of bound parameters.
            for chunk in ids.chunks(500) {
                updated += diesel::update(builders::table.filter(builders::id.eq_any(chunk)))
                    .set(builders::last_seen_at.eq(at_ms))
                    .execute(conn)?;
            }
            Ok(updated)
        })
    }

    /// Removes a builder. Refused with [`StoreError::BuilderBusy`] while it holds live
    /// attempts: disable it first and let its leases end (or requeue), so no job is left
    /// pointing at a builder that no longer exists. Past attempts keep their history with the
    /// builder reference cleared.
    pub fn remove_builder(&self, id: BuilderId) -> Result<(), StoreError> {
        self.write(|conn| {
            require_builder(conn, id)?;
            let active: i64 = job_attempts::table
                .filter(job_attempts::builder_id.eq(id.0))
                .filter(job_attempts::finished_at.is_null())
                .count()
                .get_result(conn)?;
            if active > 0 {
                return Err(StoreError::BuilderBusy {
                    builder: id,
                    active: usize::try_from(active).unwrap_or(usize::MAX),
                });
            }
            diesel::delete(builders::table.find(id.0)).execute(conn)?;
            Ok(())
        })
    }

    fn update_builder(
        &self,
        id: BuilderId,
        mut update: impl FnMut(&mut DbConnection) -> QueryResult<usize>,
    ) -> Result<Builder, StoreError> {
        self.write(|conn| {
            if update(conn)? == 0 {
                return Err(StoreError::not_found("builder", id));
            }
            require_builder(conn, id)
        })
    }
}

/// The `(name, fingerprint)` of a builder that already holds `name` or the key `fingerprint`
/// (now or in its key history: a fingerprint names one builder for good).
pub(crate) fn holder_of(
    conn: &mut DbConnection,
    name: &str,
    fingerprint: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let holder = builders::table
        .filter(
            builders::name
                .eq(name)
                .or(builders::fingerprint.eq(fingerprint)),
        )
        .select((builders::name, builders::fingerprint))
        .first(conn)
        .optional()?;
    match holder {
        Some(holder) => Ok(Some(holder)),
        None => Ok(key_holder(conn, fingerprint)?.map(|name| (name, fingerprint.to_owned()))),
    }
}
