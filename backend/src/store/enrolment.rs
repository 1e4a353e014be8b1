//! Enrolment tokens: a builder that presents one admits its own key, so an operator never
//! copies keys between machines. A token is short-lived (`expires_at`), bounded in uses
//! (`max_uses`) and revocable; only its SHA-256 is stored, like API tokens.
//!
//! Enrolment is one write transaction: the token's use is counted with a compare-and-set
//! update (`uses < max_uses`, not revoked, not expired), so concurrent enrolments on
//! PostgreSQL never exceed `max_uses`, and a refused admission (name or key taken) rolls the
//! use back.

use diesel::prelude::*;
use serde::Serialize;

use super::builder_keys::record_key;
use super::builders::{holder_of, require_builder, Builder, NewBuilder};
use super::connection::{Db, DbConnection};
use super::error::StoreError;
use super::ids::BuilderId;
use super::labels::{self, Labels};
use super::schema::{builders, enrolment_tokens};
use super::secret;
use super::Store;

const ENROLMENT_TOKEN_PREFIX: &str = "bfenrol_";

/// An enrolment token's row id (not the secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnrolmentTokenId(pub i64);

impl std::fmt::Display for EnrolmentTokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for EnrolmentTokenId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(EnrolmentTokenId)
    }
}

/// An enrolment token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrolmentToken {
    pub id: EnrolmentTokenId,
    /// Labels given to every builder enrolled with this token.
    pub labels: Labels,
    pub max_uses: i32,
    pub uses: i32,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl EnrolmentToken {
    /// Whether a builder could enrol with this token at `now`.
    pub fn is_usable(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now && self.uses < self.max_uses
    }
}

/// Why an enrolment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolmentError {
    /// Deliberately one refusal for unknown, expired, used-up and revoked tokens: the caller
    /// learns nothing about which tokens exist.
    #[error("the enrolment token is unknown, expired, used up or revoked")]
    TokenRefused,
    /// The key is admitted already (a builder restarting with its key re-enrols). No token
    /// use is consumed.
    #[error("a builder with fingerprint {fingerprint} is already admitted as {name:?}")]
    AlreadyAdmitted { name: String, fingerprint: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = enrolment_tokens)]
struct EnrolmentTokenRow {
    id: i64,
    labels: String,
    max_uses: i32,
    uses: i32,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl TryFrom<EnrolmentTokenRow> for EnrolmentToken {
    type Error = StoreError;

    fn try_from(row: EnrolmentTokenRow) -> Result<Self, StoreError> {
        Ok(EnrolmentToken {
            id: EnrolmentTokenId(row.id),
            labels: labels::decode("enrolment_tokens.labels", &row.labels)?,
            max_uses: row.max_uses,
            uses: row.uses,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
        })
    }
}

impl Store {
    /// Creates a token valid for `max_uses` enrolments until `expires_at` (unix ms); returns
    /// it with its secret, which is shown this once.
    pub fn create_enrolment_token(
        &self,
        max_uses: i32,
        expires_at: i64,
        token_labels: &Labels,
    ) -> Result<(EnrolmentToken, String), StoreError> {
        if max_uses < 1 {
            return Err(StoreError::InvalidInput(
                "max_uses must be at least 1".into(),
            ));
        }
        let now = self.now_ms();
        if expires_at <= now {
            return Err(StoreError::InvalidInput(
                "an enrolment token must expire in the future".into(),
            ));
        }
        let encoded = labels::encode(token_labels)?;
        let plaintext = secret::generate(ENROLMENT_TOKEN_PREFIX);
        let token_hash = secret::hash(&plaintext);
        let row = self.write(|conn| {
            Ok(diesel::insert_into(enrolment_tokens::table)
                .values((
                    enrolment_tokens::token_hash.eq(&token_hash),
                    enrolment_tokens::labels.eq(&encoded),
                    enrolment_tokens::max_uses.eq(max_uses),
                    enrolment_tokens::uses.eq(0),
                    enrolment_tokens::created_at.eq(now),
                    enrolment_tokens::expires_at.eq(expires_at),
                ))
                .returning(<EnrolmentTokenRow as Selectable<Db>>::construct_selection())
                .get_result::<EnrolmentTokenRow>(conn)?)
        })?;
        Ok((EnrolmentToken::try_from(row)?, plaintext))
    }

    /// Every enrolment token (without secrets), newest first.
    pub fn list_enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>, StoreError> {
        enrolment_tokens::table
            .order(enrolment_tokens::id.desc())
            .select(EnrolmentTokenRow::as_select())
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(EnrolmentToken::try_from)
            .collect()
    }

