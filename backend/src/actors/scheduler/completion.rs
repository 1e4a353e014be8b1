//! Completion: a builder's `job_response` verified and recorded, or refused with a reason.

use super::*;
use crate::reproduction_evidence::{self, RunBlobs};
use crate::storage::Storage;
use crate::store::{
    Artifact, FailureKind, ReproductionEvidence, RunArtifact, RunCompletion, RunStep,
};

/// What a reproducible job's completion needs besides the store: the artifact blobs (the
/// evidence of a disagreement) and the label telling builders' owners apart.
pub(super) struct RunContext<'a> {
    pub storage: &'a dyn Storage,
    pub owner_label: &'a str,
}

/// A builder's `job_response`. The answer becomes its `completion_ack`.
#[derive(Message)]
#[rtype(result = "CompletionResult")]
pub struct CompleteJob {
    pub builder: BuilderId,
    pub public_key: PublicKey,
    pub response: JobResponse,
}

pub(super) enum Verdict {
    Completed(Box<Job>),
    /// The attempt had already ended with this outcome: a resent response.
    AlreadyRecorded,
    Refused(ErrorCode, String),
}

/// How a builder's failure counts for a job's retry policy. The platform's fault (the
/// infrastructure kind): the source could not be fetched (`source_fetch`), an upload failed
/// (`upload`), the builder hit an error of its own (`internal`: I/O, a command it could not
/// start). The job's commands failing (`command_failed`, or a failure without an error but
/// with a non-zero exit status) is a script failure with that status. Everything else (a
/// source that did not verify, was too large or unsafe, an unknown recipe, a missing artifact,
/// a cancel, a timeout) is never retried: another attempt would end the same way.
pub(super) fn failure_of(response: &JobResponse) -> Option<FailureKind> {
    if response.outcome != wire::Outcome::Failed {
        return None;
    }
    match response.error.as_ref().map(|e| e.kind) {
        Some(
            wire::BuildErrorKind::SourceFetch
            | wire::BuildErrorKind::Upload
            | wire::BuildErrorKind::Internal,
        ) => Some(FailureKind::Infrastructure),
        Some(wire::BuildErrorKind::CommandFailed) => Some(FailureKind::Script {
            exit_status: response.exit_status,
        }),
        None => response
            .exit_status
            .filter(|status| *status != 0)
            .map(|status| FailureKind::Script {
                exit_status: Some(status),
            }),
        Some(_) => None,
    }
}

