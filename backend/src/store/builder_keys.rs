//! A builder's keys over time (issue 19 item 4): every key a builder ever had, each valid
//! from `valid_after` until `valid_before` (none: the key it authenticates with now), and
//! possibly revoked with a reason. `builders.public_key`/`fingerprint` mirror the current key.
//!
//! The allowed-signers file lists every key that is not revoked with its validity, so a
//! statement signed before a rotation keeps verifying at its signing time; a revoked key is
//! left out, so what it signed no longer verifies.

use diesel::prelude::*;
use serde::Serialize;

use super::builders::require_builder;
use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::BuilderId;
use super::schema::{builder_keys, builders};
use super::{Builder, Store};

/// Longest revocation reason kept, in bytes.
pub const MAX_REVOKE_REASON_BYTES: usize = 500;

/// One key of a builder's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuilderKey {
    pub builder: BuilderId,
    /// The OpenSSH public key line, as admitted.
    pub public_key: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// Unix milliseconds from which the key signs for the builder.
    pub valid_after: i64,
    /// Unix milliseconds until which it did (set when it was rotated out); none while current.
    pub valid_before: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

impl BuilderKey {
    /// The key the builder authenticates with now: not rotated out and not revoked.
    pub fn is_current(&self) -> bool {
        self.valid_before.is_none() && self.revoked_at.is_none()
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = builder_keys)]
struct KeyRow {
    builder_id: i64,
    public_key: String,
    fingerprint: String,
    valid_after: i64,
    valid_before: Option<i64>,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
}

impl From<KeyRow> for BuilderKey {
    fn from(row: KeyRow) -> Self {
        BuilderKey {
            builder: BuilderId(row.builder_id),
            public_key: row.public_key,
            fingerprint: row.fingerprint,
            valid_after: row.valid_after,
            valid_before: row.valid_before,
            revoked_at: row.revoked_at,
            revoked_reason: row.revoked_reason,
        }
    }
}

/// Records `fingerprint` as a key of `builder` valid from `at` (admission, enrolment and
/// rotation call it in their transaction).
pub(crate) fn record_key(
    conn: &mut DbConnection,
    builder: BuilderId,
    public_key: &str,
    fingerprint: &str,
    at: i64,
) -> Result<(), StoreError> {
    diesel::insert_into(builder_keys::table)
        .values((
            builder_keys::builder_id.eq(builder.0),
            builder_keys::public_key.eq(public_key),
            builder_keys::fingerprint.eq(fingerprint),
            builder_keys::valid_after.eq(at),
        ))
        .execute(conn)?;
    Ok(())
}

/// The name of the builder whose history holds `fingerprint`, if any.
pub(crate) fn key_holder(
    conn: &mut DbConnection,
    fingerprint: &str,
) -> Result<Option<String>, StoreError> {
    Ok(builder_keys::table
        .inner_join(builders::table)
        .filter(builder_keys::fingerprint.eq(fingerprint))
        .select(builders::name)
        .first(conn)
        .optional()?)
}

fn keys_of(conn: &mut DbConnection, builder: BuilderId) -> Result<Vec<BuilderKey>, StoreError> {
    Ok(builder_keys::table
        .filter(builder_keys::builder_id.eq(builder.0))
        .order((builder_keys::valid_after.asc(), builder_keys::id.asc()))
        .select(KeyRow::as_select())
        .load(conn)?
        .into_iter()
        .map(BuilderKey::from)
        .collect())
}

/// Whether the current key of the builder that holds `fingerprint` is revoked (such a key
/// authenticates no one).
pub(crate) fn is_revoked(conn: &mut DbConnection, fingerprint: &str) -> Result<bool, StoreError> {
    let revoked_at: Option<Option<i64>> = builder_keys::table
        .filter(builder_keys::fingerprint.eq(fingerprint))
        .select(builder_keys::revoked_at)
        .first(conn)
        .optional()?;
    Ok(matches!(revoked_at, Some(Some(_))))
}

/// What a revocation did.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub key: BuilderKey,
    /// The key was the one the builder authenticates with: its session has to end.
    pub was_current: bool,
}

impl Store {
    /// A builder's keys, oldest first. Not found for an unknown builder.
    pub fn builder_keys(&self, builder: BuilderId) -> Result<Vec<BuilderKey>, StoreError> {
        let mut conn = self.conn()?;
        require_builder(&mut conn, builder)?;
        keys_of(&mut conn, builder)
    }

    /// Every key of every builder with the builder's name, by name then validity: what the
    /// allowed-signers file is made of.
    pub fn all_builder_keys(&self) -> Result<Vec<(String, BuilderKey)>, StoreError> {
        Ok(builder_keys::table
            .inner_join(builders::table)
            .order((
                builders::name.asc(),
                builder_keys::valid_after.asc(),
                builder_keys::id.asc(),
            ))
            .select((builders::name, KeyRow::as_select()))
            .load::<(String, KeyRow)>(&mut *self.conn()?)?
            .into_iter()
            .map(|(name, row)| (name, BuilderKey::from(row)))
            .collect())
    }

