//! Authentication throttling against the real backend: failed answers count against the
//! admitted key that was tried, unknown fingerprints against the address; a throttled key or
//! address gets a prompt `auth_rejected{too_many_attempts}` with `retry_after_ms`, and no other
//! admitted key from the same address is refused or slowed down.

use std::time::{Duration, Instant};

use buildfleet_backend::actors::auth::{FAILURE_WINDOW, MAX_KEY_FAILURES, MAX_UNKNOWN_PER_ADDRESS};
use buildfleet_protocol::{
    AuthRejected, ChallengeResponse, ClientMessage, ErrorCode, ServerMessage,
};
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;

server_tests! {
    bad_signatures_throttle_that_key_alone,
    a_throttled_key_is_refused_even_with_a_correct_signature,
    unknown_keys_are_throttled_per_address_without_touching_admitted_keys,
}

/// A throttled refusal must come at once: long before the handshake deadline (8 s in the
/// test timings), and within what a reply over loopback takes.
const PROMPT: Duration = Duration::from_secs(1);

/// The longest a failed answer is held back (the penalty cap); an answer that took less was
/// not penalised.
const PENALTY_CAP: Duration = Duration::from_millis(500);

/// The only frame before the close must be `auth_rejected`; returns it.
async fn rejected(client: &mut BuilderClient) -> AuthRejected {
    let (seen, _) = client.expect_closed().await;
    match seen.as_slice() {
        [ServerMessage::AuthRejected(rejected)] => rejected.clone(),
        other => panic!("expected only auth_rejected before the close, got {other:?}"),
    }
}

fn respond(client: &mut BuilderClient, signature: String) {
    client.send(ClientMessage::ChallengeResponse(ChallengeResponse {
        signature,
    }));
}

/// One session that asks for `key`'s challenge and answers it with `signer`'s signature.
async fn answer_with(server: &TestServer, key: &TestKey, signer: &TestKey) -> AuthRejected {
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    let challenge = client.request_challenge(key).await;
    let signature = client.sign_challenge(signer, &challenge);
    respond(&mut client, signature);
    rejected(&mut client).await
}

/// A hello for `key` that must be refused as throttled, promptly; returns the retry-after.
async fn expect_throttled_hello(server: &TestServer, key: &TestKey) -> Duration {
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    let asked = Instant::now();
    client.hello(key);
    let rejection = rejected(&mut client).await;
    let took = asked.elapsed();
    assert_eq!(rejection.code, ErrorCode::TooManyAttempts, "{rejection:?}");
    assert!(took < PROMPT, "too_many_attempts took {took:?}");
    retry_after(&rejection)
}

fn retry_after(rejection: &AuthRejected) -> Duration {
    let ms = rejection
        .retry_after_ms
        .unwrap_or_else(|| panic!("too_many_attempts without retry_after_ms: {rejection:?}"));
    let wait = Duration::from_millis(ms);
    assert!(
        !wait.is_zero() && wait <= FAILURE_WINDOW,
        "retry_after_ms {ms} is outside (0, {FAILURE_WINDOW:?}]"
    );
    wait
}

/// Fails `times` answers for `key` (signed by `impostor`); each is `auth_failed`, none is held
/// back past the penalty cap. Returns how long the last answer took.
async fn fail_answers(
    server: &TestServer,
    key: &TestKey,
    impostor: &TestKey,
    times: u32,
) -> Duration {
    let mut last = Duration::ZERO;
    for n in 1..=times {
        let started = Instant::now();
        let rejection = answer_with(server, key, impostor).await;
        last = started.elapsed();
        assert_eq!(
            rejection.code,
            ErrorCode::AuthFailed,
            "failure {n}: {rejection:?}"
        );
        assert_eq!(rejection.retry_after_ms, None);
        assert!(
            last < PENALTY_CAP + PROMPT,
            "failure {n} was answered after {last:?}"
        );
    }
    last
}

