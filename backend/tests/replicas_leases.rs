//! The lease sweep on every replica without double work: two replicas (two pools on one
//! PostgreSQL database) sweeping the same expired leases at once end each lost attempt once
//! (one job event, one attempt more), and a sweep skips a job whose row another transaction
//! holds instead of waiting for it (`FOR UPDATE SKIP LOCKED`). PostgreSQL only: SQLite has a
//! single process and a single writer.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use buildfleet_backend::store::{Attempt, JobId, JobState};
use buildfleet_testkit::db::{admit, claim_one, new_job, TestDb, LEASE_MS, T0};
use diesel::prelude::*;

const JOBS: usize = 40;

#[test]
fn two_replicas_sweeping_the_same_expired_leases_requeue_each_job_once() {
    let Some(db) = TestDb::postgres() else { return };
    let (store, clock) = db.manual_store();
    let builder = admit(&store, "lost");
    let mut jobs = Vec::new();
    for _ in 0..JOBS {
        let job = store.submit_job(new_job("crate")).expect("submit").id;
        let claimed = claim_one(&store, builder);
        store.mark_running(job, claimed.attempt).expect("running");
        jobs.push(job);
    }
    clock.set(T0 + LEASE_MS + 1);
    let now = store.now_ms();

    // Two replicas, each with its own pool, sweep at the same instant, twice each.
    let replicas = [store.clone(), db.open_store(4).with_clock(clock.clone())];
    let start = Arc::new(Barrier::new(replicas.len()));
    let handles: Vec<_> = replicas
        .into_iter()
        .map(|replica| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut ended = Vec::new();
                for _ in 0..2 {
                    let requeued = replica.requeue_expired_leases(now).expect("sweep");
                    ended.extend(requeued.into_iter().map(|r| r.job.id));
                }
                ended
            })
        })
        .collect();
    let mut ended: Vec<JobId> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("sweeping thread"))
        .collect();
    ended.sort();
    let mut expected = jobs.clone();
    expected.sort();
    assert_eq!(
        ended, expected,
        "each lost attempt ended by one replica, once"
    );

    for job in jobs {
        let now = store.job(job).expect("job").expect("exists");
        assert_eq!(
            (now.state, now.attempt, now.failed_attempts),
            (JobState::Queued, Attempt(2), 1),
            "job {job}"
        );
        let expiries = store
            .job_events(job)
            .expect("events")
            .into_iter()
            .filter(|e| e.detail.as_deref() == Some("lease expired"))
            .count();
        assert_eq!(expiries, 1, "job {job}: one 'lease expired' event");
    }
}

#[test]
fn a_sweep_skips_a_job_another_transaction_holds_instead_of_waiting() {
    let Some(db) = TestDb::postgres() else { return };
    let (store, clock) = db.manual_store();
    let builder = admit(&store, "held");
    let held = store.submit_job(new_job("crate")).expect("submit").id;
    let free = store.submit_job(new_job("crate")).expect("submit").id;
    for job in [held, free] {
        let claimed = claim_one(&store, builder);
        assert_eq!(claimed.job.id, job);
        store.mark_running(job, claimed.attempt).expect("running");
    }
    clock.set(T0 + LEASE_MS + 1);
    let now = store.now_ms();

    // Another replica is in the middle of a transaction on `held`'s row.
    let mut other = PgConnection::establish(db.url()).expect("another connection");
    diesel::sql_query("BEGIN")
        .execute(&mut other)
        .expect("begin");
    diesel::sql_query(format!(
        "SELECT id FROM jobs WHERE id = {} FOR UPDATE",
        held.0
    ))
    .execute(&mut other)
    .expect("lock the row");

    let sweeping = store.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sweeping.requeue_expired_leases(now));
    });
    let started = Instant::now();
    let requeued = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the sweep waited for the held row instead of skipping it")
        .expect("sweep");
    assert!(started.elapsed() < Duration::from_secs(5));
    let ids: Vec<JobId> = requeued.iter().map(|r| r.job.id).collect();
    assert_eq!(ids, vec![free], "only the job nobody holds");

    // Released: the next sweep ends it.
    diesel::sql_query("ROLLBACK")
        .execute(&mut other)
        .expect("rollback");
    let requeued = store.requeue_expired_leases(now).expect("sweep");
    let ids: Vec<JobId> = requeued.iter().map(|r| r.job.id).collect();
    assert_eq!(ids, vec![held]);
}
