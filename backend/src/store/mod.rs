//! Persistence: one Diesel code base over PostgreSQL and embedded SQLite.
//!
//! [`Store`] wraps an r2d2 pool of [`DbConnection`]s. Every method is synchronous; callers on
//! an async runtime run them on a blocking thread pool. Each state change of a job is one
//! transaction, checked against [`JobState::can_become`] and recorded in `job_events`. The
//! attempt number fences builders: a write naming an attempt that is not the job's live one is
//! refused with [`StoreError::StaleAttempt`].

mod annotations;
mod artifact_lookup;
mod artifacts;
mod attempt_outputs;
mod attempts;
mod blob_deletions;
mod builder_keys;
mod builders;
mod claim;
mod clock;
mod cluster;
mod connection;
mod enrolment;
mod error;
mod fair_share;
mod ids;
mod jobs;
mod labels;
mod leases;
mod logs;
mod migrations;
pub mod notify;
mod projects;
mod queue;
mod registry;
mod reproduction;
mod retention;
pub mod schema;
mod secret;
mod sources;
mod state;
mod stats;
mod tokens;
mod transitions;
mod webhooks;
mod writer;

use std::sync::Arc;

use r2d2::{Pool, PooledConnection};

pub use annotations::{
    check as check_annotations, headline as annotation_headline, AnnotationError, AnnotationFilter,
    Annotations, MAX_ANNOTATIONS, MAX_FILTERS as MAX_ANNOTATION_FILTERS,
    MAX_KEY_BYTES as MAX_ANNOTATION_KEY_BYTES, MAX_MESSAGE_BYTES as MAX_ANNOTATION_MESSAGE_BYTES,
    MAX_VALUE_BYTES as MAX_ANNOTATION_VALUE_BYTES,
};
pub use artifact_lookup::{PublishedArtifact, MAX_DIGEST_MATCHES};
pub use artifacts::{Artifact, NewArtifact, Publication, Reproduction};
pub use attempt_outputs::{AttemptPlan, AttemptStatement, StatementSignature, MAX_PLAN_BYTES};
pub use attempts::JobAttempt;
pub use blob_deletions::PendingBlobDeletion;
pub use builder_keys::{BuilderKey, Revocation, MAX_REVOKE_REASON_BYTES};
pub use builders::{Builder, BuilderControl, NewBuilder};
pub use claim::{ClaimRequest, ClaimedJob};
pub use clock::{Clock, ManualClock, SystemClock};
pub use connection::{connect, Backend, DatabaseUrl, DbConnection};
pub use enrolment::{EnrolmentError, EnrolmentToken, EnrolmentTokenId};
pub use error::StoreError;
pub use fair_share::{
    BoostRefused, FairShare, ProjectStanding, WindowUsage, BOOST_PRIORITY,
    DEFAULT_WINDOW_MS as DEFAULT_FAIR_SHARE_WINDOW_MS, MAX_SUBMIT_PRIORITY,
    MAX_WINDOW_MS as MAX_FAIR_SHARE_WINDOW_MS,
};
pub use ids::{ApiTokenId, Attempt, BuilderId, JobId, OrganisationId, ProjectId};
pub use jobs::{
    Job, JobFilter, JobTransition, NewJob, RetryPolicy, Submission, IDEMPOTENCY_KEY_TTL_MS,
};
pub use labels::{
    effective as effective_labels, ignored as ignored_labels, satisfies as labels_satisfy, Labels,
    ANY_VALUE as ANY_LABEL_VALUE,
};
pub use leases::{RenewedLease, Requeued};
pub use logs::{LogChunk, NewLogChunk};
pub use migrations::{pending_migrations, revert_all_migrations, run_migrations};
pub use projects::{
    check_name as check_project_name, parse_slug as parse_project_slug, NewProject, Project,
    ProjectChanges, MAX_NAME_BYTES as MAX_PROJECT_NAME_BYTES, WEIGHTS as PROJECT_WEIGHTS,
};
pub use registry::{
    AwaitingPlan, FirstSight, IndexVersion, Observation, RegistryBuild, RegistryBuildRow,
    RegistryVersion, VersionPlan, VersionStatus,
};
pub use reproduction::{
    explain_dependence, is_independent, JobRun, ReproductionEvidence, ReproductionRecord,
    ReproductionVerdict, RunArtifact, RunCompletion, RunStep,
};
pub use retention::{DataKind, ExpiredData, ProjectUsage, Retention, RetentionLimits};
pub use sources::Source;
pub use state::{
    AttemptCause, AttemptOutcome, JobMode, JobState, OnMismatch, Outcome, UnknownValue,
    MAX_REPRODUCE,
};
pub use tokens::{ApiToken, TokenScope};
pub use transitions::{CancelResult, Completion, FailureKind};
pub use webhooks::{
    Delivery, DeliveryTry, DueDelivery, NewDelivery, NewWebhook, NotifiedJob, Webhook,
    DELIVERY_LOG_LIMIT, WEBHOOK_EVENTS,
};

use connection::{ConfigureOnAcquire, ConnectionManager, POOL_CHECKOUT_TIMEOUT};
use writer::SqliteWriter;

type Conn = PooledConnection<ConnectionManager>;

/// The database, shared by every part of the backend. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool<ConnectionManager>,
    /// SQLite only: the one connection every write transaction runs on (group commit).
    writer: Option<Arc<SqliteWriter>>,
    backend: Backend,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("pool", &self.pool.state())
            .finish_non_exhaustive()
    }
}

