//! Retention over real HTTP with scripted builders: a short policy deletes finished jobs'
//! artifacts and logs (files, rows) and the job says so, running and queued jobs keep theirs,
//! keep-last-N keeps the newest N (for artifacts and for logs), a single pass goes through
//! more jobs than one batch, an admin's `DELETE /jobs/{id}/artifacts` (refused to
//! others), bad policies are refused, and the storage gauges of `/metrics` follow.

use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_backend::janitor::BATCH_JOBS;
use buildfleet_backend::store::{JobId, TokenScope};
use buildfleet_protocol::{JobAssignment, Outcome};
use buildfleet_testkit::builder_client::{job_ref, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, wait_until, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_short_retention_deletes_finished_jobs_data_only,
    one_pass_deletes_more_jobs_than_a_batch_and_logs_keep_the_newest,
    keep_last_keeps_the_newest_jobs_artifacts,
    an_admin_deletes_a_jobs_artifacts_and_others_cannot,
    bad_retention_policies_are_refused,
}

const RETENTION: &str = "/projects/default/default/retention";

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    server
        .call(method.parse().expect("an HTTP method"), path, token, body)
        .await
}

async fn set_retention(server: &TestServer, policy: Value) -> Value {
    let (status, body) = call(
        server,
        "PUT",
        RETENTION,
        Some(&server.admin_token),
        Some(&policy),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A connected builder holding one running job with `lines` log lines stored.
async fn running(
    server: &TestServer,
    builder: &mut BuilderClient,
    lines: u64,
) -> (JobAssignment, i64) {
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    for seq in 1..=lines {
        builder.log(job_ref(&job), seq, &format!("line {seq} of job {id}"));
    }
    builder.expect_event_ack(job_ref(&job), lines).await;
    (job, id)
}

/// Runs one job to success with an artifact `out.bin` and three log lines; answers its id.
async fn finished_with_artifact(
    server: &TestServer,
    builder: &mut BuilderClient,
    key: &TestKey,
    body: &[u8],
) -> i64 {
    let (job, id) = running(server, builder, 3).await;
    let digest = upload_ok(&job, "out.bin", body).await;
    builder
        .complete(key, &job, Outcome::Succeeded, vec![digest])
        .await;
    server.wait_for_state(id, "succeeded").await;
    id
}

fn artifact_file(server: &TestServer, id: i64) -> std::path::PathBuf {
    server
        .data_dir()
        .join(format!("blobs/artifacts/{id}/1/out.bin"))
}

async fn storage_gauge(server: &TestServer, kind: &str) -> i64 {
    let metrics = server.metrics().await;
    let prefix =
        format!("buildfleet_project_storage_bytes{{project=\"default/default\",kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

async fn wait_gauge(server: &TestServer, kind: &str, check: impl Fn(i64) -> bool) -> i64 {
    wait_until(&format!("the {kind} storage gauge"), || async {
        let value = storage_gauge(server, kind).await;
        check(value).then_some(value)
    })
    .await
}

async fn download(server: &TestServer, id: i64) -> (StatusCode, Value) {
    call(
        server,
        "GET",
        &format!("/jobs/{id}/artifacts/out.bin"),
        None,
        None,
    )
    .await
}

async fn connected(server: &TestServer, name: &str) -> (BuilderClient, TestKey) {
    let key = TestKey::generate(name);
    server.admit(&key).await;
    let builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    (builder, key)
}

async fn a_short_retention_deletes_finished_jobs_data_only(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key) = connected(&server, "kept").await;
    let body = vec![7u8; 4096];
    let done = finished_with_artifact(&server, &mut builder, &key, &body).await;
    assert!(artifact_file(&server, done).is_file());
    let (still_running, running_id) = running(&server, &mut builder, 4).await;
    let queued = server.submit(json!({ "recipe": "nobody-has-this" })).await;
    let artifacts_before = wait_gauge(&server, "artifacts", |v| v == 4096).await;
    assert_eq!(artifacts_before, 4096);
    let log_bytes = |id: i64| {
        server.with_store(move |s| {
            s.log_chunks(JobId(id))
                .unwrap()
                .iter()
                .map(|c| c.length)
                .sum::<i64>()
        })
    };
    let (done_logs, running_logs) = (log_bytes(done).await, log_bytes(running_id).await);
    assert!(done_logs > 0 && running_logs > 0);
    wait_gauge(&server, "logs", |v| v == done_logs + running_logs).await;

    let policy = set_retention(
        &server,
        json!({ "artifacts": { "max_age_days": 0 }, "logs": { "max_age_days": 0 } }),
    )
    .await;
    assert_eq!(policy["artifacts"]["max_age_days"], 0);
    assert_eq!(policy["logs"]["keep_last"], Value::Null);

    let detail = wait_until("the finished job's data expired", || async {
        let detail = server.job(done).await;
        let file_gone = !artifact_file(&server, done).exists();
        (detail["artifacts_expired_at"].is_i64() && detail["logs_expired_at"].is_i64() && file_gone)
            .then_some(detail)
    })
    .await;
    assert_eq!(detail["artifacts"], json!([]));
    assert!(!artifact_file(&server, done).exists(), "the blob is gone");
    let chunks = server
        .with_store(move |s| s.log_chunks(JobId(done)).unwrap().len())
        .await;
    assert_eq!(chunks, 0, "the log rows are gone");
    assert!(server.log_records(done).await.is_empty());
    let (status, answer) = download(&server, done).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("were deleted"), "{message}");

    // The running job and the queued one keep everything.
    let running_detail = server.job(running_id).await;
    assert_eq!(running_detail["state"], "running");
    assert!(
        running_detail.get("logs_expired_at").is_none(),
        "{running_detail}"
    );
    assert_eq!(server.log_records(running_id).await.len(), 4);
    let queued_detail = server.job(queued).await;
    assert_eq!(queued_detail["state"], "queued");
    assert!(queued_detail.get("artifacts_expired_at").is_none());

    assert_eq!(wait_gauge(&server, "artifacts", |v| v == 0).await, 0);
    // The running job's log is still counted, the finished one's no more.
    wait_gauge(&server, "logs", |v| v == running_logs).await;
    let (status, read) = call(&server, "GET", RETENTION, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["artifact_bytes"], 0);
    assert_eq!(read["logs"]["max_age_days"], 0);
    drop(still_running);
    builder.close().await;
    server.shutdown().await;
}

/// More finished jobs than one janitor batch, and a policy that deletes every job's artifacts
/// and every log but the newest few: the one pass after a restart (the janitor's interval is
/// longer than the test, so no later pass helps) deletes them all, batch after batch, and
/// keeps exactly the newest jobs' logs.
async fn one_pass_deletes_more_jobs_than_a_batch_and_logs_keep_the_newest(db: TestDb) {
    const LOGS_KEPT: usize = 5;
    let mut server = TestServer::start_with(db, |config| {
        config.timings.janitor_interval = Duration::from_secs(3600);
    })
    .await;
    let (mut builder, key) = connected(&server, "many").await;
    // More than one batch of each kind: 70 artifacts, 65 logs to delete.
    let total = usize::try_from(BATCH_JOBS).expect("a batch size") + 20;
    let mut ids = Vec::with_capacity(total);
    for n in 0..total {
        let body = [u8::try_from(n % 256).expect("a byte"); 64];
        ids.push(finished_with_artifact(&server, &mut builder, &key, &body).await);
    }
    builder.close().await;
    // The pass at start found no policy: everything is there.
    assert!(ids.iter().all(|id| artifact_file(&server, *id).is_file()));
    set_retention(
        &server,
        json!({ "artifacts": { "max_age_days": 0 }, "logs": { "keep_last": LOGS_KEPT } }),
    )
    .await;
    // No pass runs until the restart: what is deleted below is one pass's work.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let untouched = ids.clone();
    let expired_early = server
        .with_store(move |store| {
            untouched
                .iter()
                .filter(|id| store.job_expiry(JobId(**id)).expect("expiry") != Default::default())
                .count()
        })
        .await;
    assert_eq!(expired_early, 0, "a pass ran before the restart");

    server.restart().await;
    let expired = wait_until("one pass to delete every batch", || async {
        let all = ids.clone();
        let expiry = server
            .with_store(move |store| {
                all.iter()
                    .map(|id| store.job_expiry(JobId(*id)).expect("expiry"))
                    .collect::<Vec<_>>()
            })
            .await;
        let artifacts = expiry
            .iter()
            .filter(|e| e.artifacts_expired_at.is_some())
            .count();
        let logs = expiry
            .iter()
            .filter(|e| e.logs_expired_at.is_some())
            .count();
        (artifacts == total && logs == total - LOGS_KEPT).then_some(expiry)
    })
    .await;
    let (old, newest) = ids.split_at(total - LOGS_KEPT);
    for (id, expired) in ids.iter().zip(&expired) {
        assert!(!artifact_file(&server, *id).exists(), "job {id}'s artifact");
        assert_eq!(
            expired.logs_expired_at.is_some(),
            old.contains(id),
            "job {id}: only the {LOGS_KEPT} newest jobs keep their logs"
        );
    }
    for id in old.iter().step_by(10) {
        assert!(server.log_records(*id).await.is_empty(), "job {id}");
        assert_eq!(download(&server, *id).await.0, StatusCode::NOT_FOUND);
    }
    for id in newest {
        assert_eq!(server.log_records(*id).await.len(), 3, "job {id}");
        let detail = server.job(*id).await;
        assert!(detail.get("logs_expired_at").is_none(), "{detail}");
        assert!(detail["artifacts_expired_at"].is_i64(), "{detail}");
    }
    assert_eq!(wait_gauge(&server, "artifacts", |v| v == 0).await, 0);
    server.shutdown().await;
}

async fn keep_last_keeps_the_newest_jobs_artifacts(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key) = connected(&server, "newest").await;
    let mut ids = Vec::new();
    for n in 0..4u8 {
        ids.push(finished_with_artifact(&server, &mut builder, &key, &[n; 100]).await);
    }
    set_retention(&server, json!({ "artifacts": { "keep_last": 2 } })).await;
    wait_until("the two oldest jobs' artifacts expired", || async {
        let first = server.job(ids[0]).await;
        let second = server.job(ids[1]).await;
        // The blobs go right after the rows' commit.
        let files_gone = ids[..2]
            .iter()
            .all(|id| !artifact_file(&server, *id).exists());
        (first["artifacts_expired_at"].is_i64()
            && second["artifacts_expired_at"].is_i64()
            && files_gone)
            .then_some(())
    })
    .await;
    for old in &ids[..2] {
        assert!(!artifact_file(&server, *old).exists());
        // Logs have no limit: kept.
        assert_eq!(server.log_records(*old).await.len(), 3);
    }
    // A few more passes change nothing for the newest two.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for newest in &ids[2..] {
        let detail = server.job(*newest).await;
        assert!(detail.get("artifacts_expired_at").is_none(), "{detail}");
        assert!(artifact_file(&server, *newest).is_file());
        assert_eq!(download(&server, *newest).await.0, StatusCode::OK);
    }
    assert_eq!(wait_gauge(&server, "artifacts", |v| v == 200).await, 200);
    builder.close().await;
    server.shutdown().await;
}

