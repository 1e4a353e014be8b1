//! The `Scheduler` actor: knows the connected builders (recipes, labels, credits, load) and
//! pushes queued jobs to them. Dispatch is event-driven — a submitted job, granted credits or
//! a freed slot triggers a claim for a matching builder at once; the periodic sweep only
//! handles leases, timeouts and jobs queued by other replicas.
//!
//! The database stays the source of truth: the scheduler's maps are a cache of who is
//! connected and what they run, rebuilt from `resume` after a reconnect or a restart.

mod completion;
mod dispatch;
#[cfg(test)]
mod fixture;
mod replicas;
mod resume;
mod sweep;

pub use completion::CompleteJob;
pub use replicas::{FromReplica, ReplicaBusUp};
pub use resume::ResumeJobs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use buildfleet_protocol::ssh_key::PublicKey;
use buildfleet_protocol::{
    self as wire, Cancel, CancelReason, Capabilities, CompletionResult, Control, ControlCommand,
    ErrorCode, HeldJob, JobAssignment, JobRef, JobResponse, Jobs, ResumeAction, ResumeDecision,
    ResumeResult, ServerMessage, SourceSpec, WorkAck, WorkDecision,
};

use super::log_sink::{FlushAttempt, LogSink};
use super::replica_bus::ReplicaBus;
use super::{blocking, SessionHandle};
use crate::completion::verify_completion;
use crate::job_feed::JobFeed;
use crate::metrics::Metrics;
use crate::store::{
    effective_labels, ignored_labels, labels_satisfy, Attempt, BuilderControl, BuilderId,
    ClaimRequest, ClaimedJob, Completion, Job, JobId, JobState, Labels, Outcome, ProjectId, Store,
    StoreError,
};

/// How long a submission time is kept for the dispatch latency histogram.
const QUEUED_AT_RETENTION: Duration = Duration::from_secs(3600);
/// After a builder rejects a job it is not offered that job again for this long, doubling
/// with each further rejection of the same job up to the cap; other builders come first.
const REJECT_BACKOFF: Duration = Duration::from_secs(1);
const MAX_REJECT_BACKOFF: Duration = Duration::from_secs(60);

/// Settings the scheduler needs from the configuration.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub public_url: String,
    pub backend_id: String,
    /// A lease outlives a missed heartbeat and a reconnect grace period.
    pub lease: Duration,
    pub reconnect_grace: Duration,
    pub cancel_grace: Duration,
    pub sweep_interval: Duration,
    /// The window of builder time fair share between projects looks at.
    pub fair_share_window: Duration,
    /// The label telling builders' owners apart for reproducible jobs.
    pub reproduce_independence_label: String,
}

struct BuilderSlot {
    session: SessionHandle,
    name: String,
    recipes: HashSet<String>,
    /// Set by the operator (admission, enrolment token): authoritative.
    operator_labels: Labels,
    /// Announced by the builder in `capabilities`: shown, matched only where allowed.
    declared_labels: Labels,
    /// What matching uses: `store::effective_labels(operator, declared)`.
    labels: Labels,
    max_concurrent: u32,
    /// Assignments the builder asked for and has not been sent yet.
    credits: u32,
    active: HashSet<(JobId, Attempt)>,
    /// Capabilities and resume are done; until then nothing is dispatched.
    ready: bool,
    paused: bool,
    draining: bool,
    /// The builder was told its paused or draining standing in this session: after a
    /// reconnect it may still hold the previous session's (see [`Scheduler::sync_control`]).
    control_synced: bool,
    claiming: bool,
    claim_again: bool,
    /// Jobs this builder rejected: how often, and until when it is not offered them again.
    rejected: HashMap<JobId, (u32, Instant)>,
    /// This session replaced one that was still connected: maybe a second process with the
    /// same key (a cloned VM), so attempts it does not resume may still run elsewhere.
    took_over_live: bool,
    /// The builder declared it never turns an assignment down: its claims start the job.
    accepts_every_assignment: bool,
    /// The projects it may serve (`None`: shared by all); loaded from the store when it
    /// registers, and nothing is dispatched to it until then.
    projects: Option<Option<Vec<ProjectId>>>,
}

