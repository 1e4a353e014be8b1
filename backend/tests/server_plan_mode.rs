//! Plan mode (a dry run) through the real backend: the plan output a builder reports is
//! stored within its size limit and served at `/jobs/{id}/plan`, and the signed statement of
//! a job without artifacts is served at `/statement(.sig)`, where `/artifacts` points, and
//! verifies with `ssh-keygen -Y verify`.

use awc::http::StatusCode;
use buildfleet_backend::store::MAX_PLAN_BYTES;
use buildfleet_protocol::signing::STATEMENT_NAMESPACE;
use buildfleet_protocol::{
    ClientMessage, CompletionResult, ErrorCode, JobAssignment, JobMode, Outcome,
};
use buildfleet_testkit::builder_client::{job_ref, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    small_source, start_server, upload_source, wait_connected, wait_outcome, E2eBuilder,
    QUICK_JOB_LIMIT, QUICK_RECIPE,
};
use buildfleet_testkit::keys::{ssh_keygen_verify, TestKey};
use buildfleet_testkit::server::{error_code, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    plan_job_serves_its_plan_and_a_verifiable_statement,
    plan_over_the_limit_is_refused_and_the_limit_itself_is_kept,
    build_jobs_have_no_plan_and_may_not_report_one,
    real_builder_reports_a_plan_and_runs_nothing,
}

const PLAN: &str = "recipe: cargo-build@1\nstrategy: process\ncommands:\n  - cargo build --release --locked\nartifacts:\n  - hello-x86_64-linux.tar.gz\n";

/// A server with one admitted, connected builder holding `credits` credits.
async fn server_and_builder(db: TestDb, credits: u32) -> (TestServer, TestKey, BuilderClient) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("planner");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(credits);
    (server, key, builder)
}

/// Submits a job of `mode` and runs it up to `running` on `builder`.
async fn running(
    server: &TestServer,
    builder: &mut BuilderClient,
    mode: &str,
) -> (i64, JobAssignment) {
    let id = server.submit(json!({ "mode": mode })).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    (id, job)
}

/// Sends the signed completion with `plan` and returns the `completion_ack` result.
async fn complete_with_plan(
    builder: &mut BuilderClient,
    key: &TestKey,
    job: &JobAssignment,
    outcome: Outcome,
    plan: Option<String>,
) -> CompletionResult {
    let mut response = builder.job_response(key, job, outcome, Vec::new());
    response.plan = plan;
    builder.send(ClientMessage::JobResponse(response));
    builder.expect_completion_ack(job_ref(job)).await
}

