//! Schema migrations, embedded in the binary: one folder per backend, identical names.

use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::connection::DbConnection;
use super::error::StoreError;

const POSTGRES: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// Arbitrary key for the PostgreSQL advisory lock that serialises migrations, so replicas
/// starting together don't race to apply the same one.
const MIGRATION_LOCK_KEY: i64 = 0x6275_696c_6466_6c74; // "buildflt"

/// Applies pending migrations; returns the versions applied.
pub fn run_migrations(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    let applied = match conn {
        DbConnection::Postgresql(pg) => with_migration_lock(pg, |pg| {
            pg.run_pending_migrations(POSTGRES)
                .map(|v| v.iter().map(ToString::to_string).collect())
        }),
        DbConnection::Sqlite(lite) => lite
            .run_pending_migrations(SQLITE)
            .map(|v| v.iter().map(ToString::to_string).collect()),
    };
    applied.map_err(|e| StoreError::Migration(e.to_string()))
}

/// Reverts every applied migration (drops the schema); returns the versions reverted.
pub fn revert_all_migrations(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    let reverted = match conn {
        DbConnection::Postgresql(pg) => with_migration_lock(pg, |pg| {
            pg.revert_all_migrations(POSTGRES)
                .map(|v| v.iter().map(ToString::to_string).collect())
        }),
        DbConnection::Sqlite(lite) => lite
            .revert_all_migrations(SQLITE)
            .map(|v| v.iter().map(ToString::to_string).collect()),
    };
    reverted.map_err(|e| StoreError::Migration(e.to_string()))
}

/// Migration versions not yet applied.
pub fn pending_migrations(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    let pending = match conn {
        DbConnection::Postgresql(pg) => pg
            .pending_migrations(POSTGRES)
            .map(|v| v.iter().map(|m| m.name().to_string()).collect()),
        DbConnection::Sqlite(lite) => lite
            .pending_migrations(SQLITE)
            .map(|v| v.iter().map(|m| m.name().to_string()).collect()),
    };
    pending.map_err(|e| StoreError::Migration(e.to_string()))
}

type MigrationResult = Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>;

fn with_migration_lock(
    pg: &mut diesel::PgConnection,
    f: impl FnOnce(&mut diesel::PgConnection) -> MigrationResult,
) -> MigrationResult {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(pg)?;
    let result = f(pg);
    // Session-level lock: release it even when the migration failed.
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(pg)?;
    result
}
