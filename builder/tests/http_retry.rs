//! Uploads and source fetches across a backend outage, against a real HTTP server on
//! loopback: a server that is down (its port closed) for 4 s and then comes up is waited
//! for; 503 with `Retry-After` is retried no sooner than it says; a 400 is final; and a job
//! whose deadline comes first fails with an upload error that says so.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildfleet_builder::artifacts::PreparedArtifact;
use buildfleet_builder::config::Strategy;
use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeConfig};
use buildfleet_builder::source::{fetch, SourceError};
use buildfleet_builder::upload::{upload, UploadError};
use buildfleet_protocol::{BuildErrorKind, Outcome, SourceSpec};
use common::*;

const OUTAGE: Duration = Duration::from_secs(4);

/// A loopback address nobody listens on (yet).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn client() -> awc::Client {
    buildfleet_builder::http::client(&buildfleet_builder::http::tls_config(None).unwrap())
}

fn artifact(dir: &std::path::Path, body: &[u8]) -> PreparedArtifact {
    let file = dir.join("artifact.bin");
    std::fs::write(&file, body).unwrap();
    PreparedArtifact {
        name: "artifact.bin".into(),
        file,
        size: body.len() as u64,
        sha256: sha256(body),
    }
}

fn deadline_in(d: Duration) -> Option<tokio::time::Instant> {
    Some(tokio::time::Instant::now() + d)
}

/// Brings the server up on `addr` after the outage.
fn come_up_after_outage(addr: SocketAddr, state: Arc<ServerState>) {
    actix_rt::spawn(async move {
        tokio::time::sleep(OUTAGE).await;
        start_server_on(addr, state);
    });
}

#[actix_rt::test]
async fn an_upload_waits_out_a_backend_restart() {
    let addr = closed_port();
    let state = Arc::new(ServerState::default());
    come_up_after_outage(addr, state.clone());
    let dir = tempfile::tempdir().unwrap();
    let body = vec![5u8; 200_000];
    let artifact = artifact(dir.path(), &body);
    let started = Instant::now();
    let digest = upload(
        &client(),
        &one_backend(),
        &format!("http://{addr}/upload"),
        TOKEN,
        &artifact,
        deadline_in(Duration::from_secs(30)),
    )
    .await
    .expect("the upload succeeds once the server is back");
    assert!(started.elapsed() >= OUTAGE, "{:?}", started.elapsed());
    assert_eq!(digest.sha256, sha256(&body));
    assert_eq!(
        state.uploads.lock().unwrap().get("artifact.bin"),
        Some(&body),
        "the whole file arrived"
    );
}

