//! Leases: renewal, the reconnect grace period, and the sweep that requeues what expired.

use buildfleet_backend::store::{Attempt, AttemptOutcome, JobState, StoreError};
use buildfleet_testkit::db::{admit, claim_one, new_job, TestDb, LEASE_MS, T0};
use buildfleet_testkit::db_tests;

fn builders_renew_only_their_own_live_leases(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let alpha = admit(&store, "alpha");
    let beta = admit(&store, "beta");
    let a = store.submit_job(new_job("crate")).expect("submit").id;
    let b = store.submit_job(new_job("crate")).expect("submit").id;
    let held_by_alpha = claim_one(&store, alpha);
    let held_by_beta = claim_one(&store, beta);
    assert_eq!((held_by_alpha.job.id, held_by_beta.job.id), (a, b));

    clock.advance(10_000);
    let now = store.now_ms();
    let renewed = store
        .renew_leases(alpha, &[(a, Attempt(1)), (b, Attempt(1))], LEASE_MS, now)
        .expect("renew");
    assert_eq!(renewed.len(), 1, "beta's job is not alpha's to renew");
    assert_eq!(
        (renewed[0].job, renewed[0].lease_expires_at),
        (a, now + LEASE_MS)
    );

    let attempts = store
        .active_attempts_for_builder(alpha)
        .expect("alpha's attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].lease_expires_at, now + LEASE_MS);
    let untouched = &store.active_attempts_for_builder(beta).expect("beta's")[0];
    assert_eq!(untouched.lease_expires_at, T0 + LEASE_MS);
    assert_eq!(store.active_attempts().expect("all").len(), 2);
}

fn expired_leases_send_jobs_back_to_the_queue(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let alpha = admit(&store, "alpha");
    let kept = store.submit_job(new_job("crate")).expect("submit").id;
    let lost = store.submit_job(new_job("crate")).expect("submit").id;
    let kept_claim = claim_one(&store, alpha);
    let lost_claim = claim_one(&store, alpha);
    store
        .mark_running(lost, lost_claim.attempt)
        .expect("accept");

    assert!(store
        .requeue_expired_leases(T0 + LEASE_MS - 1)
        .expect("sweep")
        .is_empty());
    clock.set(T0 + LEASE_MS - 1);
    store
        .renew_leases(
            alpha,
            &[(kept, kept_claim.attempt)],
            LEASE_MS,
            store.now_ms(),
        )
        .expect("renew");
    clock.set(T0 + LEASE_MS);

    let requeued = store.requeue_expired_leases(store.now_ms()).expect("sweep");
    assert_eq!(requeued.len(), 1);
    let r = &requeued[0];
    assert_eq!(
        (r.job.id, r.lost_attempt, r.builder),
        (lost, Attempt(1), Some(alpha))
    );
    assert_eq!(r.job.state, JobState::Queued);
    assert_eq!(r.job.attempt, Attempt(2));
    assert_eq!(r.job.failed_attempts, 1);
    assert_eq!(r.job.builder_id, None);

    let attempt = &store.job_attempts(lost).expect("attempts")[0];
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Lost));
    assert!(!attempt.token_valid);
    assert!(matches!(
        store.verify_job_token(lost, &lost_claim.job_token),
        Err(StoreError::InvalidJobToken(_))
    ));
    let last = store
        .job_events(lost)
        .expect("events")
        .pop()
        .expect("event");
    assert_eq!(
        (last.from, last.to),
        (Some(JobState::Running), JobState::Queued)
    );
    assert_eq!(last.detail.as_deref(), Some("lease expired"));

    assert!(store
        .requeue_expired_leases(store.now_ms())
        .expect("sweep again")
        .is_empty());
    let kept_job = store.job(kept).expect("get").expect("exists");
    assert_eq!(kept_job.state, JobState::Assigned, "renewed lease survives");
}

fn jobs_fail_after_max_attempts_lost(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let alpha = admit(&store, "alpha");
    let mut new = new_job("crate");
    new.max_attempts = 2;
    let job = store.submit_job(new).expect("submit").id;

    for round in 1..=2 {
        let claimed = claim_one(&store, alpha);
        assert_eq!(claimed.attempt, Attempt(round));
        // Only attempts that ran count against max_attempts.
        store.mark_running(job, claimed.attempt).expect("accept");
        clock.advance(LEASE_MS);
        let requeued = store.requeue_expired_leases(store.now_ms()).expect("sweep");
        assert_eq!(requeued.len(), 1);
    }
    let failed = store.job(job).expect("get").expect("exists");
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.failed_attempts, 2);
    assert_eq!(failed.attempt, Attempt(2), "no attempt after the last");
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("2 time")),
        "{failed:?}"
    );
    assert!(failed.finished_at.is_some());
    assert_eq!(store.queue_depth().expect("depth"), 0);

    // The operator's retry gives it a fresh budget.
    let retried = store.retry_job(job).expect("retry");
    assert_eq!((retried.attempt, retried.failed_attempts), (Attempt(3), 0));
}

fn a_disconnect_grace_period_holds_the_jobs(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let alpha = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit").id;
    let claimed = claim_one(&store, alpha);
    store.mark_running(job, claimed.attempt).expect("accept");

    // The builder drops; the session gives it 5 s to come back.
    clock.advance(1_000);
    let grace_end = store.now_ms() + 5_000;
    assert_eq!(
        store
            .set_builder_lease_expiry(alpha, grace_end)
            .expect("grace"),
        1
    );
    assert!(store
        .requeue_expired_leases(grace_end - 1)
        .expect("sweep")
        .is_empty());

    // It came back in time: heartbeats renew the lease, even at the last moment.
    let renewed = store
        .renew_leases(alpha, &[(job, claimed.attempt)], LEASE_MS, grace_end)
        .expect("renew");
    assert_eq!(renewed.len(), 1);
    assert!(store
        .requeue_expired_leases(grace_end)
        .expect("sweep")
        .is_empty());

    // It drops again and stays away.
    assert_eq!(
        store
            .set_builder_lease_expiry(alpha, grace_end + 5_000)
            .expect("grace"),
        1
    );
    let requeued = store
        .requeue_expired_leases(grace_end + 5_000)
        .expect("sweep");
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].job.state, JobState::Queued);
    assert!(store
        .active_attempts_for_builder(alpha)
        .expect("live")
        .is_empty());
    assert_eq!(
        store
            .set_builder_lease_expiry(alpha, 0)
            .expect("nothing held"),
        0
    );
}

fn a_pending_cancel_ends_a_lost_job(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let alpha = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit").id;
    claim_one(&store, alpha);
    store.cancel_job(job).expect("request cancel");
    clock.advance(LEASE_MS);
    let requeued = store.requeue_expired_leases(store.now_ms()).expect("sweep");
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].job.state, JobState::Cancelled);
    assert_eq!(store.queue_depth().expect("depth"), 0);
}

db_tests! {
    builders_renew_only_their_own_live_leases,
    expired_leases_send_jobs_back_to_the_queue,
    jobs_fail_after_max_attempts_lost,
    a_disconnect_grace_period_holds_the_jobs,
    a_pending_cancel_ends_a_lost_job,
}
