//! Resume: what a reconnecting builder's `resume` continues, cancels and gives back.

use super::*;

/// The builder's `resume`: which held jobs go on and from which event sequence.
#[derive(Message)]
#[rtype(result = "Result<ResumeResult, anyhow::Error>")]
pub struct ResumeJobs {
    pub builder: BuilderId,
    pub session: u64,
    pub held: Vec<HeldJob>,
}

pub(super) struct ResumePlan {
    decisions: Vec<ResumeDecision>,
    /// Held jobs that go on, with the job for timeout tracking.
    continued: Vec<(Job, Attempt)>,
    /// Live attempts of this builder that it no longer holds.
    abandoned: Vec<(JobId, Attempt)>,
    /// Jobs whose lost lease was forgiven; one may be queued again.
    forgiven: Vec<JobId>,
}

pub(super) fn plan_resume(
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
            crate::actors::blocking_for_sessions(move || plan_resume(&store, builder, &msg.held, lease_ms))
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

#[cfg(test)]
mod tests {
    use buildfleet_protocol::{HeldJob, ResumeAction};

    use super::*;

    /// A store with one builder running one claimed, accepted job.
    fn running_job() -> (tempfile::TempDir, Store, BuilderId, JobId, Attempt) {
        let (dir, store, builder, job, attempt) = super::super::fixture::assigned_job();
        store.mark_running(job, attempt).expect("accept");
        (dir, store, builder, job, attempt)
    }

    fn held(job: JobId, attempt: Attempt) -> HeldJob {
        HeldJob {
            job_id: job.into(),
            attempt: attempt.into(),
            last_acked_seq: None,
            finished: false,
        }
    }

    #[test]
    fn a_held_live_attempt_continues_from_the_stored_log() {
        let (_dir, store, builder, job, attempt) = running_job();
        let plan = plan_resume(&store, builder, &[held(job, attempt)], 60_000).expect("plan");
        assert!(matches!(
            plan.decisions[0].decision,
            ResumeAction::Continue { next_seq: 1 }
        ));
        assert_eq!(plan.continued.len(), 1);
        assert!(plan.abandoned.is_empty() && plan.forgiven.is_empty());
    }

    #[test]
    fn live_attempts_not_named_are_abandoned_and_unknown_ones_cancelled() {
        let (_dir, store, builder, job, attempt) = running_job();
        let stranger = held(JobId(job.0 + 100), attempt);
        let plan = plan_resume(&store, builder, &[stranger], 60_000).expect("plan");
        assert!(matches!(
            &plan.decisions[0].decision,
            ResumeAction::Cancel { reason } if reason == "no such job"
        ));
        assert_eq!(plan.abandoned, vec![(job, attempt)]);
    }
}
