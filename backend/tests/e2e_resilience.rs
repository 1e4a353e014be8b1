//! A build survives what happens around it: its builder's connection cut twice mid-build,
//! and the backend restarted mid-build on the same address and database. Either way the
//! real builder reconnects, resumes, and the job finishes with its whole log, each line
//! stored once.

use std::path::PathBuf;
use std::time::Duration;

use buildfleet_backend::log_segments::MAX_SEGMENT_BYTES;
use buildfleet_backend::storage::keys;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    assert_complete_log, connect_url_of, small_source, start_server, upload_source, wait_lines,
    wait_outcome, E2eBuilder, TcpProxy, LINES_RECIPE, LINE_COUNT,
};
use buildfleet_testkit::server::{wait_until, TestServer};
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
        config.connect_urls = vec![connect_url_of(proxy.addr)];
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

/// The log cannot be written for several seconds mid-build (the segment in use fills up and
/// a directory stands where the next one goes), long enough for the build to end meanwhile.
/// The backend keeps the events unacknowledged, refuses the completion as `internal` while
/// the log is short, the real builder keeps the finished job and resends; once storage works
/// the same attempt succeeds with every line stored once.
async fn log_storage_failing_mid_build_loses_no_line_and_keeps_the_build(db: TestDb) {
    let server = start_server(db).await;
    // Before the first log write: the first segment all but full (sparse; the backend appends
    // after what a segment holds), so some 2 KiB into the job's log, a few dozen lines, the
    // backend moves on to the second segment, where a directory stands.
    let (first, second) = first_log_segments(&server);
    std::fs::File::create(&first)
        .and_then(|file| file.set_len(MAX_SEGMENT_BYTES - 2048))
        .expect("a nearly full first segment");
    std::fs::create_dir(&second).expect("a directory where the second segment goes");
    let builder = E2eBuilder::start(&server, "survives-a-disk-error", |_| {}).await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": LINES_RECIPE,
        }))
        .await;

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
    let stored = server.log_lines(id).await.len();
    assert!(
        stored > 0 && stored < LINE_COUNT,
        "storage must fail mid-build: {stored} of {LINE_COUNT} lines were stored"
    );
    // The recipe takes about five seconds: it ends while storage still fails.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        server.job(id).await["state"],
        "running",
        "a short log cannot finish a job"
    );
    std::fs::remove_dir(&second).expect("storage works again");

    let job = wait_outcome(&server, id, "succeeded", JOB_LIMIT).await;
    assert_eq!(job["attempt"], 1, "the same attempt finished: {job:#}");
    assert_complete_log(&server, id).await;
    builder.stop().await;
    server.shutdown().await;
}

/// The first two log segments of the server, under the directory the backend process made
/// for itself at start (the only one, as the server was not restarted).
fn first_log_segments(server: &TestServer) -> (PathBuf, PathBuf) {
    let blobs = server.data_dir().join("blobs");
    let prefixes: Vec<_> = std::fs::read_dir(blobs.join(keys::LOG_SEGMENTS))
        .expect("the log segment directory")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert_eq!(prefixes.len(), 1, "one backend process: {prefixes:?}");
    let prefix = prefixes[0].to_str().expect("a UTF-8 prefix");
    (
        blobs.join(keys::log_segment(prefix, 0)),
        blobs.join(keys::log_segment(prefix, 1)),
    )
}