impl BuilderSlot {
    /// Records a rejection and starts (or lengthens) the back-off for that job.
    fn reject(&mut self, job: JobId) {
        let now = Instant::now();
        let count = self
            .rejected
            .get(&job)
            .map_or(1, |(n, _)| n.saturating_add(1));
        let backoff = REJECT_BACKOFF
            .saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
            .min(MAX_REJECT_BACKOFF);
        self.rejected.insert(job, (count, now + backoff));
    }

    /// Jobs still in their rejection back-off for this builder.
    fn excluded(&self) -> Vec<JobId> {
        let now = Instant::now();
        self.rejected
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(job, _)| *job)
            .collect()
    }

    fn free_slots(&self) -> u32 {
        if !self.ready || self.paused || self.draining || self.projects.is_none() {
            return 0;
        }
        let load = u32::try_from(self.active.len()).unwrap_or(u32::MAX);
        self.credits.min(self.max_concurrent.saturating_sub(load))
    }

    fn can_run(&self, job: &Job) -> bool {
        self.recipes.contains(&job.recipe)
            && labels_satisfy(&self.labels, &job.required_labels)
            && self.serves(job.project)
    }

    /// A shared builder serves every project; a private one only its own.
    fn serves(&self, project: ProjectId) -> bool {
        match &self.projects {
            Some(None) => true,
            Some(Some(projects)) => projects.contains(&project),
            None => false,
        }
    }
}

/// A running attempt's timeout.
struct Deadline {
    at: Instant,
    builder: BuilderId,
    /// When `cancel{timed_out}` went out; after the cancel grace the backend closes the job.
    cancel_sent: Option<Instant>,
}

pub struct Scheduler {
    store: Store,
    settings: SchedulerSettings,
    metrics: Arc<Metrics>,
    log_sink: Addr<LogSink>,
    /// Every committed transition is published here for the event streams.
    feed: Arc<JobFeed>,
    builders: HashMap<BuilderId, BuilderSlot>,
    deadlines: HashMap<(JobId, Attempt), Deadline>,
    /// When jobs submitted through this replica became queued, for the latency histogram.
    queued_at: HashMap<JobId, Instant>,
    /// Builders heard from (a heartbeat) since the last sweep: the sweep records their
    /// `last_seen_at` in one statement instead of one transaction per heartbeat.
    seen: HashSet<BuilderId>,
    sweeping: bool,
    /// The standings operators set through this backend since it started (stored on the
    /// builder row before the scheduler hears of them). They win over the row a registering
    /// session read at its handshake, which may predate an operator's action during it; a
    /// builder without an entry takes the standing from that row (so it survives restarts).
    controls: HashMap<BuilderId, BuilderControl>,
    /// Projects operators gave builders through this backend since it started; they win over
    /// a registering session's load from the store, which may have read before the change.
    project_grants: HashMap<BuilderId, Option<Vec<ProjectId>>>,
    /// Artifact blobs, read for the evidence of an unreproducible job.
    storage: Arc<dyn crate::storage::Storage>,
    /// Wake-ups for the other replicas on the same database (disabled on SQLite).
    bus: ReplicaBus,
}

impl Scheduler {
    pub fn new(
        store: Store,
        settings: SchedulerSettings,
        metrics: Arc<Metrics>,
        log_sink: Addr<LogSink>,
        feed: Arc<JobFeed>,
        storage: Arc<dyn crate::storage::Storage>,
    ) -> Self {
        Scheduler {
            storage,
            store,
            settings,
            metrics,
            log_sink,
            feed,
            builders: HashMap::new(),
            deadlines: HashMap::new(),
            queued_at: HashMap::new(),
            seen: HashSet::new(),
            sweeping: false,
            controls: HashMap::new(),
            project_grants: HashMap::new(),
            bus: ReplicaBus::disabled(),
        }
    }

