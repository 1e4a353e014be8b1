//! The builder's source cache, against a real local HTTP server that counts its requests:
//! a second job of the same source downloads nothing, a corrupted entry is caught on use
//! and fetched again before anything runs, the size bound evicts the least recently used
//! entry, and a job's result is ready before its directory is removed.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use buildfleet_builder::config::Strategy;
use buildfleet_builder::recipes::RecipeConfig;
use buildfleet_builder::source::SourceCache;
use buildfleet_protocol::{JobId, Outcome, SourceSpec};
use common::*;

const CONTENTS: &str = "the cached source says hello";

/// Prints the unpacked file, so a job shows which bytes it ran on.
fn cat_recipe() -> RecipeConfig {
    RecipeConfig {
        name: "cat".into(),
        version: "1".into(),
        commands: vec![vec![
            "sh".into(),
            "-c".into(),
            "cat \"$BUILDFLEET_SRC/hello.txt\"".into(),
        ]],
        env: Default::default(),
        artifacts: Vec::new(),
        image: None,
        version_commands: Vec::new(),
    }
}

fn plain_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn cache_file(work: &Path, archive: &[u8]) -> PathBuf {
    work.join("sources").join(sha256(archive).as_str())
}

fn gets(server: &TestServer) -> usize {
    server.state.gets.load(Ordering::SeqCst)
}

/// Runs job `id` of the `cat` recipe on `url` and asserts it printed [`CONTENTS`].
async fn run_cat(
    env: &buildfleet_builder::job::JobEnv,
    server: &TestServer,
    url: &str,
    archive: &[u8],
    id: i64,
) {
    let mut job = assignment(server, url, sha256(archive), "cat");
    job.job_id = JobId(id);
    let (response, events) = run(env, job).await;
    assert_eq!(response.outcome, Outcome::Succeeded, "{:?}", response.error);
    let lines = log_lines(&events);
    assert!(lines.iter().any(|l| l == CONTENTS), "{lines:?}");
}