async fn bad_signatures_throttle_that_key_alone(db: TestDb) {
    let server = TestServer::start(db).await;
    let a = TestKey::generate("key-a");
    let b = TestKey::generate("key-b");
    let impostor = TestKey::generate("impostor");
    server.admit(&a).await;
    server.admit(&b).await;

    // Every failed answer for A comes from 127.0.0.1, the address B uses too.
    let last = fail_answers(&server, &a, &impostor, MAX_KEY_FAILURES).await;
    assert!(
        last >= Duration::from_millis(300),
        "failures past the free ones are answered after a short penalty ({last:?})"
    );

    // A is now refused at its hello, at once, with a retry-after within the window.
    let first_wait = expect_throttled_hello(&server, &a).await;
    let second_wait = expect_throttled_hello(&server, &a).await;
    assert!(
        second_wait <= first_wait,
        "the retry-after counts down: {first_wait:?} then {second_wait:?}"
    );

    // B, from the same address, gets in at once: no refusal, no penalty.
    let started = Instant::now();
    let client = BuilderClient::connect_ready(&server.ws_url(), &b).await;
    let took = started.elapsed();
    assert!(
        took < PENALTY_CAP,
        "B's handshake took {took:?}: slowed by A's failures"
    );
    client.close().await;

    // A bad answer with B is B's own first failure: `auth_failed`, not throttled, no delay.
    let started = Instant::now();
    let rejection = answer_with(&server, &b, &impostor).await;
    assert_eq!(rejection.code, ErrorCode::AuthFailed, "{rejection:?}");
    assert!(started.elapsed() < PENALTY_CAP);
    let client = BuilderClient::connect_ready(&server.ws_url(), &b).await;
    client.close().await;

    // A is still throttled: B's successes do not lift A's refusal.
    expect_throttled_hello(&server, &a).await;
    server.shutdown().await;
}

async fn a_throttled_key_is_refused_even_with_a_correct_signature(db: TestDb) {
    let server = TestServer::start(db).await;
    let a = TestKey::generate("key-a");
    let impostor = TestKey::generate("impostor");
    server.admit(&a).await;

    fail_answers(&server, &a, &impostor, MAX_KEY_FAILURES - 1).await;
    // A challenge issued while A is one failure short of its limit...
    let mut early = BuilderClient::connect(&server.ws_url()).await;
    let challenge = early.request_challenge(&a).await;
    // ...then the failure that reaches the limit...
    fail_answers(&server, &a, &impostor, 1).await;
    // ...and the correct answer to the early challenge is refused too, promptly.
    let signature = early.sign_challenge(&a, &challenge);
    let answered = Instant::now();
    respond(&mut early, signature);
    let rejection = rejected(&mut early).await;
    assert_eq!(rejection.code, ErrorCode::TooManyAttempts, "{rejection:?}");
    assert!(answered.elapsed() < PROMPT, "took {:?}", answered.elapsed());
    retry_after(&rejection);

    // A new session of A is refused before any challenge is issued.
    expect_throttled_hello(&server, &a).await;
    server.shutdown().await;
}

async fn unknown_keys_are_throttled_per_address_without_touching_admitted_keys(db: TestDb) {
    let server = TestServer::start(db).await;
    let admitted = TestKey::generate("admitted");
    server.admit(&admitted).await;

    // Unknown keys from 127.0.0.1 up to the per-address limit: each a plain, prompt
    // `unknown_builder`, whatever the per-key limit is.
    const { assert!(MAX_UNKNOWN_PER_ADDRESS > MAX_KEY_FAILURES) };
    for n in 1..=MAX_UNKNOWN_PER_ADDRESS {
        let stranger = TestKey::generate(&format!("stranger-{n}"));
        let mut client = BuilderClient::connect(&server.ws_url()).await;
        let asked = Instant::now();
        client.hello(&stranger);
        let rejection = rejected(&mut client).await;
        assert_eq!(
            rejection.code,
            ErrorCode::UnknownBuilder,
            "unknown key {n}: {rejection:?}"
        );
        assert_eq!(rejection.retry_after_ms, None);
        assert!(
            asked.elapsed() < PROMPT,
            "unknown key {n} took {:?}",
            asked.elapsed()
        );
    }

    // One more unknown key from the address is throttled.
    let another = TestKey::generate("stranger-more");
    let wait = expect_throttled_hello(&server, &another).await;
    assert!(wait <= FAILURE_WINDOW);

    // The admitted key from the same address is neither refused nor slowed down.
    let started = Instant::now();
    let client = BuilderClient::connect_ready(&server.ws_url(), &admitted).await;
    let took = started.elapsed();
    assert!(took < PENALTY_CAP, "admitted key's handshake took {took:?}");
    client.close().await;

    // Its own failures still count per key: a bad answer is `auth_failed`, not throttled.
    let impostor = TestKey::generate("impostor");
    let rejection = answer_with(&server, &admitted, &impostor).await;
    assert_eq!(rejection.code, ErrorCode::AuthFailed, "{rejection:?}");
    server.shutdown().await;
}
