//! `buildfleet job boost ID`, the real binary against a running backend: the admin puts a
//! queued job ahead of everything (priority 1001); a project's token is refused (403, exit 3);
//! a job that is not queued is a conflict explained by its state; an unknown job is exit 3.
//! Both databases.

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    the_admin_boosts_a_queued_job_and_nobody_else_can,
}

async fn the_admin_boosts_a_queued_job_and_nobody_else_can(db: TestDb) {
    let server = TestServer::start(db).await;
    let queued = server
        .submit(json!({ "recipe": "nobody-offers-this" }))
        .await;

    let boosted = server
        .cli(&["job", "boost", &queued.to_string()])
        .await
        .ok();
    assert_eq!(
        boosted.stdout.trim(),
        format!("job {queued} boosted: priority 1001, ahead of every project's work")
    );
    let job = server.get_ok(&format!("/jobs/{queued}")).await;
    assert_eq!(job["priority"], 1001);
    let as_json = server
        .cli(&["job", "boost", &queued.to_string(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(as_json["id"], queued);

    // A project's own admin token is no service admin.
    server.cli(&["project", "create", "acme/web"]).await.ok();
    let token = server
        .cli(&[
            "token",
            "create",
            "--project",
            "acme/web",
            "--scope",
            "admin",
            "--description",
            "acme admin",
        ])
        .await
        .ok()
        .stdout
        .trim()
        .to_owned();
    let refused = server
        .cli_env(
            &["job", "boost", &queued.to_string()],
            &[("BUILDFLEET_TOKEN", &token)],
        )
        .await
        .expect_code(3);
    assert!(refused.stderr.contains("HTTP 403"), "{}", refused.stderr);

    // Only a queued job: a cancelled one is refused with its state named.
    server
        .cli(&["job", "cancel", &queued.to_string()])
        .await
        .ok();
    let ended = server
        .cli(&["job", "boost", &queued.to_string()])
        .await
        .expect_code(3);
    assert!(
        ended.stderr.contains(&format!(
            "job {queued} is cancelled: only a queued job can be boosted"
        )),
        "{}",
        ended.stderr
    );
    let unknown = server.cli(&["job", "boost", "999999"]).await.expect_code(3);
    assert!(
        unknown.stderr.contains("job 999999 not found"),
        "{}",
        unknown.stderr
    );
    server.shutdown().await;
}
