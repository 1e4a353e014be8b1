//! The job feed: committed job state changes pushed to the server-sent event streams
//! (`/jobs/{id}/events`, `/job-events`, and the end of `/jobs/{id}/log/stream`).
//!
//! Whoever commits a transition hands the job row it got back to [`JobFeed::publish`] (or,
//! when it holds only the id, calls [`JobFeed::refresh`], which reads the row once). Nothing
//! polls the database. The feed keeps the order of each job's changes: a change is published
//! only if it is newer than the last one published for that job, by `(attempt, stage)` where
//! the stage is queued < assigned < running < terminal; every transition of the lifecycle
//! moves that pair forward, so a late hand-over (a `JobQueued` processed after the claim that
//! followed it) cannot make a job look as if it went back.
//!
//! Every published change gets a sequence number; the last [`RECENT`] are kept so that the
//! all-jobs stream can resume from a `Last-Event-ID` (`<epoch>:<seq>`, the epoch naming this
//! process, so an id from before a restart is recognised as such).
//!
//! The feed also carries the shutdown signal of the streams: [`JobFeed::close`] ends every open
//! stream, so a stopping server does not wait out its shutdown timeout for them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Attempt, BuilderId, Job, JobId, JobState, ProjectId, Store};

/// Published changes kept for resuming the all-jobs stream.
pub const RECENT: usize = 4096;
/// Changes a slow stream may fall behind by before it is told it lagged.
const CHANNEL: usize = 1024;
/// Jobs whose last published stage is remembered (terminal jobs are forgotten at once).
const MAX_TRACKED: usize = 100_000;

/// A job's state after a committed change: the data of a state event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobChange {
    pub job: JobId,
    pub state: JobState,
    pub attempt: Attempt,
    pub recipe: String,
    pub builder: Option<BuilderId>,
    /// Set once the job ended unsuccessfully (and for a cancel).
    pub error: Option<String>,
    /// When the change was committed (milliseconds since the epoch).
    pub at: i64,
    /// Whose job it is: the all-jobs stream sends a change only to callers who see it.
    pub project: ProjectId,
}

impl JobChange {
    pub fn of(job: &Job) -> JobChange {
        JobChange {
            job: job.id,
            state: job.state,
            attempt: job.attempt,
            recipe: job.recipe.clone(),
            builder: job.builder_id,
            error: job.error.clone(),
            at: job.updated_at,
            project: job.project,
        }
    }

    /// Where the change puts the job in its history; see the module documentation.
    pub fn position(&self) -> (Attempt, u8) {
        position(self.attempt, self.state)
    }

    /// The SSE id of this change on a one-job stream: `<attempt>:<state>`.
    pub fn job_event_id(&self) -> String {
        format!("{}:{}", self.attempt, self.state)
    }
}

/// `(attempt, stage)`: increases with every transition of one job.
pub fn position(attempt: Attempt, state: JobState) -> (Attempt, u8) {
    let stage = match state {
        JobState::Queued => 0,
        JobState::Assigned => 1,
        JobState::Running => 2,
        JobState::Succeeded
        | JobState::Failed
        | JobState::Cancelled
        | JobState::TimedOut
        | JobState::Unreproducible => 3,
    };
    (attempt, stage)
}

/// A change as the feed numbered it.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub change: JobChange,
}

struct State {
    next_seq: u64,
    recent: VecDeque<Arc<Published>>,
    /// The position last published for each job not yet terminal.
    latest: HashMap<JobId, (Attempt, u8)>,
}

/// What a resuming all-jobs stream gets from [`JobFeed::since`].
pub enum Since {
    /// Every change after the given one, oldest first.
    Changes(Vec<Arc<Published>>),
    /// The id is from another run of the server or older than what is kept: changes were
    /// missed, the client should re-read the jobs it cares about. `last` is the newest
    /// change published so far.
    Gap { last: u64 },
}

pub struct JobFeed {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Published>>,
    epoch: String,
    store: Store,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
}

impl JobFeed {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Arc<JobFeed> {
        let (tx, _) = broadcast::channel(CHANNEL);
        Arc::new(JobFeed {
            state: Mutex::new(State {
                next_seq: 1,
                recent: VecDeque::with_capacity(RECENT),
                latest: HashMap::new(),
            }),
            tx,
            epoch: format!("{:08x}", rand::random::<u32>()),
            store,
            metrics,
            closing: CancellationToken::new(),
        })
    }

    /// This process's part of the all-jobs stream's event ids.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Publishes the state of a job whose transition has just been committed.
    pub fn publish(&self, job: &Job) {
        self.publish_change(JobChange::of(job));
    }

    pub fn publish_all<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) {
        for job in jobs {
            self.publish(job);
        }
    }

    fn publish_change(&self, change: JobChange) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let position = change.position();
        if state
            .latest
            .get(&change.job)
            .is_some_and(|p| *p >= position)
        {
            return; // not newer than what streams already have
        }
        if change.state.is_terminal() {
            state.latest.remove(&change.job);
        } else {
            if state.latest.len() >= MAX_TRACKED {
                // Only jobs that never reached a terminal state here (taken over by another
                // replica) pile up; forgetting them costs at most a stale duplicate.
                state.latest.clear();
            }
            state.latest.insert(change.job, position);
        }
        let published = Arc::new(Published {
            seq: state.next_seq,
            change,
        });
        state.next_seq += 1;
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back(published.clone());
        // Sent under the lock, so receivers see changes in sequence order. No receiver is fine.
        let _ = self.tx.send(published);
    }

    /// Publishes the job's current state, read once off the caller's thread: for a committed
    /// transition whose caller does not hold the job row.
    pub fn refresh(self: &Arc<Self>, job: JobId) {
        let feed = self.clone();
        actix_rt::spawn(async move {
            let store = feed.store.clone();
            match crate::offload::store(move || store.job(job)).await {
                Ok(Ok(Some(found))) => feed.publish(&found),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(%job, error = %e, "reading a changed job failed"),
                Err(e) => tracing::warn!(%job, error = %e, "reading a changed job failed"),
            }
        });
    }

    /// Changes published from now on. Subscribe before reading the state a stream starts
    /// from, so that nothing committed in between is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// The kept changes after `seq` of `epoch`, for a resuming all-jobs stream.
    pub fn since(&self, epoch: &str, seq: u64) -> Since {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = state.recent.front().map_or(state.next_seq, |p| p.seq);
        // Everything after `seq` is kept when the next one is still there (or not yet sent).
        if epoch != self.epoch || seq >= state.next_seq || seq + 1 < oldest {
            return Since::Gap {
                last: state.next_seq - 1,
            };
        }
        Since::Changes(
            state
                .recent
                .iter()
                .filter(|p| p.seq > seq)
                .cloned()
                .collect(),
        )
    }

    /// Ends every open stream (the server is stopping).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Resolves when the server stops; streams select on it.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Counts an open stream in a gauge for as long as it lives.
pub struct StreamGuard {
    feed: Arc<JobFeed>,
}

impl StreamGuard {
    pub fn new(feed: Arc<JobFeed>) -> StreamGuard {
        feed.metrics.event_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard { feed }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.feed
            .metrics
            .event_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}