    /// Announces queued jobs, cancels and operators' commands to the other replicas.
    pub fn with_replica_bus(mut self, bus: ReplicaBus) -> Self {
        self.bus = bus;
        self
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Tells a builder, once per session and after its handshake, the standing the operator
    /// chose: the builder's own intake may still hold the previous session's (or the previous
    /// backend's) command, and the two sides must agree on whether it takes jobs.
    fn sync_control(&mut self, builder: BuilderId, session: u64) {
        if let Some(slot) = self
            .slot(builder, session)
            .filter(|s| s.ready && !s.control_synced)
        {
            slot.control_synced = true;
            let command = BuilderControl {
                paused: slot.paused,
                draining: slot.draining,
            }
            .command();
            slot.session
                .push(ServerMessage::Control(Control { command }));
        }
    }

    fn slot(&mut self, builder: BuilderId, session: u64) -> Option<&mut BuilderSlot> {
        self.builders
            .get_mut(&builder)
            .filter(|slot| slot.session.id == session)
    }

    fn release(&mut self, builder: BuilderId, job: (JobId, Attempt)) {
        if let Some(slot) = self.builders.get_mut(&builder) {
            slot.active.remove(&job);
        }
        self.deadlines.remove(&job);
    }

    fn send_cancel(&self, builder: BuilderId, job: JobId, attempt: Attempt, reason: CancelReason) {
        if let Some(slot) = self.builders.get(&builder) {
            slot.session.push(ServerMessage::Cancel(Cancel {
                job_id: job.into(),
                attempt: attempt.into(),
                reason,
            }));
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.sweep_interval, |this, ctx| this.sweep(ctx));
        // At shutdown (the feed closes) builders are told to go and reconnect later, so a
        // graceful stop does not wait out its timeout for their sockets.
        let closing = self.feed.closing();
        ctx.spawn(
            async move { closing.cancelled().await }
                .into_actor(self)
                .map(|(), this, _| {
                    for slot in this.builders.values() {
                        slot.session.close(
                            ErrorCode::ShuttingDown,
                            "the backend is shutting down; reconnect later",
                        );
                    }
                }),
        );
    }
}

// ---- messages from builder sessions ----

/// A builder authenticated; a previous session of the same builder is closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub builder: BuilderId,
    pub name: String,
    /// The labels the operator gave the builder, as stored.
    pub labels: Labels,
    /// The operator's pause or drain, as stored.
    pub control: BuilderControl,
    pub session: SessionHandle,
}