async fn an_admin_deletes_a_jobs_artifacts_and_others_cannot(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key) = connected(&server, "deleted").await;
    let id = finished_with_artifact(&server, &mut builder, &key, &[1; 512]).await;
    wait_gauge(&server, "artifacts", |v| v == 512).await;
    let path = format!("/jobs/{id}/artifacts");

    let (status, _) = call(&server, "DELETE", &path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, submit_token) = server
        .with_store(|s| {
            s.create_api_token(None, TokenScope::Submit, "ci", None)
                .unwrap()
        })
        .await;
    let (status, answer) = call(&server, "DELETE", &path, Some(&submit_token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        artifact_file(&server, id).is_file(),
        "refused deletes nothing"
    );

    let (running_job, running_id) = running(&server, &mut builder, 1).await;
    let (status, answer) = call(
        &server,
        "DELETE",
        &format!("/jobs/{running_id}/artifacts"),
        Some(&server.admin_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let (status, _) = call(
        &server,
        "DELETE",
        "/jobs/99999/artifacts",
        Some(&server.admin_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, answer) = call(&server, "DELETE", &path, Some(&server.admin_token), None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["deleted"], 1);
    assert!(answer["artifacts_expired_at"].is_i64());
    assert!(!artifact_file(&server, id).exists());
    let detail = server.job(id).await;
    assert!(detail["artifacts_expired_at"].is_i64(), "{detail}");
    assert_eq!(detail["artifacts"], json!([]));
    let (status, answer) = download(&server, id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("were deleted"));
    assert_eq!(wait_gauge(&server, "artifacts", |v| v == 0).await, 0);
    drop(running_job);
    builder.close().await;
    server.shutdown().await;
}

async fn bad_retention_policies_are_refused(db: TestDb) {
    let server = TestServer::start(db).await;
    let admin = Some(server.admin_token.as_str());
    for (policy, needle) in [
        (
            json!({ "artifacts": { "max_age_days": -1 } }),
            "max_age_days",
        ),
        (json!({ "logs": { "keep_last": -5 } }), "keep_last"),
        (
            json!({ "artifacts": { "max_age_days": 100000 } }),
            "outside",
        ),
        (json!({ "artifacts": { "forever": true } }), "unknown field"),
        (json!({ "blobs": {} }), "unknown field"),
        (json!({ "artifacts": { "keep_last": "ten" } }), "invalid"),
    ] {
        let (status, answer) = call(&server, "PUT", RETENTION, admin, Some(&policy)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{policy}: {answer}");
        assert_eq!(error_code(&answer), "bad_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{policy}: {message}");
    }
    let good = json!({ "artifacts": { "max_age_days": 30 } });
    let (status, _) = call(&server, "PUT", RETENTION, None, Some(&good)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(
        &server,
        "PUT",
        "/projects/nobody/nothing/retention",
        admin,
        Some(&good),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // PATCH is the same replacement.
    let (status, answer) = call(&server, "PATCH", RETENTION, admin, Some(&good)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["artifacts"]["max_age_days"], 30);
    server.shutdown().await;
}
