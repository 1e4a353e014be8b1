//! Enrolment tokens in the store: issuing (hash stored, secret returned once), admitting a key
//! with the token's labels, expiry, the use bound under concurrency, revocation, unknown
//! tokens and keys that are admitted already.

use std::sync::{Arc, Barrier};
use std::thread;

use buildfleet_backend::store::schema::enrolment_tokens;
use buildfleet_backend::store::{
    connect, Backend, Builder, EnrolmentError, EnrolmentToken, EnrolmentTokenId, Labels,
    NewBuilder, Store, StoreError,
};
use buildfleet_testkit::db::{admit, digest, new_builder, TestDb, T0};
use buildfleet_testkit::db_tests;
use diesel::prelude::*;

const HOUR_MS: i64 = 3_600_000;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Issues a token valid for an hour from the store's now.
fn issue(store: &Store, max_uses: i32) -> (EnrolmentToken, String) {
    store
        .create_enrolment_token(max_uses, store.now_ms() + HOUR_MS, &Labels::new())
        .expect("issue an enrolment token")
}

/// The token as the store lists it now.
fn reload(store: &Store, id: EnrolmentTokenId) -> EnrolmentToken {
    store
        .list_enrolment_tokens()
        .expect("list enrolment tokens")
        .into_iter()
        .find(|t| t.id == id)
        .expect("the token is listed")
}

fn enrol(store: &Store, secret: &str, new: NewBuilder) -> Result<Builder, EnrolmentError> {
    store.enrol_builder(secret, new).map(|(builder, _)| builder)
}

fn assert_refused(result: Result<Builder, EnrolmentError>, what: &str) {
    match result {
        Err(EnrolmentError::TokenRefused) => {}
        Err(other) => panic!("{what}: expected TokenRefused, got {other:?}"),
        Ok(builder) => panic!("{what}: expected TokenRefused, admitted {builder:?}"),
    }
}

fn builder_names(store: &Store) -> Vec<String> {
    store
        .list_builders()
        .expect("list builders")
        .into_iter()
        .map(|b| b.name)
        .collect()
}

fn issuing_stores_only_the_hash_and_returns_the_secret_once(db: &TestDb) {
    let (store, _) = db.manual_store();
    let pool = labels(&[("pool", "compose")]);
    let (token, secret) = store
        .create_enrolment_token(3, T0 + HOUR_MS, &pool)
        .expect("issue");
    let hex = secret.strip_prefix("bfenrol_").expect("bfenrol_ prefix");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "32 random bytes in hex: {secret}"
    );
    assert_eq!(
        (
            token.max_uses,
            token.uses,
            token.created_at,
            token.expires_at
        ),
        (3, 0, T0, T0 + HOUR_MS)
    );
    assert_eq!((token.revoked_at, token.last_used_at), (None, None));
    assert_eq!(token.labels, pool);
    assert!(token.is_usable(T0));

    // The row holds the SHA-256 of the secret, never the secret itself.
    let mut conn = connect(db.url()).expect("connect");
    let rows: Vec<(i64, String, String)> = enrolment_tokens::table
        .select((
            enrolment_tokens::id,
            enrolment_tokens::token_hash,
            enrolment_tokens::labels,
        ))
        .load(&mut conn)
        .expect("read the stored row");
    assert_eq!(rows.len(), 1);
    let (id, token_hash, stored_labels) = &rows[0];
    assert_eq!(*id, token.id.0);
    assert_eq!(*token_hash, digest(&secret));
    assert!(!token_hash.contains(hex) && !stored_labels.contains(hex));

    // Listing and serialising never carry the secret or its hash.
    let listed = store.list_enrolment_tokens().expect("list");
    assert_eq!(listed, vec![token.clone()]);
    let json = serde_json::to_string(&listed).expect("serialise");
    assert!(
        !json.contains(hex) && !json.contains(token_hash.as_str()),
        "{json}"
    );

    let (other, other_secret) = issue(&store, 1);
    assert_ne!(other_secret, secret, "every token gets a fresh secret");
    assert_ne!(other.id, token.id);
}