impl Handler<Register> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Register, ctx: &mut Self::Context) {
        let standing = self
            .controls
            .get(&msg.builder)
            .copied()
            .unwrap_or(msg.control);
        let slot = BuilderSlot {
            session: msg.session,
            name: msg.name,
            recipes: HashSet::new(),
            labels: effective_labels(&msg.labels, &Labels::new()),
            operator_labels: msg.labels,
            declared_labels: Labels::new(),
            max_concurrent: 0,
            credits: 0,
            active: HashSet::new(),
            ready: false,
            paused: standing.paused,
            draining: standing.draining,
            control_synced: false,
            claiming: false,
            claim_again: false,
            rejected: HashMap::new(),
            took_over_live: false,
            accepts_every_assignment: false,
            projects: self.project_grants.get(&msg.builder).cloned(),
        };
        let (builder, session) = (msg.builder, slot.session.id);
        if slot.projects.is_none() {
            self.load_projects(builder, session, ctx);
        }
        // Other replicas on the database tell a builder connected here by its recent contact
        // (`last_seen_at`, which the sweep records up to an interval late): the connection
        // itself is recorded at once.
        if self.store.backend() == crate::store::Backend::Postgres {
            let store = self.store.clone();
            ctx.spawn(
                crate::actors::blocking_for_sessions(move || {
                    store.touch_builder_last_seen(builder)
                })
                .into_actor(self)
                .map(move |result, _, _| {
                    if let Err(e) = result {
                        tracing::warn!(%builder, error = %e, "recording a builder's connection failed");
                    }
                }),
            );
        }
        // The newer session wins: after a network cut it is the builder's real connection
        // while the old socket lingers half-open. The old one is told `session_replaced`; a
        // builder backs off long after that, so two processes with one key do not ping-pong.
        match self.builders.insert(msg.builder, slot) {
            Some(old) => {
                if let Some(slot) = self.builders.get_mut(&msg.builder) {
                    slot.took_over_live = true;
                }
                old.session.close(
                    ErrorCode::SessionReplaced,
                    "a newer connection of this builder took over; back off before reconnecting",
                )
            }
            None => {
                self.metrics
                    .builders_connected
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A session ended. Its builder's leases now run out after the reconnect grace period.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub builder: BuilderId,
    pub session: u64,
}

impl Handler<Unregister> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Unregister, ctx: &mut Self::Context) {
        if self.slot(msg.builder, msg.session).is_none() {
            return;
        }
        self.builders.remove(&msg.builder);
        // Recorded below, now.
        self.seen.remove(&msg.builder);
        self.metrics
            .builders_connected
            .fetch_sub(1, Ordering::Relaxed);
        let store = self.store.clone();
        let grace = i64::try_from(self.settings.reconnect_grace.as_millis()).unwrap_or(i64::MAX);
        let builder = msg.builder;
        ctx.spawn(
            crate::actors::blocking_for_sessions(move || {
                let now = store.now_ms();
                store.touch_builder_last_seen(builder)?;
                store.set_builder_lease_expiry(builder, now.saturating_add(grace))
            })
            .into_actor(self)
            .map(move |result, _, _| {
                if let Err(e) = result {
                    tracing::error!(%builder, error = %e, "starting the reconnect grace period failed");
                }
            }),
        );
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetCapabilities {
    pub builder: BuilderId,
    pub session: u64,
    pub capabilities: Capabilities,
}

impl Handler<SetCapabilities> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: SetCapabilities, _: &mut Self::Context) {
        if let Some(slot) = self.slot(msg.builder, msg.session) {
            let caps = msg.capabilities;
            slot.recipes = caps.recipes.into_iter().map(|r| r.name).collect();
            let ignored = ignored_labels(&slot.operator_labels, &caps.labels);
            if !ignored.is_empty() {
                tracing::info!(builder = %msg.builder, ?ignored, "declared labels the operator did not allow are not matched");
            }
            slot.labels = effective_labels(&slot.operator_labels, &caps.labels);
            slot.declared_labels = caps.labels;
            slot.max_concurrent = caps.max_concurrent_jobs;
            slot.accepts_every_assignment = caps.accepts_every_assignment;
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct GrantCredits {
    pub builder: BuilderId,
    pub session: u64,
    pub credits: u32,
}

impl Handler<GrantCredits> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: GrantCredits, ctx: &mut Self::Context) {
        self.sync_control(msg.builder, msg.session);
        if let Some(slot) = self.slot(msg.builder, msg.session) {
            // Credits beyond the builder's own capacity could never be used.
            slot.credits = slot
                .credits
                .saturating_add(msg.credits)
                .min(slot.max_concurrent);
            self.dispatch_to(msg.builder, ctx);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct AckWork {
    pub builder: BuilderId,
    pub session: u64,
    pub ack: WorkAck,
}

impl Handler<AckWork> for Scheduler {
    // Resolves once the decision is stored: the session holds the builder's next frames until
    // then, so a fast job's `job_response` cannot overtake its `work_ack`.
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: AckWork, _: &mut Self::Context) -> Self::Result {
        let (builder, job, attempt) = (msg.builder, msg.ack.job_id.into(), msg.ack.attempt.into());
        let store = self.store.clone();
        match msg.ack.decision {
            WorkDecision::Accept => Box::pin(
                blocking(move || store.mark_running(job, attempt))
                    .into_actor(self)
                    .map(move |result, this, _| match result {
                        Ok(job) => {
                            this.feed.publish(&job);
                            this.watch_timeout(builder, &job, attempt)
                        }
                        Err(e) => {
                            tracing::warn!(%job, %attempt, error = %e, "accepting an assignment failed");
                            this.send_cancel(builder, job, attempt, CancelReason::Superseded);
                            this.release(builder, (job, attempt));
                        }
                    }),
            ),
            WorkDecision::Reject { reason } => {
                tracing::info!(%builder, %job, %attempt, %reason, "assignment rejected");
                self.release(builder, (job, attempt));
                if let Some(slot) = self.builders.get_mut(&builder) {
                    slot.reject(job);
                }
                Box::pin(
                    blocking(move || store.reject_assignment(job, attempt, &reason))
                        .into_actor(self)
                        .map(move |result, this, ctx| match result {
                            // Offer the job to the others first: this builder just said no.
                            Ok(job) => {
                                this.feed.publish(&job);
                                let others: Vec<BuilderId> = this
                                    .builders
                                    .iter()
                                    .filter(|(id, slot)| **id != builder && slot.free_slots() > 0 && slot.can_run(&job))
                                    .map(|(id, _)| *id)
                                    .collect();
                                for other in others {
                                    this.dispatch_to(other, ctx);
                                }
                            }
                            Err(e) => tracing::warn!(%job, error = %e, "rejecting an assignment failed"),
                        }),
                )
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RenewLeases {
    pub builder: BuilderId,
    pub session: u64,
    pub active: Vec<JobRef>,
}

impl Handler<RenewLeases> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: RenewLeases, ctx: &mut Self::Context) {
        let builder = msg.builder;
        self.sync_control(builder, msg.session);
        // Written by the next sweep, together with every other builder heard from.
        self.seen.insert(builder);
        if msg.active.is_empty() {
            // An idle builder's heartbeat renews nothing: no store call at all.
            return;
        }
        let store = self.store.clone();
        let lease_ms = self.lease_ms();
        let refs: Vec<_> = msg.active.into_iter().map(crate::wire::job_ref).collect();
        ctx.spawn(
            blocking(move || {
                let renewed = store.renew_leases(builder, &refs, lease_ms, store.now_ms())?;
                let renewed: HashSet<_> = renewed.into_iter().map(|r| (r.job, r.attempt)).collect();
                Ok::<_, StoreError>(
                    refs.into_iter()
                        .filter(|r| !renewed.contains(r))
                        .collect::<Vec<_>>(),
                )
            })
            .into_actor(self)
            .map(move |result, this, _| match result {
                Ok(stale) => {
                    for (job, attempt) in stale {
                        // Still finishing a job whose completion was accepted is not stale.
                        let active = this
                            .builders
                            .get(&builder)
                            .is_some_and(|s| s.active.contains(&(job, attempt)));
                        if !active {
                            this.send_cancel(builder, job, attempt, CancelReason::Superseded);
                        }
                    }
                }
                Err(e) => tracing::error!(%builder, error = %e, "renewing leases failed"),
            }),
        );
    }
}

// ---- messages from the HTTP API ----

/// Jobs became queued (submitted, alone or in a batch, or retried): push them now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobQueued(pub Vec<Job>);

impl Handler<JobQueued> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: JobQueued, ctx: &mut Self::Context) {
        let now = Instant::now();
        for job in &msg.0 {
            self.feed.publish(job);
            self.queued_at.insert(job.id, now);
        }
        self.announce_queued(&msg.0);
        match msg.0.as_slice() {
            [job] => self.dispatch_job(job, ctx),
            // A batch: one claim per builder with free slots, not one pass per job.
            _ => self.dispatch_all(ctx),
        }
    }
}

/// A cancel was recorded for a job a builder holds: tell the builder.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelAttempt {
    pub builder: BuilderId,
    pub job: JobId,
    pub attempt: Attempt,
}

impl Handler<CancelAttempt> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: CancelAttempt, _: &mut Self::Context) {
        self.send_cancel(msg.builder, msg.job, msg.attempt, CancelReason::Requested);
        // The builder may be connected to another replica.
        self.bus.announce(crate::store::notify::Notice::Cancel {
            job: msg.job,
            attempt: msg.attempt,
            builder: msg.builder,
        });
    }
}

