//! The janitor: deletes finished jobs' artifacts and logs that their project's retention
//! (`store/retention.rs`) lets expire, removes their blobs from storage, and keeps the
//! per-project storage gauges of `/metrics`.
//!
//! A pass walks the projects with a policy and deletes in small batches ([`BATCH_JOBS`] jobs
//! per transaction) with a pause between batches, so the single SQLite writer and the queue's
//! transactions are never held up for long. Each batch is two steps: one transaction deletes
//! the rows, marks the jobs expired and records the blobs' keys (`blob_deletions`); then,
//! holding no database permit (an object store's calls may take seconds), the blobs are
//! removed, and the keys removed are forgotten. A removal that fails stops the pass's
//! removals (the store is likely down: the rest wait for the next pass) and is tried again
//! after a back-off that starts at the pass interval and doubles, at most an hour. After the
//! batches the pass takes the recorded keys whose time has come: those that failed before,
//! and those of a remover that died (an admin's delete, another replica) once their lease ran
//! out. A crash or a store that is down therefore leaks nothing, and no row ever points at a
//! removed blob.
//!
//! Log segments (local disk) are shared and append-only: a segment's key is recorded once no
//! chunk row points into it, and it is removed only once it is sealed, i.e. its writer has
//! moved on to the next segment (`{n+1}.seg` exists), since the writer would go on appending
//! to a deleted file; until then its record waits for the next pass. The last segment of a
//! process that has stopped is never sealed and stays (its record with it). An object store's
//! log objects (one per flushed batch) and artifacts are removed at once.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::metrics::{Metrics, ProjectStorage};
use crate::storage::{keys, Storage};
use crate::store::{DataKind, JobId, Store, StoreError};

/// Jobs whose data one transaction deletes.
pub const BATCH_JOBS: i64 = 50;
/// The pause between two batches.
pub const BATCH_PAUSE: Duration = Duration::from_millis(50);
/// Recorded keys taken per round once the batches are done.
const DUE_KEYS: i64 = 200;
/// Rounds of recorded keys per pass, so one pass ends even when keys keep coming due.
const DUE_ROUNDS: usize = 100;
/// How long whoever recorded or took keys has to remove them before another may take them.
pub const REMOVAL_LEASE: Duration = Duration::from_secs(300);
/// The longest wait before a failed removal is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct JanitorSettings {
    /// How often a pass runs (and the usage gauges are refreshed); also the first back-off of
    /// a failed removal.
    pub interval: Duration,
}

pub struct Janitor {
    store: Store,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    settings: JanitorSettings,
    running: bool,
}

impl Janitor {
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        settings: JanitorSettings,
    ) -> Janitor {
        Janitor {
            store,
            storage,
            metrics,
            settings,
            running: false,
        }
    }

    fn pass(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let store = self.store.clone();
        let storage = self.storage.clone();
        let metrics = self.metrics.clone();
        let interval = self.settings.interval;
        let work = async move {
            let result = run_pass(&store, &storage, interval).await;
            refresh_usage(&store, &metrics).await;
            result
        };
        ctx.spawn(work.into_actor(self).map(|result, act, _| {
            act.running = false;
            if let Err(e) = result {
                tracing::warn!(error = %e, "a retention pass failed; the next one goes on");
            }
        }));
    }
}

/// Whether a blob will never be written again: a log segment once its writer has moved on
/// to the next one; anything else (artifacts, an object store's log objects, the per-attempt
/// logs of before segments) at once.
fn sealed(storage: &dyn Storage, location: &str) -> bool {
    let Some(rest) = location.strip_prefix(&format!("{}/", keys::LOG_SEGMENTS)) else {
        return true;
    };
    let Some((prefix, file)) = rest.split_once('/') else {
        return false;
    };
    let Some(index) = file
        .strip_suffix(".seg")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return false;
    };
    storage.exists(&keys::log_segment(prefix, index + 1))
}

/// What became of one round of removals.
#[derive(Debug, Default, PartialEq, Eq)]
struct Removals {
    removed: Vec<String>,
    /// Segments still being written: looked at again next pass.
    not_sealed: Vec<String>,
    /// The key whose removal failed, and why: the round stopped there.
    failed: Option<(String, String)>,
    /// The keys after it, not tried.
    untried: Vec<String>,
}

