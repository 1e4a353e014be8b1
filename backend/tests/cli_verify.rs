//! `buildfleet verify ARTIFACT_FILE` (issue 19 item 3), the real binary against a real
//! backend's keys, both databases. Offline: an in-toto statement signed in DSSE by two
//! admitted builders' keys, checked against the backend's allowed-signers file (the keys'
//! lifetimes included): a good file passes and names who built and reproduced it; a changed
//! byte, a tampered signature, a signer missing from the file, a key outside its validity and
//! too few signers fail with exit code 5. Online: the digest lookup finds the job that
//! published a file, for the callers who may see it.

use std::path::{Path, PathBuf};

use awc::http::StatusCode;
use buildfleet_protocol::dsse::{self, Envelope};
use buildfleet_protocol::provenance::{self, JobFacts, RunFacts};
use buildfleet_protocol::{ArtifactDigest, Attempt, JobId, JobMode, Outcome};
use buildfleet_testkit::builder_client::{sha256_hex, upload_ok, BuilderClient};
use buildfleet_testkit::cli::{run_cli, shell_recipe, wait_connected, CliOutput, TestBuilder};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    offline_verification_checks_the_digest_every_signature_and_the_signers,
    the_digest_lookup_finds_the_publishing_job_for_those_who_see_it,
    online_verification_of_a_real_builders_artifact,
}

const ARTIFACT: &[u8] = b"\x7fELF pretend binary built twice, byte for byte\n";

/// An in-toto statement of `artifact` for job 7, finished at `finished_ms`, signed in DSSE by
/// each of `signers` (in order).
fn envelope(artifact: &[u8], finished_ms: i64, signers: &[&TestKey]) -> (Envelope, Vec<u8>) {
    let facts = JobFacts {
        backend_id: "http://backend.test".into(),
        job_id: JobId(7),
        attempt: Attempt(1),
        recipe: "cargo-build".into(),
        mode: JobMode::Build,
        parameters: Default::default(),
        annotations: Default::default(),
        source_url: "https://example.invalid/app-1.0.0.tar.gz".into(),
        source_sha256: "9f".repeat(32).parse().expect("digest"),
    };
    let run = RunFacts {
        builder: signers[0].fingerprint.clone(),
        versions: Default::default(),
        started_ms: finished_ms - 60_000,
        finished_ms,
        outcome: Outcome::Succeeded,
    };
    let statement = provenance::attempt_statement(
        &facts,
        &run,
        &[ArtifactDigest {
            name: "app".into(),
            size: artifact.len() as u64,
            sha256: sha256_hex(artifact).parse().expect("digest"),
        }],
    );
    let text = statement.to_signed_text().into_bytes();
    let signatures = signers
        .iter()
        .map(|key| dsse::sign(&key.private, &text).expect("DSSE signature"))
        .collect();
    (Envelope::new(&text, signatures), text)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing a test file");
    path
}

async fn verify(args: &[&Path], more: &[&str]) -> CliOutput {
    let [file, envelope, signers] = args else {
        panic!("file, envelope and allowed signers")
    };
    let mut all = vec![
        "verify",
        file.to_str().expect("path"),
        "--envelope",
        envelope.to_str().expect("path"),
        "--allowed-signers",
        signers.to_str().expect("path"),
    ];
    all.extend_from_slice(more);
    run_cli(&all, &[]).await
}

async fn allowed_signers(server: &TestServer) -> String {
    let (status, body) = server.get_raw(&server.api("/allowed_signers")).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body).expect("text")
}

