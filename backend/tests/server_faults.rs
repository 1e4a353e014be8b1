//! Good builds are not thrown away (issue 13, backend side): an assignment that never started
//! does not use up an attempt, a completion may overtake its lost accept, a lease lost to the
//! network is forgiven when the builder comes back, submissions are idempotent with a key,
//! and a database outage answers 503 with Retry-After instead of 500.

use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_protocol::{CompletionResult, HeldJob, Outcome, ResumeAction};
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::{TestDb, POSTGRES_URL_VAR};
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, wait_until, TestServer};
use buildfleet_testkit::server_tests;
use diesel::{Connection as _, PgConnection, RunQueryDsl as _};
use serde_json::{json, Value};

server_tests! {
    an_assignment_never_accepted_does_not_use_up_an_attempt,
    a_completion_overtaking_its_accept_is_recorded,
    a_lease_lost_to_the_network_is_forgiven_when_the_builder_returns,
    an_idempotency_key_makes_a_retried_submission_return_the_same_job,
    a_second_process_with_the_same_key_burns_no_attempt,
}

async fn admitted(server: &TestServer, name: &str) -> TestKey {
    let key = TestKey::generate(name);
    server.admit(&key).await;
    key
}

/// `builder` asks for one job, takes the next assignment (of job `id`), runs it and reports
/// success; the job ends succeeded. Returns the assignment.
async fn run_next_to_success(
    server: &TestServer,
    builder: &mut BuilderClient,
    key: &TestKey,
    id: i64,
) -> buildfleet_protocol::JobAssignment {
    builder.request_jobs(1);
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    builder.accept(&job);
    let result = builder
        .complete(key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "succeeded").await;
    job
}

/// The `jobs` frame went into a connection that died: the builder never accepted. With
/// `max_attempts: 1` the job still goes back to the queue instead of failing.
async fn an_assignment_never_accepted_does_not_use_up_an_attempt(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = admitted(&server, "vanishing").await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({ "max_attempts": 1 })).await;
    let offered = builder.next_assignment().await;
    builder.drop_connection();

    let job = wait_until("the unstarted assignment to be requeued", || async {
        let job = server.job(id).await;
        (job["attempt"] == 2).then_some(job)
    })
    .await;
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["failed_attempts"], 0, "{job}");

    let mut again = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let second = run_next_to_success(&server, &mut again, &key, id).await;
    assert_eq!(second.attempt.0, offered.attempt.0 + 1);
    server.shutdown().await;
}

/// The builder's `work_ack` was lost (a backend crash between the two): its `job_response`
/// for the live attempt is recorded from `assigned`.
async fn a_completion_overtaking_its_accept_is_recorded(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = admitted(&server, "hasty").await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    assert_eq!(server.job(id).await["state"], "assigned");
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "succeeded").await;
    server.shutdown().await;
}

/// The builder is cut off past the reconnect grace while it runs the job's only attempt: the
/// job fails "builder lost", as the backend cannot tell a death from a partition. When the
/// same builder comes back still holding the attempt, the loss is forgiven and the job runs
/// again instead of staying failed.
async fn a_lease_lost_to_the_network_is_forgiven_when_the_builder_returns(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = admitted(&server, "partitioned").await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({ "max_attempts": 1 })).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    builder.drop_connection();

    let failed = server.wait_for_state(id, "failed").await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("builder lost")),
        "{failed}"
    );

    let (mut back, result) = reconnect_holding(&server, &key, &job).await;
    assert!(
        matches!(result.jobs[0].decision, ResumeAction::Cancel { .. }),
        "the old attempt is over: {result:?}"
    );
    let requeued = server.job(id).await;
    assert_eq!(requeued["failed_attempts"], 0, "{requeued}");
    assert_eq!(requeued["attempt"], 2, "{requeued}");
    run_next_to_success(&server, &mut back, &key, id).await;
    server.shutdown().await;
}

/// Two processes with one key (a cloned VM): the newer session wins and the older is told
/// `session_replaced`, but the attempt the older one runs is not requeued at once: it keeps
/// its grace period, and when that process comes back it resumes and finishes the same attempt.
async fn a_second_process_with_the_same_key_burns_no_attempt(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = admitted(&server, "cloned").await;
    let mut original = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    original.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = original.next_assignment().await;
    original.accept(&job);
    server.wait_for_state(id, "running").await;

    let mut clone = BuilderClient::connect(&server.ws_url()).await;
    clone.handshake(&key, vec![]).await;
    original
        .expect_error_and_close(buildfleet_protocol::ErrorCode::SessionReplaced)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = server.job(id).await;
    assert_eq!(
        (still["state"].as_str(), still["attempt"].as_i64()),
        (Some("running"), Some(1)),
        "the clone's empty resume does not requeue the other process's attempt: {still}"
    );

    let (mut back, result) = reconnect_holding(&server, &key, &job).await;
    assert!(
        matches!(result.jobs[0].decision, ResumeAction::Continue { .. }),
        "{result:?}"
    );
    let done = back.complete(&key, &job, Outcome::Succeeded, vec![]).await;
    assert_eq!(done, CompletionResult::Accepted);
    let finished = server.wait_for_state(id, "succeeded").await;
    assert_eq!(finished["attempt"], 1, "{finished}");
    assert_eq!(finished["failed_attempts"], 0, "{finished}");
    server.shutdown().await;
}

