//! The API's error messages are sentences that say what is wrong (issue 18, item 7): a
//! missing thing explained in a sentence is not suffixed with "not found"; a malformed
//! source digest is named; a wrong job token or enrolment token is called wrong (not
//! missing); a log of an attempt the job has not had is 404 with what it has had. Each with
//! its status and code, on both databases.

use awc::http::StatusCode;
use buildfleet_protocol::{CompletionResult, JobAssignment, Outcome};
use buildfleet_testkit::builder_client::{sha256_hex, upload, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    explained_absences_are_sentences_without_a_suffix,
    a_malformed_source_digest_is_named,
    wrong_job_and_enrolment_tokens_are_called_wrong,
    logs_of_attempts_a_job_has_not_had_are_404,
}

/// Asserts an error answer's status, code and whole message.
#[track_caller]
fn refused(answer: (StatusCode, Value), status: StatusCode, code: &str, message: &str) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(error_code(&body), code, "{body}");
    assert_eq!(body["error"]["message"], message, "{body}");
}

/// A server with one admitted, connected builder holding `credits` credits.
async fn server_and_builder(db: TestDb, credits: u32) -> (TestServer, TestKey, BuilderClient) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("messenger");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(credits);
    (server, key, builder)
}

/// Submits a job with `fields` and runs it up to `running` on `builder`.
async fn running(
    server: &TestServer,
    builder: &mut BuilderClient,
    fields: Value,
) -> (i64, JobAssignment) {
    let id = server.submit(fields).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    (id, job)
}