fn issuing_refuses_zero_uses_and_a_past_expiry(db: &TestDb) {
    let (store, _) = db.manual_store();
    for (max_uses, expires_at, what) in [
        (0, T0 + HOUR_MS, "max_uses 0"),
        (-1, T0 + HOUR_MS, "negative max_uses"),
        (1, T0, "expiring now"),
        (1, T0 - 1, "expired already"),
    ] {
        let err = store
            .create_enrolment_token(max_uses, expires_at, &Labels::new())
            .expect_err(what);
        assert_eq!(err.kind(), "invalid_input", "{what}: {err}");
    }
    assert_eq!(store.list_enrolment_tokens().expect("list"), vec![]);
}

fn enrolling_admits_the_key_enabled_with_the_token_labels(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let token_labels = labels(&[("pool", "compose"), ("arch", "aarch64")]);
    let (token, secret) = store
        .create_enrolment_token(2, T0 + HOUR_MS, &token_labels)
        .expect("issue");
    clock.advance(1_000);
    let new = new_builder("enrolled");
    let (builder, used) = store
        .enrol_builder(&secret, new.clone())
        .expect("enrol with a fresh token");
    assert_eq!(used, token.id);
    assert_eq!(
        (builder.name.as_str(), builder.public_key.as_str()),
        ("enrolled", new.public_key.as_str())
    );
    assert_eq!(builder.fingerprint, new.fingerprint);
    assert!(builder.enabled);
    assert_eq!(builder.created_at, T0 + 1_000);
    // The token's labels lie under the builder's own: its own `arch` wins.
    assert_eq!(
        builder.labels,
        labels(&[("pool", "compose"), ("arch", "x86_64")])
    );
    assert_eq!(
        store
            .builder_by_fingerprint(&new.fingerprint)
            .expect("lookup"),
        Some(builder)
    );

    let counted = reload(&store, token.id);
    assert_eq!((counted.uses, counted.last_used_at), (1, Some(T0 + 1_000)));
    assert!(counted.is_usable(store.now_ms()), "one use of two left");

    // With only the token's labels, those are the builder's.
    let bare = NewBuilder {
        labels: Labels::new(),
        ..new_builder("bare")
    };
    let builder = enrol(&store, &secret, bare).expect("second use");
    assert_eq!(builder.labels, token_labels);
}

fn expired_tokens_are_refused(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let (token, secret) = store
        .create_enrolment_token(5, T0 + 60_000, &Labels::new())
        .expect("issue");
    // Expiry is exclusive: usable until the millisecond before.
    clock.set(T0 + 59_999);
    assert!(reload(&store, token.id).is_usable(T0 + 59_999));
    enrol(&store, &secret, new_builder("in-time")).expect("enrol just before expiry");
    clock.set(T0 + 60_000);
    assert!(!reload(&store, token.id).is_usable(T0 + 60_000));
    assert_refused(
        enrol(&store, &secret, new_builder("at-expiry")),
        "at the expiry",
    );
    clock.advance(HOUR_MS);
    assert_refused(
        enrol(&store, &secret, new_builder("later")),
        "after the expiry",
    );
    assert_eq!(reload(&store, token.id).uses, 1, "refusals spend no use");
    assert_eq!(builder_names(&store), vec!["in-time"]);
}

fn max_uses_bounds_enrolments(db: &TestDb) {
    let store = db.store();
    let (token, secret) = issue(&store, 3);
    for i in 0..3 {
        enrol(&store, &secret, new_builder(&format!("b{i}")))
            .unwrap_or_else(|e| panic!("use {} of 3: {e}", i + 1));
    }
    assert_refused(enrol(&store, &secret, new_builder("b3")), "the fourth use");
    let spent = reload(&store, token.id);
    assert_eq!((spent.uses, spent.max_uses), (3, 3));
    assert!(!spent.is_usable(store.now_ms()));
    assert_eq!(builder_names(&store), vec!["b0", "b1", "b2"]);
}

const RACERS: usize = 16;
const RACE_MAX_USES: i32 = 5;
const RACE_ROUNDS: usize = 3;

/// SQLite: one pool shared by the threads. PostgreSQL: several pools, as backend replicas.
fn racing_stores(db: &TestDb) -> Vec<Store> {
    match db.backend() {
        Backend::Sqlite => vec![db.store()],
        Backend::Postgres => (0..3).map(|_| db.open_store(3)).collect(),
    }
}