pub(super) fn record_completion(
    store: &Store,
    runs: &RunContext<'_>,
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
    let run = run_completion(store, runs, &job, response, &uploads)?;
    match store.complete_run(job_id, attempt, completion, failure_of(response), run) {
        Ok(job) => Ok(Verdict::Completed(Box::new(job))),
        Err(e @ (StoreError::StaleAttempt { .. } | StoreError::IllegalTransition { .. })) => {
            Ok(Verdict::Refused(ErrorCode::StaleAttempt, e.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// For a job with `reproduce` above 1, what its verified completion does: a success that is
/// not the last run queues the next; the last run's artifacts are compared with every
/// earlier run's (equal: publish; different: the evidence, read from the blobs); a failure
/// after an earlier success ends the job unreproducible (unless its retry policy retries
/// it). `None` for an ordinary job and for cancels and timeouts.
pub(super) fn run_completion(
    store: &Store,
    context: &RunContext<'_>,
    job: &Job,
    response: &JobResponse,
    uploads: &[Artifact],
) -> Result<Option<RunCompletion>, StoreError> {
    if job.reproduce <= 1 {
        return Ok(None);
    }
    let runs = store.job_runs(job.id)?;
    let required = usize::try_from(job.reproduce).unwrap_or(1);
    let step = match response.outcome {
        wire::Outcome::Succeeded => {
            let mut current: Vec<RunArtifact> = uploads
                .iter()
                .map(|a| RunArtifact {
                    name: a.name.clone(),
                    size: a.size,
                    sha256: a.sha256.clone(),
                })
                .collect();
            current.sort();
            if runs.len().saturating_add(1) < required {
                RunStep::Next
            } else {
                let sets: Vec<&[RunArtifact]> = runs
                    .iter()
                    .map(|r| r.artifacts.as_slice())
                    .chain(std::iter::once(current.as_slice()))
                    .collect();
                if reproduction_evidence::all_agree(&sets) {
                    RunStep::Reproduced
                } else {
                    let stored = store.artifacts(job.id, false)?;
                    let keys = |attempt: Attempt| {
                        stored
                            .iter()
                            .filter(|a| a.attempt == attempt)
                            .map(|a| (a.name.clone(), a.storage_key.clone()))
                            .collect()
                    };
                    let last = i32::try_from(runs.len().saturating_add(1)).unwrap_or(i32::MAX);
                    let blobs: Vec<RunBlobs> = runs
                        .iter()
                        .map(|r| RunBlobs {
                            run: r.run,
                            artifacts: r.artifacts.clone(),
                            storage_keys: keys(r.attempt),
                        })
                        .chain(std::iter::once(RunBlobs {
                            run: last,
                            artifacts: current,
                            storage_keys: keys(job.attempt),
                        }))
                        .collect();
                    RunStep::Mismatch(reproduction_evidence::evidence(context.storage, &blobs))
                }
            }
        }
        wire::Outcome::Failed if !runs.is_empty() => {
            let failure = response
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.kind.as_str(), e.message))
                .or_else(|| response.exit_status.map(|s| format!("exit status {s}")))
                .unwrap_or_else(|| "failed".to_owned());
            RunStep::RunFailed(ReproductionEvidence {
                summary: format!(
                    "unreproducible: run {} (attempt {}) failed after {} run(s) succeeded: \
                     {failure}",
                    runs.len().saturating_add(1),
                    job.attempt,
                    runs.len()
                ),
                artifacts: Vec::new(),
                failure: Some(failure),
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(RunCompletion {
        step,
        runs_before: runs.len(),
        owner_label: context.owner_label.to_owned(),
    }))
}

/// A completion whose statement does not verify ends its attempt at once, as failed with the
/// refusal as its error: the job token is revoked with it (no upload is accepted after the
/// refusal), nothing is published, and the job does not sit in `running` until the lease
/// runs out. The submitter may retry the job.
pub(super) fn refuse_statement(
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
        let storage = self.storage.clone();
        let owner_label = self.settings.reproduce_independence_label.clone();
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
                blocking(move || {
                    let runs = RunContext { storage: storage.as_ref(), owner_label: &owner_label };
                    record_completion(&store, &runs, &backend_id, builder, &msg.public_key, &msg.response)
                })
                .await
            }
            .into_actor(self)
            .map(move |verdict, this, ctx| {
                let result = match verdict {
                    Ok(Verdict::Completed(job)) if job.state == JobState::Queued => {
                        // Retried automatically, or a reproducible job's next run: queued again,
                        // handed out once its back-off (if any) ends (the sweep also releases
                        // it, within a second).
                        this.feed.publish(&job);
                        tracing::info!(job = %job.id, attempt = %job.attempt, retry_not_before = ?job.retry_not_before, reproduce = job.reproduce, "attempt ended; queued again");
                        this.dispatch_after_backoff(&job, ctx);
                        CompletionResult::Accepted
                    }
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

impl Scheduler {
    /// Hands out a job put back in the queue by an automatic retry: at once without a
    /// back-off, else by a sweep when the back-off ends (which releases it and dispatches).
    fn dispatch_after_backoff(&mut self, job: &Job, ctx: &mut Context<Self>) {
        match job.retry_not_before {
            None => {
                // The next run may well be for a builder on another replica (a reproducible
                // job's next run must be on another builder).
                self.announce_queued(std::iter::once(job));
                self.dispatch_all(ctx);
            }
            Some(not_before) => {
                let wait_ms = u64::try_from(not_before - self.store.now_ms()).unwrap_or(0);
                ctx.run_later(Duration::from_millis(wait_ms), |this, ctx| this.sweep(ctx));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use buildfleet_protocol::{signing, Outcome as WireOutcome, SignedStatement};

    use super::*;

    use super::super::fixture::{assigned_job, KEY};

    fn response(job: JobId, attempt: Attempt, signature: &str) -> JobResponse {
        JobResponse {
            job_id: job.into(),
            attempt: attempt.into(),
            outcome: WireOutcome::Succeeded,
            exit_status: Some(0),
            error: None,
            artifacts: vec![],
            plan: None,
            statement: SignedStatement {
                statement: "{}\n".into(),
                signature: signature.into(),
            },
            dsse_signature: None,
            reproduction: None,
        }
    }

    #[test]
    fn a_statement_that_does_not_verify_fails_the_attempt() {
        let (dir, store, builder, job, attempt) = assigned_job();
        let storage = crate::storage::FsStorage::new(dir.path().join("blobs")).expect("storage");
        let runs = RunContext {
            storage: &storage,
            owner_label: "owner",
        };
        let key = signing::parse_public_key(KEY).expect("key");
        let verdict = record_completion(
            &store,
            &runs,
            "b",
            builder,
            &key,
            &response(job, attempt, "x"),
        )
        .expect("recorded");
        assert!(matches!(
            verdict,
            Verdict::Refused(ErrorCode::InvalidStatement, _)
        ));
        let failed = store.job(job).expect("read").expect("exists");
        assert_eq!(failed.state, JobState::Failed);
        assert!(failed
            .error
            .is_some_and(|e| e.starts_with("completion refused: invalid_statement")));
    }

    #[test]
    fn failures_map_to_the_kinds_a_retry_policy_names() {
        use buildfleet_protocol::{BuildError, BuildErrorKind as Kind};
        let mut r = response(JobId(1), Attempt(1), "x");
        assert_eq!(failure_of(&r), None, "a success is no failure");
        r.outcome = WireOutcome::Failed;
        r.exit_status = Some(2);
        let script = |exit_status| Some(FailureKind::Script { exit_status });
        assert_eq!(failure_of(&r), script(Some(2)), "a bare non-zero status");
        r.exit_status = Some(0);
        assert_eq!(failure_of(&r), None);
        let expected = [
            (Kind::SourceFetch, Some(FailureKind::Infrastructure)),
            (Kind::Upload, Some(FailureKind::Infrastructure)),
            (Kind::Internal, Some(FailureKind::Infrastructure)),
            (Kind::CommandFailed, script(Some(0))),
            (Kind::SourceDigestMismatch, None),
            (Kind::SourceTooLarge, None),
            (Kind::UnsafeArchive, None),
            (Kind::UnknownRecipe, None),
            (Kind::ArtifactMissing, None),
            (Kind::TimedOut, None),
            (Kind::Cancelled, None),
        ];
        for (kind, failure) in expected {
            r.error = Some(BuildError {
                kind,
                message: "m".into(),
            });
            assert_eq!(failure_of(&r), failure, "{}", kind.as_str());
        }
        r.outcome = WireOutcome::TimedOut;
        r.error = Some(BuildError {
            kind: Kind::Internal,
            message: "m".into(),
        });
        assert_eq!(failure_of(&r), None, "only a failed outcome is retried");
    }

    #[test]
    fn other_builders_and_unknown_jobs_are_refused_without_change() {
        let (dir, store, builder, job, attempt) = assigned_job();
        let storage = crate::storage::FsStorage::new(dir.path().join("blobs")).expect("storage");
        let runs = RunContext {
            storage: &storage,
            owner_label: "owner",
        };
        let key = signing::parse_public_key(KEY).expect("key");
        let stranger = BuilderId(builder.0 + 1);
        let verdict = record_completion(
            &store,
            &runs,
            "b",
            stranger,
            &key,
            &response(job, attempt, "x"),
        )
        .expect("recorded");
        assert!(matches!(
            verdict,
            Verdict::Refused(ErrorCode::StaleAttempt, _)
        ));
        let missing = JobId(job.0 + 1);
        let verdict = record_completion(
            &store,
            &runs,
            "b",
            builder,
            &key,
            &response(missing, attempt, "x"),
        )
        .expect("recorded");
        assert!(matches!(
            verdict,
            Verdict::Refused(ErrorCode::UnknownJob, _)
        ));
        let untouched = store.job(job).expect("read").expect("exists");
        assert_eq!(untouched.state, JobState::Assigned);
    }
}
