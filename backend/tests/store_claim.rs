//! The claim: which jobs a builder gets, in what order, and that concurrent claimers (threads,
//! and on PostgreSQL separate pools as separate replicas) never share a job.

use std::collections::BTreeSet;
use std::thread;

use buildfleet_backend::store::{
    BuilderId, ClaimRequest, JobId, JobState, Labels, Store, StoreError,
};
use buildfleet_testkit::db::{admit, claim_request, new_job, TestDb, LEASE_MS, T0};
use buildfleet_testkit::db_tests;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn submit(store: &Store, recipe: &str, priority: i32, required: Labels) -> JobId {
    let mut new = new_job(recipe);
    new.priority = priority;
    new.required_labels = required;
    store.submit_job(new).expect("submit").id
}

fn claim_ids(store: &Store, request: &ClaimRequest) -> Vec<JobId> {
    store
        .claim_jobs(request)
        .expect("claim")
        .into_iter()
        .map(|c| c.job.id)
        .collect()
}

fn highest_priority_first_then_oldest(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    let low_old = submit(&store, "crate", 0, Labels::new());
    let high_old = submit(&store, "crate", 5, Labels::new());
    let mid = submit(&store, "crate", 1, Labels::new());
    let high_new = submit(&store, "crate", 5, Labels::new());
    let low_new = submit(&store, "crate", 0, Labels::new());
    let negative = submit(&store, "crate", -3, Labels::new());

    let request = ClaimRequest {
        limit: 4,
        ..claim_request(builder, T0)
    };
    assert_eq!(
        claim_ids(&store, &request),
        vec![high_old, high_new, mid, low_old]
    );
    assert_eq!(claim_ids(&store, &request), vec![low_new, negative]);
    assert!(claim_ids(&store, &request).is_empty());
}

fn builders_get_only_recipes_they_know_and_labels_they_offer(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    let other_recipe = submit(&store, "docs", 9, Labels::new());
    let arm = submit(&store, "crate", 8, labels(&[("arch", "aarch64")]));
    let gpu_arm = submit(
        &store,
        "crate",
        7,
        labels(&[("arch", "aarch64"), ("gpu", "yes")]),
    );
    let plain = submit(&store, "crate", 0, Labels::new());

    let x86 = ClaimRequest {
        limit: 10,
        labels: labels(&[("arch", "x86_64"), ("gpu", "yes")]),
        ..claim_request(builder, T0)
    };
    assert_eq!(claim_ids(&store, &x86), vec![plain]);

    let arm_builder = ClaimRequest {
        labels: labels(&[("arch", "aarch64"), ("os", "linux")]),
        ..x86.clone()
    };
    assert_eq!(
        claim_ids(&store, &arm_builder),
        vec![arm],
        "gpu job needs the gpu label too"
    );

    let both = ClaimRequest {
        recipes: vec!["crate".into(), "docs".into()],
        labels: labels(&[("arch", "aarch64"), ("gpu", "yes")]),
        ..x86
    };
    assert_eq!(claim_ids(&store, &both), vec![other_recipe, gpu_arm]);
    assert_eq!(store.queue_depth().expect("depth"), 0);
}

fn a_long_run_of_unmatched_jobs_does_not_hide_the_rest(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    for _ in 0..200 {
        submit(&store, "crate", 10, labels(&[("gpu", "yes")]));
    }
    let reachable = submit(&store, "crate", 0, Labels::new());
    let request = claim_request(builder, T0);
    assert_eq!(claim_ids(&store, &request), vec![reachable]);
    assert_eq!(
        store.queue_depth().expect("depth"),
        200,
        "gpu jobs stay queued, unlocked"
    );
}