/// A new connection of the builder with `key` that resumes `job` (not finished, nothing
/// acknowledged); returns it with the resume result.
async fn reconnect_holding(
    server: &TestServer,
    key: &TestKey,
    job: &buildfleet_protocol::JobAssignment,
) -> (BuilderClient, buildfleet_protocol::ResumeResult) {
    let mut back = BuilderClient::connect(&server.ws_url()).await;
    let held = HeldJob {
        job_id: job.job_id,
        attempt: job.attempt,
        last_acked_seq: None,
        finished: false,
    };
    let result = back.handshake(key, vec![held]).await;
    (back, result)
}

async fn submit_with_key(
    server: &TestServer,
    key: Option<&str>,
    body: &Value,
) -> (StatusCode, Option<String>, Value) {
    let mut request = server
        .http
        .post(server.api("/jobs"))
        .bearer_auth(&server.admin_token)
        .insert_header(("Content-Type", "application/json"));
    if let Some(key) = key {
        request = request.insert_header(("Idempotency-Key", key));
    }
    let mut response = request
        .send_body(body.to_string())
        .await
        .expect("POST /jobs");
    let replayed = response
        .headers()
        .get("Idempotent-Replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.body().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (response.status(), replayed, json)
}

async fn an_idempotency_key_makes_a_retried_submission_return_the_same_job(db: TestDb) {
    let server = TestServer::start(db).await;
    let body = json!({
        "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
        "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
        "recipe": "cargo-build",
    });
    let (status, replayed, first) = submit_with_key(&server, Some("retry-7f3a"), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(replayed, None);
    let (status, replayed, second) = submit_with_key(&server, Some("retry-7f3a"), &body).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(second["id"], first["id"], "the same job, not a second one");

    let mut other = body.clone();
    other["recipe"] = json!("cargo-doc");
    let (status, _, error) = submit_with_key(&server, Some("retry-7f3a"), &other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error_code(&error), "unprocessable");
    let (status, _, error) = submit_with_key(&server, Some("bad key with spaces"), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    let (_, _, plain_a) = submit_with_key(&server, None, &body).await;
    let (_, _, plain_b) = submit_with_key(&server, None, &body).await;
    assert_ne!(
        plain_a["id"], plain_b["id"],
        "without a key every POST is a new job"
    );
    let (_, list) = server.get("/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(3));
    server.shutdown().await;
}

/// PostgreSQL refuses the backend's connections (its connections are terminated and new ones
/// are not allowed, as during a restart): submitting answers 503 `unavailable` with
/// Retry-After, and works again once the database is back.
#[actix_rt::test]
async fn a_database_outage_answers_503_with_retry_after() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let admin_url = std::env::var(POSTGRES_URL_VAR).expect("set when the database exists");
    let database = db
        .url()
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    let server = TestServer::start(db).await;
    let outage = |allow: bool| {
        let (admin_url, database) = (admin_url.clone(), database.clone());
        move || {
            let mut admin = PgConnection::establish(&admin_url).expect("admin connection");
            diesel::sql_query(format!(
                "ALTER DATABASE {database} ALLOW_CONNECTIONS {allow}"
            ))
            .execute(&mut admin)
            .expect("alter database");
            if !allow {
                diesel::sql_query(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                ))
                .execute(&mut admin)
                .expect("terminate connections");
            }
        }
    };
    tokio::task::spawn_blocking(outage(false))
        .await
        .expect("outage");
    let body = json!({
        "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
        "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
        "recipe": "cargo-build",
    });
    let mut request = server
        .http
        .post(server.api("/jobs"))
        .bearer_auth(&server.admin_token)
        .timeout(Duration::from_secs(30))
        .insert_header(("Content-Type", "application/json"));
    request = request.insert_header(("Idempotency-Key", "during-outage"));
    let mut response = request.send_body(body.to_string()).await.expect("POST");
    let retry_after = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let error: Value =
        serde_json::from_slice(&response.body().await.expect("body")).expect("a JSON error body");
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{error}"
    );
    assert_eq!(error_code(&error), "unavailable");
    assert_eq!(retry_after.as_deref(), Some("1"));

    tokio::task::spawn_blocking(outage(true))
        .await
        .expect("recovery");
    // A client honouring Retry-After: the pool's connections that died in the outage are
    // each answered 503 once, then the retry gets through, and creates the job once.
    let created = wait_until("the database to be back", || async {
        let (status, _, job) = submit_with_key(&server, Some("during-outage"), &body).await;
        match status {
            StatusCode::CREATED => Some(job),
            StatusCode::SERVICE_UNAVAILABLE => None,
            other => panic!("unexpected {other}: {job}"),
        }
    })
    .await;
    let (status, replayed, again) = submit_with_key(&server, Some("during-outage"), &body).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (StatusCode::OK, Some("true"))
    );
    assert_eq!(again["id"], created["id"]);
    server.shutdown().await;
}
