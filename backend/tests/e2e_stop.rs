//! Stopping a build stops all of it: a job cancelled through the API and a job past its
//! timeout each end with their whole process tree gone, background children included.

use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    assert_all_dead, pid_alive, small_source, start_server, upload_source, wait_for_pids, wait_job,
    wait_outcome, E2eBuilder, TREE_RECIPE,
};
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    cancel_kills_the_whole_process_tree,
    timeout_kills_the_whole_process_tree,
}

/// SIGTERM, at most a second of grace, SIGKILL, and the report.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Submits the process-tree recipe with `extra` fields; returns the job id and the
/// directory its PIDs are written to.
async fn submit_tree(server: &TestServer, extra: serde_json::Value) -> (i64, tempfile::TempDir) {
    let (digest, _) = upload_source(server, small_source()).await;
    let pid_dir = tempfile::tempdir().expect("PID dir");
    let mut fields = json!({
        "source_url": null,
        "source_sha256": digest,
        "recipe": TREE_RECIPE,
        "parameters": { "piddir": pid_dir.path().display().to_string() },
    });
    if let (Some(fields), Some(extra)) = (fields.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    (server.submit(fields).await, pid_dir)
}

async fn cancel_kills_the_whole_process_tree(db: TestDb) {
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "cancelled", |_| {}).await;
    let (id, pid_dir) = submit_tree(&server, json!({})).await;
    let pids = wait_for_pids(pid_dir.path()).await;
    wait_job(&server, id, STOP_LIMIT, "running", |job| {
        job["state"] == "running"
    })
    .await;
    let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert_eq!(alive, pids, "the whole tree runs before the cancel");

    let (status, body) = server
        .post_admin(&format!("/jobs/{id}/cancel"), &json!({}))
        .await;
    assert!(
        status == StatusCode::ACCEPTED || status == StatusCode::OK,
        "cancel: {status} {body}"
    );
    let job = wait_outcome(&server, id, "cancelled", STOP_LIMIT).await;
    assert_eq!(job["builder_id"], builder.id);
    assert_all_dead(&pids, "the cancel").await;

    builder.stop().await;
    server.shutdown().await;
}

async fn timeout_kills_the_whole_process_tree(db: TestDb) {
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "timed-out", |_| {}).await;
    let (id, pid_dir) = submit_tree(&server, json!({ "timeout_secs": 1 })).await;
    let pids = wait_for_pids(pid_dir.path()).await;

    let job = wait_outcome(&server, id, "timed_out", STOP_LIMIT).await;
    assert_eq!(job["builder_id"], builder.id);
    assert_all_dead(&pids, "the timeout").await;
    let lines = server.log_lines(id).await;
    assert!(
        lines.iter().any(|l| l == "tree started"),
        "the tree was up when the timeout hit: {lines:?}"
    );

    builder.stop().await;
    server.shutdown().await;
}
