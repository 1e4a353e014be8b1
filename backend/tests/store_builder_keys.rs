//! A builder's key history in the store, both databases: migration 000023 backfills every
//! existing builder's key as valid from its creation; admission records the first key;
//! rotation ends the old key and starts the new one at the same instant; a key belongs to
//! one builder for good; revocation keeps the key listed with its reason.

use buildfleet_backend::store::{connect, run_migrations, StoreError};
use buildfleet_testkit::db::{new_builder, TestDb, T0};
use buildfleet_testkit::db_tests;

db_tests! {
    existing_builders_get_their_key_backfilled_by_the_migration,
    rotation_and_revocation_keep_the_history,
}

fn existing_builders_get_their_key_backfilled_by_the_migration(db: &TestDb) {
    // A database from before migration 000023, with a builder admitted then.
    db.execute("DROP TABLE builder_keys");
    db.execute("DELETE FROM __diesel_schema_migrations WHERE version LIKE '%000023'");
    db.execute(
        "INSERT INTO builders (name, public_key, fingerprint, enabled, labels, created_at) \
         VALUES ('old-timer', 'ssh-ed25519 AAAAold old-timer', 'SHA256:old', TRUE, '{}', 1234)",
    );
    let mut conn = connect(db.url()).expect("connect");
    let applied = run_migrations(&mut conn).expect("migrate");
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(applied[0].ends_with("000023"), "{applied:?}");

    let store = db.store();
    let builder = store
        .builder_by_name("old-timer")
        .expect("lookup")
        .expect("kept");
    let keys = store.builder_keys(builder.id).expect("keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].fingerprint, "SHA256:old");
    assert_eq!(keys[0].public_key, "ssh-ed25519 AAAAold old-timer");
    assert_eq!(keys[0].valid_after, 1234);
    assert_eq!(keys[0].valid_before, None);
    assert!(keys[0].is_current());
}

fn rotation_and_revocation_keep_the_history(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let alpha = store.admit_builder(new_builder("alpha")).expect("admit");
    let beta = store.admit_builder(new_builder("beta")).expect("admit");
    let keys = store.builder_keys(alpha.id).expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].valid_after, keys[0].valid_before), (T0, None));

    clock.advance(5_000);
    let next = new_builder("alpha-2027");
    let (rotated, keys) = store
        .rotate_builder_key(alpha.id, &next.public_key, &next.fingerprint)
        .expect("rotate");
    assert_eq!(rotated.id, alpha.id);
    assert_eq!(rotated.fingerprint, next.fingerprint);
    assert_eq!(rotated.labels, alpha.labels);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].valid_before, Some(T0 + 5_000));
    assert!(!keys[0].is_current());
    assert_eq!(keys[1].valid_after, T0 + 5_000);
    assert!(keys[1].is_current());
    // Only the current key authenticates.
    assert!(store
        .builder_to_authenticate(&alpha.fingerprint)
        .expect("lookup")
        .is_none());
    assert_eq!(
        store
            .builder_to_authenticate(&next.fingerprint)
            .expect("lookup")
            .map(|b| b.id),
        Some(alpha.id)
    );

    // A key is one builder's for good: again, an old one, another builder's.
    for (builder, key) in [
        (alpha.id, &next),
        (alpha.id, &new_builder("alpha")),
        (beta.id, &next),
        (alpha.id, &new_builder("beta")),
    ] {
        let refused = store.rotate_builder_key(builder, &key.public_key, &key.fingerprint);
        assert!(
            matches!(refused, Err(StoreError::AlreadyExists { .. })),
            "{refused:?}"
        );
    }
    let refused = store.admit_builder(buildfleet_backend::store::NewBuilder {
        name: "thief".into(),
        ..new_builder("alpha")
    });
    assert!(
        matches!(refused, Err(StoreError::AlreadyExists { .. })),
        "{refused:?}"
    );

    clock.advance(1_000);
    let revoked = store
        .revoke_builder_key(alpha.id, &next.fingerprint, " compromised ")
        .expect("revoke");
    assert!(revoked.was_current);
    assert_eq!(revoked.key.revoked_reason.as_deref(), Some("compromised"));
    assert!(store
        .builder_to_authenticate(&next.fingerprint)
        .expect("lookup")
        .is_none());
    assert!(matches!(
        store.revoke_builder_key(alpha.id, &next.fingerprint, "again"),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.revoke_builder_key(beta.id, &next.fingerprint, "not beta's"),
        Err(StoreError::NotFound { .. })
    ));
    for reason in ["", "   ", "two\nlines", &"x".repeat(501)] {
        assert!(matches!(
            store.revoke_builder_key(beta.id, &beta.fingerprint, reason),
            Err(StoreError::InvalidInput(_))
        ));
    }
    let all = store.all_builder_keys().expect("all");
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].0, "alpha");
    assert_eq!(all[2].0, "beta");
    let found = store
        .builder_keys_by_fingerprint(&[next.fingerprint.clone(), "SHA256:none".into()])
        .expect("by fingerprint");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.revoked_at, Some(T0 + 6_000));
    // Removing the builder removes its keys.
    store.remove_builder(alpha.id).expect("remove");
    assert_eq!(store.all_builder_keys().expect("all").len(), 1);
}
