//! Job annotations through the real server: given at submission (one job or a batch),
//! checked (keys, sizes, counts; a refusal names the key), returned, filtered
//! (`?annotation=key:value`, every filter must match), sent to the builder in its assignment
//! and signed into the build statement, which the backend refuses when they differ from the
//! job's.

use awc::http::StatusCode;
use buildfleet_protocol::signing::STATEMENT_NAMESPACE;
use buildfleet_protocol::{CompletionResult, ErrorCode, Outcome};
use buildfleet_testkit::builder_client::{job_ref, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::{ssh_keygen_verify, TestKey};
use buildfleet_testkit::server::{error_code, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    annotations_round_trip_and_bad_ones_are_refused_by_key,
    the_listing_filters_by_annotations,
    a_batch_carries_annotations,
    the_statement_signs_the_annotations_and_a_different_set_is_refused,
}

fn crate_annotations() -> Value {
    json!({
        "crate": "itoa",
        "version": "1.0.14",
        "target": "x86_64-unknown-linux-gnu",
        "commit": "5bb2f0c3b0e4a1d0c6b0e9a8f7d6c5b4a3928170",
        "branch": "release/1.0",
        "author": "Zoë Example <zoe@example.invalid>",
        "message": "Speed up formatting\n\nUses a lookup table, \"as before\".\n",
        "links.ci": "https://ci.example.invalid/runs/42",
    })
}

/// Submits with `annotations` and expects 400 `bad_request` whose message names `key`.
async fn refused(server: &TestServer, annotations: Value, key: &str) {
    let (status, body) = server
        .post_admin(
            "/jobs",
            &json!({
                "source_url": "https://example.invalid/s.tar.gz",
                "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
                "recipe": "cargo-build",
                "annotations": annotations,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{annotations} → {body}");
    assert_eq!(error_code(&body), "bad_request");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(key), "{message:?} names {key}");
}

async fn annotations_round_trip_and_bad_ones_are_refused_by_key(db: TestDb) {
    let server = TestServer::start(db).await;
    let (status, submitted) = server
        .post_admin(
            "/jobs",
            &json!({
                "source_url": "https://example.invalid/itoa-1.0.14.crate",
                "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
                "recipe": "cargo-build",
                "annotations": crate_annotations(),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{submitted}");
    assert_eq!(submitted["annotations"], crate_annotations());
    let id = submitted["id"].as_i64().expect("job id");
    assert_eq!(server.job(id).await["annotations"], crate_annotations());
    // A job without annotations shows an empty object, not a missing field.
    let plain = server.submit(json!({})).await;
    assert_eq!(server.job(plain).await["annotations"], json!({}));

    // At the limits: 32 annotations, a 1 KiB value, a 4 KiB message.
    let mut most: serde_json::Map<String, Value> =
        (0..31).map(|i| (format!("k{i:02}"), json!("v"))).collect();
    most.insert("k00".into(), json!("x".repeat(1024)));
    most.insert("message".into(), json!("m".repeat(4096)));
    assert_eq!(most.len(), 32);
    let id = server.submit(json!({ "annotations": most })).await;
    assert_eq!(server.job(id).await["annotations"], Value::Object(most));

    refused(&server, json!({ "Crate": "itoa" }), "\"Crate\"").await;
    refused(&server, json!({ "crate:name": "itoa" }), "\"crate:name\"").await;
    refused(&server, json!({ "": "itoa" }), "\"\"").await;
    refused(&server, json!({ "k".repeat(65): "v" }), &"k".repeat(65)).await;
    refused(&server, json!({ "branch": "" }), "\"branch\"").await;
    refused(&server, json!({ "commit": "c".repeat(1025) }), "\"commit\"").await;
    refused(
        &server,
        json!({ "message": "m".repeat(4097) }),
        "\"message\"",
    )
    .await;
    refused(&server, json!({ "author": "two\nlines" }), "\"author\"").await;
    refused(&server, json!({ "author": "nul\u{0}" }), "\"author\"").await;
    let too_many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    refused(&server, Value::Object(too_many), "at most 32").await;
    server.shutdown().await;
}

/// The ids of `GET /jobs?{query}`, newest first.
async fn listed(server: &TestServer, query: &str) -> Vec<i64> {
    server.get_ok(&format!("/jobs?{query}")).await["jobs"]
        .as_array()
        .expect("a job list")
        .iter()
        .map(|j| j["id"].as_i64().expect("id"))
        .collect()
}

async fn the_listing_filters_by_annotations(db: TestDb) {
    let server = TestServer::start(db).await;
    let long_message = format!("{}\nend", "a long commit message ".repeat(180));
    assert!(long_message.len() > 3000, "past a PostgreSQL index entry");
    let itoa_0 = server
        .submit(json!({ "annotations": { "crate": "itoa", "version": "1.0.0" } }))
        .await;
    let itoa_1 = server
        .submit(json!({ "annotations": {
            "crate": "itoa", "version": "1.0.1", "message": long_message,
        } }))
        .await;
    let serde_0 = server
        .submit(json!({ "annotations": { "crate": "serde", "version": "1.0.0" } }))
        .await;
    let odd = server
        .submit(json!({ "annotations": { "links.ci": "https://ci.invalid/a?b=c&d=e:f" } }))
        .await;
    let plain = server.submit(json!({})).await;

    assert_eq!(
        listed(&server, "").await,
        [plain, odd, serde_0, itoa_1, itoa_0]
    );
    assert_eq!(
        listed(&server, "annotation=crate:itoa").await,
        [itoa_1, itoa_0]
    );
    assert_eq!(
        listed(&server, "annotation=crate:itoa&annotation=version:1.0.1").await,
        [itoa_1],
        "every filter must match"
    );
    assert_eq!(
        listed(&server, "annotation=version:1.0.0").await,
        [serde_0, itoa_0]
    );
    assert_eq!(
        listed(&server, "annotation=crate:serde&annotation=version:1.0.1").await,
        Vec::<i64>::new()
    );
    assert_eq!(
        listed(&server, "annotation=crate").await,
        [serde_0, itoa_1, itoa_0],
        "a key alone matches any value"
    );
    assert_eq!(
        listed(&server, "annotation=crate:Itoa").await,
        Vec::<i64>::new()
    );
    // A value with ':' and '&' (percent-encoded), and one longer than an index entry.
    assert_eq!(
        listed(
            &server,
            "annotation=links.ci%3Ahttps%3A%2F%2Fci.invalid%2Fa%3Fb%3Dc%26d%3De%3Af"
        )
        .await,
        [odd]
    );
    let encoded = long_message.replace(' ', "%20").replace('\n', "%0A");
    assert_eq!(
        listed(&server, &format!("annotation=message:{encoded}")).await,
        [itoa_1]
    );
    // With the other filters, and paged.
    assert_eq!(
        listed(
            &server,
            "annotation=crate:itoa&state=queued&recipe=cargo-build"
        )
        .await,
        [itoa_1, itoa_0]
    );
    let page = server.get_ok("/jobs?annotation=crate&limit=2").await;
    assert_eq!(page["next_before"], itoa_1);
    assert_eq!(
        listed(
            &server,
            &format!("annotation=crate&limit=2&before={itoa_1}")
        )
        .await,
        [itoa_0]
    );
    // An empty filter is no filter, as for the other parameters.
    assert_eq!(listed(&server, "annotation=").await.len(), 5);

    for bad in [
        "annotation=Crate:itoa",
        "annotation=crate:",
        "annotation=:itoa",
        "annotation=a&annotation=b&annotation=c&annotation=d&annotation=e&annotation=f&annotation=g&annotation=h&annotation=i",
        "annotations=crate:itoa",
    ] {
        let (status, body) = server.get(&format!("/jobs?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "bad_request");
    }
    server.shutdown().await;
}

async fn a_batch_carries_annotations(db: TestDb) {
    let server = TestServer::start(db).await;
    let job = |annotations: Value| {
        json!({
            "source_url": "https://example.invalid/s.tar.gz",
            "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
            "recipe": "cargo-build",
            "annotations": annotations,
        })
    };
    let (status, created) = server
        .post_admin(
            "/jobs",
            &json!([
                job(json!({ "crate": "itoa", "version": "1.0.0" })),
                job(json!({ "crate": "itoa", "version": "1.0.1" })),
                job(json!({})),
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let jobs = created.as_array().expect("the created jobs");
    assert_eq!(jobs[0]["annotations"]["version"], "1.0.0");
    assert_eq!(jobs[1]["annotations"]["version"], "1.0.1");
    assert_eq!(jobs[2]["annotations"], json!({}));
    let second = jobs[1]["id"].as_i64().expect("id");
    assert_eq!(listed(&server, "annotation=version:1.0.1").await, [second]);

    // A bad annotation refuses the whole batch, naming the entry and the key.
    let (status, body) = server
        .post_admin(
            "/jobs",
            &json!([
                job(json!({ "crate": "ok" })),
                job(json!({ "Bad Key": "x" })),
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("[1]:") && message.contains("\"Bad Key\""),
        "{message}"
    );
    assert_eq!(
        listed(&server, "annotation=crate:ok").await,
        Vec::<i64>::new()
    );
    server.shutdown().await;
}

async fn the_statement_signs_the_annotations_and_a_different_set_is_refused(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("annotated");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;

    // The assignment carries the annotations; the statement signs them, and stock OpenSSH
    // verifies what the backend serves.
    builder.request_jobs(1);
    let id = server
        .submit(json!({ "annotations": crate_annotations() }))
        .await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    assert_eq!(
        serde_json::to_value(&job.annotations).expect("annotations as JSON"),
        crate_annotations()
    );
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    let digest = upload_ok(&job, "itoa.tar.gz", b"an archive").await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    let (status, statement) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, signature) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement.sig")))
        .await;
    let (_, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    let (ok, output) = ssh_keygen_verify(
        &String::from_utf8(allowed).expect("text"),
        &key.name,
        STATEMENT_NAMESPACE,
        &statement,
        &String::from_utf8(signature).expect("text"),
    );
    assert!(ok, "ssh-keygen -Y verify: {output}");
    let parsed: Value = serde_json::from_slice(&statement).expect("statement JSON");
    assert_eq!(parsed["annotations"], crate_annotations());

    // A job without annotations: the statement has no such field at all (its text is what
    // it was before annotations existed).
    builder.request_jobs(1);
    let plain = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, plain);
    assert!(job.annotations.is_empty());
    builder.accept(&job);
    let result = builder.complete(&key, &job, Outcome::Failed, vec![]).await;
    assert_eq!(result, CompletionResult::Accepted);
    let (_, statement) = server
        .get_raw(&server.api(&format!("/jobs/{plain}/statement")))
        .await;
    let text = String::from_utf8(statement).expect("text");
    assert!(!text.contains("annotations"), "{text}");

    // Annotations that differ from the job's (changed, dropped, added) are refused, and the
    // refusal names the key.
    for (change, key_named) in [
        ("changed", "\"crate\""),
        ("dropped", "\"version\""),
        ("added", "\"extra\""),
    ] {
        builder.request_jobs(1);
        let id = server
            .submit(json!({ "annotations": { "crate": "itoa", "version": "1.0.14" } }))
            .await;
        let job = builder.next_assignment().await;
        assert_eq!(job.job_id.0, id);
        builder.accept(&job);
        server.wait_for_state(id, "running").await;
        let mut lying = job.clone();
        match change {
            "changed" => {
                lying.annotations.insert("crate".into(), "evil".into());
            }
            "dropped" => {
                lying.annotations.remove("version");
            }
            _ => {
                lying.annotations.insert("extra".into(), "x".into());
            }
        }
        let response = builder.job_response(&key, &lying, Outcome::Succeeded, vec![]);
        builder.send(buildfleet_protocol::ClientMessage::JobResponse(response));
        let result = builder.expect_completion_ack(job_ref(&job)).await;
        match &result {
            CompletionResult::Refused {
                code: ErrorCode::InvalidStatement,
                message,
            } => assert!(message.contains(key_named), "{change}: {message}"),
            other => panic!("{change}: expected a refusal, got {other:?}"),
        }
        let failed = server.wait_for_state(id, "failed").await;
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|e| e.contains("annotation") && e.contains(key_named)),
            "{change}: {failed}"
        );
    }
    builder.close().await;
    server.shutdown().await;
}