    /// Revokes a token now; builders it enrolled stay admitted. Revoking twice keeps the
    /// first revocation time.
    pub fn revoke_enrolment_token(
        &self,
        id: EnrolmentTokenId,
    ) -> Result<EnrolmentToken, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            diesel::update(
                enrolment_tokens::table
                    .find(id.0)
                    .filter(enrolment_tokens::revoked_at.is_null()),
            )
            .set(enrolment_tokens::revoked_at.eq(now))
            .execute(conn)?;
            enrolment_tokens::table
                .find(id.0)
                .select(EnrolmentTokenRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| StoreError::not_found("enrolment token", id))
                .and_then(EnrolmentToken::try_from)
        })
    }

    /// Admits `new` (enabled, with the token's labels under its own) if `plaintext` is a
    /// usable enrolment token, counting one use; returns the builder and the token used.
    pub fn enrol_builder(
        &self,
        plaintext: &str,
        new: NewBuilder,
    ) -> Result<(Builder, EnrolmentTokenId), EnrolmentError> {
        if new.name.trim().is_empty() {
            return Err(StoreError::InvalidInput("builder name is empty".into()).into());
        }
        if !new.fingerprint.starts_with("SHA256:") {
            return Err(StoreError::InvalidInput(format!(
                "fingerprint {:?} is not of the form SHA256:…",
                new.fingerprint
            ))
            .into());
        }
        let now = self.now_ms();
        let token_hash = secret::hash(plaintext);
        // Refusals are found before anything is written, so they leave the transaction
        // empty; the inner result carries them out of it.
        let enrolled = self.write(|conn| {
            if let Some(conflict) = conflict(conn, &new)? {
                return Ok(Err(conflict));
            }
            let token: Option<EnrolmentTokenRow> = enrolment_tokens::table
                .filter(enrolment_tokens::token_hash.eq(&token_hash))
                .select(EnrolmentTokenRow::as_select())
                .first(conn)
                .optional()?;
            let Some(token) = token else {
                return Ok(Err(EnrolmentError::TokenRefused));
            };
            // Compare-and-set: concurrent enrolments cannot both take the last use.
            let counted = diesel::update(
                enrolment_tokens::table
                    .find(token.id)
                    .filter(enrolment_tokens::revoked_at.is_null())
                    .filter(enrolment_tokens::expires_at.gt(now))
                    .filter(enrolment_tokens::uses.lt(enrolment_tokens::max_uses)),
            )
            .set((
                enrolment_tokens::uses.eq(enrolment_tokens::uses + 1),
                enrolment_tokens::last_used_at.eq(now),
            ))
            .execute(conn)?;
            if counted == 0 {
                return Ok(Err(EnrolmentError::TokenRefused));
            }
            let mut builder_labels = labels::decode("enrolment_tokens.labels", &token.labels)?;
            builder_labels.extend(new.labels.clone());
            let id: i64 = diesel::insert_into(builders::table)
                .values((
                    builders::name.eq(&new.name),
                    builders::public_key.eq(&new.public_key),
                    builders::fingerprint.eq(&new.fingerprint),
                    builders::enabled.eq(true),
                    builders::labels.eq(labels::encode(&builder_labels)?),
                    builders::created_at.eq(now),
                ))
                .returning(builders::id)
                .get_result(conn)?;
            record_key(conn, BuilderId(id), &new.public_key, &new.fingerprint, now)?;
            let builder = require_builder(conn, BuilderId(id))?;
            Ok(Ok((builder, EnrolmentTokenId(token.id))))
        });
        match enrolled {
            // A concurrent enrolment of the same key or name committed between our check and
            // our insert (PostgreSQL; the unique index caught it and the use was rolled back):
            // answer as if we had come second.
            Err(StoreError::AlreadyExists { .. }) => match conflict(&mut *self.conn()?, &new)? {
                Some(conflict) => Err(conflict),
                None => Err(StoreError::AlreadyExists {
                    entity: "builder",
                    key: format!("named {:?}", new.name),
                }
                .into()),
            },
            other => other?,
        }
    }
}

/// Why `new` cannot be enrolled whatever the token: its key is admitted already, or its name
/// belongs to another key.
fn conflict(
    conn: &mut DbConnection,
    new: &NewBuilder,
) -> Result<Option<EnrolmentError>, StoreError> {
    let admitted = holder_of(conn, &new.name, &new.fingerprint)?;
    Ok(admitted.map(|(name, fingerprint)| {
        if fingerprint == new.fingerprint {
            EnrolmentError::AlreadyAdmitted { name, fingerprint }
        } else {
            StoreError::AlreadyExists {
                entity: "builder",
                key: format!("named {name:?}"),
            }
            .into()
        }
    }))
}