async fn explained_absences_are_sentences_without_a_suffix(db: TestDb) {
    let (server, _key, mut builder) = server_and_builder(db, 1).await;
    let (plan, _job) = running(&server, &mut builder, json!({ "mode": "plan" })).await;
    let build = server.submit(json!({})).await;

    refused(
        server.get(&format!("/jobs/{build}/plan")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("job {build} is a build-mode job: only a plan-mode job has a plan"),
    );
    refused(
        server.get(&format!("/jobs/{plan}/plan")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("job {plan} has no plan yet: it is running and no attempt has reported one"),
    );
    for path in ["statement", "statement.sig"] {
        refused(
            server.get(&format!("/jobs/{plan}/{path}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
            &format!(
                "job {plan} has no verified build statement yet: no attempt completed with one"
            ),
        );
    }
    // A thing named alone still reads "<thing> not found", once.
    refused(
        server.get("/jobs/999999/plan").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "job 999999 not found",
    );
    refused(
        server
            .get(&format!("/jobs/{build}/artifacts/nothing.bin"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("artifact \"nothing.bin\" of job {build} not found"),
    );
    server.shutdown().await;
}

async fn a_malformed_source_digest_is_named(db: TestDb) {
    let server = TestServer::start(db).await;
    let job = |sha: &str| {
        json!({
            "source_url": "https://example.invalid/src.tar.gz",
            "source_sha256": sha,
            "recipe": "cargo-build",
        })
    };
    let upper = SOURCE_SHA256.to_ascii_uppercase();
    for (given, shown) in [
        ("xyz".to_owned(), "\"xyz\"".to_owned()),
        (upper.clone(), format!("{upper:?}")),
        (format!("{SOURCE_SHA256}0"), format!("\"{SOURCE_SHA256}0\"")),
    ] {
        refused(
            server.post_admin("/jobs", &job(&given)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!(
                "source_sha256 {shown} is not a SHA-256 digest: expected 64 lowercase hex \
                 characters"
            ),
        );
    }
    // A long value is quoted in part.
    let long = "q".repeat(300);
    let (status, body) = server.post_admin("/jobs", &job(&long)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        message,
        format!(
            "source_sha256 \"{}\"… is not a SHA-256 digest: expected 64 lowercase hex characters",
            "q".repeat(80)
        )
    );
    refused(
        server
            .post_admin(
                "/jobs",
                &json!({ "source_url": "https://example.invalid/src.tar.gz", "recipe": "cargo-build" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "source_sha256 is missing: give the SHA-256 of the source archive (64 lowercase hex \
         characters)",
    );
    // In a batch, the entry at fault is named first.
    refused(
        server
            .post_admin("/jobs", &json!([job(SOURCE_SHA256), job("xyz")]))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "[1]: source_sha256 \"xyz\" is not a SHA-256 digest: expected 64 lowercase hex \
         characters",
    );
    server.shutdown().await;
}

async fn wrong_job_and_enrolment_tokens_are_called_wrong(db: TestDb) {
    let (server, key, mut builder) = server_and_builder(db, 1).await;
    let (id, job) = running(&server, &mut builder, json!({})).await;
    let body = b"artifact bytes";
    let sha = sha256_hex(body);

    // No token: missing, and said so.
    let mut response = awc::Client::new()
        .put(format!("{}/out.bin", job.upload_url))
        .insert_header(("X-Buildfleet-Sha256", sha.as_str()))
        .send_body(body.to_vec())
        .await
        .expect("PUT without a token");
    let answer: Value =
        serde_json::from_slice(&response.body().await.expect("body")).expect("JSON error");
    refused(
        (response.status(), answer),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a bearer token is required",
    );

    // A token that is not this attempt's: wrong, naming the job and attempt.
    let not_valid = format!(
        "the job token is not valid for job {id} attempt 1: it is not that attempt's token, or \
         the attempt has ended and its token expired"
    );
    for token in ["bfj_not-a-real-token", &format!("{}x", job.job_token)] {
        refused(
            upload(&job.upload_url, token, "out.bin", body, &sha).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &not_valid,
        );
    }
    // The live token, on another job's URL, or on another attempt's.
    let other = server.submit(json!({})).await;
    let other_job = job
        .upload_url
        .replace(&format!("/jobs/{id}/"), &format!("/jobs/{other}/"));
    refused(
        upload(&other_job, &job.job_token, "out.bin", body, &sha).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &format!(
            "the job token is not valid for job {other} attempt 1: it is not that attempt's \
             token, or the attempt has ended and its token expired"
        ),
    );
    let other_attempt = job.upload_url.replace("/attempts/1/", "/attempts/2/");
    assert_ne!(other_attempt, job.upload_url);
    refused(
        upload(&other_attempt, &job.job_token, "out.bin", body, &sha).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &format!(
            "the job token is for job {id} attempt 1, not job {id} attempt 2: a job token is \
             valid for its own attempt only"
        ),
    );
    // Once the attempt has ended, its own token has expired.
    let result = builder.complete(&key, &job, Outcome::Failed, vec![]).await;
    assert_eq!(result, CompletionResult::Accepted);
    refused(
        upload(&job.upload_url, &job.job_token, "out.bin", body, &sha).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &not_valid,
    );

    // Enrolment: one answer for a token that is unknown, used up, revoked or expired.
    let (status, issued) = server
        .post_admin("/enrolment-tokens", &json!({ "max_uses": 1 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let secret = issued["token"].as_str().expect("the token").to_owned();
    let revoke = server
        .http
        .delete(server.api(&format!("/enrolment-tokens/{}", issued["id"])))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("revoking");
    assert_eq!(revoke.status(), StatusCode::OK);
    let hopeful = TestKey::generate("hopeful");
    for token in [secret.as_str(), "bfenrol_unknown"] {
        refused(
            server
                .post(
                    "/enrol",
                    None,
                    &json!({ "token": token, "name": "hopeful", "public_key": hopeful.public_openssh }),
                )
                .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the enrolment token is not valid: it is unknown to this backend, used up, revoked \
             or expired; ask the operator for a new one",
        );
    }
    server.shutdown().await;
}

async fn logs_of_attempts_a_job_has_not_had_are_404(db: TestDb) {
    let (server, key, mut builder) = server_and_builder(db, 1).await;
    let (ran, job) = running(&server, &mut builder, json!({})).await;
    // Queued (the builder's one credit is taken): its first attempt's log is still to come.
    let queued = server.submit(json!({})).await;
    let never = server.submit(json!({})).await;
    let (status, _) = server
        .post_admin(&format!("/jobs/{never}/cancel"), &json!({}))
        .await;
    assert!(status.is_success(), "{status}");

    let log = |id: i64, attempt: i32| format!("/jobs/{id}/log?attempt={attempt}");
    let stream = |id: i64, attempt: i32| format!("/jobs/{id}/log/stream?attempt={attempt}");
    let missing =
        |id: i64, attempt: i32, had: &str| format!("job {id} has no attempt {attempt}: {had}");
    let cases = [
        (ran, 2, missing(ran, 2, "it has had 1 so far")),
        (ran, 0, missing(ran, 0, "it has had 1 so far")),
        (
            queued,
            2,
            missing(queued, 2, "it has not started yet (queued)"),
        ),
        (never, 1, missing(never, 1, "it never ran (cancelled)")),
    ];
    for (id, attempt, message) in &cases {
        for path in [log(*id, *attempt), stream(*id, *attempt)] {
            let (status, body) = server.get_raw(&server.api(&path)).await;
            let body: Value = serde_json::from_slice(&body).expect("a JSON error");
            refused((status, body), StatusCode::NOT_FOUND, "not_found", message);
        }
    }
    // What exists answers: an attempt that ran, the queued job's first (empty so far), and
    // the default attempt of a job that never ran (empty, complete).
    for path in [log(ran, 1), log(queued, 1), format!("/jobs/{never}/log")] {
        let (status, _) = server.get_raw(&server.api(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    // Failed and retried: attempt 2 is queued, and the message says it has not started.
    let result = builder.complete(&key, &job, Outcome::Failed, vec![]).await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(ran, "failed").await;
    let (status, retried) = server
        .post_admin(&format!("/jobs/{ran}/retry"), &json!({}))
        .await;
    assert!(status.is_success(), "{retried}");
    let (status, body) = server.get_raw(&server.api(&log(ran, 3))).await;
    refused(
        (status, serde_json::from_slice(&body).expect("a JSON error")),
        StatusCode::NOT_FOUND,
        "not_found",
        &missing(
            ran,
            3,
            "it has had 1 so far, and attempt 2 has not started yet (queued)",
        ),
    );
    let (status, _) = server.get_raw(&server.api(&log(ran, 2))).await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}
