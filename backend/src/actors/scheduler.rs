//! The `Scheduler` actor: knows the connected builders (recipes, labels, credits, load) and
//! pushes queued jobs to them. Dispatch is event-driven — a submitted job, granted credits or
//! a freed slot triggers a claim for a matching builder at once; the periodic sweep only
//! handles leases, timeouts and jobs queued by other replicas.
//!
//! The database stays the source of truth: the scheduler's maps are a cache of who is
//! connected and what they run, rebuilt from `resume` after a reconnect or a restart.

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
use super::{blocking, SessionHandle};
use crate::completion::verify_completion;
use crate::job_feed::JobFeed;
use crate::metrics::Metrics;
use crate::store::{
    effective_labels, ignored_labels, labels_satisfy, Attempt, BuilderId, ClaimRequest, ClaimedJob,
    Completion, Job, JobId, JobState, Labels, Outcome, Store, StoreError,
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
    claiming: bool,
    claim_again: bool,
    /// Jobs this builder rejected: how often, and until when it is not offered them again.
    rejected: HashMap<JobId, (u32, Instant)>,
    /// This session replaced one that was still connected: maybe a second process with the
    /// same key (a cloned VM), so attempts it does not resume may still run elsewhere.
    took_over_live: bool,
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
        if !self.ready || self.paused || self.draining {
            return 0;
        }
        let load = u32::try_from(self.active.len()).unwrap_or(u32::MAX);
        self.credits.min(self.max_concurrent.saturating_sub(load))
    }

    fn can_run(&self, job: &Job) -> bool {
        self.recipes.contains(&job.recipe) && labels_satisfy(&self.labels, &job.required_labels)
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
}

impl Scheduler {
    pub fn new(
        store: Store,
        settings: SchedulerSettings,
        metrics: Arc<Metrics>,
        log_sink: Addr<LogSink>,
        feed: Arc<JobFeed>,
    ) -> Self {
        Scheduler {
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
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)
    }

    fn slot(&mut self, builder: BuilderId, session: u64) -> Option<&mut BuilderSlot> {
        self.builders
            .get_mut(&builder)
            .filter(|slot| slot.session.id == session)
    }

