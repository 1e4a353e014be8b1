//! The job state machine: every legal move, the illegal ones refused, each move recorded.

use buildfleet_backend::store::{
    Attempt, AttemptOutcome, CancelResult, Completion, JobState, Outcome, StoreError,
};
use buildfleet_testkit::db::{admit, claim_one, new_job, TestDb, LEASE_MS, T0};
use buildfleet_testkit::db_tests;

fn completion(outcome: Outcome) -> Completion {
    Completion {
        outcome,
        exit_status: Some(if outcome == Outcome::Succeeded { 0 } else { 1 }),
        error: (outcome != Outcome::Succeeded).then(|| format!("{outcome}")),
        publication: None,
    }
}

fn assert_illegal(err: StoreError, from: JobState, to: JobState) {
    match err {
        StoreError::IllegalTransition { from: f, to: t, .. } => {
            assert_eq!((f, t), (from, to), "wrong transition reported")
        }
        other => panic!("expected illegal {from} -> {to}, got {other}"),
    }
}

fn a_job_runs_from_queued_to_succeeded(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let builder = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit");

    clock.advance(1_000);
    let claimed = claim_one(&store, builder);
    assert_eq!(claimed.job.id, job.id);
    assert_eq!(claimed.job.state, JobState::Assigned);
    assert_eq!(claimed.job.builder_id, Some(builder));
    assert_eq!(claimed.attempt, Attempt(1));
    assert_eq!(claimed.lease_expires_at, T0 + 1_000 + LEASE_MS);

    clock.advance(1_000);
    let running = store.mark_running(job.id, claimed.attempt).expect("accept");
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.started_at, Some(T0 + 2_000));

    clock.advance(1_000);
    let done = store
        .complete_attempt(job.id, claimed.attempt, completion(Outcome::Succeeded))
        .expect("complete");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.finished_at, Some(T0 + 3_000));
    assert_eq!(done.error, None);
    assert_eq!(
        done.builder_id,
        Some(builder),
        "the job remembers who built it"
    );

    let attempts = store.job_attempts(job.id).expect("attempts");
    assert_eq!(attempts.len(), 1);
    let attempt = &attempts[0];
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(attempt.exit_status, Some(0));
    assert_eq!(
        (attempt.assigned_at, attempt.started_at, attempt.finished_at),
        (T0 + 1_000, Some(T0 + 2_000), Some(T0 + 3_000))
    );
    assert!(!attempt.token_valid, "completion revokes the job token");
    assert!(!attempt.is_live());

    let moves: Vec<_> = store
        .job_events(job.id)
        .expect("events")
        .into_iter()
        .map(|e| (e.from, e.to, e.at))
        .collect();
    assert_eq!(
        moves,
        vec![
            (None, JobState::Queued, T0),
            (Some(JobState::Queued), JobState::Assigned, T0 + 1_000),
            (Some(JobState::Assigned), JobState::Running, T0 + 2_000),
            (Some(JobState::Running), JobState::Succeeded, T0 + 3_000),
        ]
    );
}

fn every_outcome_ends_the_job_in_its_state(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    for outcome in [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Cancelled,
        Outcome::TimedOut,
    ] {
        let job = store.submit_job(new_job("crate")).expect("submit");
        let claimed = claim_one(&store, builder);
        store.mark_running(job.id, claimed.attempt).expect("accept");
        let done = store
            .complete_attempt(job.id, claimed.attempt, completion(outcome))
            .expect("complete");
        assert_eq!(done.state, outcome.job_state());
        assert_eq!(done.error, completion(outcome).error);
        let attempt = &store.job_attempts(job.id).expect("attempts")[0];
        assert_eq!(attempt.outcome, Some(outcome.into()));
    }
}

fn illegal_moves_are_refused_and_change_nothing(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit");
    assert_illegal(
        store.retry_job(job.id).expect_err("retry queued"),
        JobState::Queued,
        JobState::Queued,
    );

    let claimed = claim_one(&store, builder);
    assert_illegal(
        store.retry_job(job.id).expect_err("retry assigned"),
        JobState::Assigned,
        JobState::Queued,
    );

    let running = store.mark_running(job.id, claimed.attempt).expect("accept");
    let events_after_accept = store.job_events(job.id).expect("events").len();
    // A repeated accept (a resent work_ack) is idempotent: same job, no new event.
    let again = store
        .mark_running(job.id, claimed.attempt)
        .expect("accept twice");
    assert_eq!(again, running);
    assert_eq!(
        store.job_events(job.id).expect("events").len(),
        events_after_accept
    );
    let err = store
        .reject_assignment(job.id, claimed.attempt, "too late")
        .expect_err("reject running");
    assert_illegal(err, JobState::Running, JobState::Queued);

    let events_before = store.job_events(job.id).expect("events");
    let still = store.job(job.id).expect("get").expect("exists");
    assert_eq!(still.state, JobState::Running);
    assert_eq!(still.attempt, claimed.attempt);

    store
        .complete_attempt(job.id, claimed.attempt, completion(Outcome::Succeeded))
        .expect("complete");
    assert_illegal(
        store.retry_job(job.id).expect_err("retry success"),
        JobState::Succeeded,
        JobState::Queued,
    );
    assert_illegal(
        store.cancel_job(job.id).expect_err("cancel success"),
        JobState::Succeeded,
        JobState::Cancelled,
    );
    assert_eq!(
        store.job_events(job.id).expect("events").len(),
        events_before.len() + 1
    );
    assert_eq!(
        store
            .retry_job(buildfleet_backend::store::JobId(404))
            .expect_err("ghost")
            .kind(),
        "not_found"
    );
}

