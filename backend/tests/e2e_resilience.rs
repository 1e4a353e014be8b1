//! A build survives what happens around it: its builder's connection cut twice mid-build,
//! and the backend restarted mid-build on the same address and database. Either way the
//! real builder reconnects, resumes, and the job finishes with its whole log, each line
//! stored once.

mod support;

use std::time::Duration;

use serde_json::json;
use support::db::TestDb;
use support::e2e::{
    assert_complete_log, connect_url_of, small_source, start_server, upload_source, wait_lines,
    wait_outcome, E2eBuilder, TcpProxy, LINES_RECIPE, LINE_COUNT,
};
use support::server::server_tests;

server_tests! {
    connection_cut_mid_build_resumes_with_an_exact_log,
    backend_restart_mid_build_resumes_the_job,
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
