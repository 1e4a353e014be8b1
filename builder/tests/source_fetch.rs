//! Source fetch against a real local HTTP server: digest verified, mismatches and
//! oversized sources fail with their own kinds and nothing runs.

mod common;

use buildfleet_builder::backends::Backends;
use buildfleet_builder::config::{connect_url, Strategy};
use buildfleet_builder::recipes::RecipeConfig;
use buildfleet_builder::source::{fetch, SourceError};
use buildfleet_protocol::{BuildErrorKind, Outcome, SourceSpec};
use common::*;

#[actix_rt::test]
async fn fetches_and_verifies_a_source() {
    let server = start_server();
    let body = vec![7u8; 300_000];
    let url = server.put_file("/src.tar.gz", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("archive");
    let client =
        buildfleet_builder::http::client(&buildfleet_builder::http::tls_config(None).unwrap());
    let spec = SourceSpec {
        url,
        sha256: sha256(&body),
        max_bytes: 1 << 20,
    };
    let size = fetch(&client, &one_backend(), &spec, &dest, None)
        .await
        .expect("fetch");
    assert_eq!(size, body.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

/// A source URL naming a configured replica that is gone is fetched from the replica the
/// builder is connected to now; another host's URL is not.
#[actix_rt::test]
async fn a_source_of_a_dead_replica_comes_from_the_current_one() {
    let server = start_server();
    let body = vec![3u8; 50_000];
    let url = server.put_file("/api/v1/sources/abc", body.clone());
    let live = url
        .strip_suffix("/api/v1/sources/abc")
        .and_then(|base| base.strip_prefix("http://"))
        .expect("the server's origin")
        .to_owned();
    // A port nothing listens on: the replica that handed out the URL and died.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let backends = Backends::new(vec![
        connect_url(&format!("ws://{dead}")).unwrap(),
        connect_url(&format!("ws://{live}")).unwrap(),
    ]);
    backends.advance();
    let client =
        buildfleet_builder::http::client(&buildfleet_builder::http::tls_config(None).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let spec = SourceSpec {
        url: format!("http://{dead}/api/v1/sources/abc"),
        sha256: sha256(&body),
        max_bytes: 1 << 20,
    };
    let dest = dir.path().join("archive");
    let size = fetch(&client, &backends, &spec, &dest, None)
        .await
        .expect("fetched from the live replica");
    assert_eq!(size, body.len() as u64);

    // Back on the first replica, the same URL has nowhere else to go.
    backends.advance();
    let deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(300));
    let err = fetch(
        &client,
        &backends,
        &spec,
        &dir.path().join("again"),
        deadline,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), BuildErrorKind::SourceFetch, "{err}");
}

#[actix_rt::test]
async fn a_source_over_the_limit_is_refused_and_removed() {
    let server = start_server();
    let body = vec![1u8; 200_000];
    let url = server.put_file("/big.tar.gz", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("archive");
    let client =
        buildfleet_builder::http::client(&buildfleet_builder::http::tls_config(None).unwrap());
    let spec = SourceSpec {
        url,
        sha256: sha256(&body),
        max_bytes: 100_000,
    };
    let err = fetch(&client, &one_backend(), &spec, &dest, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::TooLarge { limit: 100_000 }),
        "{err}"
    );
    assert_eq!(err.kind(), BuildErrorKind::SourceTooLarge);
    assert!(!dest.exists());
}

#[actix_rt::test]
async fn a_digest_mismatch_fails_the_job_before_anything_runs() {
    let server = start_server();
    let archive = tar_gz(&[("pkg/hello.txt", b"hello", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive);
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("ran");
    // The recipe would leave a marker file if it ever ran.
    let recipe = RecipeConfig {
        name: "marker".into(),
        version: "1".into(),
        commands: vec![vec![
            "sh".into(),
            "-c".into(),
            format!("touch {}", marker.display()),
        ]],
        env: Default::default(),
        artifacts: Vec::new(),
        image: None,
        version_commands: Vec::new(),
    };
    let env = job_env(work.path(), Strategy::Process, vec![recipe]);
    let wrong = sha256(b"something else");
    let (response, _events) = run(&env, assignment(&server, &url, wrong, "marker")).await;
    assert_eq!(response.outcome, Outcome::Failed);
    let error = response.error.expect("an error");
    assert_eq!(
        error.kind,
        BuildErrorKind::SourceDigestMismatch,
        "{}",
        error.message
    );
    assert!(
        !marker.exists(),
        "the recipe must not run on an unverified source"
    );
    assert!(response.artifacts.is_empty());
    assert!(server.state.uploads.lock().unwrap().is_empty());
}
