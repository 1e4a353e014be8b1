//! Source archives, addressed by their SHA-256: stored once, shared by every job naming them.

use diesel::prelude::*;
use serde::Serialize;

use super::connection::Db;
use super::error::StoreError;
use super::schema::sources;
use super::Store;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = sources)]
pub struct Source {
    pub sha256: String,
    pub size: i64,
    pub storage_key: String,
    pub created_at: i64,
}

impl Store {
    /// Records a stored source archive. Idempotent: if the digest is known, the existing
    /// record is returned unchanged (same digest, same bytes).
    pub fn put_source(
        &self,
        sha256: &str,
        size: i64,
        storage_key: &str,
    ) -> Result<Source, StoreError> {
        if size < 0 {
            return Err(StoreError::InvalidInput("source size is negative".into()));
        }
        let now = self.now_ms();
        let inserted = self.write(|conn| {
            if let Some(existing) = find(conn, sha256)? {
                return Ok(existing);
            }
            Ok(diesel::insert_into(sources::table)
                .values((
                    sources::sha256.eq(sha256),
                    sources::size.eq(size),
                    sources::storage_key.eq(storage_key),
                    sources::created_at.eq(now),
                ))
                .returning(<Source as Selectable<Db>>::construct_selection())
                .get_result::<Source>(conn)?)
        });
        match inserted {
            // Two uploads of the same archive raced (PostgreSQL): the other one won.
            Err(StoreError::AlreadyExists { .. }) => find(&mut *self.conn()?, sha256)?
                .ok_or_else(|| StoreError::not_found("source", sha256)),
            other => other,
        }
    }

    pub fn source(&self, sha256: &str) -> Result<Option<Source>, StoreError> {
        find(&mut *self.conn()?, sha256)
    }
}

fn find(conn: &mut super::DbConnection, sha256: &str) -> Result<Option<Source>, StoreError> {
    Ok(sources::table
        .find(sha256)
        .select(Source::as_select())
        .first(conn)
        .optional()?)
}