fn a_rejected_assignment_goes_back_to_the_queue(db: &TestDb) {
    let store = db.store();
    let alpha = admit(&store, "alpha");
    let beta = admit(&store, "beta");
    let job = store.submit_job(new_job("crate")).expect("submit");
    let first = claim_one(&store, alpha);
    let requeued = store
        .reject_assignment(job.id, first.attempt, "disk full")
        .expect("reject");
    assert_eq!(requeued.state, JobState::Queued);
    assert_eq!(requeued.attempt, Attempt(2));
    assert_eq!(requeued.failed_attempts, 0, "a rejection spends no retry");
    assert_eq!(requeued.builder_id, None);

    let attempt = &store.job_attempts(job.id).expect("attempts")[0];
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Rejected));
    assert_eq!(attempt.error.as_deref(), Some("disk full"));
    assert!(!attempt.token_valid);
    let last = store
        .job_events(job.id)
        .expect("events")
        .pop()
        .expect("an event");
    assert_eq!(
        (last.from, last.to),
        (Some(JobState::Assigned), JobState::Queued)
    );
    assert_eq!(last.detail.as_deref(), Some("disk full"));

    let second = claim_one(&store, beta);
    assert_eq!((second.job.id, second.attempt), (job.id, Attempt(2)));
    assert_ne!(second.job_token, first.job_token);
}

fn cancelling_depends_on_where_the_job_is(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");

    let queued = store.submit_job(new_job("crate")).expect("submit");
    match store.cancel_job(queued.id).expect("cancel queued") {
        CancelResult::Cancelled(job) => {
            assert_eq!(job.state, JobState::Cancelled);
            assert!(job.finished_at.is_some());
        }
        other => panic!("queued job should be cancelled at once: {other:?}"),
    }

    for accept_first in [false, true] {
        let job = store.submit_job(new_job("crate")).expect("submit");
        let claimed = claim_one(&store, builder);
        if accept_first {
            store.mark_running(job.id, claimed.attempt).expect("accept");
        }
        match store.cancel_job(job.id).expect("cancel held job") {
            CancelResult::Requested { job: held, attempt } => {
                assert!(held.state.is_active());
                assert!(held.cancel_requested_at.is_some());
                assert_eq!((attempt.job, attempt.attempt), (job.id, claimed.attempt));
                assert_eq!(attempt.builder, Some(builder));
            }
            other => panic!("held job should need its builder: {other:?}"),
        }
        // Asking twice is harmless.
        assert!(matches!(
            store.cancel_job(job.id),
            Ok(CancelResult::Requested { .. })
        ));
        let done = store
            .complete_attempt(job.id, claimed.attempt, completion(Outcome::Cancelled))
            .expect("builder confirms");
        assert_eq!(done.state, JobState::Cancelled);
    }

    // A builder that rejects a job with a pending cancel ends it, rather than requeueing.
    let job = store.submit_job(new_job("crate")).expect("submit");
    let claimed = claim_one(&store, builder);
    store.cancel_job(job.id).expect("request cancel");
    let done = store
        .reject_assignment(job.id, claimed.attempt, "cancelled")
        .expect("reject");
    assert_eq!(done.state, JobState::Cancelled);
}

fn finished_jobs_can_be_retried(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    for outcome in [Outcome::Failed, Outcome::Cancelled, Outcome::TimedOut] {
        let job = store.submit_job(new_job("crate")).expect("submit");
        let claimed = claim_one(&store, builder);
        store.mark_running(job.id, claimed.attempt).expect("accept");
        store
            .complete_attempt(job.id, claimed.attempt, completion(outcome))
            .expect("complete");
        let retried = store.retry_job(job.id).expect("retry");
        assert_eq!(retried.state, JobState::Queued);
        assert_eq!(retried.attempt, Attempt(2));
        assert_eq!(retried.failed_attempts, 0);
        assert_eq!(
            (retried.error, retried.finished_at, retried.builder_id),
            (None, None, None)
        );
        let again = claim_one(&store, builder);
        assert_eq!((again.job.id, again.attempt), (job.id, Attempt(2)));
        store
            .mark_running(job.id, again.attempt)
            .expect("accept retry");
        store
            .complete_attempt(job.id, again.attempt, completion(Outcome::Succeeded))
            .expect("complete retry");
    }
}

