//! The notifier: job state changes as project notifications, sent to webhooks and to the
//! project event streams.
//!
//! The [`Notifier`] actor subscribes to the job feed. For each batch of changes it reads the
//! jobs' projects and times once, writes one delivery row per matching webhook (the body
//! fixed in the row, so every try sends and signs the same bytes) and publishes the
//! notifications to [`ProjectEvents`], the hub the project SSE streams read. Rows are sent
//! by the same actor: whatever is due is claimed with a lease (another replica, or a later
//! pass, leaves it alone while it is sent), POSTed with `awc`, and the try recorded: a 2xx
//! answer delivers it, anything else (another status, a timeout, a refused connection)
//! schedules the next try after an exponential back-off, up to [`MAX_TRIES`].
//!
//! Durability: a delivery is durable from its row on. Pending rows (and rows claimed by a
//! process that died, once their lease runs out) are sent after a restart. What is not
//! durable is the hop from the feed to the row: a change committed just before a crash, whose
//! row was not yet written, is not notified (the feed is in-process; see ARCHITECTURE.md).
//!
//! Signature: `X-Buildfleet-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body under
//! the webhook's secret, as GitHub signs its webhooks (docs/api.md shows how to verify it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use buildfleet_api as api;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::job_feed::{JobChange, JobFeed, Published};
use crate::store::{
    Attempt, DeliveryTry, DueDelivery, JobId, JobState, NewDelivery, NotifiedJob, ProjectId, Store,
};

/// Tries of one delivery before it is given up.
pub const MAX_TRIES: i32 = 8;
/// The longest pause between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long a receiver has to answer one try.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries sent at once by one process.
const MAX_IN_FLIGHT: usize = 16;
/// Changes waiting to be recorded; past it the oldest are dropped (with a warning).
const MAX_QUEUED_CHANGES: usize = 20_000;
/// Changes recorded in one store call.
const RECORD_BATCH: usize = 512;
/// Notifications kept for resuming a project stream.
const RECENT: usize = 1024;
/// How far a slow project stream may fall behind.
const CHANNEL: usize = 1024;

/// The HMAC-SHA256 signature header's value of `body` under `secret`: `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// The notification event of a job entering `state`; `assigned` has none.
pub fn event_of(state: JobState) -> Option<&'static str> {
    match state {
        JobState::Queued => Some("queued"),
        JobState::Running => Some("started"),
        JobState::Assigned => None,
        JobState::Succeeded
        | JobState::Failed
        | JobState::Cancelled
        | JobState::TimedOut
        | JobState::Unreproducible => Some("finished"),
    }
}