/// How often a PostgreSQL write is tried when it meets a deadlock or serialisation failure.
const WRITE_TRIES: u64 = 4;

impl Store {
    /// Opens a pool of at most `pool_size` connections to `database_url` (see
    /// [`DatabaseUrl::parse`]) and applies pending migrations.
    pub fn open(database_url: &str, pool_size: u32) -> Result<Store, StoreError> {
        let url = DatabaseUrl::parse(database_url)?;
        let backend = url.backend;
        let writer = match backend {
            Backend::Sqlite => Some(Arc::new(SqliteWriter::new(url.target.clone()))),
            Backend::Postgres => None,
        };
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            // Open connections as needed, not all at start: replicas share PostgreSQL's limit.
            .min_idle(Some(1))
            // No `SELECT 1` round trip per checkout: a broken connection is found by
            // `has_broken` when returned, and the next query on it fails cleanly.
            .test_on_check_out(false)
            .connection_timeout(POOL_CHECKOUT_TIMEOUT)
            .connection_customizer(Box::new(ConfigureOnAcquire))
            .build(ConnectionManager::new(url))?;
        let store = Store {
            pool,
            writer,
            backend,
            clock: Arc::new(SystemClock),
        };
        let applied = run_migrations(&mut *store.conn()?)?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied database migrations");
        }
        Ok(store)
    }

    /// The same store, stamping rows with `clock` (tests use a [`ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Store {
        self.clock = clock;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store's idea of now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Checks that a connection can be had and answers (for `/healthz`).
    pub fn ping(&self) -> Result<(), StoreError> {
        use diesel::r2d2::R2D2Connection;
        self.conn()?.ping()?;
        Ok(())
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        Ok(self.pool.get()?)
    }

    /// Runs `f` as one write transaction. On SQLite it joins the group commit of
    /// [`SqliteWriter`] (one writer connection, `BEGIN IMMEDIATE`, a savepoint per call); on
    /// PostgreSQL it is a plain transaction on a pooled connection, where row-level
    /// compare-and-set updates and `SKIP LOCKED` keep concurrent writers honest. `f` must not
    /// call back into the store's write path (it would wait for itself).
    pub(crate) fn write<T>(
        &self,
        mut f: impl FnMut(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        use diesel::Connection;
        match &self.writer {
            Some(writer) => writer.run(f),
            None => {
                // PostgreSQL may abort a transaction to break a deadlock or a serialisation
                // conflict; the whole transaction is safe to run again, so it is, briefly.
                let mut tries = 0;
                loop {
                    tries += 1;
                    match (*self.conn()?).transaction(&mut f) {
                        Err(e) if e.is_retryable_conflict() && tries < WRITE_TRIES => {
                            tracing::debug!(error = %e, tries, "retrying a write after a conflict");
                            std::thread::sleep(std::time::Duration::from_millis(5 * tries));
                        }
                        other => return other,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use diesel::{Connection as _, PgConnection, RunQueryDsl as _};

    use super::*;

    /// Two PostgreSQL writes that lock two builder rows in opposite orders deadlock; the
    /// database aborts one of them (SQLSTATE 40P01), and `write` runs it again, so both
    /// succeed. Runs when BUILDFLEET_TEST_POSTGRES_URL names a server (the test command
    /// always sets it).
    #[test]
    fn a_write_aborted_by_a_deadlock_is_run_again() {
        let Ok(admin_url) = std::env::var("BUILDFLEET_TEST_POSTGRES_URL") else {
            eprintln!("skipped: BUILDFLEET_TEST_POSTGRES_URL is not set");
            return;
        };
        let database = format!("bf_unit_deadlock_{}", std::process::id());
        let mut admin = PgConnection::establish(&admin_url).expect("admin connection");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .execute(&mut admin)
            .expect("drop");
        diesel::sql_query(format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .expect("create");
        let url = match admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{database}"),
            None => panic!("an admin URL with a database: {admin_url}"),
        };
        let store = Store::open(&url, 4).expect("store");
        let ids: Vec<BuilderId> = ["first", "second"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                store
                    .admit_builder(NewBuilder {
                        name: (*name).into(),
                        public_key: format!("ssh-ed25519 AAAA{i} {name}"),
                        fingerprint: format!("SHA256:{name}{i}"),
                        labels: Labels::new(),
                    })
                    .expect("admit")
                    .id
            })
            .collect();
        let barrier = Arc::new(Barrier::new(2));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writers: Vec<_> = [(ids[0], ids[1]), (ids[1], ids[0])]
            .into_iter()
            .map(|(a, b)| {
                let (store, barrier, runs) = (store.clone(), barrier.clone(), runs.clone());
                std::thread::spawn(move || {
                    let mut first_try = true;
                    store.write(|conn| {
                        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let touch = |conn: &mut DbConnection, id: BuilderId| {
                            diesel::sql_query(format!(
                                "UPDATE builders SET last_seen_at = 1 WHERE id = {}",
                                id.0
                            ))
                            .execute(conn)
                        };
                        touch(conn, a)?;
                        if std::mem::take(&mut first_try) {
                            // Both hold their first row before either asks for its second.
                            barrier.wait();
                        }
                        touch(conn, b)?;
                        Ok(())
                    })
                })
            })
            .collect();
        for writer in writers {
            writer
                .join()
                .expect("writer thread")
                .expect("the write succeeds");
        }
        assert!(
            runs.load(std::sync::atomic::Ordering::SeqCst) >= 3,
            "one of the two writes was aborted by the deadlock and run again"
        );
        drop(store);
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .execute(&mut admin);
    }
}