    /// Claims jobs for one builder, as many as it has free slots for. One claim per builder
    /// is in flight at a time; triggers during a claim run it again afterwards.
    fn dispatch_to(&mut self, builder: BuilderId, ctx: &mut Context<Self>) {
        let lease_ms = self.lease_ms();
        let now_ms = self.store.now_ms();
        let Some(slot) = self.builders.get_mut(&builder) else {
            return;
        };
        let limit = slot.free_slots();
        if limit == 0 {
            return;
        }
        if slot.claiming {
            slot.claim_again = true;
            return;
        }
        slot.claiming = true;
        let request = ClaimRequest {
            builder,
            recipes: slot.recipes.iter().cloned().collect(),
            labels: slot.labels.clone(),
            limit: limit as usize,
            lease_ms,
            now_ms,
            exclude: slot.excluded(),
        };
        let store = self.store.clone();
        ctx.spawn(
            blocking(move || store.claim_jobs(&request))
                .into_actor(self)
                .map(move |claimed, this, ctx| {
                    let again = match this.builders.get_mut(&builder) {
                        Some(slot) => {
                            slot.claiming = false;
                            std::mem::take(&mut slot.claim_again)
                        }
                        None => false,
                    };
                    match claimed {
                        Ok(claimed) if !claimed.is_empty() => {
                            this.feed.publish_all(claimed.iter().map(|c| &c.job));
                            this.hand_over(builder, claimed, ctx)
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(%builder, error = %e, "claiming jobs failed"),
                    }
                    if again {
                        this.dispatch_to(builder, ctx);
                    }
                }),
        );
    }

    /// Sends freshly claimed jobs to their builder.
    fn hand_over(&mut self, builder: BuilderId, claimed: Vec<ClaimedJob>, ctx: &mut Context<Self>) {
        let Some(slot) = self.builders.get_mut(&builder) else {
            // The builder left during the claim: give the jobs back at once.
            let refs: Vec<_> = claimed.iter().map(|c| (c.job.id, c.attempt)).collect();
            self.expire_leases(builder, refs, ctx);
            return;
        };
        let mut assignments = Vec::with_capacity(claimed.len());
        let mut corrupt = Vec::new();
        for claim in claimed {
            let key = (claim.job.id, claim.attempt);
            match assignment(&self.settings.public_url, claim) {
                Ok(job) => {
                    slot.active.insert(key);
                    slot.credits = slot.credits.saturating_sub(1);
                    if let Some(queued_at) = self.queued_at.remove(&key.0) {
                        self.metrics.dispatch_latency.observe(queued_at.elapsed());
                    }
                    self.metrics.jobs_dispatched.fetch_add(1, Ordering::Relaxed);
                    assignments.push(job);
                }
                Err(e) => corrupt.push((key, e.to_string())),
            }
        }
        for ((job, attempt), error) in corrupt {
            self.fail_corrupt(job, attempt, error, ctx);
        }
        let Some(slot) = self.builders.get_mut(&builder) else {
            return;
        };
        if assignments.is_empty() {
            return;
        }
        tracing::debug!(%builder, builder_name = %slot.name, jobs = assignments.len(), "dispatching");
        slot.session
            .push(ServerMessage::Jobs(Jobs { jobs: assignments }));
    }

    /// A claimed job whose stored row is corrupt never goes out: its attempt ends failed with
    /// the reason, logged and shown on the job, instead of a builder running on made-up values.
    fn fail_corrupt(
        &mut self,
        job: JobId,
        attempt: Attempt,
        error: String,
        ctx: &mut Context<Self>,
    ) {
        tracing::error!(%job, %attempt, %error, "claimed job is corrupt; failing it");
        let store = self.store.clone();
        let completion = Completion {
            outcome: Outcome::Failed,
            exit_status: None,
            error: Some(format!("internal: {error}")),
            publication: None,
        };
        ctx.spawn(
            blocking(move || store.complete_attempt(job, attempt, completion))
                .into_actor(self)
                .map(move |result, this, _| match result {
                    Ok(failed) => this.feed.publish(&failed),
                    Err(e) => tracing::error!(%job, error = %e, "failing a corrupt job failed"),
                }),
        );
    }

    /// Pushes a newly queued job to the matching builder with the most room.
    fn dispatch_job(&mut self, job: &Job, ctx: &mut Context<Self>) {
        let best = self
            .builders
            .iter()
            .filter(|(_, slot)| slot.free_slots() > 0 && slot.can_run(job))
            .max_by_key(|(id, slot)| (slot.free_slots(), std::cmp::Reverse(id.0)))
            .map(|(id, _)| *id);
        if let Some(builder) = best {
            self.dispatch_to(builder, ctx);
        }
    }

    fn dispatch_all(&mut self, ctx: &mut Context<Self>) {
        let idle: Vec<BuilderId> = self
            .builders
            .iter()
            .filter(|(_, slot)| slot.free_slots() > 0)
            .map(|(id, _)| *id)
            .collect();
        for builder in idle {
            self.dispatch_to(builder, ctx);
        }
    }

    /// Ends the leases of attempts at once, so the next sweep requeues them.
    fn expire_leases(
        &mut self,
        builder: BuilderId,
        refs: Vec<(JobId, Attempt)>,
        ctx: &mut Context<Self>,
    ) {
        // A lease renewed to "now" has expired for the sweep that follows.
        self.set_leases(builder, refs, Duration::ZERO, ctx);
    }

    /// Leaves attempts their reconnect grace period: they are requeued only if no session of
    /// the builder resumes them in time.
    fn cut_leases_to_grace(
        &mut self,
        builder: BuilderId,
        refs: Vec<(JobId, Attempt)>,
        ctx: &mut Context<Self>,
    ) {
        self.set_leases(builder, refs, self.settings.reconnect_grace, ctx);
    }

    /// Sets the leases of the builder's attempts to end `from_now`; a sweep follows one that
    /// ends them now.
    fn set_leases(
        &mut self,
        builder: BuilderId,
        refs: Vec<(JobId, Attempt)>,
        from_now: Duration,
        ctx: &mut Context<Self>,
    ) {
        if refs.is_empty() {
            return;
        }
        let store = self.store.clone();
        let lease_ms = i64::try_from(from_now.as_millis()).unwrap_or(i64::MAX);
        ctx.spawn(
            blocking(move || store.renew_leases(builder, &refs, lease_ms, store.now_ms()))
                .into_actor(self)
                .map(move |result, this, ctx| {
                    if let Err(e) = result {
                        tracing::error!(%builder, error = %e, "setting leases failed");
                    }
                    if from_now.is_zero() {
                        this.sweep(ctx);
                    }
                }),
        );
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

    /// The safety net: requeues expired leases, enforces timeouts, and picks up jobs that
    /// were queued by another replica sharing the database.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        self.enforce_timeouts(ctx);
        // Jobs taken by other replicas or cancelled while queued never reach hand_over.
        self.queued_at
            .retain(|_, at| at.elapsed() < QUEUED_AT_RETENTION);
        // A rejection is remembered for a while after its back-off, so a job rejected again
        // soon backs off longer; then it is forgotten.
        for slot in self.builders.values_mut() {
            slot.rejected
                .retain(|_, (_, until)| until.elapsed() < MAX_REJECT_BACKOFF);
        }
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let store = self.store.clone();
        let has_idle = self.builders.values().any(|slot| slot.free_slots() > 0);
        let seen: Vec<BuilderId> = self.seen.drain().collect();
        ctx.spawn(
            blocking(move || {
                let now = store.now_ms();
                // Contact is recorded to within a sweep interval; a failure here only delays
                // `last_seen_at` to the builder's next heartbeat.
                if let Err(e) = store.touch_builders_last_seen(&seen, now) {
                    tracing::warn!(builders = seen.len(), error = %e, "recording builder contact failed");
                }
                let requeued = store.requeue_expired_leases(now)?;
                let depth = if has_idle { store.queue_depth()? } else { 0 };
                Ok::<_, StoreError>((requeued, depth))
            })
            .into_actor(self)
            .map(|result, this, ctx| {
                this.sweeping = false;
                match result {
                    Ok((requeued, depth)) => {
                        for lost in &requeued {
                            this.feed.publish(&lost.job);
                            tracing::info!(job = %lost.job.id, attempt = %lost.lost_attempt, state = %lost.job.state.as_str(), "lease expired");
                            if let Some(builder) = lost.builder {
                                this.send_cancel(builder, lost.job.id, lost.lost_attempt, CancelReason::Superseded);
                                this.release(builder, (lost.job.id, lost.lost_attempt));
                            }
                        }
                        if !requeued.is_empty() || depth > 0 {
                            this.dispatch_all(ctx);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "lease sweep failed"),
                }
            }),
        );
    }

    fn enforce_timeouts(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut to_cancel = Vec::new();
        let mut to_close = Vec::new();
        for (&(job, attempt), deadline) in &mut self.deadlines {
            match deadline.cancel_sent {
                None if now >= deadline.at => {
                    deadline.cancel_sent = Some(now);
                    to_cancel.push((deadline.builder, job, attempt));
                }
                Some(sent) if now.duration_since(sent) >= self.settings.cancel_grace => {
                    to_close.push((deadline.builder, job, attempt));
                }
                _ => {}
            }
        }
        for (builder, job, attempt) in to_cancel {
            tracing::info!(%job, %attempt, "job timed out; cancelling");
            self.send_cancel(builder, job, attempt, CancelReason::TimedOut);
        }
        for (builder, job, attempt) in to_close {
            self.release(builder, (job, attempt));
            let store = self.store.clone();
            let completion = Completion {
                outcome: Outcome::TimedOut,
                exit_status: None,
                error: Some("timed out; the builder did not confirm the cancel in time".into()),
                publication: None,
            };
            ctx.spawn(
                blocking(move || store.complete_attempt(job, attempt, completion))
                    .into_actor(self)
                    .map(move |result, this, ctx| {
                        match result {
                            Ok(closed) => this.feed.publish(&closed),
                            Err(e) => {
                                tracing::warn!(%job, error = %e, "closing a timed-out job failed")
                            }
                        }
                        this.dispatch_to(builder, ctx);
                    }),
            );
        }
    }

    fn watch_timeout(&mut self, builder: BuilderId, job: &Job, attempt: Attempt) {
        let timeout = Duration::from_secs(u64::try_from(job.timeout_secs).unwrap_or(0));
        let started_ms = job.started_at.unwrap_or_else(|| self.store.now_ms());
        let elapsed_ms = u64::try_from(self.store.now_ms() - started_ms).unwrap_or(0);
        let remaining = timeout.saturating_sub(Duration::from_millis(elapsed_ms));
        self.deadlines.insert(
            (job.id, attempt),
            Deadline {
                at: Instant::now() + remaining,
                builder,
                cancel_sent: None,
            },
        );
    }
}

/// The `jobs` entry of a claimed job. Submission validated every field; a stored value that
/// fails here is corrupt, and is an error rather than a plausible stand-in (an all-zero
/// digest, an immediate timeout).
fn assignment(public_url: &str, claim: ClaimedJob) -> Result<JobAssignment, StoreError> {
    let job = claim.job;
    let corrupt = |what: &str| StoreError::Corrupt(format!("job {}: {what}", job.id));
    let sha256: wire::Sha256Digest = job
        .source_sha256
        .parse()
        .map_err(|_| corrupt("stored source_sha256 is not a SHA-256 digest"))?;
    let max_bytes = u64::try_from(job.source_max_bytes)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| corrupt("stored source_max_bytes is not positive"))?;
    let timeout_secs = u64::try_from(job.timeout_secs)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| corrupt("stored timeout_secs is not positive"))?;
    Ok(JobAssignment {
        job_id: job.id.into(),
        attempt: claim.attempt.into(),
        source: SourceSpec {
            url: job.source_url,
            sha256,
            max_bytes,
        },
        recipe: job.recipe,
        parameters: job.parameters,
        mode: job.mode.into(),
        timeout_secs,
        job_token: claim.job_token,
        upload_url: format!(
            "{public_url}/api/v1/jobs/{}/attempts/{}/artifacts",
            job.id, claim.attempt
        ),
    })
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
    pub session: SessionHandle,
}

