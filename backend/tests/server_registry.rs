//! The registry follower against a real local registry (sparse and git indexes served over
//! HTTP on loopback, real `.crate` files): it queues a metadata job for each version
//! published while it runs, once each (repeated fetches, a restart), with the index's
//! download URL and SHA-256 and crate annotations; yanked versions are not built and are
//! marked when yanked later; denied crates are recorded as skipped; backfills queue existing
//! versions at the low priority, once; a submission's `crate` resolves through the index.

use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_backend::config::ServerConfig;
use buildfleet_backend::registry::RegistryFile;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::processes::BackendProcess;
use buildfleet_testkit::registry::{
    CrateFile, LocalRegistry, SAMPLE_BINARY, SAMPLE_LIBRARY, SAMPLE_TAMPERED,
};
use buildfleet_testkit::server::{error_code, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_sparse_follower_queues_each_new_version_once,
    a_git_follower_diffs_the_index_and_resumes_after_a_restart,
    two_replicas_following_one_registry_queue_each_version_once,
}

fn follow(config: &mut ServerConfig, index: String, crates: &[&str]) {
    let mut settings = RegistryFile {
        name: Some("local".into()),
        index,
        crates: crates.iter().map(|c| (*c).to_owned()).collect(),
        deny: vec![SAMPLE_TAMPERED.into()],
        ..RegistryFile::default()
    }
    .resolve()
    .expect("registry settings");
    settings.poll_interval = Duration::from_millis(100);
    config.registry = Some(settings);
}

/// Waits until `check` holds for the crate's page (or the crate has none yet).
async fn wait_for_crate(server: &TestServer, krate: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (status, body) = server.get(&format!("/crates/{krate}")).await;
        if status == StatusCode::OK && check(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "crate {krate} never reached the expected state: {}",
        server.get(&format!("/crates/{krate}")).await.1
    );
}