async fn offline_verification_checks_the_digest_every_signature_and_the_signers(db: TestDb) {
    let server = TestServer::start(db).await;
    let (a, b) = (
        TestKey::generate("builder-a"),
        TestKey::generate("builder-b"),
    );
    server.admit(&a).await;
    let b_id = server.admit(&b).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Signed a little after admission: the keys' valid-after is in the past.
    let signed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 2000;
    let (good, _) = envelope(ARTIFACT, signed_at, &[&a, &b]);
    let file = write(dir.path(), "app", ARTIFACT);
    let env = write(dir.path(), "statement.dsse", good.to_json().as_bytes());
    let signers = write(
        dir.path(),
        "allowed_signers",
        allowed_signers(&server).await.as_bytes(),
    );

    let out = verify(&[&file, &env, &signers], &[]).await.ok();
    let expected = format!(
        "built by builder-a ({}) and reproduced by builder-b ({})",
        a.fingerprint, b.fingerprint
    );
    assert!(out.stdout.contains(&expected), "{}", out.stdout);
    assert!(out.stdout.contains("is app of job 7"), "{}", out.stdout);
    let json = verify(
        &[&file, &env, &signers],
        &["--json", "--reproduced-by", "2"],
    )
    .await
    .ok()
    .json();
    assert_eq!(json["built_by"]["builder"], "builder-a", "{json}");
    assert_eq!(
        json["reproduced_by"][0]["fingerprint"],
        b.fingerprint.to_string()
    );
    assert_eq!(json["sha256"], sha256_hex(ARTIFACT));

    // The statement's own builder built it, whatever the envelope's order.
    let (swapped, _) = envelope(ARTIFACT, signed_at, &[&a, &b]);
    let mut swapped = swapped;
    swapped.signatures.reverse();
    let swapped = write(dir.path(), "swapped.dsse", swapped.to_json().as_bytes());
    let out = verify(&[&file, &swapped, &signers], &[]).await.ok();
    assert!(out.stdout.contains(&expected), "{}", out.stdout);

    // Fewer signers than asked for.
    let out = verify(&[&file, &env, &signers], &["--reproduced-by", "3"])
        .await
        .expect_code(5);
    assert!(out.stderr.contains("fewer than the 3"), "{}", out.stderr);

    // One changed byte: not a subject.
    let mut changed = ARTIFACT.to_vec();
    changed[5] ^= 1;
    let changed = write(dir.path(), "app-changed", &changed);
    let out = verify(&[&changed, &env, &signers], &[])
        .await
        .expect_code(5);
    assert!(out.stderr.contains("not a subject"), "{}", out.stderr);

    // A tampered signature (one bit of b's).
    let mut tampered = good.clone();
    let mut raw = dsse::base64_decode(&tampered.signatures[1].sig, "sig").expect("base64");
    raw[10] ^= 1;
    tampered.signatures[1].sig = dsse::base64_encode(&raw);
    let bad_env = write(dir.path(), "tampered.dsse", tampered.to_json().as_bytes());
    let out = verify(&[&file, &bad_env, &signers], &[])
        .await
        .expect_code(5);
    assert!(out.stderr.contains("does not verify"), "{}", out.stderr);
    assert!(out.stderr.contains("builder-b"), "{}", out.stderr);

    // An allowed-signers file without b.
    let without_b: String = allowed_signers(&server)
        .await
        .lines()
        .filter(|l| !l.starts_with("builder-b "))
        .map(|l| format!("{l}\n"))
        .collect();
    let partial = write(dir.path(), "without-b", without_b.as_bytes());
    let out = verify(&[&file, &env, &partial], &[]).await.expect_code(5);
    assert!(
        out.stderr
            .contains(&format!("signer {} is unknown", b.fingerprint)),
        "{}",
        out.stderr
    );

    // b's key rotated out: the statement still verifies at its time, not at a later one.
    let b2 = TestKey::generate("builder-b");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, body) = server
        .post_admin(
            &format!("/builders/{b_id}/keys"),
            &json!({ "public_key": b2.public_openssh }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rotated = write(
        dir.path(),
        "rotated",
        allowed_signers(&server).await.as_bytes(),
    );
    verify(&[&file, &env, &rotated], &[]).await.ok();
    let later =
        buildfleet_protocol::signing::openssh_time(signed_at / 1000 + 86_400).expect("time");
    let out = verify(&[&file, &env, &rotated], &["--at", &later])
        .await
        .expect_code(5);
    assert!(out.stderr.contains("was not valid at"), "{}", out.stderr);

    // Without the allowed signers the envelope alone is a usage error.
    let out = run_cli(
        &[
            "verify",
            file.to_str().expect("path"),
            "--envelope",
            env.to_str().expect("path"),
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    server.shutdown().await;
}

async fn the_digest_lookup_finds_the_publishing_job_for_those_who_see_it(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("publisher");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    let digest = upload_ok(&job, "app", ARTIFACT).await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, buildfleet_protocol::CompletionResult::Accepted);

    let hex = sha256_hex(ARTIFACT);
    let found = server.get_ok(&format!("/artifacts/by-sha256/{hex}")).await;
    assert_eq!(found["artifacts"][0]["job"], id, "{found}");
    assert_eq!(found["artifacts"][0]["name"], "app");
    let upper = server
        .get_ok(&format!("/artifacts/by-sha256/{}", hex.to_uppercase()))
        .await;
    assert_eq!(upper["artifacts"], found["artifacts"]);
    let none = server
        .get_ok(&format!("/artifacts/by-sha256/{}", "0".repeat(64)))
        .await;
    assert_eq!(none["artifacts"], json!([]));
    let (status, body) = server.get("/artifacts/by-sha256/not-hex").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The CLI finds no job for an unknown file (online, by digest): exit 5.
    let dir = tempfile::tempdir().expect("temp dir");
    let stranger = write(dir.path(), "stranger", b"never built here");
    let out = server
        .cli(&["verify", stranger.to_str().expect("path")])
        .await
        .expect_code(5);
    assert!(out.stderr.contains("no job published"), "{}", out.stderr);

    // A private project's artifact is invisible to anonymous callers.
    let (status, body) = server
        .post_admin(
            "/projects",
            &json!({ "name": "acme/secret", "public": false }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    builder.request_jobs(1);
    let (status, body) = server
        .post_admin(
            "/jobs",
            &json!({
                "source_url": "https://example.invalid/app-1.0.0.tar.gz",
                "source_sha256": "9f".repeat(32),
                "recipe": "cargo-build",
                "project": "acme/secret",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hidden = body["id"].as_i64().expect("id");
    let job = builder.next_assignment().await;
    builder.accept(&job);
    // (wait_for_state reads anonymously, and this job is hidden from anonymous callers)
    for _ in 0..200 {
        let (_, seen) = server
            .call(
                awc::http::Method::GET,
                &format!("/jobs/{hidden}"),
                Some(&server.admin_token),
                None,
            )
            .await;
        if seen["job"]["state"] == "running" || seen["state"] == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let secret = b"secret artifact";
    let digest = upload_ok(&job, "secret", secret).await;
    builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    let path = format!("/artifacts/by-sha256/{}", sha256_hex(secret));
    let (status, anonymous) = server.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(anonymous["artifacts"], json!([]), "{anonymous}");
    let (status, admin) = server
        .call(
            awc::http::Method::GET,
            &path,
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(admin["artifacts"][0]["job"], hidden, "{admin}");
    builder.close().await;
    server.shutdown().await;
}

/// A real builder (in-process, its own WebSocket session and signing) builds a file; the CLI
/// verifies the downloaded bytes online: by digest, by --job, with the SSHSIG checked by
/// ssh-keygen; then after the builder's key is rotated (checked at the statement's time) and
/// revoked (refused, naming the reason).
async fn online_verification_of_a_real_builders_artifact(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("real-builder");
    let id = server.admit(&key).await;
    let builder = TestBuilder::start(
        &server,
        &key,
        vec![shell_recipe(
            "make-app",
            "printf 'an app built for verify\\n' > \"$BUILDFLEET_OUT/app\"",
            &[("app", "app")],
        )],
    )
    .await;
    wait_connected(&server, id).await;
    let source = tempfile::tempdir().expect("source");
    std::fs::write(source.path().join("README"), "a source\n").expect("write");
    let submitted = server
        .cli(&[
            "job",
            "submit",
            source.path().to_str().expect("path"),
            "--recipe",
            "make-app",
            "--wait",
            "--json",
        ])
        .await
        .ok()
        .json();
    let job = submitted["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{submitted}"));
    let (status, bytes) = server
        .get_raw(&server.api(&format!("/jobs/{job}/artifacts/app")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(dir.path(), "app", &bytes);
    let file = file.to_str().expect("path");

    let out = server.cli(&["verify", file]).await.ok();
    assert!(
        out.stdout
            .contains(&format!("built by real-builder ({})", key.fingerprint)),
        "{}",
        out.stdout
    );
    let json = server
        .cli(&["verify", file, "--job", &job.to_string(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(json["job"], job);
    assert_eq!(
        json["sshsig_checked"], 1,
        "ssh-keygen checked the SSHSIG: {json}"
    );
    server
        .cli(&["verify", file, "--reproduced-by", "2"])
        .await
        .expect_code(5);
    let mut changed = bytes.clone();
    changed[0] ^= 1;
    let changed = write(dir.path(), "app-changed", &changed);
    server
        .cli(&[
            "verify",
            changed.to_str().expect("path"),
            "--job",
            &job.to_string(),
        ])
        .await
        .expect_code(5);

    // Rotated: still verifies at the statement's time. Revoked: refused with the reason.
    let next = TestKey::generate("real-builder");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = server
        .post_admin(
            &format!("/builders/{id}/keys"),
            &json!({ "public_key": next.public_openssh }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.cli(&["verify", file]).await.ok();
    let (status, body) = server
        .post_admin(
            &format!(
                "/builders/{id}/keys/{}/revoke",
                key.fingerprint
                    .to_string()
                    .replace('/', "%2F")
                    .replace('+', "%2B")
                    .replace('=', "%3D")
            ),
            &json!({ "reason": "disk sold" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = server.cli(&["verify", file]).await.expect_code(5);
    assert!(
        out.stderr.contains("revoked key: disk sold"),
        "{}",
        out.stderr
    );
    drop(builder);
    server.shutdown().await;
}
