//! The janitor: deletes finished jobs' artifacts and logs that their project's retention
//! (`store/retention.rs`) lets expire, and keeps the per-project storage gauges of `/metrics`.
//!
//! A pass walks the projects with a policy and deletes in small batches ([`BATCH_JOBS`] jobs,
//! a few hundred rows, per transaction) with a pause between batches, so the single SQLite
//! writer and the queue's transactions are never held up for long. Rows go first, in one
//! transaction with the job's expiry mark; blobs are removed after the commit (a crash in
//! between leaks files, never leaves a row pointing at a missing one).
//!
//! Log segments are shared and append-only: a segment file is removed once no chunk row
//! points into it *and* it is sealed, i.e. its writer has moved on to the next segment
//! (`{n+1}.seg` exists); a process's current segment is never removed, since the writer would
//! go on appending to a deleted file. Segments emptied while still current are remembered and
//! looked at again on later passes (not across a restart: the last segment of each process
//! run stays until a later cleanup). Logs stored before segments (`logs/{job}/{n}.jsonl`, one
//! file per attempt) are removed as soon as their rows are.

use std::collections::BTreeSet;
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

#[derive(Debug, Clone)]
pub struct JanitorSettings {
    /// How often a pass runs (and the usage gauges are refreshed).
    pub interval: Duration,
}

pub struct Janitor {
    store: Store,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    settings: JanitorSettings,
    running: bool,
    /// Segments whose rows are all gone but that were still being written.
    unsealed: BTreeSet<String>,
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
            unsealed: BTreeSet::new(),
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
        let unsealed = std::mem::take(&mut self.unsealed);
        let work = async move {
            let result = run_pass(&store, &storage, unsealed).await;
            refresh_usage(&store, &metrics).await;
            result
        };
        ctx.spawn(work.into_actor(self).map(|result, act, _| {
            act.running = false;
            match result {
                Ok(unsealed) => act.unsealed.extend(unsealed),
                Err(e) => {
                    tracing::warn!(error = %e, "a retention pass failed; the next one goes on")
                }
            }
        }));
    }
}

/// Whether a log location will never be appended to again.
fn sealed(storage: &dyn Storage, location: &str) -> bool {
    let Some(rest) = location.strip_prefix(&format!("{}/", keys::LOG_SEGMENTS)) else {
        // A per-attempt log of before segments: written once, never again.
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

/// Removes the log locations in `candidates` that no row uses and that are sealed; answers
/// the ones still being written.
fn reclaim_segments(
    store: &Store,
    storage: &dyn Storage,
    candidates: BTreeSet<String>,
) -> Result<BTreeSet<String>, StoreError> {
    let mut unsealed = BTreeSet::new();
    for location in candidates {
        if store.log_location_in_use(&location)? {
            continue;
        }
        if !sealed(storage, &location) {
            unsealed.insert(location);
            continue;
        }
        if let Err(e) = storage.remove(&location) {
            tracing::warn!(%location, error = %e, "removing an unused log segment failed");
        }
    }
    Ok(unsealed)
}

/// Deletes one batch of `kind` for `jobs` (rows, then blobs); answers the log locations
/// whose rows were deleted.
fn delete_batch(
    store: &Store,
    storage: &dyn Storage,
    kind: DataKind,
    jobs: &[JobId],
) -> Result<Vec<String>, StoreError> {
    match kind {
        DataKind::Artifacts => {
            for key in store.delete_artifacts(jobs)? {
                if let Err(e) = storage.remove(&key) {
                    tracing::warn!(%key, error = %e, "removing an expired artifact failed");
                }
            }
            Ok(Vec::new())
        }
        DataKind::Logs => store.delete_logs(jobs),
    }
}

async fn run_pass(
    store: &Store,
    storage: &Arc<dyn Storage>,
    mut segments: BTreeSet<String>,
) -> Result<BTreeSet<String>, StoreError> {
    let policies = {
        let store = store.clone();
        offload(move || store.retention_policies()).await?
    };
    for policy in policies {
        for (kind, limits) in [
            (DataKind::Artifacts, policy.artifacts),
            (DataKind::Logs, policy.logs),
        ] {
            if limits.is_unlimited() {
                continue;
            }
            loop {
                let store = store.clone();
                let storage = storage.clone();
                let project = policy.project;
                let (count, locations) = offload(move || {
                    let jobs = store.expired_jobs(project, kind, limits, BATCH_JOBS)?;
                    let locations = delete_batch(&store, storage.as_ref(), kind, &jobs)?;
                    Ok((jobs.len(), locations))
                })
                .await?;
                segments.extend(locations);
                if i64::try_from(count).unwrap_or(0) < BATCH_JOBS {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
        }
    }
    let store = store.clone();
    let storage = storage.clone();
    offload(move || reclaim_segments(&store, storage.as_ref(), segments)).await
}

/// Deletes a job's artifacts now (an admin's `DELETE /jobs/{id}/artifacts`); answers how many
/// were deleted. Blocking: run it through `offload`.
pub fn delete_job_artifacts(
    store: &Store,
    storage: &dyn Storage,
    job: JobId,
) -> Result<usize, StoreError> {
    let before = store.artifacts(job, false)?.len();
    delete_batch(store, storage, DataKind::Artifacts, &[job])?;
    Ok(before)
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
}