/// Waits for `rounds` more completed fetch rounds.
async fn wait_rounds(server: &TestServer, rounds: usize) {
    let mut last = server.get_ok("/registry").await["last_fetch_at"].clone();
    let mut seen = 0;
    for _ in 0..200 {
        let now = server.get_ok("/registry").await["last_fetch_at"].clone();
        if now != last && !now.is_null() {
            seen += 1;
            last = now;
            if seen == rounds {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the follower did not complete {rounds} rounds");
}

fn version<'a>(page: &'a Value, v: &str) -> Option<&'a Value> {
    page["versions"]
        .as_array()?
        .iter()
        .find(|x| x["version"] == v)
}

async fn jobs_of(server: &TestServer, krate: &str) -> Vec<Value> {
    server
        .get_ok(&format!("/jobs?annotation=crate:{krate}"))
        .await["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn a_sparse_follower_queues_each_new_version_once(db: TestDb) {
    let (registry, samples) = LocalRegistry::start_with_samples();
    // Packed by cargo before the server starts: packing blocks, and the server shares the
    // test's thread.
    let release = CrateFile::binary(SAMPLE_BINARY, "0.2.0");
    let denied = CrateFile::binary(SAMPLE_TAMPERED, "1.0.1");
    let index = registry.sparse_index_url();
    let server = TestServer::start_with(db, |c| {
        follow(c, index, &[SAMPLE_BINARY, SAMPLE_LIBRARY, SAMPLE_TAMPERED])
    })
    .await;

    // What the index held when following began is existing work, not built.
    let page = wait_for_crate(&server, SAMPLE_BINARY, |p| version(p, "0.1.1").is_some()).await;
    assert_eq!(
        version(&page, &samples.binary.version).unwrap()["status"],
        "existing"
    );
    assert_eq!(version(&page, "0.1.1").unwrap()["status"], "yanked");
    assert!(jobs_of(&server, SAMPLE_BINARY).await.is_empty());
    let status = server.get_ok("/registry").await;
    assert_eq!(status["protocol"], "sparse");
    assert_eq!(status["last_error"], Value::Null, "{status}");

    // A version published while the follower runs gets its metadata job (no builder runs
    // it here; e2e_registry.rs follows it to the builds), from the index's URL and sum.
    registry.publish(&release);
    let page = wait_for_crate(&server, SAMPLE_BINARY, |p| version(p, "0.2.0").is_some()).await;
    let v = version(&page, "0.2.0").unwrap();
    assert_eq!(v["status"], "queued");
    assert_eq!(v["cksum"], release.sha256());
    assert_eq!(v["builds"].as_array().map(Vec::len), Some(1), "{page}");
    let job = server.job(v["builds"][0]["job"].as_i64().unwrap()).await;
    assert_eq!(
        job["source_url"],
        registry.dl_url_of(SAMPLE_BINARY, "0.2.0")
    );
    assert_eq!(job["source_sha256"], release.sha256());
    assert_eq!(job["recipe"], "crate-metadata");
    assert_eq!(job["priority"], 0);
    assert_eq!(job["submitter"], "registry:local");
    assert_eq!(
        job["annotations"],
        json!({ "crate": SAMPLE_BINARY, "version": "0.2.0", "registry": "local" })
    );

    // Later rounds (the index unchanged, or changed elsewhere) queue nothing again.
    wait_rounds(&server, 3).await;
    assert_eq!(jobs_of(&server, SAMPLE_BINARY).await.len(), 1);

    // Yanked later: marked, not rebuilt.
    registry.yank(SAMPLE_BINARY, "0.2.0");
    wait_for_crate(&server, SAMPLE_BINARY, |p| {
        version(p, "0.2.0").is_some_and(|v| v["yanked"] == true)
    })
    .await;
    // A denied crate's release is recorded as skipped, with the reason.
    registry.publish(&denied);
    let page = wait_for_crate(&server, SAMPLE_TAMPERED, |p| version(p, "1.0.1").is_some()).await;
    let skipped = version(&page, "1.0.1").unwrap();
    assert_eq!(skipped["status"], "skipped");
    assert_eq!(skipped["reason"], "denied by registry.deny");
    assert!(jobs_of(&server, SAMPLE_TAMPERED).await.is_empty());
    assert!(server.get_ok("/registry").await["skipped"]
        .as_array()
        .is_some_and(|s| s.iter().any(|v| v["version"] == "1.0.1")));

    // A backfill queues existing, unyanked versions at the low priority, and only once.
    let (status, done) = server
        .post_admin(
            "/registry/backfill",
            &json!({ "crate": SAMPLE_BINARY, "versions": "<0.2" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{done}");
    assert_eq!(done["versions"], json!([samples.binary.version]));
    let queued = done["queued_jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(queued.len(), 1, "{done}");
    let backfilled = server.job(queued[0].as_i64().unwrap()).await;
    assert_eq!(backfilled["priority"], -100);
    assert_eq!(backfilled["recipe"], "crate-metadata");
    let page = server.get_ok(&format!("/crates/{SAMPLE_BINARY}")).await;
    assert_eq!(
        version(&page, &samples.binary.version).unwrap()["status"],
        "queued"
    );
    let (_, again) = server
        .post_admin("/registry/backfill", &json!({ "crate": SAMPLE_BINARY }))
        .await;
    assert_eq!(again["queued_jobs"], json!([]), "{again}");
    for (body, status, code) in [
        (
            json!({ "crate": "no-such-crate" }),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({ "crate": "../etc" }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({ "crate": SAMPLE_BINARY, "versions": "not a req" }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let (got, answer) = server.post_admin("/registry/backfill", &body).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{body} → {answer}"
        );
    }
    let (_, answer) = server
        .post_admin("/registry/backfill", &json!({ "crate": "no-such-crate" }))
        .await;
    assert_eq!(
        answer["error"]["message"],
        "crate \"no-such-crate\" is not in the index"
    );
    let (status, answer) = server.get("/crates/never-seen").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer["error"]["message"],
        "the registry follower has not seen crate never-seen: follow it (registry.crates) or backfill it"
    );

    // A submission names a crate; the server fills the source from the index.
    let (status, job) = server
        .post_admin("/jobs", &json!({ "crate": format!("{SAMPLE_LIBRARY}@{}", samples.library.version), "recipe": "cargo-build" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["source_sha256"], samples.library.sha256());
    assert_eq!(job["annotations"]["crate"], SAMPLE_LIBRARY);
    for (spec, status) in [
        (
            format!("{SAMPLE_BINARY}@0.1.1"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (format!("{SAMPLE_BINARY}@9.9.9"), StatusCode::NOT_FOUND),
        ("itoa".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let (got, answer) = server
            .post_admin("/jobs", &json!({ "crate": spec, "recipe": "cargo-build" }))
            .await;
        assert_eq!(got, status, "{spec} → {answer}");
    }
}

async fn a_git_follower_diffs_the_index_and_resumes_after_a_restart(db: TestDb) {
    let (registry, samples) = LocalRegistry::start_with_samples();
    let (third, fourth, fifth) = (
        CrateFile::binary(SAMPLE_BINARY, "0.3.0"),
        CrateFile::binary(SAMPLE_BINARY, "0.4.0"),
        CrateFile::binary(SAMPLE_BINARY, "0.5.0"),
    );
    let index = registry.git_index_url();
    let mut server = TestServer::start_with(db, |c| follow(c, index, &[])).await;
    // Following begins at the index's HEAD.
    let head = registry.git_head();
    for _ in 0..200 {
        if server.get_ok("/registry").await["position"] == head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = server.get_ok("/registry").await;
    assert_eq!(status["position"], head, "{status}");
    assert_eq!(status["protocol"], "git");

    registry.publish(&third);
    let page = wait_for_crate(&server, SAMPLE_BINARY, |p| version(p, "0.3.0").is_some()).await;
    assert_eq!(version(&page, "0.3.0").unwrap()["status"], "queued");
    // Only the diff counts: versions from before following began were not recorded.
    assert!(version(&page, &samples.binary.version).is_none(), "{page}");

    // Stopped, a version published meanwhile, started again: it is queued once, and nothing
    // before it is queued again (0.1.0 was backfilled, 0.5.0 published before the stop).
    // Backfills fetch the git index too, at the same time as the rounds and each other,
    // here right after a new commit, so there are objects to fetch: one fetch at a time, so
    // none fails on the repository's files.
    registry.publish(&fifth);
    let body = json!({ "crate": SAMPLE_BINARY, "versions": "<0.2" });
    let backfills = (0..8).map(|_| server.post_admin("/registry/backfill", &body));
    for (status, answer) in futures_util::future::join_all(backfills).await {
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }

    server.restart().await;
    registry.publish(&fourth);
    wait_for_crate(&server, SAMPLE_BINARY, |p| version(p, "0.4.0").is_some()).await;
    wait_rounds(&server, 2).await;
    let jobs = jobs_of(&server, SAMPLE_BINARY).await;
    let mut versions: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j["annotations"]["version"].as_str())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, ["0.1.0", "0.3.0", "0.4.0", "0.5.0"]);
    assert_eq!(
        server.get_ok("/registry").await["position"],
        registry.git_head()
    );
}

async fn two_replicas_following_one_registry_queue_each_version_once(db: TestDb) {
    let (registry, _samples) = LocalRegistry::start_with_samples();
    let releases: Vec<CrateFile> = (0..6)
        .map(|minor| CrateFile::binary(SAMPLE_BINARY, &format!("0.{}.0", minor + 5)))
        .collect();
    let index = registry.sparse_index_url();
    let database_url = db.url().to_owned();
    let first = TestServer::start_with(db, |c| follow(c, index.clone(), &[SAMPLE_BINARY])).await;
    // A second backend process on the same database, with its own data directory, following
    // the same registry under the same name: a replica, as operators run one.
    let config_dir = tempfile::tempdir().expect("replica config dir");
    let config_path = config_dir.path().join("replica.toml");
    std::fs::write(
        &config_path,
        format!(
            "[registry]\nname = \"local\"\nindex = \"{index}\"\ncrates = [\"{SAMPLE_BINARY}\"]\n\
             deny = [\"{SAMPLE_TAMPERED}\"]\npoll_interval_secs = 1\n"
        ),
    )
    .expect("writing the replica's config");
    let mut replica = BackendProcess::start(
        &database_url,
        &["--config".to_owned(), config_path.display().to_string()],
    )
    .await;
    wait_for_crate(&first, SAMPLE_BINARY, |p| version(p, "0.1.0").is_some()).await;

    // Both fetch every 100 ms and race for each release.
    for release in &releases {
        registry.publish(release);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let last = releases
        .last()
        .map(|r| r.version.clone())
        .unwrap_or_default();
    wait_for_crate(&first, SAMPLE_BINARY, |p| version(p, &last).is_some()).await;
    wait_rounds(&first, 3).await;
    let jobs = jobs_of(&first, SAMPLE_BINARY).await;
    let mut versions: Vec<String> = jobs
        .iter()
        .filter_map(|j| j["annotations"]["version"].as_str().map(str::to_owned))
        .collect();
    versions.sort();
    let mut expected: Vec<String> = releases.iter().map(|r| r.version.clone()).collect();
    expected.sort();
    assert_eq!(
        versions, expected,
        "each release queued once by the two replicas"
    );
    replica.stop().await;
}
