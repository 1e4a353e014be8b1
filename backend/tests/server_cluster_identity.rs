//! The backend id is the cluster's, decided once in the database (issue 16 item 6): a second
//! backend on the same database with another public URL signs challenges with the first one's
//! id, so a builder whose job started through one replica completes it through the other with
//! the statement it bound to the first; a configured `backend_id` other than the cluster's
//! stops the start with a typed error naming both; on a fresh database a configured id
//! becomes the cluster's.
//!
//! On SQLite the two backends are two servers of one test process on one database file: not
//! a deployment, but the same store calls decide the id.

use buildfleet_backend::config::ServerConfig;
use buildfleet_backend::server::{self, BackendIdError, RunningServer};
use buildfleet_protocol::{ClientMessage, CompletionResult, HeldJob, Outcome, ResumeAction};
use buildfleet_testkit::builder_client::{
    connection, digest_of, job_ref, sha256_hex, upload, BuilderClient,
};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{test_timings, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    a_second_backend_signs_with_the_first_ones_id_and_completes_its_job,
    a_configured_id_other_than_the_clusters_refuses_to_start,
    a_configured_id_on_a_fresh_database_becomes_the_clusters,
}

const ADMIN_TOKEN: &str = "bfa_cluster_identity_admin_token_0123456789";

/// Another backend on `a`'s database, data directory and admin token, on a port of its own.
async fn start_beside(
    a: &TestServer,
    database_url: &str,
    configure: impl FnOnce(&mut ServerConfig),
) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::with_data_dir(a.data_dir());
    config.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.database_url = database_url.to_owned();
    config.limits.db_pool_size = 4;
    config.timings = test_timings();
    config.admin_token = Some(ADMIN_TOKEN.into());
    configure(&mut config);
    server::start(config).await
}

async fn a_second_backend_signs_with_the_first_ones_id_and_completes_its_job(db: TestDb) {
    let database_url = db.url().to_owned();
    let a = TestServer::start_with(db, |config| {
        config.admin_token = Some(ADMIN_TOKEN.into());
    })
    .await;
    // A fresh single backend is named by its public URL, as before.
    assert_eq!(a.backend_id, a.url);
    let b = start_beside(&a, &database_url, |_| {})
        .await
        .expect("starting B");
    assert_ne!(b.public_url, a.url);
    assert_eq!(b.backend_id, a.backend_id, "B uses the cluster's id");

    // A builder starts a job through A.
    let key = TestKey::generate("failing-over");
    a.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&a.ws_url(), &key).await;
    let id_on_a = builder.backend_id.clone().expect("A's challenge");
    assert_eq!(id_on_a, a.backend_id);
    builder.request_jobs(1);
    let id = a.submit(json!({})).await;
    let job = builder.next_assignment().await;
    let r = job_ref(&job);
    builder.accept(&job);
    a.wait_for_state(id, "running").await;
    builder.log(r, 1, "started on A");
    assert_eq!(builder.expect_event_ack(r, 1).await, 1);
    builder.drop_connection();

    // It fails over to B and resumes the job there.
    let b_ws = format!("ws://{}/api/v1/builders/connect", b.addr);
    let mut builder = BuilderClient::connect(&b_ws).await;
    let held = HeldJob {
        job_id: r.job_id,
        attempt: r.attempt,
        last_acked_seq: Some(1),
        finished: false,
    };
    let resumed = builder.handshake(&key, vec![held]).await;
    assert!(
        matches!(
            resumed.jobs.as_slice(),
            [decision] if matches!(decision.decision, ResumeAction::Continue { .. })
        ),
        "{resumed:?}"
    );
    assert_eq!(
        builder.backend_id.as_deref(),
        Some(id_on_a.as_str()),
        "B's challenge names the cluster's id"
    );
    builder.log(r, 2, "finished on B");
    assert_eq!(builder.expect_event_ack(r, 2).await, 2);
    let body = b"built across a failover";
    let upload_url = job.upload_url.replacen(&a.url, &b.public_url, 1);
    assert_ne!(upload_url, job.upload_url, "the upload goes to B");
    let (status, answer) = upload(
        &upload_url,
        &job.job_token,
        "out.bin",
        body,
        &sha256_hex(body),
    )
    .await;
    assert_eq!(status, awc::http::StatusCode::CREATED, "{answer}");
    let digest = digest_of("out.bin", body);
    // The statement is bound to the id of the session the job started in, A's.
    let response = connection::job_response(
        key.credentials(),
        &id_on_a,
        &job,
        Outcome::Succeeded,
        vec![digest],
    )
    .expect("signing the statement");
    builder.send(ClientMessage::JobResponse(response));
    assert_eq!(
        builder.expect_completion_ack(r).await,
        CompletionResult::Accepted
    );
    a.wait_for_state(id, "succeeded").await;

    builder.close().await;
    b.stop(false).await;
    a.shutdown().await;
}

async fn a_configured_id_other_than_the_clusters_refuses_to_start(db: TestDb) {
    let database_url = db.url().to_owned();
    let a = TestServer::start_with(db, |config| {
        config.admin_token = Some(ADMIN_TOKEN.into());
    })
    .await;
    let elsewhere = "https://elsewhere.example";
    let err = start_beside(&a, &database_url, |config| {
        config.backend_id = Some(elsewhere.into());
    })
    .await
    .err()
    .expect("a conflicting backend_id refuses to start");
    match err.downcast_ref::<BackendIdError>() {
        Some(BackendIdError::ConflictsWithCluster { configured, stored }) => {
            assert_eq!(configured, elsewhere);
            assert_eq!(stored, &a.backend_id);
        }
        None => panic!("expected BackendIdError, got {err:#}"),
    }
    let message = err.to_string();
    for part in [
        elsewhere,
        a.backend_id.as_str(),
        "every replica must use the cluster's id",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }

    // An empty id is refused too, as bad input.
    let err = start_beside(&a, &database_url, |config| {
        config.backend_id = Some(" ".into());
    })
    .await
    .err()
    .expect("an empty backend_id refuses to start");
    assert!(format!("{err:#}").contains("must not be empty"), "{err:#}");

    // The cluster's own id, set explicitly, is accepted.
    let b = start_beside(&a, &database_url, |config| {
        config.backend_id = Some(a.backend_id.clone());
    })
    .await
    .expect("starting with the cluster's id");
    assert_eq!(b.backend_id, a.backend_id);
    b.stop(false).await;
    a.shutdown().await;
}

async fn a_configured_id_on_a_fresh_database_becomes_the_clusters(db: TestDb) {
    let database_url = db.url().to_owned();
    let cluster = "urn:example:builds";
    let a = TestServer::start_with(db, |config| {
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.backend_id = Some(cluster.into());
    })
    .await;
    assert_eq!(a.backend_id, cluster);
    let b = start_beside(&a, &database_url, |_| {})
        .await
        .expect("starting B");
    assert_eq!(b.backend_id, cluster);
    let key = TestKey::generate("named-cluster");
    a.admit(&key).await;
    let b_ws = format!("ws://{}/api/v1/builders/connect", b.addr);
    let builder = BuilderClient::connect_ready(&b_ws, &key).await;
    assert_eq!(builder.backend_id.as_deref(), Some(cluster));
    builder.close().await;
    b.stop(false).await;
    a.shutdown().await;
}