    /// The keys with these fingerprints, with their builder's name (unknown ones left out).
    pub fn builder_keys_by_fingerprint(
        &self,
        fingerprints: &[String],
    ) -> Result<Vec<(String, BuilderKey)>, StoreError> {
        if fingerprints.is_empty() {
            return Ok(Vec::new());
        }
        Ok(builder_keys::table
            .inner_join(builders::table)
            .filter(builder_keys::fingerprint.eq_any(fingerprints))
            .select((builders::name, KeyRow::as_select()))
            .load::<(String, KeyRow)>(&mut *self.conn()?)?
            .into_iter()
            .map(|(name, row)| (name, BuilderKey::from(row)))
            .collect())
    }

    /// Makes `public_key` (fingerprint `fingerprint`) the key the builder authenticates with
    /// from now on: the current key's validity ends now and the new key's begins. The builder
    /// stays the same row (labels, projects, history). A key any builder ever had is refused,
    /// so a fingerprint names one builder for good.
    pub fn rotate_builder_key(
        &self,
        builder: BuilderId,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<(Builder, Vec<BuilderKey>), StoreError> {
        if !fingerprint.starts_with("SHA256:") {
            return Err(StoreError::InvalidInput(format!(
                "fingerprint {fingerprint:?} is not of the form SHA256:…"
            )));
        }
        let now = self.now_ms();
        self.write(|conn| {
            require_builder(conn, builder)?;
            if let Some(holder) = key_holder(conn, fingerprint)? {
                return Err(StoreError::AlreadyExists {
                    entity: "builder key",
                    key: format!("{fingerprint} (a key of builder {holder:?})"),
                });
            }
            let taken: i64 = builders::table
                .filter(builders::fingerprint.eq(fingerprint))
                .count()
                .get_result(conn)?;
            if taken > 0 {
                return Err(StoreError::AlreadyExists {
                    entity: "builder key",
                    key: fingerprint.to_owned(),
                });
            }
            // A current key that was revoked already has its end; the others end now.
            diesel::update(
                builder_keys::table
                    .filter(builder_keys::builder_id.eq(builder.0))
                    .filter(builder_keys::valid_before.is_null()),
            )
            .set(builder_keys::valid_before.eq(now))
            .execute(conn)?;
            record_key(conn, builder, public_key, fingerprint, now)?;
            diesel::update(builders::table.find(builder.0))
                .set((
                    builders::public_key.eq(public_key),
                    builders::fingerprint.eq(fingerprint),
                ))
                .execute(conn)?;
            Ok((require_builder(conn, builder)?, keys_of(conn, builder)?))
        })
    }

    /// Revokes one of the builder's keys with a reason. Its statements no longer verify (it
    /// leaves the allowed-signers file) and, if it is the current key, the builder cannot
    /// authenticate until an operator rotates in a new key.
    pub fn revoke_builder_key(
        &self,
        builder: BuilderId,
        fingerprint: &str,
        reason: &str,
    ) -> Result<Revocation, StoreError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(StoreError::InvalidInput(
                "reason is empty: say why the key is revoked".into(),
            ));
        }
        if reason.len() > MAX_REVOKE_REASON_BYTES {
            return Err(StoreError::InvalidInput(format!(
                "reason is {} bytes long; at most {MAX_REVOKE_REASON_BYTES}",
                reason.len()
            )));
        }
        if reason.chars().any(char::is_control) {
            return Err(StoreError::InvalidInput(
                "reason is one line of text without control characters".into(),
            ));
        }
        let now = self.now_ms();
        self.write(|conn| {
            let current = require_builder(conn, builder)?;
            let key: Option<BuilderKey> = builder_keys::table
                .filter(builder_keys::builder_id.eq(builder.0))
                .filter(builder_keys::fingerprint.eq(fingerprint))
                .select(KeyRow::as_select())
                .first(conn)
                .optional()?
                .map(BuilderKey::from);
            let key = key.ok_or_else(|| StoreError::NotFound {
                entity: "key",
                key: format!("{fingerprint} of builder {builder}"),
            })?;
            if let Some(at) = key.revoked_at {
                return Err(StoreError::AlreadyExists {
                    entity: "revocation of key",
                    key: format!("{fingerprint} (revoked at {at})"),
                });
            }
            diesel::update(
                builder_keys::table
                    .filter(builder_keys::builder_id.eq(builder.0))
                    .filter(builder_keys::fingerprint.eq(fingerprint)),
            )
            .set((
                builder_keys::revoked_at.eq(now),
                builder_keys::revoked_reason.eq(reason),
            ))
            .execute(conn)?;
            Ok(Revocation {
                key: BuilderKey {
                    revoked_at: Some(now),
                    revoked_reason: Some(reason.to_owned()),
                    ..key
                },
                was_current: current.fingerprint == fingerprint,
            })
        })
    }
}