/// An operator drained, paused or resumed a builder; its new standing is already stored.
/// Answers whether the builder is connected (if not, it gets the standing when it registers).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ControlBuilder {
    pub builder: BuilderId,
    pub command: ControlCommand,
    /// The standing as stored after the command.
    pub standing: BuilderControl,
}

impl Handler<ControlBuilder> for Scheduler {
    type Result = bool;

    fn handle(&mut self, msg: ControlBuilder, ctx: &mut Self::Context) -> bool {
        let standing = msg.standing;
        self.controls.insert(msg.builder, standing);
        self.bus.announce(crate::store::notify::Notice::Builder {
            builder: msg.builder,
            change: crate::store::notify::BuilderChange::Control,
        });
        let Some(slot) = self.builders.get_mut(&msg.builder) else {
            return false;
        };
        slot.paused = standing.paused;
        slot.draining = standing.draining;
        slot.control_synced = true;
        slot.session.push(ServerMessage::Control(Control {
            command: msg.command,
        }));
        self.dispatch_to(msg.builder, ctx);
        true
    }
}

/// An operator made a builder private to projects (or shared again, with an empty list);
/// the change is already stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBuilderProjects {
    pub builder: BuilderId,
    pub projects: Vec<ProjectId>,
}

impl Handler<SetBuilderProjects> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: SetBuilderProjects, ctx: &mut Self::Context) {
        let projects = (!msg.projects.is_empty()).then_some(msg.projects);
        self.project_grants.insert(msg.builder, projects.clone());
        self.bus.announce(crate::store::notify::Notice::Builder {
            builder: msg.builder,
            change: crate::store::notify::BuilderChange::Projects,
        });
        if let Some(slot) = self.builders.get_mut(&msg.builder) {
            slot.projects = Some(projects);
            self.dispatch_to(msg.builder, ctx);
        }
    }
}

