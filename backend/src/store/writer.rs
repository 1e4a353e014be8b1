//! Group commit for SQLite: every write transaction of a [`Store`](super::Store) runs on one
//! dedicated connection, and writes that arrive while another is running share its commit.
//!
//! SQLite has one writer at a time. With a pool of writers, each `BEGIN IMMEDIATE` races for
//! the lock and the losers sleep in SQLite's busy handler (growing steps, up to milliseconds),
//! and every small write pays its own commit. Here writers queue on a mutex instead, in
//! arrival order, and a batch is formed without any timer:
//!
//! * the first writer of a batch opens the transaction (`BEGIN IMMEDIATE`);
//! * each writer runs its closure inside a savepoint, so a refused write (an illegal
//!   transition, say) rolls back alone and leaves the batch intact;
//! * a writer that leaves while others are queued leaves the transaction open for them and
//!   waits; the writer that leaves with nobody queued (or fills the batch) commits, and wakes
//!   the batch's waiters with the outcome.
//!
//! So a lone write commits at once (no added latency), and under load a commit carries as many
//! writes as arrived during the previous one. A caller's `Ok` is returned only after the commit
//! that holds its write succeeded; if that commit fails, every member of the batch gets an
//! error and none of its writes is kept.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::SqliteConnection;

use super::connection::{configure, DbConnection};
use super::error::StoreError;

/// A batch commits once it holds this many writes, so a steady stream of writers cannot keep
/// the first one waiting indefinitely.
const MAX_BATCH: usize = 64;

pub(crate) struct SqliteWriter {
    path: String,
    state: Mutex<WriterState>,
    /// Signalled whenever a batch ends (committed or rolled back).
    batch_ended: Condvar,
    /// Writers that want the mutex or hold it. A writer leaving with this at zero commits.
    queued: AtomicUsize,
}

#[derive(Default)]
struct WriterState {
    /// Opened on first use and after a failure broke the previous one.
    conn: Option<DbConnection>,
    open: Option<Batch>,
    next_batch: u64,
    /// Every batch up to this id has ended.
    ended_through: u64,
    /// Batches whose commit failed: the error, and how many members still have to read it.
    failed: HashMap<u64, (Arc<str>, usize)>,
}

