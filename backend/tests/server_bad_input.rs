//! Bad input gets a clear error and loses nothing: wrong job tokens, broken, oversized,
//! binary and out-of-order frames, unsafe artifact names, digest mismatches and statements
//! that do not match the uploads.

use awc::http::StatusCode;
use buildfleet_backend::store::JobId;
use buildfleet_protocol::{
    ArtifactDigest, ClientMessage, CompletionResult, ErrorCode, HeldJob, JobAssignment, JobRequest,
    Outcome, ResumeAction,
};
use buildfleet_testkit::builder_client::{
    digest_of, job_ref, sha256_hex, upload, upload_ok, BuilderClient,
};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    wrong_job_token_is_refused_and_nothing_recorded,
    malformed_oversized_binary_and_early_frames_are_refused,
    protocol_error_mid_job_loses_nothing,
    unsafe_artifact_names_and_digest_mismatches_store_nothing,
    statement_not_matching_the_uploads_is_refused,
}

/// A server, an admitted and connected builder, and one running job.
async fn running_job(
    db: TestDb,
    name: &str,
) -> (TestServer, TestKey, BuilderClient, JobAssignment) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate(name);
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    (server, key, builder, job)
}

async fn stored_artifacts(server: &TestServer, job: &JobAssignment) -> Vec<String> {
    let id = JobId(job.job_id.0);
    server
        .with_store(move |s| s.artifacts(id, false).expect("artifacts"))
        .await
        .into_iter()
        .map(|a| a.name)
        .collect()
}

/// Files under the data directory's blob store (artifacts, logs, temporaries).
fn blob_files(server: &TestServer) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    let mut files = Vec::new();
    walk(&server.data_dir().join("blobs"), &mut files);
    files.sort();
    files
}

async fn wrong_job_token_is_refused_and_nothing_recorded(db: TestDb) {
    let (server, key, mut builder, job) = running_job(db, "token-holder").await;
    let other = server.submit(json!({})).await;
    let body = b"artifact bytes";
    let sha = sha256_hex(body);
    let before = blob_files(&server);

    for token in ["bfj_not-a-real-token", "", &format!("{}x", job.job_token)] {
        let (status, error) = upload(&job.upload_url, token, "out.bin", body, &sha).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}: {error}");
        assert_eq!(error_code(&error), "unauthorized");
    }
    // A valid token for this job used on another job's URL.
    let other_url = job.upload_url.replace(
        &format!("/jobs/{}/", job.job_id),
        &format!("/jobs/{other}/"),
    );
    let (status, error) = upload(&other_url, &job.job_token, "out.bin", body, &sha).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert_eq!(error_code(&error), "unauthorized");
    // No Authorization header at all.
    let mut response = awc::Client::new()
        .put(format!("{}/out.bin", job.upload_url))
        .insert_header(("X-Buildfleet-Sha256", sha.as_str()))
        .send_body(body.to_vec())
        .await
        .expect("PUT without a token");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let error: serde_json::Value =
        serde_json::from_slice(&response.body().await.expect("body")).expect("JSON error");
    assert_eq!(error_code(&error), "unauthorized");

    assert!(stored_artifacts(&server, &job).await.is_empty());
    assert_eq!(blob_files(&server), before, "nothing written to storage");
    // The real token still works: nothing was lost.
    let digest = upload_ok(&job, "out.bin", body).await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    builder.close().await;
    server.shutdown().await;
}