/// `GET` an absolute URL; the status, the `Content-Type`, the attempt header and the body.
async fn fetch(url: &str) -> (StatusCode, String, Option<String>, Vec<u8>) {
    let mut response = awc::Client::default()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let attempt = header("x-buildfleet-attempt");
    let body = response
        .body()
        .limit(16 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    (response.status(), content_type, attempt, body.to_vec())
}

/// Asserts a 404 in the API's one error shape; returns its message.
async fn not_found(server: &TestServer, path: &str) -> String {
    let (status, body) = server.get(path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}: {body}");
    assert_eq!(error_code(&body), "not_found", "GET {path}: {body}");
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

/// Fetches `/statement` and `/statement.sig` of job `id`, checks them with `ssh-keygen -Y
/// verify` against `/allowed_signers` as signed by builder `principal`, and returns the
/// parsed statement.
async fn verified_statement(server: &TestServer, principal: &str, id: i64) -> Value {
    let (status, content_type, attempt, statement) =
        fetch(&server.api(&format!("/jobs/{id}/statement"))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&statement)
    );
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let (status, _, sig_attempt, signature) =
        fetch(&server.api(&format!("/jobs/{id}/statement.sig"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        attempt, sig_attempt,
        "statement and signature of one attempt"
    );
    let (status, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    assert_eq!(status, StatusCode::OK);
    let allowed = String::from_utf8(allowed).expect("allowed signers are text");
    let signature = String::from_utf8(signature).expect("armored signature");
    let (ok, output) = ssh_keygen_verify(
        &allowed,
        principal,
        STATEMENT_NAMESPACE,
        &statement,
        &signature,
    );
    assert!(ok, "ssh-keygen -Y verify rejected the statement: {output}");
    let parsed: Value = serde_json::from_slice(&statement).expect("the statement is JSON");
    assert_eq!(
        attempt.as_deref(),
        // A real builder's in-toto statement, or the test client's buildfleet-statement/v1.
        Some(
            parsed
                .pointer("/predicate/buildDefinition/internalParameters/attempt")
                .unwrap_or(&parsed["attempt"])
                .to_string()
                .as_str()
        ),
        "the attempt header names the statement's attempt"
    );
    parsed
}

async fn plan_job_serves_its_plan_and_a_verifiable_statement(db: TestDb) {
    let (server, key, mut builder) = server_and_builder(db, 1).await;
    let (id, job) = running(&server, &mut builder, "plan").await;
    assert_eq!(job.mode, JobMode::Plan);

    // Before the completion: nothing to serve, and nothing advertised.
    let message = not_found(&server, &format!("/jobs/{id}/plan")).await;
    assert!(message.contains("no plan yet"), "{message}");
    not_found(&server, &format!("/jobs/{id}/statement")).await;
    not_found(&server, &format!("/jobs/{id}/statement.sig")).await;
    let listing = server.get_ok(&format!("/jobs/{id}/artifacts")).await;
    assert_eq!(listing["statement_url"], Value::Null, "{listing}");
    assert_eq!(listing["signature_url"], Value::Null, "{listing}");
    assert_eq!(server.job(id).await["plan_url"], Value::Null);

    let result = complete_with_plan(
        &mut builder,
        &key,
        &job,
        Outcome::Succeeded,
        Some(PLAN.into()),
    )
    .await;
    assert_eq!(result, CompletionResult::Accepted);
    let finished = server.job(id).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");

    // The plan, as text, where the job's JSON points.
    let plan_url = server.api(&format!("/jobs/{id}/plan"));
    assert_eq!(finished["plan_url"], plan_url.as_str(), "{finished}");
    let (status, content_type, attempt, body) = fetch(&plan_url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(attempt.as_deref(), Some("1"));
    assert_eq!(String::from_utf8(body).expect("UTF-8 plan"), PLAN);

    // The signed statement of the plan: verifies, and says plan mode with no artifacts.
    let statement = verified_statement(&server, &key.name, id).await;
    assert_eq!(statement["job_id"], id, "{statement:#}");
    assert_eq!(statement["attempt"], 1);
    assert_eq!(statement["mode"], "plan");
    assert_eq!(statement["outcome"], "succeeded");
    assert_eq!(statement["artifacts"], json!([]));
    assert_eq!(statement["builder"], key.fingerprint.as_str());

    // `/artifacts` agrees: no artifacts, and its links lead to that statement.
    let listing = server.get_ok(&format!("/jobs/{id}/artifacts")).await;
    assert_eq!(listing["artifacts"], json!([]));
    assert_eq!(listing["statement_attempt"], 1);
    let statement_url = listing["statement_url"].as_str().expect("statement URL");
    let signature_url = listing["signature_url"].as_str().expect("signature URL");
    assert_eq!(statement_url, server.api(&format!("/jobs/{id}/statement")));
    let (status, linked) = server.get_raw(statement_url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&linked).expect("JSON"),
        statement
    );
    let (status, _) = server.get_raw(signature_url).await;
    assert_eq!(status, StatusCode::OK);

    // The dashboard's job page shows the plan.
    let (status, page) = server.get_raw(&format!("{}/jobs/{id}", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).expect("HTML");
    assert!(
        page.contains("cargo build --release --locked"),
        "the plan is on the job page"
    );
    assert!(page.contains(&format!("/api/v1/jobs/{id}/plan")));

    builder.close().await;
    server.shutdown().await;
}

async fn plan_over_the_limit_is_refused_and_the_limit_itself_is_kept(db: TestDb) {
    let (server, key, mut builder) = server_and_builder(db, 2).await;

    // Exactly the limit, in multi-byte characters: kept byte for byte.
    let (id, job) = running(&server, &mut builder, "plan").await;
    let at_limit = "é".repeat(MAX_PLAN_BYTES / 2);
    assert_eq!(at_limit.len(), MAX_PLAN_BYTES);
    let result = complete_with_plan(
        &mut builder,
        &key,
        &job,
        Outcome::Succeeded,
        Some(at_limit.clone()),
    )
    .await;
    assert_eq!(result, CompletionResult::Accepted);
    let (status, _, _, body) = fetch(&server.api(&format!("/jobs/{id}/plan"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, at_limit.as_bytes());

    // One byte more: the completion is refused, saying why, and nothing is kept.
    let (id, job) = running(&server, &mut builder, "plan").await;
    let over = format!("{at_limit}x");
    let result = complete_with_plan(&mut builder, &key, &job, Outcome::Succeeded, Some(over)).await;
    match &result {
        CompletionResult::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::InvalidStatement, "{message}");
            assert!(
                message.contains("plan output")
                    && message.contains(&format!("{}", MAX_PLAN_BYTES + 1))
                    && message.contains(&format!("limit of {MAX_PLAN_BYTES}")),
                "the refusal names the plan, its size and the limit: {message}"
            );
        }
        other => panic!("an oversized plan was not refused: {other:?}"),
    }
    let job_now = server.job(id).await;
    assert_ne!(job_now["state"], "succeeded", "{job_now}");
    assert_eq!(job_now["plan_url"], Value::Null, "{job_now}");
    not_found(&server, &format!("/jobs/{id}/plan")).await;
    not_found(&server, &format!("/jobs/{id}/statement")).await;

    builder.close().await;
    server.shutdown().await;
}

async fn build_jobs_have_no_plan_and_may_not_report_one(db: TestDb) {
    let (server, key, mut builder) = server_and_builder(db, 2).await;

    // A build-mode completion that carries plan output is refused.
    let (refused_id, job) = running(&server, &mut builder, "build").await;
    let result = complete_with_plan(
        &mut builder,
        &key,
        &job,
        Outcome::Succeeded,
        Some(PLAN.into()),
    )
    .await;
    match &result {
        CompletionResult::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::InvalidStatement, "{message}");
            assert!(message.contains("plan-mode jobs only"), "{message}");
        }
        other => panic!("plan output of a build job was accepted: {other:?}"),
    }
    let message = not_found(&server, &format!("/jobs/{refused_id}/plan")).await;
    assert!(message.contains("build-mode"), "{message}");

    // A build job that ends without artifacts (here: failed) keeps its signed statement,
    // and `/artifacts` links to it; it still has no plan.
    let (id, job) = running(&server, &mut builder, "build").await;
    let result = complete_with_plan(&mut builder, &key, &job, Outcome::Failed, None).await;
    assert_eq!(result, CompletionResult::Accepted);
    assert_eq!(server.job(id).await["state"], "failed");
    let message = not_found(&server, &format!("/jobs/{id}/plan")).await;
    assert!(message.contains("build-mode"), "{message}");
    assert_eq!(server.job(id).await["plan_url"], Value::Null);
    let statement = verified_statement(&server, &key.name, id).await;
    assert_eq!(statement["mode"], "build");
    assert_eq!(statement["outcome"], "failed");
    let listing = server.get_ok(&format!("/jobs/{id}/artifacts")).await;
    assert_eq!(
        listing["statement_url"],
        server.api(&format!("/jobs/{id}/statement")).as_str()
    );

    // An unknown job is a 404 of the same shape.
    let message = not_found(&server, "/jobs/999999/plan").await;
    assert!(message.contains("job 999999"), "{message}");

    builder.close().await;
    server.shutdown().await;
}

async fn real_builder_reports_a_plan_and_runs_nothing(db: TestDb) {
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "real-planner", |_| {}).await;
    wait_connected(&server, &[builder.name.as_str()]).await;
    let (digest, _) = upload_source(&server, small_source()).await;
    // The quick recipe touches `marker` when it runs: a dry run must not.
    let marker = builder.work_dir().join("ran");
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": QUICK_RECIPE,
            "mode": "plan",
            "parameters": { "marker": marker.to_str().expect("UTF-8 path") },
        }))
        .await;
    let job = wait_outcome(&server, id, "succeeded", QUICK_JOB_LIMIT).await;
    assert!(!marker.exists(), "a plan-mode job ran its recipe");
    assert_eq!(job["artifacts"], json!([]), "{job:#}");

    let plan_url = job["plan_url"].as_str().expect("plan URL once done");
    let (status, content_type, _, plan) = fetch(plan_url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let plan = String::from_utf8(plan).expect("UTF-8 plan");
    assert!(
        plan.contains(&format!("recipe: {QUICK_RECIPE}@1")) && plan.contains("result.txt"),
        "the builder's plan names the recipe and the artifact it would produce: {plan}"
    );

    // The CLI prints the same plan; for a job without one it says why and fails.
    let printed = server.cli(&["job", "plan", &id.to_string()]).await.ok();
    assert_eq!(printed.stdout, plan);
    let as_json = server
        .cli(&["job", "plan", &id.to_string(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(as_json["plan"], plan.as_str());
    let missing = server.cli(&["job", "plan", "999999"]).await.expect_code(3);
    assert!(missing.stderr.contains("job 999999"), "{}", missing.stderr);

    // A real builder signs an in-toto statement: no subject, the outcome as a byproduct.
    let statement = verified_statement(&server, &builder.name, id).await;
    let external = &statement["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(external["mode"], "plan", "{statement:#}");
    assert_eq!(
        statement["predicate"]["runDetails"]["byproducts"][0]["annotations"]["outcome"],
        "succeeded"
    );
    assert_eq!(statement["subject"], json!([]));
    assert_eq!(external["source"]["digest"]["sha256"], digest.as_str());
    let listing = server.get_ok(&format!("/jobs/{id}/artifacts")).await;
    assert_eq!(
        listing["statement_url"],
        server.api(&format!("/jobs/{id}/statement")).as_str()
    );

    builder.stop().await;
    server.shutdown().await;
}
