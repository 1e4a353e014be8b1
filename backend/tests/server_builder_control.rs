//! Pause, drain and resume survive a builder's reconnect: the scheduler keeps the operator's
//! standing across sessions and tells the builder again after its handshake, so the API
//! (and the dashboard) never show as available a builder that refuses every job. The standing
//! is stored, so it outlives a backend restart too (more in `server_builder_standing.rs`).

use std::time::Duration;

use buildfleet_protocol::{ControlCommand, ServerMessage};
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    a_paused_builder_stays_paused_across_reconnects_and_a_drain_outlives_a_restart,
}

async fn control(builder: &mut BuilderClient) -> ControlCommand {
    builder
        .expect("a control frame", |m| match m {
            ServerMessage::Control(c) => Some(c.command),
            _ => None,
        })
        .await
}

async fn act(server: &TestServer, id: i64, action: &str) {
    let (status, body) = server
        .post_admin(&format!("/builders/{id}/{action}"), &json!({}))
        .await;
    assert!(status.is_success(), "{action}: {body}");
}

async fn a_paused_builder_stays_paused_across_reconnects_and_a_drain_outlives_a_restart(
    db: TestDb,
) {
    let mut server = TestServer::start(db).await;
    let key = TestKey::generate("steered");
    let id = server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    // Each session is told its standing once, at its first heartbeat: nothing set yet.
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    act(&server, id, "pause").await;
    assert_eq!(control(&mut builder).await, ControlCommand::Pause);

    // The connection drops; the new session is told to stay paused and gets no job.
    builder.drop_connection();
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let job = server.submit(json!({})).await;
    assert_eq!(control(&mut builder).await, ControlCommand::Pause);
    let seen = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(seen["live"]["paused"], true, "{seen}");
    let early = builder
        .try_expect(
            Duration::from_millis(500),
            "no assignment while paused",
            |m| matches!(m, ServerMessage::Jobs(_)).then_some(()),
        )
        .await;
    assert_eq!(early, None, "a paused builder is given no job");

    // Resumed: told so, and the waiting job comes.
    act(&server, id, "resume").await;
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    assert_eq!(builder.next_assignment().await.job_id.0, job);

    // Drained, then the backend restarts: the stored standing is told again.
    act(&server, id, "drain").await;
    assert_eq!(control(&mut builder).await, ControlCommand::Drain);
    builder.drop_connection();
    server.restart().await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    assert_eq!(control(&mut builder).await, ControlCommand::Drain);
    let seen = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(seen["live"]["draining"], true, "{seen}");
}
