//! Real databases for tests, one per test: a fresh SQLite file in a temp dir, or a fresh
//! PostgreSQL database created through `BUILDFLEET_TEST_POSTGRES_URL` (an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the [`TestDb`] drops.
//!
//! Without that variable the PostgreSQL half of each test says so on stderr and returns; with
//! it set but the server unreachable, the test fails.
//!
//! Use from a test crate with `use buildfleet_testkit::db_tests;`, then
//! `db_tests! { scenario_a, scenario_b }` where each `fn scenario(db: &TestDb)` runs once per
//! backend, as `sqlite::scenario` and `postgres::scenario`.

use std::io::Write as _;
use std::sync::Arc;

use buildfleet_backend::store::{
    Backend, BuilderId, ClaimRequest, ClaimedJob, JobMode, Labels, ManualClock, NewBuilder, NewJob,
    Store,
};
use diesel::{Connection, PgConnection, RunQueryDsl};
use rand::Rng;

pub const POSTGRES_URL_VAR: &str = "BUILDFLEET_TEST_POSTGRES_URL";

/// Pool size for test stores: enough for the concurrency tests, small enough that many
/// PostgreSQL tests at once stay under the server's connection limit.
pub const TEST_POOL_SIZE: u32 = 4;

/// Lease length the fixtures claim with.
pub const LEASE_MS: i64 = 30_000;

/// Where the manual clock of [`TestDb::manual_store`] starts: 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;

/// One test's database.
pub struct TestDb {
    url: String,
    backend: Backend,
    store: Store,
    /// Held for its `Drop`, after the store's (fields drop in order).
    _cleanup: Cleanup,
}

enum Cleanup {
    /// Deleted with the directory, when dropped.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        database: String,
    },
}

/// Runs each named `fn(&TestDb)` on SQLite and on PostgreSQL, as `sqlite::NAME` and
/// `postgres::NAME` tests.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::db::TestDb::sqlite());
                }
            )+
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(db) = $crate::db::TestDb::postgres() {
                        super::$name(&db);
                    }
                }
            )+
        }
    };
}

impl TestDb {
    /// A fresh SQLite database file, migrated.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create temp dir for SQLite");
        let url = format!("sqlite://{}", dir.path().join("buildfleet.db").display());
        let store = Store::open(&url, TEST_POOL_SIZE).expect("open SQLite store");
        TestDb {
            url,
            backend: Backend::Sqlite,
            store,
            _cleanup: Cleanup::Sqlite { _dir: dir },
        }
    }

    /// A fresh PostgreSQL database, migrated; `None` (said on stderr) when
    /// `BUILDFLEET_TEST_POSTGRES_URL` is unset. Panics if it is set but unusable.
    pub fn postgres() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
            // Straight to stderr: the test harness captures `eprintln!`, and a skip must show.
            let _ = writeln!(std::io::stderr(), "skipped: {POSTGRES_URL_VAR} is not set");
            return None;
        };
        Some(TestDb::postgres_at(admin_url))
    }

    /// A fresh database, migrated, on the PostgreSQL server at `admin_url`.
    pub fn postgres_at(admin_url: String) -> TestDb {
        let database = format!("bf_test_{:016x}", rand::thread_rng().gen::<u64>());
        let mut admin = PgConnection::establish(&admin_url).unwrap_or_else(|e| {
            panic!("{POSTGRES_URL_VAR} is set but PostgreSQL is unreachable at {admin_url}: {e}")
        });
        diesel::sql_query(format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .unwrap_or_else(|e| panic!("create test database {database}: {e}"));
        // Tests need no durability; not waiting for WAL flushes makes commits cheap.
        diesel::sql_query(format!(
            "ALTER DATABASE {database} SET synchronous_commit = off"
        ))
        .execute(&mut admin)
        .unwrap_or_else(|e| panic!("configure test database {database}: {e}"));
        let url = with_database(&admin_url, &database);
        // Dropped on panic below too, since the cleanup is owned before the store opens.
        let cleanup = Cleanup::Postgres {
            admin_url,
            database,
        };
        let store = match Store::open(&url, TEST_POOL_SIZE) {
            Ok(store) => store,
            Err(e) => {
                drop(cleanup);
                panic!("open PostgreSQL store at {url}: {e}");
            }
        };
        TestDb {
            url,
            backend: Backend::Postgres,
            store,
            _cleanup: cleanup,
        }
    }

    /// Runs one SQL statement on its own connection, behind the store's back: for tests that
    /// corrupt a row on purpose.
    pub fn execute(&self, sql: &str) {
        let result = match self.backend {
            Backend::Sqlite => {
                let path = self.url.trim_start_matches("sqlite://");
                let mut conn = diesel::SqliteConnection::establish(path)
                    .unwrap_or_else(|e| panic!("open {path}: {e}"));
                diesel::sql_query(sql).execute(&mut conn)
            }
            Backend::Postgres => {
                let mut conn = PgConnection::establish(&self.url)
                    .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url));
                diesel::sql_query(sql).execute(&mut conn)
            }
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The database URL, for code under test that opens its own store.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store, on the wall clock.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The store on a manual clock starting at [`T0`], for tests that control time.
    pub fn manual_store(&self) -> (Store, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        (self.store.clone().with_clock(clock.clone()), clock)
    }

    /// A second, independent pool on the same database: another backend replica.
    pub fn open_store(&self, pool_size: u32) -> Store {
        Store::open(&self.url, pool_size).expect("open another store on the test database")
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Cleanup::Postgres {
            admin_url,
            database,
        } = self
        else {
            return;
        };
        // Best effort: a leftover bf_test_* database is harmless.
        let dropped = PgConnection::establish(admin_url)
            .map_err(|e| e.to_string())
            .and_then(|mut admin| {
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .execute(&mut admin)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {database}: {e}");
        }
    }
}

/// `url` with its database name replaced by `database`, query string kept.
pub fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    format!("{base}/{database}{query}")
}