fn stale_attempts_are_fenced_off(db: &TestDb) {
    use buildfleet_backend::store::{NewArtifact, NewLogChunk, Publication};
    let store = db.store();
    let builder = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit");
    let old = claim_one(&store, builder);
    store
        .reject_assignment(job.id, old.attempt, "busy")
        .expect("reject");
    let new = claim_one(&store, builder);
    assert_eq!(new.attempt, Attempt(2));

    let is_stale = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::StaleAttempt {
            attempt, current, ..
        }) => {
            assert_eq!((attempt, current), (Attempt(1), Attempt(2)), "{what}")
        }
        other => panic!("{what}: expected a stale attempt, got {other:?}"),
    };
    let a1 = old.attempt;
    is_stale(store.mark_running(job.id, a1).map(drop), "mark_running");
    is_stale(store.reject_assignment(job.id, a1, "x").map(drop), "reject");
    is_stale(
        store
            .complete_attempt(job.id, a1, completion(Outcome::Succeeded))
            .map(drop),
        "complete",
    );
    let chunk = NewLogChunk {
        job: job.id,
        attempt: a1,
        first_seq: 0,
        last_seq: 9,
        location: "logs/1".into(),
        byte_offset: 0,
        length: 100,
    };
    is_stale(store.append_log_chunk(&chunk).map(drop), "append_log_chunk");
    let artifact = NewArtifact {
        job: job.id,
        attempt: a1,
        name: "out.tar.gz".into(),
        size: 1,
        sha256: buildfleet_testkit::db::digest("out"),
        storage_key: "artifacts/x".into(),
    };
    is_stale(
        store.record_artifact(&artifact).map(drop),
        "record_artifact",
    );
    let publication = Publication {
        statement: "s".into(),
        signature: "sig".into(),
        plan: None,
        ..Default::default()
    };
    is_stale(
        store.publish_artifacts(job.id, a1, &publication).map(drop),
        "publish",
    );
    assert!(matches!(
        store.verify_job_token(job.id, &old.job_token),
        Err(StoreError::InvalidJobToken(_))
    ));
    let renewed = store
        .renew_leases(
            builder,
            &[(job.id, a1), (job.id, new.attempt)],
            LEASE_MS,
            store.now_ms(),
        )
        .expect("renew");
    assert_eq!(renewed.len(), 1, "only the live attempt");
    assert_eq!(renewed[0].attempt, new.attempt);

    // An attempt from the future is refused the same way.
    let err = store
        .mark_running(job.id, Attempt(3))
        .expect_err("future attempt");
    assert!(matches!(err, StoreError::StaleAttempt { .. }), "{err}");

    // Once the live attempt is over, it is fenced off too.
    store.mark_running(job.id, new.attempt).expect("accept");
    store
        .complete_attempt(job.id, new.attempt, completion(Outcome::Failed))
        .expect("complete");
    let err = store
        .complete_attempt(job.id, new.attempt, completion(Outcome::Succeeded))
        .expect_err("complete twice");
    assert!(matches!(err, StoreError::StaleAttempt { .. }), "{err}");
    let late = NewLogChunk {
        attempt: new.attempt,
        ..chunk
    };
    assert!(matches!(
        store.append_log_chunk(&late),
        Err(StoreError::StaleAttempt { .. })
    ));
}

fn job_tokens_are_valid_only_for_the_live_attempt(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit");
    let other = store.submit_job(new_job("crate")).expect("submit");
    let claimed = claim_one(&store, builder);
    assert_eq!(claimed.job.id, job.id);
    assert!(claimed.job_token.len() >= 64);

    assert_eq!(
        store
            .verify_job_token(job.id, &claimed.job_token)
            .expect("valid"),
        (job.id, claimed.attempt)
    );
    let (head, last) = claimed.job_token.split_at(claimed.job_token.len() - 1);
    let wrong = format!("{head}{}", if last == "0" { "1" } else { "0" });
    for (id, token) in [
        (job.id, wrong.as_str()),
        (other.id, &claimed.job_token),
        (job.id, ""),
    ] {
        assert!(
            matches!(
                store.verify_job_token(id, token),
                Err(StoreError::InvalidJobToken(_))
            ),
            "job {id} token {token:?}"
        );
    }
    let ghost = buildfleet_backend::store::JobId(9_999);
    assert!(matches!(
        store.verify_job_token(ghost, &claimed.job_token),
        Err(StoreError::InvalidJobToken(_))
    ));

    store.mark_running(job.id, claimed.attempt).expect("accept");
    assert!(
        store.verify_job_token(job.id, &claimed.job_token).is_ok(),
        "still valid while running"
    );
    store
        .complete_attempt(job.id, claimed.attempt, completion(Outcome::Succeeded))
        .expect("complete");
    assert!(matches!(
        store.verify_job_token(job.id, &claimed.job_token),
        Err(StoreError::InvalidJobToken(_))
    ));
}

db_tests! {
    a_job_runs_from_queued_to_succeeded,
    every_outcome_ends_the_job_in_its_state,
    illegal_moves_are_refused_and_change_nothing,
    a_rejected_assignment_goes_back_to_the_queue,
    cancelling_depends_on_where_the_job_is,
    finished_jobs_can_be_retried,
    stale_attempts_are_fenced_off,
    job_tokens_are_valid_only_for_the_live_attempt,
}