/// Removes the blobs of `keys` (blocking: storage calls), stopping at the first failure.
fn remove_blobs(storage: &dyn Storage, keys: Vec<String>) -> Removals {
    let mut out = Removals::default();
    let mut keys = keys.into_iter();
    while let Some(key) = keys.next() {
        if !sealed(storage, &key) {
            out.not_sealed.push(key);
            continue;
        }
        match storage.remove(&key) {
            Ok(()) => out.removed.push(key),
            Err(e) => {
                tracing::warn!(%key, error = %e, "removing a blob failed; it is tried again later");
                out.failed = Some((key, e.to_string()));
                out.untried.extend(keys);
                break;
            }
        }
    }
    out
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Removes the blobs of `keys` (recorded or taken by the caller) without holding a database
/// permit, then records with one what became of them. Answers whether every removal that
/// was tried worked.
async fn remove_and_record(
    store: &Store,
    storage: &Arc<dyn Storage>,
    keys: Vec<String>,
    interval: Duration,
) -> Result<bool, StoreError> {
    if keys.is_empty() {
        return Ok(true);
    }
    let storage = storage.clone();
    let removals = crate::offload::cpu(move || remove_blobs(storage.as_ref(), keys))
        .await
        .map_err(|e| {
            StoreError::InvalidInput(format!(
                "removing blobs stopped ({e}); they are taken again after their lease"
            ))
        })?;
    let worked = removals.failed.is_none();
    let store = store.clone();
    offload(move || {
        store.forget_blob_deletions(&removals.removed)?;
        let next_pass = store.now_ms().saturating_add(millis(interval));
        let mut later = removals.not_sealed;
        later.extend(removals.untried);
        store.postpone_blob_deletions(&later, next_pass)?;
        if let Some((key, error)) = &removals.failed {
            store.blob_deletion_failed(key, error, millis(interval), millis(MAX_RETRY_DELAY))?;
        }
        Ok(())
    })
    .await?;
    Ok(worked)
}

/// Deletes one batch of `kind` for `project`'s expired jobs (rows, expiry marks and the
/// record of their blobs, in one transaction); answers how many jobs and the keys recorded,
/// leased to the caller.
async fn delete_batch(
    store: &Store,
    project: crate::store::ProjectId,
    kind: DataKind,
    limits: crate::store::RetentionLimits,
) -> Result<(usize, Vec<String>), StoreError> {
    let store = store.clone();
    offload(move || {
        let jobs = store.expired_jobs(project, kind, limits, BATCH_JOBS)?;
        if jobs.is_empty() {
            return Ok((0, Vec::new()));
        }
        let lease_until = store.now_ms().saturating_add(millis(REMOVAL_LEASE));
        let keys = match kind {
            DataKind::Artifacts => store.delete_artifacts(&jobs, lease_until)?,
            DataKind::Logs => store.delete_logs(&jobs, lease_until)?,
        };
        Ok((jobs.len(), keys))
    })
    .await
}

async fn run_pass(
    store: &Store,
    storage: &Arc<dyn Storage>,
    interval: Duration,
) -> Result<(), StoreError> {
    let policies = {
        let store = store.clone();
        offload(move || store.retention_policies()).await?
    };
    // Once a removal failed, the rest of the pass only deletes rows: its keys wait.
    let mut removing = true;
    for policy in policies {
        for (kind, limits) in [
            (DataKind::Artifacts, policy.artifacts),
            (DataKind::Logs, policy.logs),
        ] {
            if limits.is_unlimited() {
                continue;
            }
            loop {
                let (count, keys) = delete_batch(store, policy.project, kind, limits).await?;
                if removing {
                    removing = remove_and_record(store, storage, keys, interval).await?;
                } else if !keys.is_empty() {
                    let store = store.clone();
                    offload(move || {
                        let next_pass = store.now_ms().saturating_add(millis(interval));
                        store.postpone_blob_deletions(&keys, next_pass)
                    })
                    .await?;
                }
                if i64::try_from(count).unwrap_or(0) < BATCH_JOBS {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
        }
    }
    if removing {
        remove_due(store, storage, interval).await?;
        remove_stale_pending(storage).await;
    }
    Ok(())
}

/// Uploads a backend received but never committed (it died in between) are removed once
/// they are this old; committing takes seconds.
pub const STALE_PENDING: Duration = Duration::from_secs(3600);

async fn remove_stale_pending(storage: &Arc<dyn Storage>) {
    let storage = storage.clone();
    match crate::offload::cpu(move || storage.remove_stale_pending(STALE_PENDING)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => tracing::info!(removed, "removed uploads left uncommitted"),
        Ok(Err(e)) => tracing::warn!(error = %e, "removing uploads left uncommitted failed"),
        Err(e) => tracing::warn!(error = %e, "removing uploads left uncommitted stopped"),
    }
}

/// Removes the recorded blobs whose time has come (failed before, or left by a remover
/// whose lease ran out), until none is due or a removal fails.
async fn remove_due(
    store: &Store,
    storage: &Arc<dyn Storage>,
    interval: Duration,
) -> Result<(), StoreError> {
    for _ in 0..DUE_ROUNDS {
        let taken = {
            let store = store.clone();
            offload(move || {
                let lease_until = store.now_ms().saturating_add(millis(REMOVAL_LEASE));
                store.claim_blob_deletions(DUE_KEYS, lease_until)
            })
            .await?
        };
        if taken.is_empty() || !remove_and_record(store, storage, taken, interval).await? {
            break;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    Ok(())
}

/// Deletes a job's artifacts now (an admin's `DELETE /jobs/{id}/artifacts`): the rows, then
/// their blobs (without a database permit); a blob that could not be removed is left to the
/// janitor. Answers how many artifacts were deleted.
pub async fn delete_job_artifacts(
    store: &Store,
    storage: &Arc<dyn Storage>,
    job: JobId,
    interval: Duration,
) -> Result<usize, StoreError> {
    let (deleted, keys) = {
        let store = store.clone();
        offload(move || {
            let before = store.artifacts(job, false)?.len();
            let lease_until = store.now_ms().saturating_add(millis(REMOVAL_LEASE));
            Ok((before, store.delete_artifacts(&[job], lease_until)?))
        })
        .await?
    };
    remove_and_record(store, storage, keys, interval).await?;
    Ok(deleted)
}

async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match crate::offload::store(f).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::InvalidInput(format!(
            "the store is unavailable: {e}"
        ))),
    }
}

/// Reads the bytes every project stores into the `/metrics` gauges.
async fn refresh_usage(store: &Store, metrics: &Metrics) {
    let store = store.clone();
    let read = offload(move || {
        let usage = store.project_usage()?;
        let projects = store.list_projects()?;
        Ok(projects
            .into_iter()
            .map(|p| {
                let used = usage.iter().find(|u| u.project == p.id);
                ProjectStorage {
                    project: p.slug(),
                    artifact_bytes: used.map_or(0, |u| u.artifact_bytes),
                    log_bytes: used.map_or(0, |u| u.log_bytes),
                }
            })
            .collect::<Vec<_>>())
    })
    .await;
    match read {
        Ok(usage) => metrics.set_project_storage(usage),
        Err(e) => tracing::warn!(error = %e, "reading the storage per project failed"),
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.pass(ctx);
        ctx.run_interval(self.settings.interval, |act, ctx| act.pass(ctx));
    }
}

/// Reads the storage gauges again now (after an admin deleted artifacts).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshUsage;

impl Handler<RefreshUsage> for Janitor {
    type Result = ();

    fn handle(&mut self, _: RefreshUsage, ctx: &mut Self::Context) {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        ctx.spawn(async move { refresh_usage(&store, &metrics).await }.into_actor(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsStorage;

    #[test]
    fn only_sealed_segments_and_old_logs_count_as_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let first = keys::log_segment("p", 0);
        let second = keys::log_segment("p", 1);
        for key in [&first, &second] {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        assert!(sealed(&storage, &first), "a next segment exists");
        assert!(
            !sealed(&storage, &second),
            "the current segment is written to"
        );
        assert!(sealed(&storage, "logs/1/1.jsonl"));
        assert!(!sealed(&storage, "log-segments/p/garbage"));
    }

    #[test]
    fn removals_skip_unsealed_segments_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let write = |key: &str| {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        };
        let sealed_segment = keys::log_segment("p", 0);
        let current_segment = keys::log_segment("p", 1);
        let artifact = "artifacts/1/1/out.bin".to_owned();
        for key in [&sealed_segment, &current_segment, &artifact] {
            write(key);
        }
        // A directory where a file should be: removing it fails.
        let broken = "artifacts/2/1/out.bin".to_owned();
        write(&format!("{broken}/inside"));
        let after = "artifacts/3/1/out.bin".to_owned();
        write(&after);
        let gone_already = "artifacts/4/1/out.bin".to_owned();

        let out = remove_blobs(
            &storage,
            vec![
                sealed_segment.clone(),
                current_segment.clone(),
                gone_already.clone(),
                artifact.clone(),
                broken.clone(),
                after.clone(),
            ],
        );
        assert_eq!(
            out.removed,
            [sealed_segment.clone(), gone_already, artifact.clone()]
        );
        assert_eq!(out.not_sealed, std::slice::from_ref(&current_segment));
        assert_eq!(out.failed.as_ref().map(|(key, _)| key), Some(&broken));
        assert_eq!(out.untried, std::slice::from_ref(&after));
        assert!(!storage.exists(&sealed_segment) && !storage.exists(&artifact));
        assert!(storage.exists(&current_segment) && storage.exists(&after));
    }
}
