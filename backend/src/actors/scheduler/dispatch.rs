//! Dispatch: claims for a builder with free slots and the `jobs` frames that carry them. No
//! poll on this path: a submitted job, granted credits or a freed slot triggers a claim.

use super::*;

impl Scheduler {
    /// Claims jobs for one builder, as many as it has free slots for. One claim per builder
    /// is in flight at a time; triggers during a claim run it again afterwards.
    pub(super) fn dispatch_to(&mut self, builder: BuilderId, ctx: &mut Context<Self>) {
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
            projects: slot.projects.clone().flatten(),
            fair_share_window_ms: i64::try_from(self.settings.fair_share_window.as_millis())
                .unwrap_or(i64::MAX),
        };
        let store = self.store.clone();
        let start = slot.accepts_every_assignment;
        ctx.spawn(
            blocking(move || {
                if start {
                    store.claim_jobs_started(&request)
                } else {
                    store.claim_jobs(&request)
                }
            })
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

    /// Reads which projects a registering builder serves; until the answer is in, nothing is
    /// dispatched to it, so a private builder never gets another project's job.
    pub(super) fn load_projects(
        &mut self,
        builder: BuilderId,
        session: u64,
        ctx: &mut Context<Self>,
    ) {
        let store = self.store.clone();
        ctx.spawn(
            crate::actors::blocking_for_sessions(move || store.builder_projects(builder))
                .into_actor(self)
                .map(move |result, this, ctx| {
                    let projects = match result {
                        Ok(projects) => (!projects.is_empty()).then_some(projects),
                        Err(e) => {
                            // Without its projects the builder takes no work: safe, and its
                            // next session tries again.
                            tracing::error!(%builder, error = %e, "loading a builder's projects failed");
                            return;
                        }
                    };
                    // An operator's change since the read wins over it.
                    let projects = this.project_grants.get(&builder).cloned().unwrap_or(projects);
                    if let Some(slot) = this.slot(builder, session) {
                        slot.projects = Some(projects);
                        this.dispatch_to(builder, ctx);
                    }
                }),
        );
    }

    /// Sends freshly claimed jobs to their builder.
    pub(super) fn hand_over(
        &mut self,
        builder: BuilderId,
        claimed: Vec<ClaimedJob>,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.builders.get_mut(&builder) else {
            // The builder left during the claim: give the jobs back at once.
            let refs: Vec<_> = claimed.iter().map(|c| (c.job.id, c.attempt)).collect();
            self.expire_leases(builder, refs, ctx);
            return;
        };
        let mut assignments = Vec::with_capacity(claimed.len());
        let mut corrupt = Vec::new();
        // Claims that started their job (a builder that accepts every assignment): their
        // timeout runs from now, as an accepted job's does.
        let mut started = Vec::new();
        for claim in claimed {
            let key = (claim.job.id, claim.attempt);
            if claim.job.state == JobState::Running {
                started.push(claim.job.clone());
            }
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
            started.retain(|j| j.id != job);
            self.fail_corrupt(job, attempt, error, ctx);
        }
        for job in &started {
            self.watch_timeout(builder, job, job.attempt);
        }
        let Some(slot) = self.builders.get_mut(&builder) else {
            return;
        };
        if assignments.is_empty() {
            return;
        }
        tracing::debug!(%builder, builder_name = %slot.name, jobs = assignments.len(), "dispatching");
        for jobs in split_into_frames(assignments, wire::DEFAULT_MAX_FRAME_BYTES) {
            slot.session.push(ServerMessage::Jobs(Jobs { jobs }));
        }
    }

    /// A claimed job whose stored row is corrupt never goes out: its attempt ends failed with
    /// the reason, logged and shown on the job, instead of a builder running on made-up values.
    pub(super) fn fail_corrupt(
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
    pub(super) fn dispatch_job(&mut self, job: &Job, ctx: &mut Context<Self>) {
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

    pub(super) fn dispatch_all(&mut self, ctx: &mut Context<Self>) {
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
}

/// The `jobs` entry of a claimed job. Submission validated every field; a stored value that
/// fails here is corrupt, and is an error rather than a plausible stand-in (an all-zero
/// digest, an immediate timeout).
pub(super) fn assignment(public_url: &str, claim: ClaimedJob) -> Result<JobAssignment, StoreError> {
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
        annotations: job.annotations,
        mode: crate::wire::job_mode(job.mode),
        timeout_secs,
        job_token: claim.job_token,
        upload_url: format!(
            "{public_url}/api/v1/jobs/{}/attempts/{}/artifacts",
            job.id, claim.attempt
        ),
    })
}

/// What a `jobs` frame adds around its assignments (`{"type":"jobs","jobs":[` … `]}`), with
/// room to spare.
const JOBS_FRAME_OVERHEAD: usize = 64;

/// Splits assignments into `jobs` frames that each stay within the builder's frame limit
/// (a job's annotations alone may be tens of KiB); order is kept. An assignment too large
/// for any frame still goes alone: the builder refuses it and its lease brings it back, as
/// for any frame it cannot read.
fn split_into_frames(
    assignments: Vec<JobAssignment>,
    max_frame_bytes: usize,
) -> Vec<Vec<JobAssignment>> {
    let budget = max_frame_bytes.saturating_sub(JOBS_FRAME_OVERHEAD);
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut used = 0;
    for assignment in assignments {
        // A serialisation failure cannot happen for these types; count it as a full frame.
        let size = serde_json::to_vec(&assignment).map_or(budget, |bytes| bytes.len() + 1);
        if !frame.is_empty() && used + size > budget {
            frames.push(std::mem::take(&mut frame));
            used = 0;
        }
        used += size;
        frame.push(assignment);
    }
    if !frame.is_empty() {
        frames.push(frame);
    }
    frames
}

#[cfg(test)]
mod frame_tests {
    use super::*;
    use buildfleet_protocol::ServerMessage;

    fn assignment(id: i64, annotation_bytes: usize) -> JobAssignment {
        let sample = match ServerMessage::decode(
            r#"{"type":"jobs","jobs":[{"job_id":1,"attempt":1,"source":{"url":"http://s/x.tar.gz","sha256":"0000000000000000000000000000000000000000000000000000000000000000","max_bytes":1},"recipe":"r","mode":"build","timeout_secs":60,"job_token":"t","upload_url":"http://s/u","lease_expires_in_ms":1000}]}"#,
            wire::DEFAULT_MAX_FRAME_BYTES,
        ) {
            Ok(ServerMessage::Jobs(jobs)) => jobs.jobs[0].clone(),
            other => panic!("a sample assignment: {other:?}"),
        };
        JobAssignment {
            job_id: wire::JobId(id),
            annotations: [("message".to_owned(), "m".repeat(annotation_bytes))].into(),
            ..sample
        }
    }

    #[test]
    fn frames_stay_within_the_limit_and_keep_the_order() {
        let limit = 64 * 1024;
        let assignments: Vec<_> = (1..=10).map(|id| assignment(id, 20_000)).collect();
        let frames = split_into_frames(assignments, limit);
        assert!(
            frames.len() > 1,
            "ten 20 KB assignments do not fit in one 64 KiB frame"
        );
        let mut ids = Vec::new();
        for frame in &frames {
            let encoded = ServerMessage::Jobs(Jobs {
                jobs: frame.clone(),
            })
            .to_json();
            assert!(encoded.len() <= limit, "a frame of {} bytes", encoded.len());
            assert!(
                ServerMessage::decode(&encoded, limit).is_ok(),
                "the builder can read it"
            );
            ids.extend(frame.iter().map(|a| a.job_id.0));
        }
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn small_assignments_share_one_frame() {
        let frames = split_into_frames(
            (1..=4).map(|id| assignment(id, 10)).collect(),
            wire::DEFAULT_MAX_FRAME_BYTES,
        );
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), 4);
    }
}
