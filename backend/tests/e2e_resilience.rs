//! A build survives what happens around it: its builder's connection cut twice mid-build,
//! and the backend restarted mid-build on the same address and database. Either way the
//! real builder reconnects, resumes, and the job finishes with its whole log, each line
//! stored once.

use std::time::Duration;

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    assert_complete_log, connect_url_of, small_source, start_server, upload_source, wait_lines,
    wait_outcome, E2eBuilder, TcpProxy, LINES_RECIPE, LINE_COUNT,
};
use buildfleet_testkit::server::wait_until;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    connection_cut_mid_build_resumes_with_an_exact_log,
    backend_restart_mid_build_resumes_the_job,
    log_storage_failing_mid_build_loses_no_line_and_keeps_the_build,
}

/// The recipe prints for about five seconds; reconnects add at most a few.
const JOB_LIMIT: Duration = Duration::from_secs(40);

async fn connection_cut_mid_build_resumes_with_an_exact_log(db: TestDb) {
    let server = start_server(db).await;
    let proxy = TcpProxy::start(server.addr).await;
    let builder = E2eBuilder::start(&server, "behind-a-proxy", |config| {
        config.connect_url = connect_url_of(proxy.addr);
    })
    .await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": LINES_RECIPE,
        }))
        .await;

    let first = wait_lines(&server, id, 30).await;
    proxy.cut();
    // Lines stored after the cut prove the builder came back and resumed.
    let second = wait_lines(&server, id, first + 40).await;
    assert!(second < LINE_COUNT, "the second cut must land mid-build");
    proxy.cut();

    wait_outcome(&server, id, "succeeded", JOB_LIMIT).await;
    assert!(
        proxy.accepted() >= 3,
        "the builder reconnected after each cut: {} connections",
        proxy.accepted()
    );
    assert_complete_log(&server, id).await;

    builder.stop().await;
    server.shutdown().await;
}

async fn backend_restart_mid_build_resumes_the_job(db: TestDb) {
    let mut server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "outlives-a-restart", |_| {}).await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": LINES_RECIPE,
        }))
        .await;

    wait_lines(&server, id, 30).await;
    let addr = server.addr;
    server.restart().await;
    assert_eq!(server.addr, addr, "the backend is back on the same port");

    let job = wait_outcome(&server, id, "succeeded", JOB_LIMIT).await;
    assert_eq!(job["attempt"], 1, "the same attempt finished: {job:#}");
    assert_eq!(job["builder_id"], builder.id);
    assert_complete_log(&server, id).await;

    builder.stop().await;
    server.shutdown().await;
}

/// The job's log file cannot be written for several seconds mid-build (a directory stands in
/// its place), long enough for the build to end meanwhile. The backend keeps the events
/// unacknowledged, refuses the completion as `internal` while the log is short, the real
/// builder keeps the finished job and resends; once storage works the same attempt succeeds
/// with every line stored once.
async fn log_storage_failing_mid_build_loses_no_line_and_keeps_the_build(db: TestDb) {
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "survives-a-disk-error", |_| {}).await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": LINES_RECIPE,
        }))
        .await;
    wait_lines(&server, id, 30).await;

    let log_file = server.data_dir().join(format!("blobs/logs/{id}/1.jsonl"));
    let moved = log_file.with_extension("away");
    std::fs::rename(&log_file, &moved).expect("move the log file away");
    std::fs::create_dir(&log_file).expect("a directory in its place");
    wait_until("a failed log write", || async {
        let metrics = server.metrics().await;
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("buildfleet_log_store_failures_total ")?
                    .parse::<f64>()
                    .ok()
            })
            .filter(|n| *n >= 1.0)
    })
    .await;
    // The recipe takes about five seconds: it ends while storage still fails.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        server.job(id).await["state"],
        "running",
        "a short log cannot finish a job"
    );
    std::fs::remove_dir(&log_file).expect("storage works again");
    std::fs::rename(&moved, &log_file).expect("the log file back");

    let job = wait_outcome(&server, id, "succeeded", JOB_LIMIT).await;
    assert_eq!(job["attempt"], 1, "the same attempt finished: {job:#}");
    assert_complete_log(&server, id).await;
    builder.stop().await;
    server.shutdown().await;
}
