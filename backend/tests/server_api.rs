//! The REST API's basics against the real server: authorisation, the JSON error shape,
//! batched submission, listing and filtering, health, metrics and the allowed-signers file.

use awc::http::StatusCode;
use buildfleet_backend::store::JobState;
use buildfleet_protocol::signing;
use buildfleet_testkit::builder_client::{job_ref, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    submission_needs_a_token_and_valid_json,
    jobs_list_and_filter_by_state,
    health_metrics_and_allowed_signers,
    builder_admission_checks_its_input,
    a_batch_is_submitted_all_or_nothing_and_dispatched,
}

fn valid_job() -> Value {
    json!({
        "source_url": "https://example.invalid/src.tar.gz",
        "source_sha256": SOURCE_SHA256,
        "recipe": "cargo-build",
    })
}

async fn job_count(server: &TestServer) -> usize {
    server.get_ok("/jobs").await["jobs"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn submission_needs_a_token_and_valid_json(db: TestDb) {
    let server = TestServer::start(db).await;

    let (status, body) = server.post("/jobs", None, &valid_job()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "unauthorized");
    let (status, body) = server.post("/jobs", Some("bfa_wrong"), &valid_job()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "unauthorized");

    let admin = server.admin_token.clone();
    let (status, body) = server
        .post_raw(
            "/jobs",
            Some(&admin),
            "application/json",
            "{\"recipe\": ".into(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "bad_request");
    for bad in [
        json!({ "source_sha256": "not-hex", "recipe": "r", "source_url": "https://x.invalid/s" }),
        json!({ "source_sha256": SOURCE_SHA256, "recipe": "has spaces", "source_url": "https://x.invalid/s" }),
        json!({ "source_sha256": SOURCE_SHA256, "recipe": "r", "source_url": "file:///etc/passwd" }),
        json!({ "source_sha256": SOURCE_SHA256, "recipe": "r", "source_url": "https://x.invalid/s", "timeout_secs": 0 }),
        json!({ "source_sha256": SOURCE_SHA256, "recipe": "r", "source_url": "https://x.invalid/s", "surprise": true }),
        json!({ "source_sha256": SOURCE_SHA256, "recipe": "r" }),
    ] {
        let (status, body) = server.post_admin("/jobs", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert_eq!(error_code(&body), "bad_request");
    }
    assert_eq!(job_count(&server).await, 0, "nothing was queued");

    let (status, job) = server.post_admin("/jobs", &valid_job()).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["submitter"], "admin");

    let (status, body) = server.get("/jobs/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = server.get("/jobs/not-a-number").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "bad_request");
    let (status, body) = server.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    server.shutdown().await;
}

async fn jobs_list_and_filter_by_state(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("lister");
    server.admit(&key).await;
    let queued = server.submit(json!({})).await;
    let cancelled = server.submit(json!({})).await;
    let other_recipe = server.submit(json!({ "recipe": "docs" })).await;
    let (status, _) = server
        .post_admin(&format!("/jobs/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // One more goes to a builder and runs.
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let job = builder.next_assignment().await;
    builder.accept(&job);
    let running = job.job_id.0;
    server.wait_for_state(running, "running").await;
    builder.log(job_ref(&job), 1, "busy");

    let ids = |body: &Value| -> Vec<i64> {
        body["jobs"]
            .as_array()
            .expect("jobs array")
            .iter()
            .map(|j| j["id"].as_i64().expect("id"))
            .collect()
    };
    let all = server.get_ok("/jobs").await;
    let mut all_ids = ids(&all);
    all_ids.sort_unstable();
    assert_eq!(all_ids, vec![queued, cancelled, other_recipe]);
    assert!(ids(&all).windows(2).all(|w| w[0] > w[1]), "newest first");

    let still_queued: Vec<i64> = [queued, other_recipe]
        .into_iter()
        .filter(|&id| id != running)
        .collect();
    let mut listed = ids(&server.get_ok("/jobs?state=queued").await);
    listed.sort_unstable();
    assert_eq!(listed, still_queued);
    assert_eq!(
        ids(&server.get_ok("/jobs?state=cancelled").await),
        vec![cancelled]
    );
    assert_eq!(
        ids(&server.get_ok("/jobs?state=running").await),
        vec![running]
    );
    assert_eq!(
        ids(&server.get_ok("/jobs?recipe=docs").await),
        vec![other_recipe]
    );
    assert!(ids(&server.get_ok("/jobs?state=succeeded").await).is_empty());
    let page = server.get_ok("/jobs?limit=1").await;
    assert_eq!(ids(&page).len(), 1);
    let next = page["next_before"].as_i64().expect("a next page");
    assert_eq!(
        ids(&server.get_ok(&format!("/jobs?limit=1&before={next}")).await).len(),
        1
    );

    let (status, body) = server.get("/jobs?state=exploded").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "bad_request");
    let (status, body) = server.get("/jobs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    error_code(&body);

    // The job's detail carries its history.
    let detail = server.job(running).await;
    let transitions: Vec<&str> = detail["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["to"].as_str().expect("to"))
        .collect();
    assert_eq!(transitions, vec!["queued", "assigned", "running"]);
    assert_eq!(detail["attempts"].as_array().map(Vec::len), Some(1));
    let counts = server
        .with_store(|s| s.count_jobs_by_state().expect("counts"))
        .await;
    assert_eq!(counts.get(&JobState::Running), Some(&1));
    assert_eq!(counts.get(&JobState::Cancelled), Some(&1));
    builder.close().await;
    server.shutdown().await;
}

async fn health_metrics_and_allowed_signers(db: TestDb) {
    let server = TestServer::start(db).await;
    let (status, body) = server.get_raw(&format!("{}/healthz", server.url)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));

    let (key_a, key_b) = (TestKey::generate("signer-a"), TestKey::generate("signer-b"));
    server.admit(&key_a).await;
    server.admit(&key_b).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key_a).await;
    builder.request_jobs(1);
    server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.submit(json!({ "recipe": "nobody-has-this" })).await;

    let metrics = server.metrics().await;
    for needle in [
        "buildfleet_queue_depth 1",
        "buildfleet_jobs{state=\"queued\"} 1",
        "buildfleet_dispatch_latency_seconds_bucket",
        "buildfleet_builders_connected 1",
        "buildfleet_jobs_dispatched_total 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("buildfleet_jobs{state="));

    let (status, body) = server.get_raw(&server.api("/allowed_signers")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).expect("text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for key in [&key_a, &key_b] {
        let expected = signing::allowed_signers_line(&key.name, key.private.public_key())
            .expect("an allowed-signers line");
        assert!(expected.contains("namespaces=\"buildfleet-statement\""));
        // Served with the key's lifetime (valid-after its admission; no end while current).
        let key_text = expected.splitn(3, ' ').nth(2).expect("the key");
        let prefix = format!(
            "{} namespaces=\"buildfleet-statement\",valid-after=\"",
            key.name
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)
                && l.ends_with(&format!("\" {key_text}"))
                && !l.contains("valid-before")),
            "{expected} (with valid-after) not in {text}"
        );
    }
    builder.close().await;
    server.shutdown().await;
}

async fn builder_admission_checks_its_input(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("admitted");
    let body = json!({ "name": key.name, "public_key": key.public_openssh });
    let (status, error) = server.post("/builders", None, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&error), "unauthorized");
    for bad in [
        json!({ "name": "../evil", "public_key": key.public_openssh }),
        json!({ "name": "ok", "public_key": "ssh-ed25519 not-base64" }),
        json!({ "name": "ok" }),
    ] {
        let (status, error) = server.post_admin("/builders", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {error}");
        assert_eq!(error_code(&error), "bad_request");
    }
    let id = server.admit(&key).await;
    let (status, error) = server.post_admin("/builders", &body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error_code(&error), "conflict");
    let listed = server.get_ok("/builders").await;
    let builders = listed["builders"].as_array().expect("builders");
    assert_eq!(builders.len(), 1);
    assert_eq!(builders[0]["id"], id);
    assert_eq!(builders[0]["fingerprint"], key.fingerprint.as_str());
    assert_eq!(builders[0]["connected"], false);
    server.shutdown().await;
}

/// `POST /jobs` with an array: one request, one transaction, every job queued and pushed; a
/// bad entry refuses the whole batch and names its index.
async fn a_batch_is_submitted_all_or_nothing_and_dispatched(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("batch-taker");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(3);

    let mut bad = valid_job();
    bad["recipe"] = json!("no spaces allowed");
    let (status, body) = server
        .post_admin("/jobs", &json!([valid_job(), bad, valid_job()]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("[1]: recipe")),
        "{body}"
    );
    assert_eq!(
        job_count(&server).await,
        0,
        "nothing of a refused batch is kept"
    );
    for refused in [json!([]), json!(vec![valid_job(); 1001])] {
        let (status, body) = server.post_admin("/jobs", &refused).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(&body), "bad_request");
    }
    let mut keyed = buildfleet_testkit::server::test_client(None)
        .post(server.api("/jobs"))
        .bearer_auth(&server.admin_token)
        .insert_header(("Idempotency-Key", "batch-1"))
        .send_json(&json!([valid_job()]))
        .await
        .expect("POST /jobs");
    assert_eq!(keyed.status(), StatusCode::BAD_REQUEST);
    let keyed: Value = keyed.json().await.expect("the error as JSON");
    assert_eq!(error_code(&keyed), "bad_request");

    let (status, created) = server
        .post_admin("/jobs", &json!([valid_job(), valid_job(), valid_job()]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let jobs: Vec<buildfleet_api::Job> = serde_json::from_value(created).expect("an array of jobs");
    assert_eq!(jobs.len(), 3);
    assert!(jobs.windows(2).all(|w| w[0].id < w[1].id), "in order");
    assert!(jobs.iter().all(|j| j.state == JobState::Queued));
    let mut pushed: Vec<i64> = Vec::new();
    while pushed.len() < 3 {
        pushed.extend(builder.next_jobs().await.iter().map(|j| j.job_id.0));
    }
    pushed.sort_unstable();
    assert_eq!(pushed, jobs.iter().map(|j| j.id).collect::<Vec<_>>());
    assert_eq!(job_count(&server).await, 3);
    builder.close().await;
}