#[actix_rt::test]
async fn a_source_fetch_waits_out_a_backend_restart() {
    let addr = closed_port();
    let state = Arc::new(ServerState::default());
    let body = vec![9u8; 100_000];
    state
        .files
        .lock()
        .unwrap()
        .insert("/src.tar.gz".into(), body.clone());
    come_up_after_outage(addr, state.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("archive");
    let spec = SourceSpec {
        url: format!("http://{addr}/src.tar.gz"),
        sha256: sha256(&body),
        max_bytes: 1 << 20,
    };
    let started = Instant::now();
    let size = fetch(
        &client(),
        &one_backend(),
        &spec,
        &dest,
        deadline_in(Duration::from_secs(30)),
    )
    .await
    .expect("the fetch succeeds once the server is back");
    assert!(started.elapsed() >= OUTAGE, "{:?}", started.elapsed());
    assert_eq!(size, body.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[actix_rt::test]
async fn service_unavailable_is_retried_after_its_retry_after() {
    let server = start_server();
    server
        .state
        .failures
        .lock()
        .unwrap()
        .extend([(503, Some(1)), (502, None)]);
    let dir = tempfile::tempdir().unwrap();
    let artifact = artifact(dir.path(), b"payload");
    let started = Instant::now();
    upload(
        &client(),
        &one_backend(),
        &format!("{}/upload", server.base),
        TOKEN,
        &artifact,
        deadline_in(Duration::from_secs(30)),
    )
    .await
    .expect("the third try succeeds");
    assert_eq!(server.state.puts.load(Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried {:?} after a Retry-After of 1 s",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn a_client_error_is_not_retried() {
    let server = start_server();
    server.state.failures.lock().unwrap().push_back((400, None));
    let dir = tempfile::tempdir().unwrap();
    let artifact = artifact(dir.path(), b"payload");
    let err = upload(
        &client(),
        &one_backend(),
        &format!("{}/upload", server.base),
        TOKEN,
        &artifact,
        deadline_in(Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, UploadError::Refused { status: 400, .. }),
        "{err}"
    );
    assert_eq!(server.state.puts.load(Ordering::SeqCst), 1, "tried once");

    server.state.failures.lock().unwrap().push_back((404, None));
    let spec = SourceSpec {
        url: format!("{}/src.tar.gz", server.base),
        sha256: sha256(b""),
        max_bytes: 1 << 20,
    };
    let err = fetch(
        &client(),
        &one_backend(),
        &spec,
        &dir.path().join("archive"),
        deadline_in(Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SourceError::Status { status: 404 }), "{err}");
    assert_eq!(server.state.gets.load(Ordering::SeqCst), 1, "fetched once");
}

#[actix_rt::test]
async fn a_job_whose_deadline_comes_first_fails_with_an_upload_error() {
    // The source comes from a live server; the upload URL points at a port that stays closed.
    let server = start_server();
    let archive = tar_gz(&[("pkg/input.txt", b"input", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    let recipe = RecipeConfig {
        name: "copy".into(),
        version: "1".into(),
        commands: vec![vec![
            "sh".into(),
            "-c".into(),
            "cp input.txt \"$BUILDFLEET_OUT/copy.txt\"".into(),
        ]],
        env: Default::default(),
        artifacts: vec![ArtifactConfig {
            name: "copy.txt".into(),
            path: "copy.txt".into(),
            pack: Pack::File,
        }],
        image: None,
        version_commands: Vec::new(),
    };
    let env = job_env(work.path(), Strategy::Process, vec![recipe]);
    let mut job = assignment(&server, &url, sha256(&archive), "copy");
    job.upload_url = format!("http://{}/upload", closed_port());
    job.timeout_secs = 3;
    let started = Instant::now();
    let (response, events) = run(&env, job).await;
    assert_eq!(
        response.outcome,
        Outcome::Failed,
        "{:?} {:?}",
        response.error,
        log_lines(&events)
    );
    let error = response.error.expect("an error");
    assert_eq!(error.kind, BuildErrorKind::Upload);
    assert!(
        error.message.contains("copy.txt")
            && error.message.contains("deadline")
            && error.message.to_lowercase().contains("refused"),
        "{}",
        error.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up before the deadline, not at it: {:?}",
        started.elapsed()
    );
}

/// A server that dies after sending a source's headers (Content-Length and no body) costs a
/// try, not the job: the next try gets the whole source.
#[actix_rt::test]
async fn a_source_cut_after_its_headers_is_fetched_again() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = b"the whole source archive".to_vec();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = body.clone();
    actix_rt::spawn(async move {
        for cut in [true, false] {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                served.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            if !cut {
                socket.write_all(&served).await.unwrap();
            }
            socket.shutdown().await.unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let spec = SourceSpec {
        url: format!("http://{addr}/src.tar.gz"),
        sha256: sha256(&body),
        max_bytes: 1 << 20,
    };
    let size = fetch(
        &client(),
        &one_backend(),
        &spec,
        &dir.path().join("archive"),
        deadline_in(Duration::from_secs(30)),
    )
    .await
    .expect("the second try gets it");
    assert_eq!(size, body.len() as u64);
}