#[actix_rt::test]
async fn a_second_job_of_the_same_source_fetches_nothing() {
    let server = start_server();
    let archive = tar_gz(&[("pkg/hello.txt", CONTENTS.as_bytes(), 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    let env = job_env(work.path(), Strategy::Process, vec![cat_recipe()]);

    run_cat(&env, &server, &url, &archive, 1).await;
    assert_eq!(gets(&server), 1);
    assert_eq!(
        std::fs::read(cache_file(work.path(), &archive)).unwrap(),
        archive
    );
    run_cat(&env, &server, &url, &archive, 2).await;
    run_cat(&env, &server, &url, &archive, 3).await;
    assert_eq!(gets(&server), 1, "later jobs must use the cached source");
}

#[actix_rt::test]
async fn a_corrupted_cache_entry_is_caught_and_fetched_again() {
    let server = start_server();
    let work = tempfile::tempdir().unwrap();
    let env = job_env(work.path(), Strategy::Process, vec![cat_recipe()]);

    // A plain tar with a byte of the file's data flipped still unpacks: only the digest
    // read on the way through can tell.
    let archive = plain_tar(&[("pkg/hello.txt", CONTENTS.as_bytes())]);
    let url = server.put_file("/plain.tar", archive.clone());
    run_cat(&env, &server, &url, &archive, 1).await;
    let cached = cache_file(work.path(), &archive);
    let mut bytes = std::fs::read(&cached).unwrap();
    let at = bytes
        .windows(CONTENTS.len())
        .position(|w| w == CONTENTS.as_bytes())
        .expect("the file data in the tar");
    bytes[at] ^= 0x20;
    std::fs::write(&cached, &bytes).unwrap();
    // The job prints the right contents, so it ran on the fetched copy.
    run_cat(&env, &server, &url, &archive, 2).await;
    assert_eq!(
        gets(&server),
        2,
        "the corrupted entry must be fetched again"
    );
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        archive,
        "the entry is repaired"
    );

    // A gzip stream cut short does not unpack at all: that too is a corrupted copy, not an
    // unsafe archive.
    let archive = tar_gz(&[("pkg/hello.txt", CONTENTS.as_bytes(), 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    run_cat(&env, &server, &url, &archive, 3).await;
    assert_eq!(gets(&server), 3);
    let cached = cache_file(work.path(), &archive);
    std::fs::write(&cached, &archive[..archive.len() / 2]).unwrap();
    run_cat(&env, &server, &url, &archive, 4).await;
    assert_eq!(
        gets(&server),
        4,
        "the truncated entry must be fetched again"
    );
    assert_eq!(std::fs::read(&cached).unwrap(), archive);
}

#[actix_rt::test]
async fn the_size_bound_evicts_the_least_recently_used_source() {
    let server = start_server();
    let body = |fill: u8| vec![fill; 10_000];
    let urls: Vec<String> = (0..4u8)
        .map(|i| server.put_file(&format!("/s{i}"), body(i)))
        .collect();
    let spec = |i: u8| SourceSpec {
        url: urls[usize::from(i)].clone(),
        sha256: sha256(&body(i)),
        max_bytes: 1 << 20,
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::open(dir.path(), 25_000).unwrap();
    let client =
        buildfleet_builder::http::client(&buildfleet_builder::http::tls_config(None).unwrap());
    let on_disk = |i: u8| dir.path().join(sha256(&body(i)).as_str()).exists();

    for i in [0, 1, 0] {
        drop(
            cache
                .get(&client, &one_backend(), &spec(i), None)
                .await
                .unwrap(),
        );
    }
    assert_eq!(gets(&server), 2, "the third get is a hit");
    // Source 1 is now the least recently used: storing 2 must evict it, not 0.
    drop(
        cache
            .get(&client, &one_backend(), &spec(2), None)
            .await
            .unwrap(),
    );
    assert!(on_disk(0) && on_disk(2));
    assert!(!on_disk(1), "the least recently used entry is evicted");
    assert_eq!(cache.total_bytes(), 20_000);
    drop(
        cache
            .get(&client, &one_backend(), &spec(1), None)
            .await
            .unwrap(),
    );
    assert_eq!(gets(&server), 4, "an evicted source is fetched again");

    // An entry in use is not evicted under its job, however old.
    let held = cache
        .get(&client, &one_backend(), &spec(2), None)
        .await
        .unwrap();
    assert!(!held.fetched);
    drop(
        cache
            .get(&client, &one_backend(), &spec(3), None)
            .await
            .unwrap(),
    );
    drop(
        cache
            .get(&client, &one_backend(), &spec(0), None)
            .await
            .unwrap(),
    );
    assert!(held.path.exists(), "a source in use stays");
    assert!(cache.total_bytes() <= 30_000);
    drop(held);
    assert!(
        cache.total_bytes() <= 25_000,
        "the bound holds once it is released"
    );
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(u64::try_from(files).unwrap() * 10_000, cache.total_bytes());

    // A source larger than the whole cache is used but not kept.
    let big = vec![9u8; 30_000];
    let big_url = server.put_file("/big", big.clone());
    let spec = SourceSpec {
        url: big_url,
        sha256: sha256(&big),
        max_bytes: 1 << 20,
    };
    let source = cache
        .get(&client, &one_backend(), &spec, None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&source.path).unwrap(), big);
    let path = source.path.clone();
    drop(source);
    assert!(!path.exists());
    assert!(!dir.path().join(sha256(&big).as_str()).exists());
}

#[actix_rt::test]
async fn a_cache_reopened_keeps_its_sources_and_drops_partial_downloads() {
    let server = start_server();
    let body = vec![5u8; 1000];
    let url = server.put_file("/src", body.clone());
    let spec = SourceSpec {
        url,
        sha256: sha256(&body),
        max_bytes: 1 << 20,
    };
    let dir = tempfile::tempdir().unwrap();
    let client =
        buildfleet_builder::http::client(&buildfleet_builder::http::tls_config(None).unwrap());
    drop(
        SourceCache::open(dir.path(), 1 << 20)
            .unwrap()
            .get(&client, &one_backend(), &spec, None)
            .await
            .unwrap(),
    );
    std::fs::write(dir.path().join("partial-1-1"), b"half a download").unwrap();
    let cache = SourceCache::open(dir.path(), 1 << 20).unwrap();
    assert!(!dir.path().join("partial-1-1").exists());
    assert_eq!(cache.total_bytes(), 1000);
    assert!(
        !cache
            .get(&client, &one_backend(), &spec, None)
            .await
            .unwrap()
            .fetched
    );
    assert_eq!(gets(&server), 1);
}

#[actix_rt::test]
async fn the_result_is_ready_before_the_job_directory_is_removed() {
    let server = start_server();
    let archive = tar_gz(&[("pkg/hello.txt", CONTENTS.as_bytes(), 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    let env = job_env(work.path(), Strategy::Process, vec![cat_recipe()]);
    let job = assignment(&server, &url, sha256(&archive), "cat");
    let dir = work
        .path()
        .join("jobs")
        .join(format!("{}-{}", job.job_id, job.attempt));

    let (finished, _events) = run_uncleaned(&env, job).await;
    assert_eq!(finished.response.outcome, Outcome::Succeeded);
    assert_eq!(finished.cleanup.dir, dir);
    assert!(
        dir.join("src/pkg/hello.txt").exists(),
        "the result comes while the job directory is still there"
    );
    finished.cleanup.run().await;
    assert!(!dir.exists(), "cleanup removes the job directory");
}
