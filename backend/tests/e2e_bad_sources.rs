//! Hostile or wrong sources fail cleanly: a digest mismatch, an entry that climbs out of
//! the source directory, and archive bombs (too many entries, too many bytes) each fail
//! the job with a stable error kind, and the recipe never runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    sha256_hex, small_source, start_server, tar_gz_large_file, tar_gz_many_entries,
    tar_gz_with_raw_path, upload_source, wait_outcome, E2eBuilder, QUICK_RECIPE,
};
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    digest_mismatch_fails_before_anything_runs,
    path_traversal_entry_fails_as_unsafe_archive,
    too_many_entries_fail_as_unsafe_archive,
    too_many_unpacked_bytes_fail_as_unsafe_archive,
}

const JOB_LIMIT: Duration = Duration::from_secs(20);
/// Limits of the builders here, far below what the bombs unpack to.
const MAX_ENTRIES: u64 = 50;
const MAX_UNPACKED_BYTES: u64 = 1 << 20;

async fn start_limited_builder(server: &TestServer, name: &str) -> E2eBuilder {
    E2eBuilder::start(server, name, |config| {
        config.limits.max_archive_entries = MAX_ENTRIES;
        config.limits.max_unpacked_bytes = MAX_UNPACKED_BYTES;
    })
    .await
}

/// Runs the quick recipe on `source_url` claimed to hash to `sha256`; checks the job failed
/// with `kind` and that the recipe never ran. Returns the job's error message.
async fn expect_failure(server: &TestServer, source_url: &str, sha256: &str, kind: &str) -> String {
    let marker_dir = tempfile::tempdir().expect("marker dir");
    let marker = marker_dir.path().join("ran");
    let id = server
        .submit(json!({
            "source_url": source_url,
            "source_sha256": sha256,
            "recipe": QUICK_RECIPE,
            "parameters": { "marker": marker.display().to_string() },
            "max_attempts": 1,
        }))
        .await;
    let job = wait_outcome(server, id, "failed", JOB_LIMIT).await;
    let error = job["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains(kind),
        "job {id} should fail with {kind}: {job:#}"
    );
    assert!(
        job["artifacts"].as_array().is_some_and(Vec::is_empty),
        "nothing published: {job:#}"
    );
    assert!(!marker.exists(), "the recipe ran on a bad source");
    let records = server.log_records(id).await;
    assert!(
        !records.iter().any(|r| r["stage"] == "running"),
        "job {id} never reached the running stage: {records:?}"
    );
    assert!(
        !records.iter().any(|r| r["line"]
            .as_str()
            .is_some_and(|l| l.starts_with("start job"))),
        "the recipe printed nothing: {records:?}"
    );
    error
}

async fn digest_mismatch_fails_before_anything_runs(db: TestDb) {
    let server = start_server(db).await;
    let builder = start_limited_builder(&server, "digest-checker").await;
    let (_, url) = upload_source(&server, small_source()).await;
    let wrong = sha256_hex(b"some other archive");
    let error = expect_failure(&server, &url, &wrong, "source_digest_mismatch").await;
    assert!(
        error.contains(&wrong),
        "the message names the expected digest: {error}"
    );

    builder.stop().await;
    server.shutdown().await;
}

async fn path_traversal_entry_fails_as_unsafe_archive(db: TestDb) {
    let server = start_server(db).await;
    let builder = start_limited_builder(&server, "traversal-checker").await;
    // From `<work>/jobs/<job>-<attempt>/src`, three levels up is the work directory itself.
    let escape = "../../../escaped.txt";
    let archive = tar_gz_with_raw_path(escape, b"should never be written\n");
    let (digest, url) = upload_source(&server, archive).await;
    let error = expect_failure(&server, &url, &digest, "unsafe_archive").await;
    assert!(
        error.contains("escaped.txt"),
        "the message names the entry: {error}"
    );
    for dir in ancestors_within(builder.work_dir(), 2) {
        assert!(
            !dir.join("escaped.txt").exists(),
            "the entry escaped to {}",
            dir.display()
        );
    }

    builder.stop().await;
    server.shutdown().await;
}

async fn too_many_entries_fail_as_unsafe_archive(db: TestDb) {
    let server = start_server(db).await;
    let builder = start_limited_builder(&server, "entry-counter").await;
    let archive = tar_gz_many_entries(MAX_ENTRIES as usize * 4);
    let (digest, url) = upload_source(&server, archive).await;
    let error = expect_failure(&server, &url, &digest, "unsafe_archive").await;
    assert!(error.contains("entries"), "the message says why: {error}");

    builder.stop().await;
    server.shutdown().await;
}

async fn too_many_unpacked_bytes_fail_as_unsafe_archive(db: TestDb) {
    let server = start_server(db).await;
    let builder = start_limited_builder(&server, "size-counter").await;
    let archive = tar_gz_large_file(MAX_UNPACKED_BYTES as usize * 16);
    assert!(
        (archive.len() as u64) < MAX_UNPACKED_BYTES / 4,
        "a bomb is small packed: {} bytes",
        archive.len()
    );
    let (digest, url) = upload_source(&server, archive).await;
    let error = expect_failure(&server, &url, &digest, "unsafe_archive").await;
    assert!(error.contains("bytes"), "the message says why: {error}");

    builder.stop().await;
    server.shutdown().await;
}

/// `dir` and its first `levels` parents.
fn ancestors_within(dir: &Path, levels: usize) -> Vec<PathBuf> {
    dir.ancestors()
        .take(levels + 1)
        .map(Path::to_path_buf)
        .collect()
}