fn claims_check_the_builder_and_the_request(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    submit(&store, "crate", 0, Labels::new());

    let none = ClaimRequest {
        limit: 0,
        ..claim_request(builder, T0)
    };
    assert!(claim_ids(&store, &none).is_empty());
    let no_recipes = ClaimRequest {
        recipes: Vec::new(),
        ..claim_request(builder, T0)
    };
    assert!(claim_ids(&store, &no_recipes).is_empty());
    let no_lease = ClaimRequest {
        lease_ms: 0,
        ..claim_request(builder, T0)
    };
    assert_eq!(
        store.claim_jobs(&no_lease).expect_err("no lease").kind(),
        "invalid_input"
    );

    store.set_builder_enabled(builder, false).expect("disable");
    let err = store
        .claim_jobs(&claim_request(builder, T0))
        .expect_err("disabled");
    assert!(
        matches!(err, StoreError::BuilderDisabled(id) if id == builder),
        "{err}"
    );
    let err = store
        .claim_jobs(&claim_request(BuilderId(9_999), T0))
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(
        store.queue_depth().expect("depth"),
        1,
        "nothing was handed out"
    );

    store.set_builder_enabled(builder, true).expect("enable");
    let claimed = store
        .claim_jobs(&claim_request(builder, T0))
        .expect("claim");
    assert_eq!(claimed[0].lease_expires_at, T0 + LEASE_MS);
    let attempt = &store.job_attempts(claimed[0].job.id).expect("attempts")[0];
    assert!(attempt.is_live() && attempt.token_valid);
    assert_eq!(attempt.builder, Some(builder));
}

const CONCURRENT_JOBS: usize = 2_000;
const CLAIMERS_PER_STORE: usize = 3;

fn concurrent_claimers_never_share_a_job(db: &TestDb) {
    let store = db.store();
    // Submitting is not under test here; a few threads make it quicker.
    let submitters: Vec<_> = (0..4)
        .map(|k| {
            let store = store.clone();
            thread::spawn(move || {
                (k..CONCURRENT_JOBS)
                    .step_by(4)
                    .map(|i| {
                        let priority = i32::try_from(i % 7).expect("small");
                        submit(&store, "crate", priority, Labels::new())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let submitted: BTreeSet<JobId> = submitters
        .into_iter()
        .flat_map(|s| s.join().expect("submitter thread"))
        .collect();
    assert_eq!(submitted.len(), CONCURRENT_JOBS);
    // SQLite: one pool shared by threads. PostgreSQL: several pools, as separate replicas
    // sharing one database.
    let stores: Vec<Store> = match db.backend() {
        buildfleet_backend::store::Backend::Sqlite => vec![store.clone()],
        buildfleet_backend::store::Backend::Postgres => (0..3).map(|_| db.open_store(3)).collect(),
    };
    let mut workers = Vec::new();
    for (s, replica) in stores.iter().enumerate() {
        for t in 0..CLAIMERS_PER_STORE {
            let builder = admit(&store, &format!("builder-{s}-{t}"));
            let replica = replica.clone();
            workers.push(thread::spawn(move || {
                let mut mine = Vec::new();
                let limit = 1 + (s + t) % 4;
                loop {
                    let request = ClaimRequest {
                        limit,
                        ..claim_request(builder, T0)
                    };
                    let claimed = replica
                        .claim_jobs(&request)
                        .expect("claim under contention");
                    if claimed.is_empty() {
                        return mine;
                    }
                    assert!(claimed.len() <= limit);
                    mine.extend(claimed.into_iter().map(|c| (c.job.id, c.attempt, builder)));
                }
            }));
        }
    }
    let mut handed_out = Vec::new();
    for worker in workers {
        handed_out.extend(worker.join().expect("claimer thread"));
    }
    let unique: BTreeSet<JobId> = handed_out.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(handed_out.len(), unique.len(), "a job was handed out twice");
    assert_eq!(unique, submitted, "every job handed out, none left behind");
    assert_eq!(store.queue_depth().expect("depth"), 0);
    assert_eq!(
        store.count_jobs_by_state().expect("counts")[&JobState::Assigned],
        i64::try_from(CONCURRENT_JOBS).expect("fits")
    );
    // The database agrees with what the claimers were told.
    let live = store.active_attempts().expect("live attempts");
    assert_eq!(live.len(), CONCURRENT_JOBS);
    let told: BTreeSet<_> = handed_out
        .into_iter()
        .map(|(j, a, b)| (j, a, Some(b)))
        .collect();
    let recorded: BTreeSet<_> = live
        .into_iter()
        .map(|a| (a.job, a.attempt, a.builder))
        .collect();
    assert_eq!(told, recorded);
}

db_tests! {
    highest_priority_first_then_oldest,
    builders_get_only_recipes_they_know_and_labels_they_offer,
    a_long_run_of_unmatched_jobs_does_not_hide_the_rest,
    claims_check_the_builder_and_the_request,
    concurrent_claimers_never_share_a_job,
}
