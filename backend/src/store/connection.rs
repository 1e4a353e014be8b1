//! Connections to either backend: the `MultiConnection` enum, URL parsing, the r2d2 manager
//! and the per-connection SQLite settings.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel::{PgConnection, SqliteConnection};

use super::error::StoreError;

/// One connection type for both backends. Queries written against it run on either;
/// match on it only where SQL must differ.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

/// The backend type Diesel derives for [`DbConnection`].
pub(crate) type Db = <DbConnection as Connection>::Backend;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database URL, resolved to a backend and the string its driver takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub backend: Backend,
    /// A libpq URL, or a SQLite file path.
    pub target: String,
}

impl DatabaseUrl {
    /// `postgres://…` or `postgresql://…` is PostgreSQL; `sqlite://PATH` or a plain path is
    /// a SQLite file. Any other scheme is refused rather than mistaken for a file name.
    pub fn parse(url: &str) -> Result<DatabaseUrl, StoreError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl {
                backend: Backend::Postgres,
                target: url.to_owned(),
            });
        }
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        // An in-memory database would be a different one on every pooled connection.
        if path.is_empty() || path.contains("://") || path == ":memory:" {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        Ok(DatabaseUrl {
            backend: Backend::Sqlite,
            target: path.to_owned(),
        })
    }
}

/// SQLite settings every connection needs: wait for the writer instead of failing, readers
/// beside one writer (WAL), enforced foreign keys, and fsync at checkpoints only (safe with
/// WAL). `busy_timeout` comes first because switching to WAL itself takes a lock.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA foreign_keys = ON; \
     PRAGMA synchronous = NORMAL;";

/// Opens one connection (no pool): for the `migrate` command and for tests.
pub fn connect(database_url: &str) -> Result<DbConnection, StoreError> {
    let url = DatabaseUrl::parse(database_url)?;
    let mut conn = match url.backend {
        Backend::Postgres => DbConnection::Postgresql(PgConnection::establish(&url.target)?),
        Backend::Sqlite => DbConnection::Sqlite(SqliteConnection::establish(&url.target)?),
    };
    configure(&mut conn)?;
    Ok(conn)
}

pub(crate) fn configure(conn: &mut DbConnection) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(conn) => conn.batch_execute(SQLITE_PRAGMAS),
        DbConnection::Postgresql(_) => Ok(()),
    }
}

/// Establishes connections for the pool. Written out (rather than diesel's generic manager)
/// so the backend is chosen from the URL, not by trying each driver in turn.
#[derive(Debug)]
pub(crate) struct ConnectionManager {
    url: DatabaseUrl,
}

impl ConnectionManager {
    pub(crate) fn new(url: DatabaseUrl) -> Self {
        ConnectionManager { url }
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        let conn = match self.url.backend {
            Backend::Postgres => {
                PgConnection::establish(&self.url.target).map(DbConnection::Postgresql)
            }
            Backend::Sqlite => {
                SqliteConnection::establish(&self.url.target).map(DbConnection::Sqlite)
            }
        };
        conn.map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

/// Applies [`SQLITE_PRAGMAS`] to every connection the pool opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConfigureOnAcquire;

impl r2d2::CustomizeConnection<DbConnection, diesel::r2d2::Error> for ConfigureOnAcquire {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        configure(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// How long a caller waits for a pooled connection before the store reports an error.
pub(crate) const POOL_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_their_backend() {
        let pg = DatabaseUrl::parse("postgres://u@h/db").expect("postgres url");
        assert_eq!(pg.backend, Backend::Postgres);
        let pg = DatabaseUrl::parse("postgresql://u@h/db").expect("postgresql url");
        assert_eq!(pg.backend, Backend::Postgres);
        let lite = DatabaseUrl::parse("sqlite://data/bf.db").expect("sqlite url");
        assert_eq!(
            (lite.backend, lite.target.as_str()),
            (Backend::Sqlite, "data/bf.db")
        );
        let lite = DatabaseUrl::parse("/var/lib/bf.db").expect("path");
        assert_eq!(
            (lite.backend, lite.target.as_str()),
            (Backend::Sqlite, "/var/lib/bf.db")
        );
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
        assert!(DatabaseUrl::parse("").is_err());
        assert!(DatabaseUrl::parse(":memory:").is_err());
    }
}