/// The pause after the `tries`th failed try: `base`, doubled per try, at most
/// [`MAX_BACKOFF`].
pub fn backoff(base: Duration, tries: i32) -> Duration {
    let doublings = u32::try_from(tries.saturating_sub(1)).unwrap_or(0).min(20);
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// A notification as the project streams number it.
#[derive(Debug)]
pub struct ProjectEvent {
    pub seq: u64,
    pub project: ProjectId,
    pub notification: api::notifications::JobNotification,
}

/// The project streams' hub: notifications in the order they were recorded, the last
/// [`RECENT`] kept for a stream resuming with `Last-Event-ID` (`<epoch>:<seq>`).
pub struct ProjectEvents {
    tx: broadcast::Sender<Arc<ProjectEvent>>,
    state: Mutex<HubState>,
    epoch: String,
}

struct HubState {
    next_seq: u64,
    recent: VecDeque<Arc<ProjectEvent>>,
}

/// What a resuming project stream gets.
pub enum Replay {
    Events(Vec<Arc<ProjectEvent>>),
    /// The id is from another run or older than what is kept; `last` is the newest seq.
    Gap {
        last: u64,
    },
}

impl ProjectEvents {
    pub fn new() -> Arc<ProjectEvents> {
        let (tx, _) = broadcast::channel(CHANNEL);
        Arc::new(ProjectEvents {
            tx,
            state: Mutex::new(HubState {
                next_seq: 1,
                recent: VecDeque::with_capacity(RECENT),
            }),
            epoch: format!("{:08x}", rand::random::<u32>()),
        })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ProjectEvent>> {
        self.tx.subscribe()
    }

    fn publish(&self, project: ProjectId, notification: api::notifications::JobNotification) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let event = Arc::new(ProjectEvent {
            seq: state.next_seq,
            project,
            notification,
        });
        state.next_seq += 1;
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back(event.clone());
        // Under the lock, so receivers see sequence order. No receiver is fine.
        let _ = self.tx.send(event);
    }

    /// The kept notifications after `seq` of `epoch`.
    pub fn since(&self, epoch: &str, seq: u64) -> Replay {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = state.recent.front().map_or(state.next_seq, |e| e.seq);
        if epoch != self.epoch || seq >= state.next_seq || seq + 1 < oldest {
            return Replay::Gap {
                last: state.next_seq - 1,
            };
        }
        Replay::Events(
            state
                .recent
                .iter()
                .filter(|e| e.seq > seq)
                .cloned()
                .collect(),
        )
    }
}

/// What the notifier needs besides the store and the feed.
#[derive(Debug, Clone)]
pub struct NotifierSettings {
    /// For the job links in the bodies (no trailing slash).
    pub public_url: String,
    /// The pause after the first failed try; doubled after each further one.
    pub retry_base: Duration,
}

pub struct Notifier {
    store: Store,
    feed: Arc<JobFeed>,
    /// Subscribed before the server accepts requests, so no change is missed at start;
    /// taken by `started`.
    changes: Option<broadcast::Receiver<Arc<Published>>>,
    hub: Arc<ProjectEvents>,
    client: awc::Client,
    settings: NotifierSettings,
    queued: VecDeque<JobChange>,
    /// The attempt whose `queued` was notified, per job not yet finished.
    queued_seen: HashMap<JobId, Attempt>,
    recording: bool,
    claiming: bool,
    in_flight: HashSet<i64>,
}

impl Notifier {
    /// `changes` is `feed.subscribe()`, taken before the server starts accepting.
    pub fn new(
        store: Store,
        feed: Arc<JobFeed>,
        changes: broadcast::Receiver<Arc<Published>>,
        hub: Arc<ProjectEvents>,
        client: awc::Client,
        settings: NotifierSettings,
    ) -> Notifier {
        Notifier {
            store,
            feed,
            changes: Some(changes),
            hub,
            client,
            settings,
            queued: VecDeque::new(),
            queued_seen: HashMap::new(),
            recording: false,
            claiming: false,
            in_flight: HashSet::new(),
        }
    }

    /// Queues a change for recording. Every attempt starts queued, but the feed drops a
    /// `queued` handed over after the claim that followed it (it keeps each job's order), so a
    /// job seen past `queued` for an attempt whose `queued` was not seen gets it first.
    fn note(&mut self, change: JobChange) {
        match change.state {
            JobState::Queued => {
                if self.queued_seen.len() >= MAX_QUEUED_CHANGES {
                    // Only jobs finished elsewhere (another replica) pile up here; forgetting
                    // them costs at most a repeated `queued` on the streams (deliveries are
                    // written once per job attempt and event).
                    self.queued_seen.clear();
                }
                self.queued_seen.insert(change.job, change.attempt);
            }
            _ if self.queued_seen.get(&change.job) != Some(&change.attempt) => {
                self.queued.push_back(JobChange {
                    state: JobState::Queued,
                    builder: None,
                    error: None,
                    ..change.clone()
                });
            }
            _ => {}
        }
        if change.state.is_terminal() {
            self.queued_seen.remove(&change.job);
        } else if change.state != JobState::Queued {
            self.queued_seen.insert(change.job, change.attempt);
        }
        self.queued.push_back(change);
    }

    /// Records the queued changes, one batch at a time so notifications keep their order.
    fn record(&mut self, ctx: &mut Context<Self>) {
        if self.recording || self.queued.is_empty() {
            return;
        }
        self.recording = true;
        let take = self.queued.len().min(RECORD_BATCH);
        let batch: Vec<JobChange> = self.queued.drain(..take).collect();
        let store = self.store.clone();
        let public_url = self.settings.public_url.clone();
        let streams_listen = self.hub.has_subscribers();
        let work = batch.clone();
        let job = async move {
            crate::offload::store(move || record_batch(&store, &public_url, &work, streams_listen))
                .await
        };
        ctx.spawn(job.into_actor(self).map(move |result, act, ctx| {
            act.recording = false;
            match result {
                Ok(Ok(notifications)) => {
                    for (project, notification) in notifications {
                        act.hub.publish(project, notification);
                    }
                    act.deliver(ctx);
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    tracing::warn!(%error, changes = batch.len(), "recording notifications failed; trying again");
                    for change in batch.into_iter().rev() {
                        act.queued.push_front(change);
                    }
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.record(ctx));
                    return;
                }
            }
            act.record(ctx);
        }));
    }

    /// Claims due deliveries up to the in-flight limit and sends them.
    fn deliver(&mut self, ctx: &mut Context<Self>) {
        if self.claiming || self.in_flight.len() >= MAX_IN_FLIGHT {
            return;
        }
        self.claiming = true;
        let store = self.store.clone();
        let room = i64::try_from(MAX_IN_FLIGHT - self.in_flight.len()).unwrap_or(1);
        // A try lasts at most SEND_TIMEOUT; the lease outlives it by a margin for the write.
        let lease =
            i64::try_from((SEND_TIMEOUT + Duration::from_secs(20)).as_millis()).unwrap_or(i64::MAX);
        let claim = async move {
            crate::offload::store(move || {
                let until = store.now_ms().saturating_add(lease);
                store.claim_due_deliveries(room, until)
            })
            .await
        };
        ctx.spawn(claim.into_actor(self).map(move |result, act, ctx| {
            act.claiming = false;
            let due = match result {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    return;
                }
            };
            let full = i64::try_from(due.len()).unwrap_or(0) >= room;
            for delivery in due {
                act.send(delivery, ctx);
            }
            if full {
                // More may be due: claim again once some room is free (the tick does).
                ctx.run_later(Duration::from_millis(10), |act, ctx| act.deliver(ctx));
            }
        }));
    }

    fn send(&mut self, delivery: DueDelivery, ctx: &mut Context<Self>) {
        self.in_flight.insert(delivery.id);
        let request = self
            .client
            .post(&delivery.url)
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("User-Agent", "buildfleet-webhooks"))
            .insert_header(("X-Buildfleet-Event", delivery.event.clone()))
            .insert_header(("X-Buildfleet-Delivery", delivery.id.to_string()))
            .insert_header((
                "X-Buildfleet-Signature",
                signature(&delivery.secret, delivery.payload.as_bytes()),
            ));
        let store = self.store.clone();
        let retry_base = self.settings.retry_base;
        let body = delivery.payload.clone();
        let id = delivery.id;
        let attempt = delivery.attempts + 1;
        let job = async move {
            let started = Instant::now();
            let at = store.now_ms();
            let answer = tokio::time::timeout(SEND_TIMEOUT, request.send_body(body)).await;
            let (status, error) = match answer {
                Ok(Ok(response)) => {
                    let code = i32::from(response.status().as_u16());
                    if response.status().is_success() {
                        (Some(code), None)
                    } else {
                        (
                            Some(code),
                            Some(format!("the receiver answered {}", response.status())),
                        )
                    }
                }
                Ok(Err(e)) => (None, Some(format!("sending failed: {e}"))),
                Err(_) => (
                    None,
                    Some(format!("no answer within {} s", SEND_TIMEOUT.as_secs())),
                ),
            };
            let delivered = error.is_none();
            let next = if delivered || attempt >= MAX_TRIES {
                None
            } else {
                let pause =
                    i64::try_from(backoff(retry_base, attempt).as_millis()).unwrap_or(i64::MAX);
                Some(store.now_ms().saturating_add(pause))
            };
            let outcome = DeliveryTry {
                attempt,
                at,
                status,
                error,
                duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            };
            let recorded = crate::offload::store(move || {
                store.record_delivery_try(id, &outcome, delivered, next)
            })
            .await;
            match recorded {
                Ok(Ok(())) => {}
                // The lease runs out and the delivery is tried again: at least once.
                Ok(Err(e)) => {
                    tracing::warn!(delivery = id, error = %e, "recording a webhook try failed")
                }
                Err(e) => {
                    tracing::warn!(delivery = id, error = %e, "recording a webhook try failed")
                }
            }
        };
        ctx.spawn(job.into_actor(self).map(move |(), act, ctx| {
            act.in_flight.remove(&id);
            act.deliver(ctx);
        }));
    }
}

