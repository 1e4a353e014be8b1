//! Blobs whose rows are gone, waiting to be removed from storage (`blob_deletions`).
//!
//! Whoever deletes rows that point at blobs (expired artifacts and logs, an admin's delete)
//! records their keys in the same transaction ([`record`]), leased to itself: it removes them
//! right after the commit and then forgets them ([`Store::forget_blob_deletions`]). A removal
//! that fails is recorded with a back-off ([`Store::blob_deletion_failed`]) and the janitor
//! takes it again when due ([`Store::claim_blob_deletions`]), as it takes the keys of a
//! remover that died once their lease ran out. So a crash or a store that is down leaks
//! nothing, and no row ever points at a removed blob.

use std::collections::BTreeSet;

use diesel::prelude::*;
use diesel::sql_types::Text;

use super::connection::DbConnection;
use super::error::StoreError;
use super::schema::{artifacts, blob_deletions, log_chunks};
use super::Store;

/// Keys per statement (inserted, or in an `IN` list).
const INSERT_CHUNK: usize = 500;

/// A recorded key not yet removed, as the janitor and the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBlobDeletion {
    pub key: String,
    pub recorded_at: i64,
    pub next_attempt_at: i64,
    /// Removals that failed.
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Records `keys` for removal, in the caller's transaction, leased until `lease_until`.
pub(super) fn record(
    conn: &mut DbConnection,
    keys: &[String],
    now: i64,
    lease_until: i64,
) -> Result<(), StoreError> {
    // One statement per chunk (a log may have thousands of objects); Diesel's batch insert
    // does not reach through the two-database connection, so the rows are spelled out, the
    // keys bound and the two times (integers) written in.
    for chunk in keys.chunks(INSERT_CHUNK) {
        let rows = |placeholder: &dyn Fn(usize) -> String| {
            let values: Vec<String> = (1..=chunk.len())
                .map(|n| format!("({}, {now}, {lease_until}, 0)", placeholder(n)))
                .collect();
            format!(
                "INSERT INTO blob_deletions (storage_key, recorded_at, next_attempt_at, attempts) \
                 VALUES {}",
                values.join(", ")
            )
        };
        match conn {
            DbConnection::Postgresql(pg) => {
                let mut query =
                    diesel::sql_query(rows(&|n| format!("${n}"))).into_boxed::<diesel::pg::Pg>();
                for key in chunk {
                    query = query.bind::<Text, _>(key);
                }
                query.execute(pg)?;
            }
            DbConnection::Sqlite(lite) => {
                let mut query = diesel::sql_query(rows(&|_| "?".to_owned()))
                    .into_boxed::<diesel::sqlite::Sqlite>();
                for key in chunk {
                    query = query.bind::<Text, _>(key);
                }
                query.execute(lite)?;
            }
        }
    }
    Ok(())
}

/// Which of `locations` log chunk rows still point into.
pub(super) fn log_locations_in_use(
    conn: &mut DbConnection,
    locations: &[String],
) -> Result<BTreeSet<String>, StoreError> {
    let mut used = BTreeSet::new();
    for chunk in locations.chunks(INSERT_CHUNK) {
        let found: Vec<String> = log_chunks::table
            .filter(log_chunks::location.eq_any(chunk))
            .select(log_chunks::location)
            .distinct()
            .load(conn)?;
        used.extend(found);
    }
    Ok(used)
}

/// Whether a row still points at `key` (or does again).
pub(super) fn in_use(conn: &mut DbConnection, key: &str) -> Result<bool, StoreError> {
    let log = log_chunks::table
        .filter(log_chunks::location.eq(key))
        .select(log_chunks::id)
        .first::<i64>(conn)
        .optional()?;
    if log.is_some() {
        return Ok(true);
    }
    Ok(artifacts::table
        .filter(artifacts::storage_key.eq(key))
        .select(artifacts::id)
        .first::<i64>(conn)
        .optional()?
        .is_some())
}

