//! API tokens (hashed bearer secrets) and the source archive catalogue.

use buildfleet_backend::store::{StoreError, TokenScope};
use buildfleet_testkit::db::{digest, TestDb, T0};
use buildfleet_testkit::db_tests;

fn api_tokens_verify_until_revoked_or_expired(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let (admin, admin_secret) = store
        .create_api_token(None, TokenScope::Admin, "ops laptop", None)
        .expect("create");
    let (submit, submit_secret) = store
        .create_api_token(None, TokenScope::Submit, "ci", Some(T0 + 60_000))
        .expect("create");
    assert_ne!(admin_secret, submit_secret);
    assert_eq!(
        (admin.scope, admin.description.as_str(), admin.created_at),
        (TokenScope::Admin, "ops laptop", T0)
    );

    let now = store.now_ms();
    assert_eq!(
        store.verify_api_token(&admin_secret, now).expect("verify"),
        Some(admin.clone())
    );
    assert_eq!(
        store.verify_api_token(&submit_secret, now).expect("verify"),
        Some(submit.clone())
    );
    assert_eq!(
        store.verify_api_token("bfapi_nope", now).expect("verify"),
        None
    );
    assert_eq!(
        store
            .verify_api_token(&format!("{admin_secret}x"), now)
            .expect("verify"),
        None
    );

    // Expiry is exclusive: valid before, not at.
    assert!(store
        .verify_api_token(&submit_secret, T0 + 59_999)
        .expect("verify")
        .is_some());
    assert_eq!(
        store
            .verify_api_token(&submit_secret, T0 + 60_000)
            .expect("verify"),
        None
    );

    clock.advance(1_000);
    let revoked = store.revoke_api_token(admin.id).expect("revoke");
    assert_eq!(revoked.revoked_at, Some(T0 + 1_000));
    assert_eq!(
        store
            .verify_api_token(&admin_secret, store.now_ms())
            .expect("verify"),
        None
    );
    clock.advance(1_000);
    let again = store.revoke_api_token(admin.id).expect("revoke twice");
    assert_eq!(
        again.revoked_at,
        Some(T0 + 1_000),
        "first revocation time kept"
    );
    let ghost = buildfleet_backend::store::ApiTokenId(404);
    assert!(matches!(
        store.revoke_api_token(ghost),
        Err(StoreError::NotFound { .. })
    ));

    let listed: Vec<_> = store
        .list_api_tokens()
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, vec![admin.id, submit.id]);
}

#[test]
fn admin_scope_allows_everything_submit_only_submitting() {
    assert!(TokenScope::Admin.allows(TokenScope::Submit));
    assert!(TokenScope::Admin.allows(TokenScope::Admin));
    assert!(TokenScope::Submit.allows(TokenScope::Submit));
    assert!(!TokenScope::Submit.allows(TokenScope::Admin));
}

fn sources_are_recorded_once(db: &TestDb) {
    let (store, clock) = db.manual_store();
    let sha = digest("source");
    assert_eq!(store.source(&sha).expect("lookup"), None);
    let first = store.put_source(&sha, 1234, "sources/ab/cd").expect("put");
    assert_eq!(
        (first.size, first.storage_key.as_str(), first.created_at),
        (1234, "sources/ab/cd", T0)
    );
    clock.advance(1_000);
    let second = store
        .put_source(&sha, 1234, "sources/elsewhere")
        .expect("put again");
    assert_eq!(second, first, "the first record stands");
    assert_eq!(store.source(&sha).expect("lookup"), Some(first));
    assert_eq!(
        store
            .put_source(&digest("x"), -1, "k")
            .expect_err("negative")
            .kind(),
        "invalid_input"
    );
}

db_tests! {
    api_tokens_verify_until_revoked_or_expired,
    sources_are_recorded_once,
}
