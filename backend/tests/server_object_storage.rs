//! Blobs in an S3-compatible object store (moto's server on loopback, started by
//! scripts/s3-server.sh; see buildfleet_testkit::s3): a job end to end on one backend
//! (upload, download whole and by Range, statement, log whole and live), two backends on one
//! database and one bucket serving each other's artifacts and logs, a store that dies during
//! an upload (nothing published; after its restart uploads work), an unreachable store at
//! start, and the refusal of local disk for several replicas on PostgreSQL. Retention on the
//! bucket: expiry by count and by age removes the artifact and log objects and the storage
//! gauges drop; deletes that fail while the store is down are recorded and done once it is
//! back.

use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_backend::config::StorageConfig;
use buildfleet_backend::store::JobId;
use buildfleet_protocol::{CompletionResult, JobAssignment, Outcome};
use buildfleet_testkit::builder_client::{digest_of, job_ref, upload, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::TcpProxy;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::s3::{PrivateS3, TestBucket};
use buildfleet_testkit::server::{error_code, wait_until, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::json;

/// Deterministic bytes that do not repeat at any part size.
fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn start_on(db: TestDb, bucket: &TestBucket, admin_token: Option<&str>) -> TestServer {
    let settings = bucket.settings();
    let token = admin_token.map(str::to_owned);
    TestServer::start_with(db, move |config| {
        config.storage = StorageConfig::S3(Box::new(settings));
        if token.is_some() {
            config.admin_token = token;
        }
    })
    .await
}

/// GET `url` with an optional `Range` header: status, Content-Range and body.
async fn get_range(url: &str, range: Option<&str>) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut request = awc::Client::new().get(url).timeout(Duration::from_secs(60));
    if let Some(range) = range {
        request = request.insert_header(("Range", range));
    }
    let mut response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let content_range = response
        .headers()
        .get("Content-Range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body()
        .limit(128 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    (response.status(), content_range, body.to_vec())
}

async fn assigned(server: &TestServer, builder: &mut BuilderClient) -> (i64, JobAssignment) {
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    (id, job)
}

async fn a_job_runs_end_to_end_on_object_storage(db: TestDb) {
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    let server = start_on(db, &bucket, None).await;
    let key = TestKey::generate("s3-builder");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let (id, job) = assigned(&server, &mut builder).await;

    // The log, live: read while the job runs, as each flush stored it.
    builder.log(job_ref(&job), 1, "compiling itoa");
    builder.expect_event_ack(job_ref(&job), 1).await;
    assert_eq!(server.log_lines(id).await, ["compiling itoa"]);
    builder.log(job_ref(&job), 2, "finished");
    builder.expect_event_ack(job_ref(&job), 2).await;
    assert_eq!(server.log_lines(id).await, ["compiling itoa", "finished"]);

    // Larger than a multipart part, so the upload has several parts and a short last one.
    let body = data(17 * 1024 * 1024 + 123);
    let digest = upload_ok(&job, "out.tar.gz", &body).await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "succeeded").await;

    let url = server.api(&format!("/jobs/{id}/artifacts/out.tar.gz"));
    let (status, _, whole) = get_range(&url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(whole == body, "the whole download differs");
    // A resumed download: the rest from an offset inside the second part.
    let from = 9 * 1024 * 1024 + 7;
    let (status, content_range, rest) = get_range(&url, Some(&format!("bytes={from}-"))).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        content_range.as_deref(),
        Some(format!("bytes {from}-{}/{}", body.len() - 1, body.len()).as_str())
    );
    assert!(rest == body[from..], "the resumed part differs");
    let (status, _, middle) = get_range(&url, Some("bytes=100-199")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(middle, body[100..200]);
    let (status, content_range, _) = get_range(&url, Some(&format!("bytes={}-", body.len()))).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(content_range, Some(format!("bytes */{}", body.len())));

    let (status, statement) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement")))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&statement)
    );
    assert_eq!(server.log_lines(id).await, ["compiling itoa", "finished"]);

    // What went where: the artifact and one object per flushed log batch, nothing pending.
    let keys = bucket.keys().await;
    assert!(
        keys.contains(&format!("artifacts/{id}/1/out.tar.gz")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("logs/{id}/1/"))),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.starts_with("pending/")), "{keys:?}");

    // Deleting the job's artifacts deletes their objects.
    let (status, answer) = server
        .call(
            awc::http::Method::DELETE,
            &format!("/jobs/{id}/artifacts"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let keys = bucket.keys().await;
    assert!(
        !keys
            .iter()
            .any(|k| k.starts_with(&format!("artifacts/{id}/"))),
        "{keys:?}"
    );
    server.shutdown().await;
}

/// Two backends on one PostgreSQL database and one bucket: what one stored, the other serves.
#[actix_rt::test]
async fn two_backends_share_artifacts_and_logs() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let one = start_on(db, &bucket, Some("shared-admin-token")).await;
    // The second backend's own TestDb is unused: it is pointed at the first one's database.
    let spare = TestDb::postgres().expect("PostgreSQL is set");
    let settings = bucket.settings();
    let two = TestServer::start_with(spare, move |config| {
        config.database_url = url;
        config.admin_token = Some("shared-admin-token".into());
        config.storage = StorageConfig::S3(Box::new(settings));
    })
    .await;

    let key = TestKey::generate("replica-builder");
    one.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&one.ws_url(), &key).await;
    let (id, job) = assigned(&one, &mut builder).await;
    builder.log(job_ref(&job), 1, "built through one");
    builder.expect_event_ack(job_ref(&job), 1).await;
    // Live: the job still runs, its log is read through the other backend.
    assert_eq!(two.log_lines(id).await, ["built through one"]);
    let body = data(3 * 1024 * 1024);
    let digest = upload_ok(&job, "out.bin", &body).await;
    builder.log(job_ref(&job), 2, "uploaded");
    builder.expect_event_ack(job_ref(&job), 2).await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    two.wait_for_state(id, "succeeded").await;

    let (status, _, downloaded) =
        get_range(&two.api(&format!("/jobs/{id}/artifacts/out.bin")), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(downloaded == body, "the artifact read through two differs");
    let (status, _, tail) = get_range(
        &two.api(&format!("/jobs/{id}/artifacts/out.bin")),
        Some("bytes=-10"),
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, body[body.len() - 10..]);
    assert_eq!(two.log_lines(id).await, ["built through one", "uploaded"]);
    assert_eq!(one.log_lines(id).await, ["built through one", "uploaded"]);
    two.shutdown().await;
    one.shutdown().await;
}

/// The store dies during an upload: the upload fails with 503 and nothing is published under
/// the artifact's key; once the store is back, an upload works.
#[actix_rt::test]
async fn a_store_failure_during_an_upload_publishes_nothing() {
    if TestBucket::create().await.is_none() {
        return; // no S3 server installed (outside CI)
    }
    let mut s3 = PrivateS3::start();
    let bucket = TestBucket::create_at(&s3.endpoint()).await;
    let settings = bucket.settings();
    // The builder's attempt outlives the store's restart (a loaded machine may take seconds).
    let server = TestServer::start_with(TestDb::sqlite(), move |config| {
        config.storage = StorageConfig::S3(Box::new(settings));
        config.timings.heartbeat_timeout = Duration::from_secs(30);
        config.timings.reconnect_grace = Duration::from_secs(30);
    })
    .await;
    let key = TestKey::generate("s3-failure");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let (id, job) = assigned(&server, &mut builder).await;

    // 48 MiB: the server is killed while the first parts go up.
    let body = data(48 * 1024 * 1024);
    let digest = digest_of("big.bin", &body);
    let upload_url = job.upload_url.clone();
    let token = job.job_token.clone();
    let sha = digest.sha256.to_string();
    let sent = body.clone();
    let uploading = tokio::task::spawn_local(async move {
        upload(&upload_url, &token, "big.bin", &sent, &sha).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s3.stop();
    let (status, answer) = uploading.await.expect("the upload task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(error_code(&answer), "unavailable", "{answer}");
    let (_, listed) = server.get(&format!("/jobs/{id}/artifacts")).await;
    assert!(
        !listed.to_string().contains("big.bin"),
        "published after a failed upload: {listed}"
    );

    // Back (empty, as moto keeps nothing): the bucket again, then a new upload works.
    s3.resume_async().await;
    let again = TestBucket {
        endpoint: bucket.endpoint.clone(),
        bucket: bucket.bucket.clone(),
    };
    let create = awc::Client::new()
        .put(format!("{}/{}", again.endpoint, again.bucket))
        .send()
        .await
        .expect("recreating the bucket");
    assert!(create.status().is_success());
    assert!(again.keys().await.is_empty(), "nothing was published");
    let small = data(1024 * 1024);
    let digest = upload_ok(&job, "small.bin", &small).await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    let (status, _, downloaded) = get_range(
        &server.api(&format!("/jobs/{id}/artifacts/small.bin")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(downloaded == small);
    server.shutdown().await;
}

/// An unreachable store stops the backend at start, naming the bucket and the endpoint.
#[actix_rt::test]
async fn an_unreachable_store_is_a_clear_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    // Nothing listens there once the listener is dropped.
    let bucket = TestBucket {
        endpoint: format!("http://127.0.0.1:{port}"),
        bucket: "missing".into(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = buildfleet_backend::config::ServerConfig::with_data_dir(dir.path());
    config.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.storage = StorageConfig::S3(Box::new(bucket.settings()));
    let started = std::time::Instant::now();
    let error = match buildfleet_backend::server::start(config).await {
        Ok(_) => panic!("started without its object store"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("object storage") && error.contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(error.contains("\"missing\""), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded retries: {:?}",
        started.elapsed()
    );
}

/// Several replicas on PostgreSQL with local disk are refused unless forced; one replica (the
/// Compose file, the tests) starts as before.
#[test]
fn local_disk_is_refused_for_several_replicas_on_postgresql() {
    use buildfleet_backend::config::{ServeArgs, ServerConfig};
    let dir = tempfile::tempdir().expect("temp dir");
    let load = |storage: &str| {
        let path = dir.path().join("bf.toml");
        std::fs::write(
            &path,
            format!("database_url = \"postgres://bf@127.0.0.1/bf\"\n{storage}"),
        )
        .expect("write");
        ServerConfig::resolve(&ServeArgs {
            config: Some(path),
            data_dir: Some(dir.path().to_path_buf()),
            ..ServeArgs::default()
        })
    };
    assert_eq!(load("").expect("one replica").storage, StorageConfig::Fs);
    let refused = load("[storage]\nreplicas = 3\n").expect_err("refused");
    assert!(
        format!("{refused:#}").contains("allow_local_with_shared_database"),
        "{refused:#}"
    );
    assert_eq!(
        load("[storage]\nreplicas = 3\nallow_local_with_shared_database = true\n")
            .expect("forced")
            .storage,
        StorageConfig::Fs
    );
    let s3 = load("[storage]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\nreplicas = 3\n")
        .expect("s3");
    assert!(matches!(s3.storage, StorageConfig::S3(ref s) if s.bucket == "b"));
    let plain =
        load("[storage]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n")
            .expect_err("plain http refused");
    assert!(format!("{plain:#}").contains("allow_http"), "{plain:#}");
    assert!(load("[storage]\nkind = \"s3\"\n").is_err(), "no bucket");
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    kib * 1024
}

/// Uploads `body` as a source to the backend at `url`: the status.
async fn upload_source(url: &str, body: Vec<u8>) -> StatusCode {
    let response = awc::Client::new()
        .post(format!("{url}/api/v1/sources"))
        .bearer_auth(buildfleet_testkit::processes::ADMIN_TOKEN)
        .timeout(Duration::from_secs(120))
        .send_body(body)
        .await
        .expect("POST /api/v1/sources");
    response.status()
}

/// A 64 MiB upload to the object store raises the backend process's peak memory by far less
/// than 64 MiB: the body streams through in parts.
#[actix_rt::test]
async fn a_large_upload_keeps_the_backends_memory_flat() {
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bf.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing\"\nallow_http = true\n",
            bucket.bucket, bucket.endpoint
        ),
    )
    .expect("config");
    let database = format!("sqlite://{}", dir.path().join("bf.db").display());
    let mut backend = buildfleet_testkit::processes::BackendProcess::start(
        &database,
        &["--config".to_owned(), config.display().to_string()],
    )
    .await;
    let pid = backend.pid().expect("running");
    // Warm up every code path (client, TLS-less connection pool, multipart) with 20 MiB.
    assert_eq!(
        upload_source(&backend.url, data(20 * 1024 * 1024)).await,
        StatusCode::CREATED
    );
    let before = peak_rss(pid);
    let size = 64 * 1024 * 1024;
    let mut body = data(size);
    body[0] ^= 1; // another digest than any earlier upload
    assert_eq!(upload_source(&backend.url, body).await, StatusCode::CREATED);
    let after = peak_rss(pid);
    let grown = after.saturating_sub(before);
    eprintln!("peak RSS {before} -> {after} bytes (+{grown}) for a {size}-byte upload");
    assert!(
        // A part in flight, the request's queue and allocator slack: tens of MiB at most,
        // whatever the size; a body held whole would add all of its 64 MiB.
        grown < (size as u64) / 2,
        "peak RSS grew by {grown} bytes for a {size}-byte upload"
    );
    assert!(
        bucket
            .keys()
            .await
            .iter()
            .filter(|k| k.starts_with("sources/"))
            .count()
            == 2,
        "both sources stored"
    );
    backend.stop().await;
}

/// The storage gauge of `/metrics` for `default/default`'s `kind` (artifacts, logs).
async fn storage_gauge(server: &TestServer, kind: &str) -> i64 {
    let metrics = server.metrics().await;
    let prefix =
        format!("buildfleet_project_storage_bytes{{project=\"default/default\",kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .expect("a gauge value")
}

async fn wait_gauge(server: &TestServer, kind: &str, expected: i64) {
    wait_until(&format!("the {kind} gauge to be {expected}"), || async {
        (storage_gauge(server, kind).await == expected).then_some(())
    })
    .await;
}

/// A finished job of the connected `builder`: `lines` log lines stored, then the artifact
/// `out.bin` of `size` bytes. Answers its id and the bytes of its log rows.
async fn finished(
    server: &TestServer,
    builder: &mut BuilderClient,
    key: &TestKey,
    lines: u64,
    size: usize,
) -> (i64, i64) {
    let (id, job) = assigned(server, builder).await;
    for seq in 1..=lines {
        builder.log(job_ref(&job), seq, &format!("line {seq} of job {id}"));
        // One acknowledgement per line: each is a flush of its own, an object of its own.
        builder.expect_event_ack(job_ref(&job), seq).await;
    }
    let digest = upload_ok(&job, "out.bin", &data(size)).await;
    let result = builder
        .complete(key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "succeeded").await;
    let log_bytes = server
        .with_store(move |s| {
            s.log_chunks(JobId(id))
                .expect("log chunks")
                .iter()
                .map(|c| c.length)
                .sum::<i64>()
        })
        .await;
    (id, log_bytes)
}

/// The keys of `job`'s artifacts and log objects in `keys`.
fn objects_of(keys: &[String], job: i64) -> Vec<String> {
    keys.iter()
        .filter(|k| {
            k.starts_with(&format!("artifacts/{job}/")) || k.starts_with(&format!("logs/{job}/"))
        })
        .cloned()
        .collect()
}

async fn set_retention(server: &TestServer, policy: serde_json::Value) {
    let (status, body) = server
        .call(
            awc::http::Method::PUT,
            "/projects/default/default/retention",
            Some(&server.admin_token),
            Some(&policy),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn retention_removes_expired_objects_from_the_bucket(db: TestDb) {
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    let server = start_on(db, &bucket, None).await;
    let key = TestKey::generate("retention-builder");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let mut jobs = Vec::new();
    for n in 0..4 {
        let size = 1000 + n * 100;
        let (id, log_bytes) = finished(&server, &mut builder, &key, 3, size).await;
        jobs.push((id, i64::try_from(size).expect("size"), log_bytes));
    }
    let keys = bucket.keys().await;
    for (id, _, _) in &jobs {
        let objects = objects_of(&keys, *id);
        assert!(
            objects.contains(&format!("artifacts/{id}/1/out.bin")),
            "{objects:?}"
        );
        assert_eq!(
            objects.iter().filter(|k| k.starts_with("logs/")).count(),
            3,
            "one object per flushed line: {objects:?}"
        );
    }
    let artifact_bytes = |of: &[(i64, i64, i64)]| of.iter().map(|j| j.1).sum::<i64>();
    let log_bytes = |of: &[(i64, i64, i64)]| of.iter().map(|j| j.2).sum::<i64>();
    wait_gauge(&server, "artifacts", artifact_bytes(&jobs)).await;
    wait_gauge(&server, "logs", log_bytes(&jobs)).await;

    // By count: the two newest jobs keep their objects, the two oldest lose theirs.
    set_retention(
        &server,
        json!({ "artifacts": { "keep_last": 2 }, "logs": { "keep_last": 2 } }),
    )
    .await;
    let old: Vec<i64> = jobs[..2].iter().map(|j| j.0).collect();
    wait_until(
        "the two oldest jobs' objects to leave the bucket",
        || async {
            let keys = bucket.keys().await;
            old.iter()
                .all(|id| objects_of(&keys, *id).is_empty())
                .then_some(())
        },
    )
    .await;
    let keys = bucket.keys().await;
    for (id, _, _) in &jobs[2..] {
        assert_eq!(objects_of(&keys, *id).len(), 4, "kept: {keys:?}");
    }
    wait_gauge(&server, "artifacts", artifact_bytes(&jobs[2..])).await;
    wait_gauge(&server, "logs", log_bytes(&jobs[2..])).await;
    for id in &old {
        let detail = server.job(*id).await;
        assert!(
            detail["artifacts_expired_at"].is_i64() && detail["logs_expired_at"].is_i64(),
            "{detail}"
        );
    }

    // By age: everything finished is older than 0 days.
    set_retention(
        &server,
        json!({ "artifacts": { "max_age_days": 0 }, "logs": { "max_age_days": 0 } }),
    )
    .await;
    wait_until("every job's objects to leave the bucket", || async {
        let keys = bucket.keys().await;
        jobs.iter()
            .all(|(id, _, _)| objects_of(&keys, *id).is_empty())
            .then_some(())
    })
    .await;
    wait_gauge(&server, "artifacts", 0).await;
    wait_gauge(&server, "logs", 0).await;
    let (status, usage) = server.get("/projects/default/default/retention").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (usage["artifact_bytes"].clone(), usage["log_bytes"].clone()),
        (json!(0), json!(0))
    );
    builder.close().await;
    server.shutdown().await;
}

/// PUTs `body` under `key` in `bucket` (moto takes an unsigned request).
async fn put_object(bucket: &TestBucket, key: &str, body: Vec<u8>) {
    let url = format!("{}/{}/{key}", bucket.endpoint, bucket.bucket);
    let response = awc::Client::new()
        .put(&url)
        .send_body(body)
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert!(
        response.status().is_success(),
        "PUT {url}: {}",
        response.status()
    );
}

/// Waits up to `limit` for `check`, every 100 ms.
async fn wait_long<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store dies before the janitor's pass that expires two jobs: their rows go, the
/// objects' deletes fail and stay recorded (with their failure). The store comes back holding
/// its objects (a real store keeps them over a restart; moto keeps nothing, so they are put
/// back while the backend cannot reach it yet, through a proxy closed meanwhile); then the
/// janitor deletes them and forgets them.
async fn failed_blob_deletes_are_done_once_the_store_is_back(db: TestDb) {
    if TestBucket::create().await.is_none() {
        return; // no S3 server installed (outside CI)
    }
    let mut s3 = PrivateS3::start();
    let bucket = TestBucket::create_at(&s3.endpoint()).await;
    let upstream: std::net::SocketAddr = s3
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("the S3 server's address");
    let proxy = TcpProxy::start(upstream).await;
    let through_proxy = TestBucket {
        endpoint: format!("http://{}", proxy.addr),
        bucket: bucket.bucket.clone(),
    };
    let server = start_on(db, &through_proxy, None).await;
    let key = TestKey::generate("s3-janitor");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let mut jobs = Vec::new();
    for size in [2048, 4096] {
        jobs.push(finished(&server, &mut builder, &key, 2, size).await.0);
    }
    let kept = bucket.keys().await;
    let mut objects: Vec<String> = jobs.iter().flat_map(|id| objects_of(&kept, *id)).collect();
    objects.sort();
    assert_eq!(
        objects.len(),
        6,
        "an artifact and two log objects each: {kept:?}"
    );

    s3.stop();
    set_retention(
        &server,
        json!({ "artifacts": { "max_age_days": 0 }, "logs": { "max_age_days": 0 } }),
    )
    .await;
    // The rows go at once; each delete that failed is recorded with why.
    let pending = wait_long(
        "the failed deletes to be recorded",
        Duration::from_secs(60),
        || async {
            let detail = server.job(jobs[1]).await;
            let expired =
                detail["logs_expired_at"].is_i64() && detail["artifacts_expired_at"].is_i64();
            let pending = server
                .with_store(|s| s.pending_blob_deletions().expect("pending deletions"))
                .await;
            (expired && pending.iter().any(|p| p.attempts > 0)).then_some(pending)
        },
    )
    .await;
    let mut recorded: Vec<String> = pending.iter().map(|p| p.key.clone()).collect();
    recorded.sort();
    recorded.dedup();
    assert_eq!(
        recorded, objects,
        "every object of the expired jobs is recorded"
    );
    let failed = pending
        .iter()
        .find(|p| p.attempts > 0)
        .expect("a failed delete");
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("object storage unavailable")),
        "{failed:?}"
    );
    for id in &jobs {
        let detail = server.job(*id).await;
        assert_eq!(detail["artifacts"], json!([]), "{detail}");
    }

    // Back with its objects, still out of the backend's reach; then reachable again.
    proxy.close().await;
    s3.resume_async().await;
    let create = awc::Client::new()
        .put(format!("{}/{}", bucket.endpoint, bucket.bucket))
        .send()
        .await
        .expect("recreating the bucket");
    assert!(create.status().is_success());
    for object in &objects {
        put_object(
            &bucket,
            object,
            format!("kept by the store: {object}").into_bytes(),
        )
        .await;
    }
    assert_eq!(bucket.keys().await, objects);
    let still = server
        .with_store(|s| s.pending_blob_deletions().expect("pending deletions"))
        .await;
    assert!(!still.is_empty(), "the deletes wait for the store");
    let _proxy = TcpProxy::start_on(proxy.addr, upstream).await;
    wait_long(
        "the recorded objects to leave the bucket",
        Duration::from_secs(60),
        || async {
            let keys = bucket.keys().await;
            let pending = server
                .with_store(|s| s.pending_blob_deletions().expect("pending deletions"))
                .await;
            (keys.is_empty() && pending.is_empty()).then_some(())
        },
    )
    .await;
    wait_gauge(&server, "artifacts", 0).await;
    wait_gauge(&server, "logs", 0).await;
    builder.close().await;
    server.shutdown().await;
}

server_tests!(
    a_job_runs_end_to_end_on_object_storage,
    retention_removes_expired_objects_from_the_bucket,
    failed_blob_deletes_are_done_once_the_store_is_back,
);

/// An upload received but never committed (its backend died between the two) is left under
/// `pending/`; the janitor's sweep removes such objects by age and nothing else.
#[actix_rt::test]
async fn uploads_left_uncommitted_are_removed_by_age() {
    use buildfleet_backend::storage::{S3Storage, Storage};
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    put_object(&bucket, "pending/left-by-a-crash", b"partial".to_vec()).await;
    put_object(&bucket, "artifacts/1/1/kept.txt", b"kept".to_vec()).await;
    let storage = std::sync::Arc::new(S3Storage::new(&bucket.settings()).expect("storage"));
    let sweep = move |older_than: Duration| {
        let storage = storage.clone();
        async move {
            tokio::task::spawn_blocking(move || storage.remove_stale_pending(older_than))
                .await
                .expect("sweep thread")
                .expect("sweep")
        }
    };
    assert_eq!(
        sweep(Duration::from_secs(3600)).await,
        0,
        "too young to be stale"
    );
    assert_eq!(bucket.keys().await.len(), 2);
    // Seconds pass: object stores keep modification times to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sweep(Duration::ZERO).await, 1);
    assert_eq!(bucket.keys().await, ["artifacts/1/1/kept.txt"]);
}