/// Runs `enrol(store, i)` on [`RACERS`] threads released together; returns the results in
/// thread order.
fn race<T: Send + 'static>(
    stores: &[Store],
    enrol: impl Fn(&Store, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(RACERS));
    let enrol = Arc::new(enrol);
    let threads: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, barrier, enrol) = (
                stores[i % stores.len()].clone(),
                barrier.clone(),
                enrol.clone(),
            );
            thread::spawn(move || {
                barrier.wait();
                enrol(&store, i)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("enrolling thread"))
        .collect()
}

fn concurrent_enrolments_never_exceed_max_uses(db: &TestDb) {
    let store = db.store();
    let stores = racing_stores(db);
    for round in 0..RACE_ROUNDS {
        let (token, secret) = issue(&store, RACE_MAX_USES);
        let results = race(&stores, move |store, i| {
            enrol(store, &secret, new_builder(&format!("racer-{round}-{i}")))
        });
        let mut admitted = Vec::new();
        for result in results {
            match result {
                Ok(builder) => admitted.push(builder.name),
                Err(EnrolmentError::TokenRefused) => {}
                Err(other) => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert_eq!(
            admitted.len(),
            usize::try_from(RACE_MAX_USES).expect("small"),
            "round {round}: exactly max_uses enrolments succeed: {admitted:?}"
        );
        assert_eq!(reload(&store, token.id).uses, RACE_MAX_USES);
        for name in &admitted {
            assert!(store.builder_by_name(name).expect("lookup").is_some());
        }
    }
    assert_eq!(
        builder_names(&store).len(),
        RACE_ROUNDS * usize::try_from(RACE_MAX_USES).expect("small"),
        "refused enrolments admitted no one"
    );
}

fn concurrent_enrolments_of_one_key_spend_one_use(db: &TestDb) {
    let store = db.store();
    let max_uses = i32::try_from(RACERS).expect("small");
    let (token, secret) = issue(&store, max_uses);
    let results = race(&racing_stores(db), move |store, _| {
        enrol(store, &secret, new_builder("twin"))
    });
    let mut admitted = 0;
    for result in results {
        match result {
            Ok(_) => admitted += 1,
            // Whether the explicit check or (PostgreSQL, racing) the unique index caught it,
            // every loser gets the typed answer a restarting builder relies on.
            Err(EnrolmentError::AlreadyAdmitted { name, .. }) => assert_eq!(name, "twin"),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 1, "the key is admitted once");
    assert_eq!(
        reload(&store, token.id).uses,
        1,
        "refused admissions gave their use back"
    );
    assert_eq!(builder_names(&store), vec!["twin"]);
}

fn revoked_tokens_are_refused_and_revoking_twice_keeps_the_first_time(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let (token, secret) = issue(&store, 5);
    let before = enrol(&store, &secret, new_builder("before")).expect("enrol before revoking");

    clock.advance(1_000);
    let revoked = store.revoke_enrolment_token(token.id).expect("revoke");
    assert_eq!(revoked.revoked_at, Some(T0 + 1_000));
    assert_eq!(revoked.uses, 1);
    assert!(!revoked.is_usable(store.now_ms()));
    assert_refused(
        enrol(&store, &secret, new_builder("after")),
        "a revoked token",
    );

    clock.advance(1_000);
    let again = store
        .revoke_enrolment_token(token.id)
        .expect("revoke again");
    assert_eq!(again.revoked_at, Some(T0 + 1_000), "first revocation kept");
    assert_eq!(reload(&store, token.id), again);

    let err = store
        .revoke_enrolment_token(EnrolmentTokenId(token.id.0 + 100))
        .expect_err("unknown token");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    // Builders it admitted stay admitted and enabled.
    let kept = store
        .builder_by_id(before.id)
        .expect("lookup")
        .expect("still admitted");
    assert!(kept.enabled);
    assert_eq!(builder_names(&store), vec!["before"]);
}

fn unknown_and_malformed_tokens_are_refused(db: &TestDb) {
    let store = db.store();
    let (token, secret) = issue(&store, 5);
    let hex = secret.strip_prefix("bfenrol_").expect("prefix").to_owned();
    for (presented, what) in [
        (String::new(), "empty"),
        ("garbage".to_owned(), "garbage"),
        (
            format!("bfenrol_{}", "0".repeat(64)),
            "well-formed but unknown",
        ),
        (format!("{secret}x"), "the secret with a suffix"),
        (
            secret[..secret.len() - 1].to_owned(),
            "the secret cut short",
        ),
        (secret.to_uppercase(), "the secret upper-cased"),
        (hex, "the secret without its prefix"),
        (digest(&secret), "the stored hash"),
        (format!(" {secret}"), "the secret with a leading space"),
    ] {
        assert_refused(enrol(&store, &presented, new_builder("intruder")), what);
    }
    assert_eq!(reload(&store, token.id).uses, 0);
    assert_eq!(builder_names(&store), Vec::<String>::new());

    // Bad builder input is refused too, without spending a use.
    let no_name = NewBuilder {
        name: " ".into(),
        ..new_builder("x")
    };
    let bad_fingerprint = NewBuilder {
        fingerprint: "MD5:00".into(),
        ..new_builder("y")
    };
    for (new, what) in [
        (no_name, "blank name"),
        (bad_fingerprint, "bad fingerprint"),
    ] {
        match enrol(&store, &secret, new) {
            Err(EnrolmentError::Store(e)) => assert_eq!(e.kind(), "invalid_input", "{what}"),
            other => panic!("{what}: expected invalid input, got {other:?}"),
        }
    }
    assert_eq!(reload(&store, token.id).uses, 0);
}

fn an_admitted_key_is_reported_as_such_without_spending_a_use(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let (token, secret) = store
        .create_enrolment_token(1, T0 + 60_000, &Labels::new())
        .expect("issue");
    let first = enrol(&store, &secret, new_builder("alpha")).expect("first enrolment");
    let already = |result: Result<Builder, EnrolmentError>, what: &str| match result {
        Err(EnrolmentError::AlreadyAdmitted { name, fingerprint }) => {
            assert_eq!(
                (name.as_str(), fingerprint.as_str()),
                ("alpha", first.fingerprint.as_str()),
                "{what}"
            );
        }
        other => panic!("{what}: expected AlreadyAdmitted, got {other:?}"),
    };

    // A restarting builder presents its key again: refused as admitted, whatever the token.
    already(
        enrol(&store, &secret, new_builder("alpha")),
        "same key, used-up token",
    );
    already(
        enrol(&store, "garbage", new_builder("alpha")),
        "same key, no valid token",
    );
    let renamed = NewBuilder {
        name: "alpha-renamed".into(),
        ..new_builder("alpha")
    };
    already(enrol(&store, &secret, renamed), "same key, another name");
    clock.advance(HOUR_MS);
    already(
        enrol(&store, &secret, new_builder("alpha")),
        "same key, expired token",
    );
    assert_eq!(reload(&store, token.id).uses, 1);

    // A key the operator admitted by hand is admitted too.
    let (fresh, fresh_secret) = issue(&store, 3);
    admit(&store, "by-hand");
    match enrol(&store, &fresh_secret, new_builder("by-hand")) {
        Err(EnrolmentError::AlreadyAdmitted { name, .. }) => assert_eq!(name, "by-hand"),
        other => panic!("expected AlreadyAdmitted, got {other:?}"),
    }

    // Another key under a taken name is a conflict, and spends no use either.
    let impostor = NewBuilder {
        fingerprint: new_builder("impostor").fingerprint,
        ..new_builder("alpha")
    };
    match enrol(&store, &fresh_secret, impostor) {
        Err(EnrolmentError::Store(StoreError::AlreadyExists {
            entity: "builder", ..
        })) => {}
        other => panic!("expected the name to be taken, got {other:?}"),
    }
    assert_eq!(reload(&store, fresh.id).uses, 0);
    assert_eq!(builder_names(&store), vec!["alpha", "by-hand"]);
}

db_tests! {
    issuing_stores_only_the_hash_and_returns_the_secret_once,
    issuing_refuses_zero_uses_and_a_past_expiry,
    enrolling_admits_the_key_enabled_with_the_token_labels,
    expired_tokens_are_refused,
    max_uses_bounds_enrolments,
    concurrent_enrolments_never_exceed_max_uses,
    concurrent_enrolments_of_one_key_spend_one_use,
    revoked_tokens_are_refused_and_revoking_twice_keeps_the_first_time,
    unknown_and_malformed_tokens_are_refused,
    an_admitted_key_is_reported_as_such_without_spending_a_use,
}
