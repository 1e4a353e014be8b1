//! Pause and drain are stored on the builder's row: they outlive the backend's restart, the
//! reconnecting builder is told its standing after its handshake and is given no job, and
//! resume clears the stored standing for good.

use std::time::Duration;

use buildfleet_protocol::{ControlCommand, ServerMessage};
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_paused_builder_stays_paused_after_a_restart,
    a_draining_builder_stays_draining_after_a_restart_and_resume_lasts_too,
    steering_refuses_unknown_and_disconnected_builders_and_stores_nothing,
}

async fn control(builder: &mut BuilderClient) -> ControlCommand {
    builder
        .expect("a control frame", |m| match m {
            ServerMessage::Control(c) => Some(c.command),
            _ => None,
        })
        .await
}

async fn act(server: &TestServer, id: i64, action: &str) -> Value {
    let (status, body) = server
        .post_admin(&format!("/builders/{id}/{action}"), &json!({}))
        .await;
    assert!(status.is_success(), "{action}: {body}");
    body
}

/// The standing as stored on the builder's row: `(paused, draining)`.
async fn stored(server: &TestServer, id: i64) -> (bool, bool) {
    let builder = server
        .with_store(move |store| {
            store
                .builder_by_id(buildfleet_backend::store::BuilderId(id))
                .expect("reading the builder")
                .expect("the builder exists")
        })
        .await;
    (builder.control.paused, builder.control.draining)
}

async fn no_assignment_for(builder: &mut BuilderClient, what: &str) {
    let early = builder
        .try_expect(Duration::from_millis(700), what, |m| {
            matches!(m, ServerMessage::Jobs(_)).then_some(())
        })
        .await;
    assert_eq!(early, None, "{what}");
}

/// Restarts the backend with the builder away, then connects it again with one credit.
async fn restart_and_reconnect(
    server: &mut TestServer,
    builder: BuilderClient,
    key: &TestKey,
) -> BuilderClient {
    builder.drop_connection();
    server.restart().await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), key).await;
    builder.request_jobs(1);
    builder
}

async fn a_paused_builder_stays_paused_after_a_restart(db: TestDb) {
    let mut server = TestServer::start(db).await;
    let key = TestKey::generate("paused");
    let id = server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    let body = act(&server, id, "pause").await;
    assert_eq!(body["live"]["paused"], true, "{body}");
    assert_eq!(control(&mut builder).await, ControlCommand::Pause);
    assert_eq!(stored(&server, id).await, (true, false));

    let mut builder = restart_and_reconnect(&mut server, builder, &key).await;
    let job = server.submit(json!({})).await;
    // The first frame after the handshake that steers it says pause, not resume.
    assert_eq!(control(&mut builder).await, ControlCommand::Pause);
    let seen = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(seen["live"]["paused"], true, "{seen}");
    assert_eq!(seen["live"]["draining"], false, "{seen}");
    no_assignment_for(
        &mut builder,
        "a paused builder is given no job after a restart",
    )
    .await;
    assert_eq!(server.job(job).await["state"], "queued");

    // Resumed: told so, the stored standing is cleared, and the waiting job comes.
    let body = act(&server, id, "resume").await;
    assert_eq!(body["live"]["paused"], false, "{body}");
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    assert_eq!(builder.next_assignment().await.job_id.0, job);
    assert_eq!(stored(&server, id).await, (false, false));
}

async fn a_draining_builder_stays_draining_after_a_restart_and_resume_lasts_too(db: TestDb) {
    let mut server = TestServer::start(db).await;
    let key = TestKey::generate("drained");
    let id = server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    act(&server, id, "drain").await;
    assert_eq!(control(&mut builder).await, ControlCommand::Drain);
    assert_eq!(stored(&server, id).await, (false, true));

    let mut builder = restart_and_reconnect(&mut server, builder, &key).await;
    let job = server.submit(json!({})).await;
    assert_eq!(control(&mut builder).await, ControlCommand::Drain);
    let seen = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(seen["live"]["draining"], true, "{seen}");
    assert_eq!(seen["live"]["paused"], false, "{seen}");
    no_assignment_for(
        &mut builder,
        "a draining builder is given no job after a restart",
    )
    .await;

    // Paused while draining: both are kept, and pause is what a new session is told.
    act(&server, id, "pause").await;
    assert_eq!(control(&mut builder).await, ControlCommand::Pause);
    assert_eq!(stored(&server, id).await, (true, true));
    let mut builder = restart_and_reconnect(&mut server, builder, &key).await;
    assert_eq!(control(&mut builder).await, ControlCommand::Pause);
    let seen = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(seen["live"]["paused"], true, "{seen}");
    assert_eq!(seen["live"]["draining"], true, "{seen}");
    no_assignment_for(&mut builder, "a paused, draining builder is given no job").await;

    // Resume clears both, and a restart does not bring them back.
    act(&server, id, "resume").await;
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    assert_eq!(builder.next_assignment().await.job_id.0, job);
    assert_eq!(stored(&server, id).await, (false, false));
    let mut builder = restart_and_reconnect(&mut server, builder, &key).await;
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    let seen = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(seen["live"]["paused"], false, "{seen}");
    assert_eq!(seen["live"]["draining"], false, "{seen}");
    // The job the previous session held is requeued once its lease runs out (that session
    // is gone); either way the resumed builder takes work again.
    let second = server.submit(json!({})).await;
    let assigned = builder.next_assignment().await.job_id.0;
    assert!(
        assigned == second || assigned == job,
        "assigned {assigned}, expected {job} or {second}"
    );
}

async fn steering_refuses_unknown_and_disconnected_builders_and_stores_nothing(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("offline");
    let id = server.admit(&key).await;

    let (status, body) = server
        .post_admin(&format!("/builders/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status.as_u16(), 409, "{body}");
    assert_eq!(error_code(&body), "conflict", "{body}");
    assert_eq!(
        stored(&server, id).await,
        (false, false),
        "a refused pause stores nothing"
    );

    let (status, body) = server
        .post_admin("/builders/999999/drain", &json!({}))
        .await;
    assert_eq!(status.as_u16(), 404, "{body}");
    let (status, body) = server
        .post_admin(&format!("/builders/{id}/freeze"), &json!({}))
        .await;
    assert_eq!(status.as_u16(), 404, "{body}");
    let (status, body) = server
        .post_admin("/builders/not-a-number/pause", &json!({}))
        .await;
    assert_eq!(status.as_u16(), 400, "{body}");
    // Unauthenticated steering is refused before anything is looked at.
    let (status, body) = server
        .post(&format!("/builders/{id}/pause"), None, &json!({}))
        .await;
    assert_eq!(status.as_u16(), 401, "{body}");

    // A standing that is not one of ours cannot be stored.
    let sql = format!("UPDATE builders SET control = 'frozen' WHERE id = {id}");
    let refused =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.execute_sql(&sql)))
            .expect_err("the column accepts only known standings");
    let message = refused
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default()
        .to_lowercase();
    assert!(message.contains("check constraint"), "{message}");
}
