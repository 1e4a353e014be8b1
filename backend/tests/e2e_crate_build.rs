//! End to end with a real crate: the `itoa` `.crate` from the local registry cache is
//! uploaded, a real builder builds it with `cargo build --release --offline`, and the
//! published artifact checks out as a submitter would check it: its SHA-256, its contents,
//! and its build statement with the stock `ssh-keygen -Y verify`, which names the crate and
//! version the job was annotated with.

use std::time::Duration;

use buildfleet_protocol::signing::STATEMENT_NAMESPACE;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    itoa_crate, sha256_hex, start_server, tar_gz_files, upload_source, wait_outcome, E2eBuilder,
};
use buildfleet_testkit::keys::ssh_keygen_verify;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    itoa_crate_builds_and_its_artifact_verifies,
}

/// A debug-less release build of a dependency-free crate, plus fetch and upload.
const CARGO_JOB_LIMIT: Duration = Duration::from_secs(120);

async fn itoa_crate_builds_and_its_artifact_verifies(db: TestDb) {
    let (crate_path, crate_bytes) = itoa_crate();
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "crate-builder", |_| {}).await;
    let (digest, _) = upload_source(&server, crate_bytes).await;
    let version = crate_path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("itoa-"))
        .expect("a cached itoa-VERSION.crate")
        .to_owned();
    let annotations = json!({
        "crate": "itoa",
        "version": version,
        "target": "x86_64-unknown-linux-gnu",
        "message": "Built by the e2e test\n\n\"quoted\", and Zoë's.",
    });

    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": "cargo-build",
            "parameters": { "offline": "true" },
            "annotations": annotations,
        }))
        .await;
    let job = wait_outcome(&server, id, "succeeded", CARGO_JOB_LIMIT).await;
    assert_eq!(job["builder_id"], builder.id, "built by our builder");

    let listing = server.get_ok(&format!("/jobs/{id}/artifacts")).await;
    let artifacts = listing["artifacts"].as_array().expect("artifact list");
    assert_eq!(
        artifacts.len(),
        1,
        "one packed artifact from {}: {listing:#}",
        crate_path.display()
    );
    let artifact = &artifacts[0];
    let name = artifact["name"].as_str().expect("artifact name");
    assert!(
        name.starts_with("itoa-") && name.ends_with(".tar.gz"),
        "artifact name {name}"
    );
    let published = artifact["sha256"].as_str().expect("published digest");
    let bytes = download(
        &server,
        artifact["url"].as_str().expect("artifact URL"),
        published,
    )
    .await;
    assert_eq!(artifact["size"], bytes.len() as u64);
    assert_eq!(
        sha256_hex(&bytes),
        published,
        "the bytes hash to the published digest"
    );
    let files = tar_gz_files(&bytes);
    assert!(
        files
            .iter()
            .any(|(path, size)| path.ends_with(".rlib") && *size > 0),
        "the artifact holds the built library: {files:?}"
    );

    let (_, statement) = server
        .get_raw(listing["statement_url"].as_str().expect("statement URL"))
        .await;
    let (_, signature) = server
        .get_raw(listing["signature_url"].as_str().expect("signature URL"))
        .await;
    let (_, allowed_signers) = server
        .get_raw(
            listing["allowed_signers_url"]
                .as_str()
                .expect("signers URL"),
        )
        .await;
    let (verified, output) = ssh_keygen_verify(
        std::str::from_utf8(&allowed_signers).expect("allowed signers are text"),
        &builder.name,
        STATEMENT_NAMESPACE,
        &statement,
        std::str::from_utf8(&signature).expect("the signature is armored text"),
    );
    assert!(
        verified,
        "ssh-keygen -Y verify refused the statement: {output}"
    );
    // The annotations are signed: one changed, and the statement no longer verifies.
    let relabelled = String::from_utf8(statement.clone())
        .expect("the statement is text")
        .replace("\"crate\": \"itoa\"", "\"crate\": \"evil\"");
    assert_ne!(relabelled.as_bytes(), statement.as_slice());
    let (verified, _) = ssh_keygen_verify(
        std::str::from_utf8(&allowed_signers).expect("allowed signers are text"),
        &builder.name,
        STATEMENT_NAMESPACE,
        relabelled.as_bytes(),
        std::str::from_utf8(&signature).expect("the signature is armored text"),
    );
    assert!(!verified, "a relabelled statement must not verify");

    // What was verified vouches for this very job and artifact.
    let statement: Value = serde_json::from_slice(&statement).expect("the statement is JSON");
    assert_eq!(statement["job_id"], id, "{statement:#}");
    assert_eq!(statement["source_sha256"], digest.as_str());
    assert_eq!(statement["recipe"], "cargo-build");
    assert_eq!(statement["outcome"], "succeeded");
    assert_eq!(statement["annotations"], annotations, "{statement:#}");
    let signed = statement["artifacts"].as_array().expect("signed artifacts");
    assert!(
        signed
            .iter()
            .any(|a| a["name"] == name && a["sha256"] == published),
        "the statement names the published artifact: {statement:#}"
    );

    builder.stop().await;
    server.shutdown().await;
}

/// Downloads an artifact; the `X-Buildfleet-Sha256` header must name `published`.
async fn download(server: &TestServer, url: &str, published: &str) -> Vec<u8> {
    let mut response = server
        .http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    let header = response
        .headers()
        .get("X-Buildfleet-Sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(header.as_deref(), Some(published), "digest header of {url}");
    response
        .body()
        .limit(256 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"))
        .to_vec()
}
