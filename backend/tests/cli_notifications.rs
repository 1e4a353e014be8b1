//! `buildfleet project webhook …`, `project retention …` and `artifact delete`, the real
//! binary against a running backend: a webhook added (its secret printed once), listed, its
//! (empty) delivery log read and removed; a project's retention shown and changed one limit at
//! a time, the others kept; a finished job's artifacts deleted and a queued job's refused; a
//! project's submit token refused where its admin is needed; a job's published artifact
//! downloaded (verified), deleted with `artifact delete`, and then gone: the download is the
//! documented 404 saying it was deleted. Both databases.

use buildfleet_protocol::{CompletionResult, Outcome};
use buildfleet_testkit::builder_client::{job_ref, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    webhooks_retention_and_artifact_deletion_from_the_command_line,
    a_published_artifact_deleted_from_the_command_line_is_gone,
}

async fn webhooks_retention_and_artifact_deletion_from_the_command_line(db: TestDb) {
    let server = TestServer::start(db).await;
    server.cli(&["project", "create", "acme/web"]).await.ok();

    let added = server
        .cli(&[
            "project",
            "webhook",
            "add",
            "acme/web",
            "http://127.0.0.1:9/hook",
            "--event",
            "finished",
        ])
        .await
        .ok();
    let mut lines = added.stdout.lines();
    let headline = lines.next().unwrap_or_default();
    assert!(
        headline.starts_with("added webhook ")
            && headline.ends_with("of acme/web: http://127.0.0.1:9/hook on finished"),
        "{}",
        added.stdout
    );
    let secret = lines.next().unwrap_or_default();
    assert!(
        secret.len() >= 16,
        "the secret on its own line: {}",
        added.stdout
    );
    assert!(added.stderr.contains("shown once"), "{}", added.stderr);

    let listed = server
        .cli(&["project", "webhook", "list", "acme/web", "--json"])
        .await
        .ok()
        .json();
    let hooks = listed["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1, "{listed}");
    assert_eq!(hooks[0]["events"], json!(["finished"]));
    assert!(
        !listed.to_string().contains(secret),
        "a listing shows no secret"
    );
    let id = hooks[0]["id"].as_i64().expect("webhook id").to_string();
    let deliveries = server
        .cli(&["project", "webhook", "deliveries", "acme/web", &id])
        .await
        .ok();
    assert!(deliveries.stdout.starts_with("ID"), "{}", deliveries.stdout);
    let removed = server
        .cli(&["project", "webhook", "remove", "acme/web", &id])
        .await
        .ok();
    assert_eq!(
        removed.stdout.trim(),
        format!("removed webhook {id} of acme/web")
    );
    let bad_url = server
        .cli(&["project", "webhook", "add", "acme/web", "ftp://x"])
        .await
        .expect_code(3);
    assert!(bad_url.stderr.contains("HTTP 400"), "{}", bad_url.stderr);

    // Retention: unset at first, then one limit at a time, the others kept.
    let shown = server
        .cli(&["project", "retention", "acme/web"])
        .await
        .ok()
        .stdout;
    assert!(shown.contains("kept forever"), "{shown}");
    server
        .cli(&[
            "project",
            "retention",
            "acme/web",
            "--artifacts-max-age-days",
            "30",
        ])
        .await
        .ok();
    let changed = server
        .cli(&[
            "project",
            "retention",
            "acme/web",
            "--logs-keep-last",
            "100",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(changed["artifacts"]["max_age_days"], 30, "{changed}");
    assert_eq!(changed["logs"]["keep_last"], 100, "{changed}");
    let lifted = server
        .cli(&[
            "project",
            "retention",
            "acme/web",
            "--artifacts-max-age-days",
            "none",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(lifted["artifacts"]["max_age_days"], json!(null), "{lifted}");
    assert_eq!(lifted["logs"]["keep_last"], 100, "{lifted}");
    server
        .cli(&[
            "project",
            "retention",
            "acme/web",
            "--logs-keep-last",
            "soon",
        ])
        .await
        .expect_code(2);

    // A project's submit token may not change retention (its admin may).
    let token = server
        .cli(&[
            "token",
            "create",
            "--project",
            "acme/web",
            "--scope",
            "submit",
            "--description",
            "ci",
        ])
        .await
        .ok()
        .stdout
        .trim()
        .to_owned();
    let refused = server
        .cli_env(
            &["project", "retention", "acme/web", "--logs-keep-last", "1"],
            &[("BUILDFLEET_TOKEN", &token)],
        )
        .await
        .expect_code(3);
    assert!(refused.stderr.contains("HTTP 403"), "{}", refused.stderr);

    // Artifacts of a finished job can be deleted; a queued job's cannot.
    let queued = server
        .submit(json!({ "recipe": "nobody-offers-this" }))
        .await;
    let early = server
        .cli(&["artifact", "delete", &queued.to_string()])
        .await
        .expect_code(3);
    assert!(
        early.stderr.contains(&format!(
            "job {queued} is queued: its artifacts can be deleted once it has finished"
        )),
        "{}",
        early.stderr
    );
    server
        .cli(&["job", "cancel", &queued.to_string()])
        .await
        .ok();
    let deleted = server
        .cli(&["artifact", "delete", &queued.to_string()])
        .await
        .ok();
    assert_eq!(
        deleted.stdout.trim(),
        format!("deleted 0 artifact(s) of job {queued}")
    );
    server.shutdown().await;
}

async fn a_published_artifact_deleted_from_the_command_line_is_gone(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("publisher");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    builder.log(job_ref(&job), 1, "building");
    builder.expect_event_ack(job_ref(&job), 1).await;
    let bytes = b"a real artifact's bytes".to_vec();
    let digest = upload_ok(&job, "out.bin", &bytes).await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "succeeded").await;
    let id_text = id.to_string();

    // Published: listed, and downloaded with its statement verified by ssh-keygen.
    let listed = server
        .cli(&["artifact", "list", &id_text])
        .await
        .ok()
        .stdout;
    assert!(listed.contains("out.bin"), "{listed}");
    let out = tempfile::tempdir().unwrap();
    let first = out.path().join("first.bin");
    server
        .cli(&[
            "artifact",
            "download",
            &id_text,
            "out.bin",
            "-o",
            first.to_str().unwrap(),
        ])
        .await
        .ok();
    assert_eq!(std::fs::read(&first).unwrap(), bytes);

    let deleted = server.cli(&["artifact", "delete", &id_text]).await.ok();
    assert_eq!(
        deleted.stdout.trim(),
        format!("deleted 1 artifact(s) of job {id}")
    );
    // Gone: the API's download is 404 saying so, the CLI's is that error (exit 3), and the
    // job records when.
    let (status, answer) = server.get(&format!("/jobs/{id}/artifacts/out.bin")).await;
    assert_eq!(status, awc::http::StatusCode::NOT_FOUND, "{answer}");
    let message = answer["error"]["message"].as_str().expect("a message");
    assert!(message.contains("were deleted"), "{message}");
    let second = out.path().join("second.bin");
    let refused = server
        .cli(&[
            "artifact",
            "download",
            &id_text,
            "out.bin",
            "-o",
            second.to_str().unwrap(),
        ])
        .await
        .expect_code(3);
    assert!(
        refused.stderr.starts_with(&format!(
            "error: artifact \"out.bin\" of job {id} is gone: the artifacts of job {id} were \
             deleted"
        )) && refused.stderr.contains("(not_found, HTTP 404)"),
        "{}",
        refused.stderr
    );
    assert!(!second.exists(), "nothing written");
    let detail = server.job(id).await;
    assert!(detail["artifacts_expired_at"].is_i64(), "{detail}");
    assert_eq!(detail["artifacts"], json!([]));
    let listed = server
        .cli(&["artifact", "list", &id_text, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(listed["artifacts"], json!([]), "{listed}");
    // Deleting again deletes nothing and says so.
    let again = server.cli(&["artifact", "delete", &id_text]).await.ok();
    assert_eq!(
        again.stdout.trim(),
        format!("deleted 0 artifact(s) of job {id}")
    );
    builder.close().await;
    server.shutdown().await;
}