impl Handler<Register> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
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
            paused: false,
            draining: false,
            claiming: false,
            claim_again: false,
            rejected: HashMap::new(),
            took_over_live: false,
        };
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
            blocking(move || {
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
        }
    }
}

/// The builder's `resume`: which held jobs go on and from which event sequence.
#[derive(Message)]
#[rtype(result = "Result<ResumeResult, anyhow::Error>")]
pub struct ResumeJobs {
    pub builder: BuilderId,
    pub session: u64,
    pub held: Vec<HeldJob>,
}

struct ResumePlan {
    decisions: Vec<ResumeDecision>,
    /// Held jobs that go on, with the job for timeout tracking.
    continued: Vec<(Job, Attempt)>,
    /// Live attempts of this builder that it no longer holds.
    abandoned: Vec<(JobId, Attempt)>,
    /// Jobs whose lost lease was forgiven; one may be queued again.
    forgiven: Vec<JobId>,
}

fn plan_resume(
    store: &Store,
    builder: BuilderId,
    held: &[HeldJob],
    lease_ms: i64,
) -> Result<ResumePlan, StoreError> {
    let live: HashSet<(JobId, Attempt)> = store
        .active_attempts_for_builder(builder)?
        .into_iter()
        .map(|a| (a.job, a.attempt))
        .collect();
    let mut plan = ResumePlan {
        decisions: Vec::new(),
        continued: Vec::new(),
        abandoned: Vec::new(),
        forgiven: Vec::new(),
    };
    let mut kept = HashSet::new();
    for h in held {
        let key: (JobId, Attempt) = (h.job_id.into(), h.attempt.into());
        let job = store.job(key.0)?;
        let decision = match &job {
            // Live: go on; or finished here and only the completion ack was lost: resend it.
            Some(job)
                if live.contains(&key)
                    || (h.finished && job.attempt == key.1 && job.state.is_terminal()) =>
            {
                let stored = store.last_log_seq(key.0, key.1)?.unwrap_or(0);
                kept.insert(key);
                plan.continued.push((job.clone(), key.1));
                ResumeAction::Continue {
                    next_seq: u64::try_from(stored).unwrap_or(0) + 1,
                }
            }
            Some(_) => {
                // Still holding an attempt whose lease ran out: the builder lived through
                // it, so the loss was the network's and does not count against the job.
                if store.forgive_lost_attempt(key.0, key.1, builder)? {
                    tracing::info!(job = %key.0, attempt = %key.1, %builder, "lost lease forgiven: the builder came back");
                    plan.forgiven.push(key.0);
                }
                ResumeAction::Cancel {
                    reason: "this attempt is no longer current".into(),
                }
            }
            None => ResumeAction::Cancel {
                reason: "no such job".into(),
            },
        };
        plan.decisions.push(ResumeDecision {
            job_id: h.job_id,
            attempt: h.attempt,
            decision,
        });
    }
    let renew: Vec<_> = kept.iter().copied().collect();
    store.renew_leases(builder, &renew, lease_ms, store.now_ms())?;
    plan.abandoned = live.difference(&kept).copied().collect();
    Ok(plan)
}