impl Store {
    /// Takes up to `limit` recorded keys whose time has come, leasing them until
    /// `lease_until`; a key a row points at again is forgotten instead (whoever deletes that
    /// row records it anew). Another replica's janitor does not take what this one took.
    pub fn claim_blob_deletions(
        &self,
        limit: i64,
        lease_until: i64,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let due: Vec<(i64, String)> = blob_deletions::table
                .filter(blob_deletions::next_attempt_at.le(now))
                .order((
                    blob_deletions::next_attempt_at.asc(),
                    blob_deletions::id.asc(),
                ))
                .limit(limit)
                .select((blob_deletions::id, blob_deletions::storage_key))
                .load(conn)?;
            let mut claimed = Vec::with_capacity(due.len());
            for (id, key) in due {
                let mine = blob_deletions::table
                    .filter(blob_deletions::id.eq(id))
                    .filter(blob_deletions::next_attempt_at.le(now));
                if in_use(conn, &key)? {
                    diesel::delete(mine).execute(conn)?;
                    continue;
                }
                // Conditional, so a replica that took it first keeps it.
                let taken = diesel::update(mine)
                    .set(blob_deletions::next_attempt_at.eq(lease_until))
                    .execute(conn)?;
                if taken == 1 && !claimed.contains(&key) {
                    claimed.push(key);
                }
            }
            Ok(claimed)
        })
    }

    /// Forgets `keys`: their blobs are removed.
    pub fn forget_blob_deletions(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(|conn| {
            for chunk in keys.chunks(INSERT_CHUNK) {
                diesel::delete(
                    blob_deletions::table.filter(blob_deletions::storage_key.eq_any(chunk)),
                )
                .execute(conn)?;
            }
            Ok(())
        })
    }

    /// Leaves `keys` to be tried again at `at`, without counting a failure (they were not
    /// tried, or their blob may not be removed yet).
    pub fn postpone_blob_deletions(&self, keys: &[String], at: i64) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(|conn| {
            for chunk in keys.chunks(INSERT_CHUNK) {
                diesel::update(
                    blob_deletions::table.filter(blob_deletions::storage_key.eq_any(chunk)),
                )
                .set(blob_deletions::next_attempt_at.eq(at))
                .execute(conn)?;
            }
            Ok(())
        })
    }

    /// Records a failed removal of `key`: tried again after `base_ms` doubled for each
    /// failure before (at most `max_ms`).
    pub fn blob_deletion_failed(
        &self,
        key: &str,
        error: &str,
        base_ms: i64,
        max_ms: i64,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let rows: Vec<(i64, i32)> = blob_deletions::table
                .filter(blob_deletions::storage_key.eq(key))
                .select((blob_deletions::id, blob_deletions::attempts))
                .load(conn)?;
            for (id, attempts) in rows {
                let doublings = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
                let delay = base_ms
                    .max(1)
                    .saturating_mul(1_i64 << doublings)
                    .min(max_ms.max(base_ms));
                diesel::update(blob_deletions::table.filter(blob_deletions::id.eq(id)))
                    .set((
                        blob_deletions::attempts.eq(attempts.saturating_add(1)),
                        blob_deletions::last_error.eq(Some(error)),
                        blob_deletions::next_attempt_at.eq(now.saturating_add(delay)),
                    ))
                    .execute(conn)?;
            }
            Ok(())
        })
    }

    /// Every recorded key not yet removed, oldest first.
    pub fn pending_blob_deletions(&self) -> Result<Vec<PendingBlobDeletion>, StoreError> {
        Ok(blob_deletions::table
            .order(blob_deletions::id.asc())
            .select((
                blob_deletions::storage_key,
                blob_deletions::recorded_at,
                blob_deletions::next_attempt_at,
                blob_deletions::attempts,
                blob_deletions::last_error,
            ))
            .load::<(String, i64, i64, i32, Option<String>)>(&mut *self.conn()?)?
            .into_iter()
            .map(
                |(key, recorded_at, next_attempt_at, attempts, last_error)| PendingBlobDeletion {
                    key,
                    recorded_at,
                    next_attempt_at,
                    attempts,
                    last_error,
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{
        ClaimRequest, JobId, JobMode, Labels, ManualClock, NewBuilder, NewJob, NewLogChunk,
        ProjectId,
    };

    const T0: i64 = 1_700_000_000_000;

    fn store() -> (tempfile::TempDir, Store, Arc<ManualClock>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open(&url, 2)
            .expect("store")
            .with_clock(clock.clone());
        (dir, store, clock)
    }

    fn record_keys(store: &Store, keys: &[String], lease_until: i64) {
        let now = store.now_ms();
        store
            .write(|conn| record(conn, keys, now, lease_until))
            .expect("record");
    }

    fn owned(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn recorded_keys_wait_for_their_lease_and_go_once_forgotten() {
        let (_dir, store, clock) = store();
        let keys = owned(&["artifacts/1/1/a", "logs/1/1/x.jsonl"]);
        record_keys(&store, &keys, T0 + 1000);
        assert!(
            store
                .claim_blob_deletions(10, T0 + 5000)
                .unwrap()
                .is_empty(),
            "leased to whoever recorded them"
        );
        clock.set(T0 + 1000);
        let taken = store.claim_blob_deletions(10, T0 + 5000).unwrap();
        assert_eq!(taken, keys);
        assert!(
            store
                .claim_blob_deletions(10, T0 + 5000)
                .unwrap()
                .is_empty(),
            "taken once"
        );
        store.forget_blob_deletions(&taken[..1]).unwrap();
        let pending = store.pending_blob_deletions().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].key.as_str(), pending[0].next_attempt_at),
            ("logs/1/1/x.jsonl", T0 + 5000)
        );
        store
            .postpone_blob_deletions(&taken[1..], T0 + 1500)
            .unwrap();
        clock.set(T0 + 1500);
        assert_eq!(
            store.claim_blob_deletions(10, T0 + 9000).unwrap(),
            &taken[1..]
        );
        assert_eq!(store.pending_blob_deletions().unwrap()[0].attempts, 0);
        store.forget_blob_deletions(&taken[1..]).unwrap();
        assert!(store.pending_blob_deletions().unwrap().is_empty());
    }

    #[test]
    fn a_failed_removal_backs_off_doubling_up_to_the_cap() {
        let (_dir, store, _clock) = store();
        let key = "artifacts/2/1/b".to_owned();
        record_keys(&store, std::slice::from_ref(&key), T0);
        for (failures, delay) in [(1, 200), (2, 400), (3, 800), (4, 1000), (5, 1000)] {
            store
                .blob_deletion_failed(&key, "store down", 200, 1000)
                .unwrap();
            let pending = &store.pending_blob_deletions().unwrap()[0];
            assert_eq!(
                (
                    pending.attempts,
                    pending.next_attempt_at,
                    pending.last_error.as_deref()
                ),
                (failures, T0 + delay, Some("store down"))
            );
        }
    }

    #[test]
    fn a_key_recorded_twice_is_taken_once_and_forgotten_whole() {
        let (_dir, store, _clock) = store();
        let key = owned(&["log-segments/p/00000000.seg"]);
        record_keys(&store, &key, T0);
        record_keys(&store, &key, T0);
        assert_eq!(store.claim_blob_deletions(10, T0 + 100).unwrap(), key);
        store.forget_blob_deletions(&key).unwrap();
        assert!(store.pending_blob_deletions().unwrap().is_empty());
    }

    #[test]
    fn keys_past_one_statement_are_all_recorded() {
        let (_dir, store, _clock) = store();
        let keys: Vec<String> = (0..INSERT_CHUNK * 2 + 7)
            .map(|n| format!("logs/9/1/{n:012}-{n:012}.jsonl"))
            .collect();
        record_keys(&store, &keys, T0);
        let pending = store.pending_blob_deletions().unwrap();
        assert_eq!(pending.into_iter().map(|p| p.key).collect::<Vec<_>>(), keys);
        // Quotes and such are bound, not spliced in.
        let odd = owned(&["artifacts/3/1/it's \"odd\"; DROP TABLE jobs"]);
        record_keys(&store, &odd, T0);
        assert!(store
            .pending_blob_deletions()
            .unwrap()
            .iter()
            .any(|p| p.key == odd[0]));
    }

    /// A claimed job's attempt writing its log into `location`.
    fn job_logging_into(store: &Store, location: &str) -> JobId {
        let builder = store
            .admit_builder(NewBuilder {
                name: "writer".into(),
                public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGCESyFVhjj3+3Pxrf0PHQ2oy+Y72SGDbtjxPvfFd+h9 c".into(),
                fingerprint: "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80".into(),
                labels: Labels::new(),
            })
            .expect("admit")
            .id;
        let job = store
            .submit_job(NewJob {
                source_url: "https://example.invalid/s.tar.gz".into(),
                source_sha256: "ab".repeat(32),
                source_max_bytes: 1 << 20,
                recipe: "r".into(),
                parameters: Labels::new(),
                required_labels: Labels::new(),
                annotations: Labels::new(),
                mode: JobMode::Build,
                priority: 0,
                max_attempts: 3,
                retry: None,
                timeout_secs: 60,
                submitter: "unit".into(),
                project: ProjectId::DEFAULT,
                reproduce: None,
                on_mismatch: Default::default(),
            })
            .expect("submit")
            .id;
        let claimed = store
            .claim_jobs(&ClaimRequest {
                builder,
                recipes: vec!["r".into()],
                labels: Labels::new(),
                limit: 1,
                lease_ms: 60_000,
                now_ms: store.now_ms(),
                exclude: Vec::new(),
                projects: None,
                fair_share_window_ms: crate::store::DEFAULT_FAIR_SHARE_WINDOW_MS,
            })
            .expect("claim");
        store
            .append_log_chunk(&NewLogChunk {
                job,
                attempt: claimed[0].attempt,
                first_seq: 1,
                last_seq: 1,
                location: location.into(),
                byte_offset: 0,
                length: 10,
            })
            .expect("log chunk");
        job
    }

    #[test]
    fn a_key_a_row_points_at_again_is_forgotten_not_taken() {
        let (_dir, store, _clock) = store();
        let segment = "log-segments/p/00000003.seg";
        job_logging_into(&store, segment);
        let keys = owned(&[segment, "log-segments/p/00000002.seg"]);
        record_keys(&store, &keys, T0);
        assert_eq!(
            store.claim_blob_deletions(10, T0 + 100).unwrap(),
            &keys[1..],
            "the segment a live log writes into is not removed"
        );
        let pending = store.pending_blob_deletions().unwrap();
        assert_eq!(
            pending.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            [keys[1].as_str()],
            "and its record is gone"
        );
        let used = store
            .write(|conn| log_locations_in_use(conn, &keys))
            .unwrap();
        assert_eq!(used.into_iter().collect::<Vec<_>>(), [segment]);
    }
}
