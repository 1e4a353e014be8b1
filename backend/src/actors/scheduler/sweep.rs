//! The sweep, the safety net: expired leases requeued, job timeouts enforced, jobs queued by
//! another replica picked up; and the lease changes the other parts ask for.

use super::*;

impl Scheduler {
    /// Ends the leases of attempts at once, so the next sweep requeues them.
    pub(super) fn expire_leases(
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
    pub(super) fn cut_leases_to_grace(
        &mut self,
        builder: BuilderId,
        refs: Vec<(JobId, Attempt)>,
        ctx: &mut Context<Self>,
    ) {
        self.set_leases(builder, refs, self.settings.reconnect_grace, ctx);
    }

    /// Sets the leases of the builder's attempts to end `from_now`; a sweep follows one that
    /// ends them now.
    pub(super) fn set_leases(
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

    /// The safety net: requeues expired leases, enforces timeouts, and picks up jobs that
    /// were queued by another replica sharing the database.
    pub(super) fn sweep(&mut self, ctx: &mut Context<Self>) {
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
                // Jobs whose retry back-off has ended become claimable; the dispatch below
                // hands them out (queue_depth counts them). A failure only delays them to the
                // next sweep, and must not lose the requeued leases above.
                if let Err(e) = store.release_backed_off_jobs(now) {
                    tracing::warn!(error = %e, "releasing jobs after their retry back-off failed");
                }
                let depth = if has_idle { store.queue_depth()? } else { 0 };
                Ok::<_, StoreError>((requeued, depth))
            })
            .into_actor(self)
            .map(|result, this, ctx| {
                this.sweeping = false;
                match result {
                    Ok((requeued, depth)) => {
                        this.announce_queued(requeued.iter().map(|lost| &lost.job));
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

    pub(super) fn enforce_timeouts(&mut self, ctx: &mut Context<Self>) {
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

    pub(super) fn watch_timeout(&mut self, builder: BuilderId, job: &Job, attempt: Attempt) {
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