async fn malformed_oversized_binary_and_early_frames_are_refused(db: TestDb) {
    let server = TestServer::start_with(db, |config| {
        config.limits.max_frame_bytes = 64 * 1024;
    })
    .await;
    let key = TestKey::generate("garbled");
    server.admit(&key).await;

    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.send_raw("{\"type\": \"hello\", ");
    client
        .expect_error_and_close(ErrorCode::MalformedFrame)
        .await;

    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.send_raw(r#"{"type": "make_coffee"}"#);
    client
        .expect_error_and_close(ErrorCode::MalformedFrame)
        .await;

    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.send(ClientMessage::JobRequest(JobRequest { credits: 1 }));
    client
        .expect_error_and_close(ErrorCode::UnexpectedMessage)
        .await;

    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.send_binary(b"\x00\x01binary");
    client
        .expect_error_and_close(ErrorCode::UnsupportedFrame)
        .await;

    // Larger than the frame limit: an error frame, or at least the close.
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    let huge = format!(
        r#"{{"type":"hello","protocol_version":1,"fingerprint":"{}","builder_name":"{}","builder_version":"{}"}}"#,
        key.fingerprint,
        key.name,
        "x".repeat(100 * 1024)
    );
    client.send_raw(&huge);
    let (seen, _) = client.expect_closed().await;
    assert!(
        seen.iter().all(|m| matches!(
            m,
            buildfleet_protocol::ServerMessage::Error(e) if e.code == ErrorCode::FrameTooLarge
        )),
        "only frame_too_large before the close, got {seen:?}"
    );

    // A hello after authentication is out of order too.
    let mut client = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    client.hello(&key);
    client
        .expect_error_and_close(ErrorCode::UnexpectedMessage)
        .await;

    // The backend is fine and counted the errors.
    let (status, _) = server.get_raw(&format!("{}/healthz", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = server.metrics().await;
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("buildfleet_protocol_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("protocol error counter");
    assert!(errors >= 5, "{metrics}");
    let client = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    client.close().await;
    server.shutdown().await;
}

async fn protocol_error_mid_job_loses_nothing(db: TestDb) {
    let (server, key, mut builder, job) = running_job(db, "clumsy").await;
    let r = job_ref(&job);
    builder.log(r, 1, "before the mistake");
    builder.expect_event_ack(r, 1).await;
    builder.send_raw("this is not JSON");
    builder
        .expect_error_and_close(ErrorCode::MalformedFrame)
        .await;
    drop(builder);

    // The session is gone, the job is not: resume and finish it.
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let result = builder
        .handshake(
            &key,
            vec![HeldJob {
                job_id: job.job_id,
                attempt: job.attempt,
                last_acked_seq: Some(1),
                finished: false,
            }],
        )
        .await;
    assert!(
        matches!(&result.jobs[..], [d] if d.decision == ResumeAction::Continue { next_seq: 2 }),
        "{result:?}"
    );
    builder.log(r, 2, "after the mistake");
    let outcome = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(outcome, CompletionResult::Accepted);
    let id = job.job_id.0;
    let finished = server.wait_for_state(id, "succeeded").await;
    assert_eq!(finished["attempt"], 1);
    assert_eq!(
        server.log_lines(id).await,
        vec!["before the mistake", "after the mistake"]
    );
    builder.close().await;
    server.shutdown().await;
}

async fn unsafe_artifact_names_and_digest_mismatches_store_nothing(db: TestDb) {
    let (server, key, mut builder, job) = running_job(db, "sneaky").await;
    let body = b"payload";
    let sha = sha256_hex(body);
    let before = blob_files(&server);

    for name in [
        "..%2F..%2Fetc",
        ".hidden",
        "..",
        "a%2Fb",
        "bad%20name",
        &"n".repeat(129),
    ] {
        let (status, error) = upload(&job.upload_url, &job.job_token, name, body, &sha).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "name {name:?}: {error}");
        assert_eq!(error_code(&error), "bad_request");
    }
    // A name with a slash does not even match the route.
    let (status, error) = upload(&job.upload_url, &job.job_token, "a/b", body, &sha).await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
        "a/b: {status} {error}"
    );
    error_code(&error);
    let (status, _) = upload(
        &job.upload_url,
        &job.job_token,
        "../../etc/passwd",
        body,
        &sha,
    )
    .await;
    assert!(status.is_client_error(), "{status}");

    // The declared digest does not match the body.
    let wrong = sha256_hex(b"something else");
    let (status, error) = upload(&job.upload_url, &job.job_token, "out.bin", body, &wrong).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error_code(&error), "digest_mismatch");
    // A malformed declaration is a bad request.
    let (status, error) = upload(&job.upload_url, &job.job_token, "out.bin", body, "abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    assert!(stored_artifacts(&server, &job).await.is_empty());
    assert_eq!(blob_files(&server), before, "nothing written to storage");
    assert!(!server
        .data_dir()
        .parent()
        .expect("tmp")
        .join("etc")
        .exists());

    // The job can still finish normally.
    let digest = upload_ok(&job, "out.bin", body).await;
    let outcome = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(outcome, CompletionResult::Accepted);
    builder.close().await;
    server.shutdown().await;
}

async fn statement_not_matching_the_uploads_is_refused(db: TestDb) {
    let (server, key, mut builder, job) = running_job(db, "fibber").await;
    let id = job.job_id.0;
    let real = upload_ok(&job, "out.bin", b"what was built").await;

    // Claims another digest for the uploaded file.
    let forged = ArtifactDigest {
        sha256: digest_of("out.bin", b"what was claimed").sha256,
        ..real.clone()
    };
    let response = builder.job_response(&key, &job, Outcome::Succeeded, vec![forged]);
    builder.send(ClientMessage::JobResponse(response));
    let result = builder.expect_completion_ack(job_ref(&job)).await;
    assert!(
        matches!(
            result,
            CompletionResult::Refused {
                code: ErrorCode::InvalidStatement,
                ..
            }
        ),
        "{result:?}"
    );

    let job_now = server.wait_for_state(id, "failed").await;
    assert!(
        job_now["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("completion refused: invalid_statement")),
        "a refused completion ends the attempt with the refusal: {job_now}"
    );
    let (status, listing) = server.get(&format!("/jobs/{id}/artifacts")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["artifacts"], json!([]), "nothing published");
    let (status, error) = server.get(&format!("/jobs/{id}/artifacts/out.bin")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    let (status, _) = server.get(&format!("/jobs/{id}/statement")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let stored = server
        .with_store(move |s| s.artifacts(JobId(id), false).expect("artifacts"))
        .await;
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].published);
    assert!(stored[0].statement.is_none());

    // Leaving an upload out of the statement is refused too, on the next job.
    builder.request_jobs(1);
    let second = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, second);
    builder.accept(&job);
    upload_ok(&job, "out.bin", b"what was built").await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert!(
        matches!(
            result,
            CompletionResult::Refused {
                code: ErrorCode::InvalidStatement,
                ..
            }
        ),
        "{result:?}"
    );
    server.wait_for_state(second, "failed").await;
    builder.close().await;
    server.shutdown().await;
}
