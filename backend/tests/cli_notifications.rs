//! `buildfleet project webhook …`, `project retention …` and `artifact delete`, the real
//! binary against a running backend: a webhook added (its secret printed once), listed, its
//! (empty) delivery log read and removed; a project's retention shown and changed one limit at
//! a time, the others kept; a finished job's artifacts deleted and a queued job's refused; a
//! project's submit token refused where its admin is needed. Both databases.

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    webhooks_retention_and_artifact_deletion_from_the_command_line,
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
