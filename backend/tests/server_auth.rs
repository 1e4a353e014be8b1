//! Builder authentication against the real backend: bad and replayed signatures, unknown,
//! disabled and revoked builders, and a newer session replacing an older one.

use buildfleet_protocol::signing;
use buildfleet_protocol::{ChallengeResponse, ClientMessage, ErrorCode, Hello, PROTOCOL_VERSION};
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    bad_signature_is_rejected_and_closed,
    replayed_challenge_response_is_rejected,
    unknown_disabled_and_revoked_builders_are_refused,
    unsupported_protocol_version_is_refused,
    newer_session_replaces_the_older_one,
}

fn respond(client: &mut BuilderClient, signature: String) {
    client.send(ClientMessage::ChallengeResponse(ChallengeResponse {
        signature,
    }));
}

async fn bad_signature_is_rejected_and_closed(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("honest");
    let impostor = TestKey::generate("impostor");
    server.admit(&key).await;

    // Signed by another key.
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    let challenge = client.request_challenge(&key).await;
    let signature = client.sign_challenge(&impostor, &challenge);
    respond(&mut client, signature);
    client.expect_auth_rejected(ErrorCode::AuthFailed).await;

    // The right key over the wrong bytes (another challenge).
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.request_challenge(&key).await;
    let signature = client.sign_challenge(&key, &"00".repeat(32));
    respond(&mut client, signature);
    client.expect_auth_rejected(ErrorCode::AuthFailed).await;

    // The right key and challenge, bound to another backend.
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    let challenge = client.request_challenge(&key).await;
    let signature =
        signing::sign_challenge(&key.private, "https://other-backend.invalid", &challenge)
            .expect("sign");
    respond(&mut client, signature);
    client.expect_auth_rejected(ErrorCode::AuthFailed).await;

    // Not a signature at all.
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.request_challenge(&key).await;
    respond(&mut client, "-----BEGIN SSH SIGNATURE-----\nnope\n".into());
    client.expect_auth_rejected(ErrorCode::AuthFailed).await;

    // The builder itself still gets in, and the failures were counted.
    let client = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("buildfleet_auth_failures_total 4"),
        "{metrics}"
    );
    client.close().await;
    server.shutdown().await;
}

async fn replayed_challenge_response_is_rejected(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("recorded");
    server.admit(&key).await;

    // An eavesdropper records a valid answer of an earlier session...
    let mut first = BuilderClient::connect(&server.ws_url()).await;
    let challenge = first.request_challenge(&key).await;
    let recorded = first.sign_challenge(&key, &challenge);
    respond(&mut first, recorded.clone());
    let accepted = first
        .expect("auth_accepted", |m| match m {
            buildfleet_protocol::ServerMessage::AuthAccepted(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert!(accepted.builder_id > 0);
    first.close().await;

    // ...and replays it in a new one: the fresh challenge does not match.
    let mut replay = BuilderClient::connect(&server.ws_url()).await;
    let fresh = replay.request_challenge(&key).await;
    assert_ne!(fresh, challenge, "challenges are fresh per connection");
    respond(&mut replay, recorded);
    replay.expect_auth_rejected(ErrorCode::AuthFailed).await;
    server.shutdown().await;
}

async fn unknown_disabled_and_revoked_builders_are_refused(db: TestDb) {
    let server = TestServer::start(db).await;
    let stranger = TestKey::generate("stranger");
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.hello(&stranger);
    client.expect_auth_rejected(ErrorCode::UnknownBuilder).await;

    let key = TestKey::generate("revocable");
    let id = server.admit(&key).await;
    let mut connected = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let (status, body) = server
        .post(&format!("/builders/{id}/disable"), None, &json!({}))
        .await;
    assert_eq!(status, awc::http::StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = server
        .post_admin(&format!("/builders/{id}/disable"), &json!({}))
        .await;
    assert_eq!(status, awc::http::StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false);
    // Disabling a connected builder closes its session.
    connected
        .expect_error_and_close(ErrorCode::BuilderRevoked)
        .await;

    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.hello(&key);
    client
        .expect_auth_rejected(ErrorCode::BuilderDisabled)
        .await;

    // Stored state: disabled, still listed for verifying what it signed before.
    let builder = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(builder["enabled"], false);
    assert_eq!(builder["connected"], false);
    let (_, signers) = server.get_raw(&server.api("/allowed_signers")).await;
    assert!(String::from_utf8_lossy(&signers).contains("revocable "));

    // Enabled again, it gets in.
    let (status, _) = server
        .post_admin(&format!("/builders/{id}/enable"), &json!({}))
        .await;
    assert_eq!(status, awc::http::StatusCode::OK);
    let client = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    client.close().await;
    server.shutdown().await;
}

async fn unsupported_protocol_version_is_refused(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("from-the-future");
    server.admit(&key).await;
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.send(ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        fingerprint: key.fingerprint.clone(),
        builder_name: key.name.clone(),
        builder_version: "test".into(),
    }));
    client
        .expect_auth_rejected(ErrorCode::UnsupportedVersion)
        .await;
    server.shutdown().await;
}

async fn newer_session_replaces_the_older_one(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("twice");
    let id = server.admit(&key).await;
    let mut old = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let new = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    old.expect_error_and_close(ErrorCode::SessionReplaced).await;
    // The newer one is the live one.
    buildfleet_testkit::server::wait_until("the new session to be live", || async {
        let builder = server.get_ok(&format!("/builders/{id}")).await;
        (builder["connected"] == true).then_some(())
    })
    .await;
    new.close().await;
    server.shutdown().await;
}
