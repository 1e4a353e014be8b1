//! The cluster's backend id (issue 16 item 6): the name signed into every challenge and build
//! statement. Replicas on one database each have their own public URL, yet a statement begun
//! through one replica may be completed through another, so the id is decided once, by the
//! first backend to start, and kept in the one row of `cluster_identity`.

use diesel::prelude::*;
use diesel::sql_types::Text;

use super::connection::DbConnection;
use super::error::StoreError;
use super::schema::cluster_identity;
use super::Store;

/// The key of the one row (the table's CHECK allows no other).
const ROW: i32 = 1;

impl Store {
    /// The cluster's backend id: `candidate` if none is stored yet (it is stored now), else
    /// the stored one. Backends starting at once on a fresh database all get the same answer:
    /// the first insert to commit wins and the others read it.
    pub fn cluster_backend_id(&self, candidate: &str) -> Result<String, StoreError> {
        if candidate.trim().is_empty() {
            return Err(StoreError::InvalidInput(
                "the backend id must not be empty".into(),
            ));
        }
        self.write(|conn| {
            insert_unless_present(conn, candidate)?;
            // On PostgreSQL this statement sees a row a concurrent start committed while the
            // insert above waited for it (READ COMMITTED: a fresh snapshot per statement).
            Ok(cluster_identity::table
                .find(ROW)
                .select(cluster_identity::backend_id)
                .first::<String>(conn)?)
        })
    }
}

/// `INSERT … ON CONFLICT DO NOTHING`, which both databases understand; only the placeholders
/// differ, so it is written once and bound per connection.
fn insert_unless_present(conn: &mut DbConnection, candidate: &str) -> Result<(), StoreError> {
    let insert = |placeholder: &str| {
        format!(
            "INSERT INTO cluster_identity (id, backend_id) VALUES ({ROW}, {placeholder}) \
             ON CONFLICT (id) DO NOTHING"
        )
    };
    match conn {
        DbConnection::Postgresql(pg) => diesel::sql_query(insert("$1"))
            .bind::<Text, _>(candidate)
            .execute(pg)?,
        DbConnection::Sqlite(lite) => diesel::sql_query(insert("?"))
            .bind::<Text, _>(candidate)
            .execute(lite)?,
    };
    Ok(())
}