// Fixtures shared by the store tests and anything else that needs rows to work with.

/// A SHA-256 digest (hex) that names `seed`, for jobs and sources.
pub fn digest(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(seed.as_bytes()))
}

/// A job for `recipe` with default everything: priority 0, 3 attempts, no labels.
pub fn new_job(recipe: &str) -> NewJob {
    NewJob {
        source_url: format!("https://example.invalid/{recipe}.tar.gz"),
        source_sha256: digest(recipe),
        source_max_bytes: 10 << 20,
        recipe: recipe.to_owned(),
        parameters: Labels::from([("profile".to_owned(), "release".to_owned())]),
        required_labels: Labels::new(),
        annotations: Labels::new(),
        mode: JobMode::Build,
        priority: 0,
        max_attempts: 3,
        retry: None,
        timeout_secs: 600,
        submitter: "tests".to_owned(),
        project: buildfleet_backend::store::ProjectId::DEFAULT,
        reproduce: None,
        on_mismatch: Default::default(),
    }
}

/// A builder named `name` with a made-up key and fingerprint.
pub fn new_builder(name: &str) -> NewBuilder {
    NewBuilder {
        name: name.to_owned(),
        public_key: format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} {name}@test"),
        fingerprint: format!("SHA256:{}", &digest(name)[..43]),
        labels: Labels::from([("arch".to_owned(), "x86_64".to_owned())]),
    }
}

/// Admits `name` and returns its id.
pub fn admit(store: &Store, name: &str) -> BuilderId {
    store
        .admit_builder(new_builder(name))
        .expect("admit builder")
        .id
}

/// What the builders of [`new_builder`] ask for: recipe `crate`, their labels, one job.
pub fn claim_request(builder: BuilderId, now_ms: i64) -> ClaimRequest {
    ClaimRequest {
        builder,
        recipes: vec!["crate".to_owned()],
        labels: new_builder("any").labels,
        limit: 1,
        lease_ms: LEASE_MS,
        now_ms,
        exclude: Vec::new(),
        projects: None,
        fair_share_window_ms: buildfleet_backend::store::DEFAULT_FAIR_SHARE_WINDOW_MS,
    }
}

/// Claims exactly one job for `builder` at the store's now; panics if there is none.
pub fn claim_one(store: &Store, builder: BuilderId) -> ClaimedJob {
    let mut claimed = store
        .claim_jobs(&claim_request(builder, store.now_ms()))
        .expect("claim");
    assert_eq!(claimed.len(), 1, "expected one job to claim");
    claimed.remove(0)
}