/// An operator disabled or removed a builder: close its session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokeBuilder(pub BuilderId);

impl Handler<RevokeBuilder> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: RevokeBuilder, _: &mut Self::Context) {
        self.bus.announce(crate::store::notify::Notice::Builder {
            builder: msg.0,
            change: crate::store::notify::BuilderChange::Revoke,
        });
        if let Some(slot) = self.builders.get(&msg.0) {
            slot.session.close(
                ErrorCode::BuilderRevoked,
                "this builder was disabled or removed by an operator",
            );
        }
    }
}

/// What the scheduler knows of a connected builder, for the API and dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveBuilder {
    pub id: BuilderId,
    pub recipes: Vec<String>,
    pub max_concurrent: u32,
    pub active_jobs: usize,
    pub credits: u32,
    pub paused: bool,
    pub draining: bool,
    /// What the builder announced, and what matching uses of it with the operator's labels.
    pub declared_labels: Labels,
    pub effective_labels: Labels,
    /// The projects it serves: `None` for a shared builder.
    pub projects: Option<Vec<ProjectId>>,
}

#[derive(Message)]
#[rtype(result = "BTreeMap<BuilderId, LiveBuilder>")]
pub struct LiveBuilders;

impl Handler<LiveBuilders> for Scheduler {
    type Result = MessageResult<LiveBuilders>;

    fn handle(&mut self, _: LiveBuilders, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.builders
                .iter()
                .map(|(id, slot)| {
                    let mut recipes: Vec<_> = slot.recipes.iter().cloned().collect();
                    recipes.sort();
                    let live = LiveBuilder {
                        id: *id,
                        recipes,
                        max_concurrent: slot.max_concurrent,
                        active_jobs: slot.active.len(),
                        credits: slot.credits,
                        paused: slot.paused,
                        draining: slot.draining,
                        declared_labels: slot.declared_labels.clone(),
                        effective_labels: slot.labels.clone(),
                        projects: slot.projects.clone().flatten(),
                    };
                    (*id, live)
                })
                .collect(),
        )
    }
}