struct Batch {
    id: u64,
    /// Members whose write succeeded and who wait for this batch's commit.
    waiting: usize,
    /// Writes that joined, successful or not.
    joined: usize,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteWriter {
    pub(crate) fn new(path: String) -> SqliteWriter {
        SqliteWriter {
            path,
            state: Mutex::new(WriterState::default()),
            batch_ended: Condvar::new(),
            queued: AtomicUsize::new(0),
        }
    }

    /// Runs `f` as part of a write batch and returns its result once the batch committed.
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        self.queued.fetch_sub(1, Ordering::SeqCst);

        let ended_before = state.ended_through;
        let outcome = match state.begin_batch(&self.path) {
            Ok(()) => state.run_in_savepoint(f),
            Err(e) => Joined::Refused(e),
        };
        if let Some(batch) = state.open.as_mut() {
            batch.joined += 1;
            if matches!(outcome, Joined::Written(..)) {
                batch.waiting += 1;
            }
        }
        let batch_id = state.open.as_ref().map(|b| b.id);
        let must_end = state
            .open
            .as_ref()
            .is_some_and(|b| b.joined >= MAX_BATCH || self.queued.load(Ordering::SeqCst) == 0);
        if must_end {
            state.end_batch();
        }
        if state.ended_through != ended_before {
            self.batch_ended.notify_all();
        }

        match outcome {
            Joined::Refused(e) => Err(e),
            Joined::Panicked(payload) => {
                drop(state);
                panic::resume_unwind(payload)
            }
            Joined::Written(value) => {
                let Some(id) = batch_id else {
                    // Unreachable: a write happens only inside an open batch.
                    return Err(StoreError::Corrupt("write outside a batch".into()));
                };
                while state.ended_through < id {
                    state = self
                        .batch_ended
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                match state.take_failure(id) {
                    Some(message) => Err(StoreError::BatchFailed(message)),
                    None => Ok(value),
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // The state stays consistent across a panic (closures run under catch_unwind), so a
        // poisoned mutex carries nothing to distrust.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What became of one writer's closure.
enum Joined<T> {
    /// It succeeded; its rows wait in the open batch for the commit.
    Written(T),
    /// It failed (or the batch could not start); nothing of it is kept.
    Refused(StoreError),
    Panicked(Box<dyn std::any::Any + Send>),
}

impl WriterState {
    fn begin_batch(&mut self, path: &str) -> Result<(), StoreError> {
        if self.open.is_some() {
            return Ok(());
        }
        if self.conn.is_none() {
            let mut conn = DbConnection::Sqlite(SqliteConnection::establish(path)?);
            configure(&mut conn)?;
            self.conn = Some(conn);
        }
        let Some(DbConnection::Sqlite(conn)) = self.conn.as_mut() else {
            return Err(StoreError::Corrupt(
                "the SQLite writer holds another connection".into(),
            ));
        };
        if let Err(e) = AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE") {
            // A connection that cannot begin is not trusted with the next batch.
            self.conn = None;
            return Err(e.into());
        }
        self.next_batch += 1;
        self.open = Some(Batch {
            id: self.next_batch,
            waiting: 0,
            joined: 0,
        });
        Ok(())
    }

    /// Runs `f` in a savepoint of the open batch: on error or panic only its own writes are
    /// undone. If even that rollback fails, the whole batch is rolled back.
    fn run_in_savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Joined<T> {
        let Some(conn) = self.conn.as_mut() else {
            return Joined::Refused(StoreError::Corrupt("no writer connection".into()));
        };
        if let Err(e) = <DbConnection as Connection>::TransactionManager::begin_transaction(conn) {
            self.abort_batch(&e.to_string());
            return Joined::Refused(e.into());
        }
        let result = panic::catch_unwind(AssertUnwindSafe(|| f(conn)));
        let release = match &result {
            Ok(Ok(_)) => <DbConnection as Connection>::TransactionManager::commit_transaction(conn),
            _ => <DbConnection as Connection>::TransactionManager::rollback_transaction(conn),
        };
        if let Err(e) = release {
            tracing::error!(error = %e, "savepoint could not be closed; rolling back the batch");
            self.abort_batch(&e.to_string());
            return match result {
                Err(payload) => Joined::Panicked(payload),
                _ => Joined::Refused(e.into()),
            };
        }
        match result {
            Ok(Ok(value)) => Joined::Written(value),
            Ok(Err(e)) => Joined::Refused(e),
            Err(payload) => Joined::Panicked(payload),
        }
    }

    /// Commits the open batch and records its outcome for the members waiting on it.
    fn end_batch(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if self.open.is_none() {
            return;
        }
        if let Err(e) = <DbConnection as Connection>::TransactionManager::commit_transaction(conn) {
            tracing::error!(error = %e, "group commit failed");
            self.abort_batch(&e.to_string());
            return;
        }
        if let Some(batch) = self.open.take() {
            self.ended_through = batch.id;
        }
    }

    /// Rolls back the open batch; its waiting members will get `message`. A connection that
    /// cannot even roll back is dropped and reopened for the next batch.
    fn abort_batch(&mut self, message: &str) {
        let Some(batch) = self.open.take() else {
            return;
        };
        let rolled_back = self.conn.as_mut().is_some_and(|conn| {
            <DbConnection as Connection>::TransactionManager::rollback_transaction(conn).is_ok()
        });
        if !rolled_back {
            self.conn = None;
        }
        if batch.waiting > 0 {
            self.failed
                .insert(batch.id, (Arc::from(message), batch.waiting));
        }
        self.ended_through = batch.id;
    }

    fn take_failure(&mut self, id: u64) -> Option<Arc<str>> {
        let (message, remaining) = self.failed.get_mut(&id)?;
        let message = message.clone();
        *remaining -= 1;
        if *remaining == 0 {
            self.failed.remove(&id);
        }
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use diesel::connection::SimpleConnection;
    use diesel::sql_types::BigInt;

    use super::*;

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    fn writer_with_tables() -> (tempfile::TempDir, Arc<SqliteWriter>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writer.db").to_string_lossy().into_owned();
        let writer = Arc::new(SqliteWriter::new(path));
        writer
            .run(|conn| {
                conn.batch_execute(
                    "CREATE TABLE parent (id INTEGER PRIMARY KEY);
                     INSERT INTO parent (id) VALUES (1);
                     CREATE TABLE item (
                         id INTEGER PRIMARY KEY,
                         parent INTEGER NOT NULL
                             REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
                     );",
                )?;
                Ok(())
            })
            .expect("schema");
        (dir, writer)
    }

    fn insert(conn: &mut DbConnection, id: i64, parent: i64) -> Result<(), StoreError> {
        diesel::sql_query("INSERT INTO item (id, parent) VALUES (?, ?)")
            .bind::<BigInt, _>(id)
            .bind::<BigInt, _>(parent)
            .execute(conn)?;
        Ok(())
    }

    /// Rows as another connection sees them: only what was committed.
    fn committed_ids(writer: &SqliteWriter) -> Vec<i64> {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        let mut conn = SqliteConnection::establish(&writer.path).expect("reader");
        diesel::sql_query("SELECT id FROM item ORDER BY id")
            .load::<Id>(&mut conn)
            .expect("select")
            .into_iter()
            .map(|row| row.id)
            .collect()
    }

    fn batches_ended(writer: &SqliteWriter) -> u64 {
        writer.lock().ended_through
    }

    /// Runs `first` on the writer and, while it holds the writer, queues `others` on their own
    /// threads; `first` returns only once they all wait, so all of them share one batch.
    fn one_batch(
        writer: &Arc<SqliteWriter>,
        first: i64,
        others: Vec<(i64, i64)>,
    ) -> Vec<Result<(), StoreError>> {
        let (started_tx, started_rx) = mpsc::channel();
        let queued_behind = others.len();
        let leader = {
            let writer = Arc::clone(writer);
            thread::spawn(move || {
                let probe = Arc::clone(&writer);
                writer.run(move |conn| {
                    insert(conn, first, 1)?;
                    started_tx.send(()).expect("signal");
                    while probe.queued.load(Ordering::SeqCst) < queued_behind {
                        thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                })
            })
        };
        started_rx.recv().expect("leader started");
        let followers: Vec<_> = others
            .into_iter()
            .map(|(id, parent)| {
                let writer = Arc::clone(writer);
                thread::spawn(move || writer.run(|conn| insert(conn, id, parent)))
            })
            .collect();
        std::iter::once(leader)
            .chain(followers)
            .map(|t| t.join().expect("writer thread"))
            .collect()
    }

    #[test]
    fn a_lone_write_is_committed_when_it_returns() {
        let (_dir, writer) = writer_with_tables();
        writer.run(|conn| insert(conn, 7, 1)).expect("write");
        assert_eq!(committed_ids(&writer), vec![7]);
    }

    #[test]
    fn concurrent_writes_share_one_commit() {
        let (_dir, writer) = writer_with_tables();
        let before = batches_ended(&writer);
        let results = one_batch(&writer, 1, (2..=6).map(|id| (id, 1)).collect());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(committed_ids(&writer), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(batches_ended(&writer) - before, 1, "six writes, one commit");
    }

    #[test]
    fn a_refused_write_rolls_back_alone() {
        let (_dir, writer) = writer_with_tables();
        // Id 2 twice: the second insert violates the primary key inside the batch.
        let results = one_batch(&writer, 1, vec![(2, 1), (2, 1), (3, 1)]);
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(refused, 1, "{results:?}");
        assert_eq!(committed_ids(&writer), vec![1, 2, 3]);
    }

    #[test]
    fn a_failed_commit_fails_every_member_and_keeps_nothing() {
        let (_dir, writer) = writer_with_tables();
        // Parent 99 does not exist: the deferred foreign key fails the COMMIT, not the insert.
        let results = one_batch(&writer, 1, vec![(2, 1), (3, 99)]);
        assert_eq!(results.len(), 3);
        for result in &results {
            assert!(
                matches!(result, Err(StoreError::BatchFailed(_))),
                "every member learns of the failed commit: {results:?}"
            );
        }
        assert_eq!(committed_ids(&writer), Vec::<i64>::new());
        // The writer recovers: the next batch commits.
        writer
            .run(|conn| insert(conn, 4, 1))
            .expect("write after failure");
        assert_eq!(committed_ids(&writer), vec![4]);
    }

    #[test]
    fn a_panicking_write_is_undone_and_the_writer_goes_on() {
        let (_dir, writer) = writer_with_tables();
        let panicked = {
            let writer = Arc::clone(&writer);
            thread::spawn(move || {
                writer.run(|conn| -> Result<(), StoreError> {
                    insert(conn, 1, 1)?;
                    panic!("closure panics after writing");
                })
            })
            .join()
        };
        assert!(panicked.is_err(), "the panic reaches the caller");
        writer
            .run(|conn| insert(conn, 2, 1))
            .expect("write after panic");
        assert_eq!(committed_ids(&writer), vec![2]);
        let count =
            writer
                .run(|conn| {
                    Ok(diesel::sql_query("SELECT count(*) AS n FROM item")
                        .get_result::<Count>(conn)?)
                })
                .expect("count");
        assert_eq!(count.n, 1);
    }

    #[test]
    fn many_threads_writing_keep_every_acknowledged_write() {
        let (_dir, writer) = writer_with_tables();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let writer = Arc::clone(&writer);
                thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            let id = t * 1000 + i;
                            writer.run(|conn| insert(conn, id, 1)).map(|()| id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut acknowledged: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .map(|r| r.expect("write"))
            .collect();
        acknowledged.sort_unstable();
        assert_eq!(acknowledged.len(), 400);
        assert_eq!(committed_ids(&writer), acknowledged);
    }
}