/// Turns a batch of changes into notifications and writes the deliveries of matching
/// webhooks. Reads nothing more when no webhook is enabled and no stream listens.
fn record_batch(
    store: &Store,
    public_url: &str,
    changes: &[JobChange],
    streams_listen: bool,
) -> Result<Vec<(ProjectId, api::notifications::JobNotification)>, crate::store::StoreError> {
    let relevant: Vec<&JobChange> = changes
        .iter()
        .filter(|c| event_of(c.state).is_some())
        .collect();
    if relevant.is_empty() {
        return Ok(Vec::new());
    }
    let hooks = store.enabled_webhooks()?;
    if hooks.is_empty() && !streams_listen {
        return Ok(Vec::new());
    }
    let ids: Vec<_> = relevant.iter().map(|c| c.job).collect();
    let jobs = store.notified_jobs(&ids)?;
    let mut notifications = Vec::with_capacity(relevant.len());
    let mut deliveries = Vec::new();
    for change in relevant {
        let (Some(event), Some(job)) = (
            event_of(change.state),
            jobs.iter().find(|j| j.id == change.job),
        ) else {
            continue;
        };
        let notification = notification(public_url, event, change, job);
        for hook in hooks
            .iter()
            .filter(|h| h.project == job.project && h.wants(event))
        {
            deliveries.push(NewDelivery {
                webhook: hook.id,
                job: change.job,
                job_attempt: change.attempt.0,
                event: event.to_owned(),
                payload: serde_json::to_string(&notification)
                    .map_err(|e| crate::store::StoreError::InvalidInput(e.to_string()))?,
            });
        }
        notifications.push((job.project, notification));
    }
    store.insert_deliveries(&deliveries)?;
    Ok(notifications)
}

