//! Builders: admission, uniqueness, lookups, enabling, labels, last contact, removal.

use buildfleet_backend::store::{Builder, ClaimRequest, Labels, StoreError};
use buildfleet_testkit::db::{admit, new_builder, new_job, TestDb, T0};
use buildfleet_testkit::db_tests;

fn admitted_builders_can_be_found_every_way(db: &TestDb) {
    let (store, _) = db.manual_store();
    let new = new_builder("alpha");
    let alpha = store.admit_builder(new.clone()).expect("admit");
    assert_eq!(alpha.name, "alpha");
    assert_eq!(alpha.public_key, new.public_key);
    assert_eq!(alpha.fingerprint, new.fingerprint);
    assert_eq!(alpha.labels, new.labels);
    assert!(alpha.enabled);
    assert_eq!(alpha.created_at, T0);
    assert_eq!(alpha.last_seen_at, None);

    let found = |b: Result<Option<Builder>, StoreError>| b.expect("lookup").expect("found");
    assert_eq!(found(store.builder_by_id(alpha.id)), alpha);
    assert_eq!(found(store.builder_by_name("alpha")), alpha);
    assert_eq!(
        found(store.builder_by_fingerprint(&alpha.fingerprint)),
        alpha
    );
    assert_eq!(store.builder_by_name("nobody").expect("lookup"), None);
    assert_eq!(
        store.builder_by_fingerprint("SHA256:nope").expect("lookup"),
        None
    );

    let beta = admit(&store, "beta");
    let names: Vec<_> = store
        .list_builders()
        .expect("list")
        .into_iter()
        .map(|b| (b.id, b.name))
        .collect();
    assert_eq!(
        names,
        vec![(alpha.id, "alpha".into()), (beta, "beta".into())]
    );
}

fn names_and_fingerprints_are_unique(db: &TestDb) {
    let store = db.store();
    admit(&store, "alpha");
    let err = store
        .admit_builder(new_builder("alpha"))
        .expect_err("same name");
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                entity: "builder",
                ..
            }
        ),
        "{err}"
    );
    let mut same_key = new_builder("other");
    same_key.fingerprint = new_builder("alpha").fingerprint;
    let err = store.admit_builder(same_key).expect_err("same fingerprint");
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                entity: "builder",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.list_builders().expect("list").len(), 1);
}

fn bad_admissions_are_refused(db: &TestDb) {
    let store = db.store();
    let mut no_name = new_builder("x");
    no_name.name = " ".into();
    assert_eq!(
        store.admit_builder(no_name).expect_err("empty").kind(),
        "invalid_input"
    );
    let mut md5 = new_builder("y");
    md5.fingerprint = "MD5:aa:bb".into();
    assert_eq!(
        store.admit_builder(md5).expect_err("md5").kind(),
        "invalid_input"
    );
}

fn builders_can_be_disabled_relabelled_and_touched(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let id = admit(&store, "alpha");
    assert!(
        !store
            .set_builder_enabled(id, false)
            .expect("disable")
            .enabled
    );
    assert!(store.set_builder_enabled(id, true).expect("enable").enabled);

    let labels = Labels::from([("gpu".to_owned(), "a100".to_owned())]);
    assert_eq!(
        store
            .set_builder_labels(id, &labels)
            .expect("relabel")
            .labels,
        labels
    );

    clock.advance(5_000);
    store.touch_builder_last_seen(id).expect("touch");
    let alpha = store.builder_by_id(id).expect("get").expect("exists");
    assert_eq!(alpha.last_seen_at, Some(T0 + 5_000));
    assert_eq!(alpha.labels, labels);

    let ghost = buildfleet_backend::store::BuilderId(9_999);
    assert_eq!(
        store
            .set_builder_enabled(ghost, true)
            .expect_err("ghost")
            .kind(),
        "not_found"
    );
    assert_eq!(
        store
            .touch_builder_last_seen(ghost)
            .expect_err("ghost")
            .kind(),
        "not_found"
    );
}

fn busy_builders_cannot_be_removed(db: &TestDb) {
    let (store, _) = db.manual_store();
    let id = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit");
    let claimed = store
        .claim_jobs(&ClaimRequest {
            builder: id,
            recipes: vec!["crate".into()],
            labels: Labels::new(),
            limit: 1,
            lease_ms: 30_000,
            now_ms: store.now_ms(),
            exclude: Vec::new(),
            projects: None,
            fair_share_window_ms: buildfleet_backend::store::DEFAULT_FAIR_SHARE_WINDOW_MS,
        })
        .expect("claim");
    assert_eq!(claimed.len(), 1);

    let err = store.remove_builder(id).expect_err("holds a live attempt");
    assert!(
        matches!(err, StoreError::BuilderBusy { active: 1, .. }),
        "{err}"
    );

    store
        .reject_assignment(job.id, claimed[0].attempt, "not now")
        .expect("reject");
    store.remove_builder(id).expect("idle builder goes");
    assert_eq!(store.builder_by_id(id).expect("lookup"), None);
    // History stays, with the builder reference cleared.
    let attempts = store.job_attempts(job.id).expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].builder, None);
    assert_eq!(
        store.remove_builder(id).expect_err("gone").kind(),
        "not_found"
    );
}

db_tests! {
    admitted_builders_can_be_found_every_way,
    names_and_fingerprints_are_unique,
    bad_admissions_are_refused,
    builders_can_be_disabled_relabelled_and_touched,
    busy_builders_cannot_be_removed,
}