impl Handler<ResumeJobs> for Scheduler {
    type Result = ResponseActFuture<Self, Result<ResumeResult, anyhow::Error>>;

    fn handle(&mut self, msg: ResumeJobs, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let lease_ms = self.lease_ms();
        let (builder, session) = (msg.builder, msg.session);
        Box::pin(
            blocking(move || plan_resume(&store, builder, &msg.held, lease_ms))
                .into_actor(self)
                .map(move |plan, this, ctx| {
                    let plan = plan?;
                    for (job, attempt) in &plan.continued {
                        if job.state == JobState::Running {
                            this.watch_timeout(builder, job, *attempt);
                        }
                    }
                    if let Some(slot) = this.slot(builder, session) {
                        slot.active = plan.continued.iter().map(|(job, a)| (job.id, *a)).collect();
                        slot.ready = true;
                    }
                    if !plan.abandoned.is_empty() {
                        tracing::info!(%builder, jobs = plan.abandoned.len(), "builder no longer holds jobs; requeueing");
                    }
                    let took_over_live = this.slot(builder, session).is_some_and(|s| s.took_over_live);
                    if took_over_live {
                        // The replaced session may be another live process with this key:
                        // its attempts keep their grace period instead of being requeued at
                        // once, so a clone's reconnect can still resume them.
                        this.cut_leases_to_grace(builder, plan.abandoned, ctx);
                    } else {
                        this.expire_leases(builder, plan.abandoned, ctx);
                    }
                    plan.forgiven.iter().for_each(|job| this.feed.refresh(*job));
                    if !plan.forgiven.is_empty() {
                        // A job the refund put back in the queue goes out now, not at the sweep.
                        this.dispatch_all(ctx);
                    }
                    Ok(ResumeResult { jobs: plan.decisions })
                }),
        )
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

/// A builder's `job_response`. The answer becomes its `completion_ack`.
#[derive(Message)]
#[rtype(result = "CompletionResult")]
pub struct CompleteJob {
    pub builder: BuilderId,
    pub public_key: PublicKey,
    pub response: JobResponse,
}

enum Verdict {
    Completed(Box<Job>),
    /// The attempt had already ended with this outcome: a resent response.
    AlreadyRecorded,
    Refused(ErrorCode, String),
}

fn record_completion(
    store: &Store,
    backend_id: &str,
    builder: BuilderId,
    key: &PublicKey,
    response: &JobResponse,
) -> Result<Verdict, StoreError> {
    let job_id: JobId = response.job_id.into();
    let attempt: Attempt = response.attempt.into();
    let Some(job) = store.job(job_id)? else {
        return Ok(Verdict::Refused(
            ErrorCode::UnknownJob,
            format!("no job {job_id}"),
        ));
    };
    if job.builder_id != Some(builder) || job.attempt != attempt {
        return Ok(Verdict::Refused(
            ErrorCode::StaleAttempt,
            format!("attempt {attempt} of job {job_id} is not yours or not current"),
        ));
    }
    if job.state.is_terminal() {
        let outcome: Outcome = response.outcome.into();
        return Ok(if job.state == outcome.job_state() {
            Verdict::AlreadyRecorded
        } else {
            Verdict::Refused(
                ErrorCode::StaleAttempt,
                format!("job {job_id} already ended as {}", job.state.as_str()),
            )
        });
    }
    let uploads: Vec<_> = store
        .artifacts(job_id, false)?
        .into_iter()
        .filter(|a| a.attempt == attempt)
        .collect();
    let publication = match verify_completion(&job, response, key, backend_id, &uploads) {
        Ok(publication) => publication,
        Err(e) => return refuse_statement(store, job_id, attempt, response, e.to_string()),
    };
    let error = response
        .error
        .as_ref()
        .map(|e| format!("{}: {}", e.kind.as_str(), e.message));
    let completion = Completion {
        outcome: response.outcome.into(),
        exit_status: response.exit_status,
        error,
        publication: Some(publication),
    };
    match store.complete_attempt(job_id, attempt, completion) {
        Ok(job) => Ok(Verdict::Completed(Box::new(job))),
        Err(e @ (StoreError::StaleAttempt { .. } | StoreError::IllegalTransition { .. })) => {
            Ok(Verdict::Refused(ErrorCode::StaleAttempt, e.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// A completion whose statement does not verify ends its attempt at once, as failed with the
/// refusal as its error: the job token is revoked with it (no upload is accepted after the
/// refusal), nothing is published, and the job does not sit in `running` until the lease
/// runs out. The submitter may retry the job.
fn refuse_statement(
    store: &Store,
    job: JobId,
    attempt: Attempt,
    response: &JobResponse,
    message: String,
) -> Result<Verdict, StoreError> {
    let completion = Completion {
        outcome: Outcome::Failed,
        exit_status: response.exit_status,
        error: Some(format!("completion refused: invalid_statement: {message}")),
        publication: None,
    };
    match store.complete_attempt(job, attempt, completion) {
        Ok(_) => Ok(Verdict::Refused(ErrorCode::InvalidStatement, message)),
        Err(e @ (StoreError::StaleAttempt { .. } | StoreError::IllegalTransition { .. })) => {
            Ok(Verdict::Refused(ErrorCode::StaleAttempt, e.to_string()))
        }
        Err(e) => Err(e),
    }
}

impl Handler<CompleteJob> for Scheduler {
    type Result = ResponseActFuture<Self, CompletionResult>;

    fn handle(&mut self, msg: CompleteJob, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let backend_id = self.settings.backend_id.clone();
        let builder = msg.builder;
        let key = (
            JobId::from(msg.response.job_id),
            Attempt::from(msg.response.attempt),
        );
        // Logs first, so a finished job's log is complete when its state says so.
        let flush = self.log_sink.send(FlushAttempt {
            job: key.0,
            attempt: key.1,
        });
        Box::pin(
            async move {
                // A job must not end with its log short: if the log is not all stored, the
                // completion is refused as internal and the builder resends it.
                match flush.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(anyhow::Error::new(e)),
                    Err(e) => return Err(anyhow::anyhow!("log sink unavailable: {e}")),
                }
                blocking(move || record_completion(&store, &backend_id, builder, &msg.public_key, &msg.response)).await
            }
            .into_actor(self)
            .map(move |verdict, this, ctx| {
                let result = match verdict {
                    Ok(Verdict::Completed(job)) => {
                        this.feed.publish(&job);
                        this.metrics.jobs_completed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(job = %job.id, state = job.state.as_str(), "job finished");
                        CompletionResult::Accepted
                    }
                    Ok(Verdict::AlreadyRecorded) => CompletionResult::Accepted,
                    Ok(Verdict::Refused(code, message)) => {
                        // A refused statement fails the job; the store call did not hand it back.
                        this.feed.refresh(key.0);
                        tracing::warn!(job = %key.0, attempt = %key.1, %message, "completion refused");
                        CompletionResult::Refused { code, message }
                    }
                    Err(e) => {
                        tracing::error!(job = %key.0, error = %e, "recording a completion failed");
                        CompletionResult::Refused { code: ErrorCode::Internal, message: "could not record the completion; resend later".into() }
                    }
                };
                // An internal error leaves the job held: the builder resends after reconnecting.
                if !matches!(&result, CompletionResult::Refused { code: ErrorCode::Internal, .. }) {
                    this.release(builder, key);
                    this.dispatch_to(builder, ctx);
                }
                result
            }),
        )
    }
}

// ---- messages from the HTTP API ----

/// A job became queued (submitted or retried): push it now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobQueued(pub Job);

impl Handler<JobQueued> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: JobQueued, ctx: &mut Self::Context) {
        self.feed.publish(&msg.0);
        self.queued_at.insert(msg.0.id, Instant::now());
        self.dispatch_job(&msg.0, ctx);
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
    }
}

/// Drain, pause or resume a builder. Answers whether it is connected.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ControlBuilder {
    pub builder: BuilderId,
    pub command: ControlCommand,
}

impl Handler<ControlBuilder> for Scheduler {
    type Result = bool;

    fn handle(&mut self, msg: ControlBuilder, ctx: &mut Self::Context) -> bool {
        let Some(slot) = self.builders.get_mut(&msg.builder) else {
            return false;
        };
        match msg.command {
            ControlCommand::Drain => slot.draining = true,
            ControlCommand::Pause => slot.paused = true,
            ControlCommand::Resume => {
                slot.paused = false;
                slot.draining = false;
            }
        }
        slot.session.push(ServerMessage::Control(Control {
            command: msg.command,
        }));
        self.dispatch_to(msg.builder, ctx);
        true
    }
}

/// An operator disabled or removed a builder: close its session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokeBuilder(pub BuilderId);

impl Handler<RevokeBuilder> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: RevokeBuilder, _: &mut Self::Context) {
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
                    };
                    (*id, live)
                })
                .collect(),
        )
    }
}