fn notification(
    public_url: &str,
    event: &str,
    change: &JobChange,
    job: &NotifiedJob,
) -> api::notifications::JobNotification {
    let state = change.state;
    api::notifications::JobNotification {
        event: event.to_owned(),
        job: change.job.0,
        project: job.project_slug.clone(),
        state,
        outcome: change.state.is_terminal().then_some(state),
        attempt: change.attempt.0,
        recipe: change.recipe.clone(),
        error: change.error.clone(),
        at: change.at,
        created_at: job.created_at,
        started_at: job.started_at,
        // The job row may already be further on: a finished time only on `finished`.
        finished_at: change
            .state
            .is_terminal()
            .then_some(job.finished_at)
            .flatten(),
        url: format!("{public_url}/api/v1/jobs/{}", change.job),
        html_url: format!("{public_url}/jobs/{}", change.job),
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Forwards the feed's changes in batches; re-reads what it missed from the feed's
        // recent changes if it falls behind.
        let mut changes = self.changes.take().unwrap_or_else(|| self.feed.subscribe());
        let feed = self.feed.clone();
        let addr = ctx.address();
        let closing = feed.closing();
        actix_rt::spawn(async move {
            let mut last_seq = 0;
            loop {
                let received = tokio::select! {
                    _ = closing.cancelled() => return,
                    received = changes.recv() => received,
                };
                let mut batch = Vec::new();
                match received {
                    Ok(published) => {
                        if published.seq > last_seq {
                            last_seq = published.seq;
                            batch.push(published.change.clone());
                        }
                    }
                    Err(RecvError::Lagged(missed)) => match feed.since(feed.epoch(), last_seq) {
                        crate::job_feed::Since::Changes(list) => {
                            for published in list {
                                last_seq = published.seq;
                                batch.push(published.change.clone());
                            }
                        }
                        crate::job_feed::Since::Gap { last } => {
                            tracing::warn!(missed, "the notifier fell behind the job feed; some changes are not notified");
                            last_seq = last;
                        }
                    },
                    Err(RecvError::Closed) => return,
                }
                while let Ok(published) = changes.try_recv() {
                    if published.seq > last_seq {
                        last_seq = published.seq;
                        batch.push(published.change.clone());
                    }
                }
                if !addr.connected() {
                    return;
                }
                if !batch.is_empty() {
                    addr.do_send(Changes(batch));
                }
            }
        });
        let tick =
            (self.settings.retry_base / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.run_interval(tick, |act, ctx| act.deliver(ctx));
        self.deliver(ctx);
    }
}

/// Committed job changes from the feed, in feed order.
#[derive(Message)]
#[rtype(result = "()")]
struct Changes(Vec<JobChange>);

impl Handler<Changes> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: Changes, ctx: &mut Self::Context) {
        for change in msg.0 {
            self.note(change);
        }
        if self.queued.len() > MAX_QUEUED_CHANGES {
            let excess = self.queued.len() - MAX_QUEUED_CHANGES;
            tracing::warn!(
                dropped = excess,
                "too many changes waiting to be notified; dropping the oldest"
            );
            self.queued.drain(..excess);
        }
        self.record(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 1), Duration::from_secs(10));
        assert_eq!(backoff(base, 2), Duration::from_secs(20));
        assert_eq!(backoff(base, 4), Duration::from_secs(80));
        assert_eq!(backoff(base, 30), MAX_BACKOFF);
    }

    #[test]
    fn events_follow_states() {
        assert_eq!(event_of(JobState::Queued), Some("queued"));
        assert_eq!(event_of(JobState::Assigned), None);
        assert_eq!(event_of(JobState::Running), Some("started"));
        assert_eq!(event_of(JobState::TimedOut), Some("finished"));
    }
}
