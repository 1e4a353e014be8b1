//! Key rotation and revocation (issue 19 item 4), both databases, checked with the real
//! `ssh-keygen -Y verify`: a statement signed before a rotation verifies at its signing time
//! (`-Overify-time=`) and not at a later time; the builder connects with its new key and not
//! with the old; a revoked key leaves the allowed-signers file (its statements no longer
//! verify) and the job page says so; bad inputs get the stable JSON error shape; only the
//! admin changes keys, and a builder the caller cannot see is not found.

use std::process::Command;
use std::time::Duration;

use awc::http::{Method, StatusCode};
use buildfleet_protocol::signing::{openssh_time, STATEMENT_NAMESPACE};
use buildfleet_protocol::{ErrorCode, Outcome};
use buildfleet_testkit::builder_client::{upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_rotated_key_keeps_its_statements_verifiable_at_their_time,
    a_revoked_key_no_longer_verifies_and_the_job_page_says_so,
    key_routes_refuse_bad_input_and_callers_who_are_not_the_admin,
}

/// A finished job's statement, signature, and signing time (its attempt's end, ms).
struct Signed {
    job: i64,
    statement: Vec<u8>,
    signature: String,
    signed_at: i64,
}

/// Runs one job to success on `builder` (authenticated with `key`) and fetches its statement.
async fn run_job(server: &TestServer, builder: &mut BuilderClient, key: &TestKey) -> Signed {
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    let digest = upload_ok(
        &job,
        "out.bin",
        format!("built by {}", key.fingerprint).as_bytes(),
    )
    .await;
    let result = builder
        .complete(key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(
        result,
        buildfleet_protocol::CompletionResult::Accepted,
        "completion of job {id}"
    );
    let (status, statement) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, signature) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement.sig")))
        .await;
    let detail = server.get_ok(&format!("/jobs/{id}")).await;
    let signed_at = detail["attempts"][0]["finished_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("finished_at: {detail}"));
    Signed {
        job: id,
        statement,
        signature: String::from_utf8(signature).expect("armored"),
        signed_at,
    }
}

/// `ssh-keygen -Y verify` against the backend's allowed-signers file, at `at_ms` (or now).
async fn verify(
    server: &TestServer,
    principal: &str,
    signed: &Signed,
    at_ms: Option<i64>,
) -> (bool, String) {
    let (_, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let signers = dir.path().join("allowed_signers");
    let sig = dir.path().join("statement.sig");
    let message = dir.path().join("statement");
    std::fs::write(&signers, &allowed).expect("write");
    std::fs::write(&sig, &signed.signature).expect("write");
    std::fs::write(&message, &signed.statement).expect("write");
    let mut command = Command::new("ssh-keygen");
    if let Some(at) = at_ms {
        command.arg(format!(
            "-Overify-time={}",
            openssh_time(at / 1000).expect("a time")
        ));
    }
    let output = command
        .args(["-Y", "verify", "-f"])
        .arg(&signers)
        .args(["-I", principal, "-n", STATEMENT_NAMESPACE, "-s"])
        .arg(&sig)
        .stdin(std::fs::File::open(&message).expect("open"))
        .output()
        .expect("running ssh-keygen");
    (
        output.status.success(),
        format!(
            "{}{}\nallowed signers:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&allowed)
        ),
    )
}

async fn rotate(server: &TestServer, id: i64, key: &TestKey) -> (StatusCode, Value) {
    server
        .post_admin(
            &format!("/builders/{id}/keys"),
            &json!({ "public_key": key.public_openssh }),
        )
        .await
}

fn escaped(fingerprint: &str) -> String {
    fingerprint
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

async fn a_rotated_key_keeps_its_statements_verifiable_at_their_time(db: TestDb) {
    let server = TestServer::start(db).await;
    let old = TestKey::generate("rotated");
    let new = TestKey::generate("rotated");
    let id = server.admit(&old).await;
    let keys = server.get_ok(&format!("/builders/{id}/keys")).await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys["keys"][0]["current"], true);
    assert_eq!(keys["keys"][0]["fingerprint"], old.fingerprint.to_string());

    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &old).await;
    let before = run_job(&server, &mut builder, &old).await;
    let (ok, said) = verify(&server, "rotated", &before, Some(before.signed_at)).await;
    assert!(ok, "before the rotation: {said}");

    // Rotation: the session of the old key is closed; the old key cannot connect again,
    // the new one can, and the builder is the same row.
    let (status, body) = rotate(&server, id, &new).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["builder"], id);
    let listed = body["keys"].as_array().expect("keys");
    assert_eq!(listed.len(), 2, "{body}");
    assert_eq!(listed[0]["fingerprint"], old.fingerprint.to_string());
    assert_eq!(listed[0]["current"], false);
    let ended = listed[0]["valid_before"]
        .as_i64()
        .expect("the old key ended");
    assert!(ended >= before.signed_at, "{body}");
    assert_eq!(listed[1]["fingerprint"], new.fingerprint.to_string());
    assert_eq!(listed[1]["current"], true);
    assert_eq!(listed[1]["valid_after"].as_i64(), Some(ended));
    builder
        .expect_error_and_close(ErrorCode::BuilderRevoked)
        .await;
    let mut refused = BuilderClient::connect(&server.ws_url()).await;
    refused.hello(&old);
    refused
        .expect_auth_rejected(ErrorCode::UnknownBuilder)
        .await;
    let record = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(record["fingerprint"], new.fingerprint.to_string());
    assert_eq!(record["name"], "rotated");

    // Both keys are listed, each with its lifetime.
    let (_, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    let allowed = String::from_utf8(allowed).expect("text");
    let lines: Vec<&str> = allowed.lines().collect();
    assert_eq!(lines.len(), 2, "{allowed}");
    let ended_at = openssh_time(ended / 1000).expect("time");
    assert!(
        lines[0].starts_with("rotated namespaces=\"buildfleet-statement\",valid-after=\"")
            && lines[0].contains(",valid-before=\""),
        "{allowed}"
    );
    assert!(
        lines[1].contains(&format!(",valid-after=\"{ended_at}\" "))
            && !lines[1].contains("valid-before"),
        "{allowed}"
    );

    // The old statement verifies at its signing time; not once its key has expired.
    let (ok, said) = verify(&server, "rotated", &before, Some(before.signed_at)).await;
    assert!(ok, "at its signing time: {said}");
    // valid-before is the rotation's second rounded up, inclusive: wait past it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (ok, said) = verify(&server, "rotated", &before, None).await;
    assert!(!ok, "verified now with a rotated-out key: {said}");
    assert!(said.contains("expired") || said.contains("valid"), "{said}");

    // The new key works: connect, build, verify now.
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &new).await;
    let after = run_job(&server, &mut builder, &new).await;
    let (ok, said) = verify(&server, "rotated", &after, None).await;
    assert!(ok, "the new key's statement: {said}");
    let (ok, said) = verify(&server, "rotated", &after, Some(before.signed_at - 2000)).await;
    assert!(!ok, "the new key verified before it existed: {said}");

    // A key is a builder's once: the same key again, a rotated-out key, another builder's.
    for key in [&new, &old] {
        let (status, body) = rotate(&server, id, key).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(error_code(&body), "conflict");
    }
    let other = TestKey::generate("other");
    let other_id = server.admit(&other).await;
    let (status, body) = rotate(&server, other_id, &new).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Nor can a new builder be admitted with a rotated-out key.
    let (status, body) = server
        .post_admin(
            "/builders",
            &json!({ "name": "thief", "public_key": old.public_openssh }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    builder.close().await;
    server.shutdown().await;
}

async fn a_revoked_key_no_longer_verifies_and_the_job_page_says_so(db: TestDb) {
    let server = TestServer::start(db).await;
    let old = TestKey::generate("leaky");
    let new = TestKey::generate("leaky");
    let id = server.admit(&old).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &old).await;
    let signed = run_job(&server, &mut builder, &old).await;
    let page = format!("{}/jobs/{}", server.url, signed.job);
    let (_, html) = server.get_raw(&page).await;
    assert!(
        !String::from_utf8_lossy(&html).contains("revoked key"),
        "marked before any revocation"
    );
    let (status, body) = rotate(&server, id, &new).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    builder
        .expect_error_and_close(ErrorCode::BuilderRevoked)
        .await;

    let revoke = format!(
        "/builders/{id}/keys/{}/revoke",
        escaped(&old.fingerprint.to_string())
    );
    let (status, body) = server
        .post_admin(&revoke, &json!({ "reason": "laptop stolen" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["keys"][0]["revoked_reason"], "laptop stolen");
    assert!(body["keys"][0]["revoked_at"].is_i64(), "{body}");
    assert_eq!(body["keys"][1]["revoked_at"], Value::Null);

    // Out of the allowed-signers file: the statement no longer verifies, even at its time.
    let (_, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    let allowed = String::from_utf8(allowed).expect("text");
    assert_eq!(allowed.lines().count(), 1, "{allowed}");
    assert!(allowed.contains(new.public_openssh.split_whitespace().nth(1).expect("key")));
    let (ok, said) = verify(&server, "leaky", &signed, Some(signed.signed_at)).await;
    assert!(!ok, "a revoked key's statement verified: {said}");
    let (_, html) = server.get_raw(&page).await;
    let html = String::from_utf8_lossy(&html);
    assert!(
        html.contains("Signed by a revoked key: laptop stolen"),
        "the job page does not mark the revoked signer"
    );
    assert!(html.contains(&old.fingerprint.to_string()));

    // Twice is a conflict; the fingerprint may also be given unescaped.
    let raw = format!("/builders/{id}/keys/{}/revoke", old.fingerprint);
    let (status, body) = server.post_admin(&raw, &json!({ "reason": "again" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Revoking the current key shuts the builder out until a new key is rotated in.
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &new).await;
    let current = format!(
        "/builders/{id}/keys/{}/revoke",
        escaped(&new.fingerprint.to_string())
    );
    let (status, body) = server
        .post_admin(&current, &json!({ "reason": "decommissioned" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    builder
        .expect_error_and_close(ErrorCode::BuilderRevoked)
        .await;
    let mut refused = BuilderClient::connect(&server.ws_url()).await;
    refused.hello(&new);
    refused
        .expect_auth_rejected(ErrorCode::UnknownBuilder)
        .await;
    let (_, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    assert!(allowed.is_empty(), "{}", String::from_utf8_lossy(&allowed));
    let third = TestKey::generate("leaky");
    let (status, body) = rotate(&server, id, &third).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let builder = BuilderClient::connect_ready(&server.ws_url(), &third).await;
    builder.close().await;
    server.shutdown().await;
}

async fn create_project(server: &TestServer, name: &str) {
    let (status, body) = server
        .post_admin("/projects", &json!({ "name": name, "public": false }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "creating {name}: {body}");
}

async fn token(server: &TestServer, project: &str, scope: &str) -> String {
    let (status, body) = server
        .post_admin(
            "/tokens",
            &json!({ "project": project, "scope": scope, "description": "keys test" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["secret"].as_str().expect("secret").to_owned()
}

async fn key_routes_refuse_bad_input_and_callers_who_are_not_the_admin(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("guarded");
    let id = server.admit(&key).await;
    let spare = TestKey::generate("spare");
    let fingerprint = escaped(&key.fingerprint.to_string());
    let body = json!({ "public_key": spare.public_openssh });
    let reason = json!({ "reason": "test" });

    // Unknown builder: 404 on every route.
    for (method, path, body) in [
        (Method::GET, "/builders/999999/keys".to_owned(), None),
        (
            Method::POST,
            "/builders/999999/keys".to_owned(),
            Some(&body),
        ),
        (
            Method::POST,
            format!("/builders/999999/keys/{fingerprint}/revoke"),
            Some(&reason),
        ),
    ] {
        let (status, answer) = server
            .call(method, &path, Some(&server.admin_token), body)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {answer}");
        assert_eq!(error_code(&answer), "not_found", "{answer}");
    }
    // A key that is not this builder's.
    let (status, answer) = server
        .post_admin(
            &format!(
                "/builders/{id}/keys/{}/revoke",
                escaped(&spare.fingerprint.to_string())
            ),
            &reason,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    // Malformed: not a key, two keys, a missing field, an unknown field, no reason.
    for bad in [
        json!({ "public_key": "ssh-ed25519 not-base64!" }),
        json!({ "public_key": "" }),
        json!({ "public_key": format!("{}\n{}", spare.public_openssh, key.public_openssh) }),
        json!({}),
        json!({ "public_key": spare.public_openssh, "name": "x" }),
    ] {
        let (status, answer) = server
            .post_admin(&format!("/builders/{id}/keys"), &bad)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert_eq!(error_code(&answer), "bad_request", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    for bad in [
        json!({ "reason": "  " }),
        json!({}),
        json!({ "reason": "a\nb" }),
    ] {
        let (status, answer) = server
            .post_admin(&format!("/builders/{id}/keys/{fingerprint}/revoke"), &bad)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert_eq!(error_code(&answer), "bad_request", "{answer}");
    }
    let (status, answer) = server
        .post_admin(&format!("/builders/{id}/keys/SHA256:%ZZ/revoke"), &reason)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // Access: anonymous 401 to change (reading a shared builder's keys is open, like the
    // builder); a project's tokens, even admin, 403; a builder private to a project the
    // token cannot see is not found, as if missing.
    let (status, answer) = server
        .post(&format!("/builders/{id}/keys"), None, &body)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, _) = server.get(&format!("/builders/{id}/keys")).await;
    assert_eq!(status, StatusCode::OK);
    create_project(&server, "acme/app").await;
    create_project(&server, "rival/app").await;
    let project_admin = token(&server, "acme/app", "admin").await;
    let (status, answer) = server
        .post(&format!("/builders/{id}/keys"), Some(&project_admin), &body)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) = server
        .post(
            &format!("/builders/{id}/keys/{fingerprint}/revoke"),
            Some(&project_admin),
            &reason,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) = server
        .call(
            Method::PUT,
            &format!("/builders/{id}/projects"),
            Some(&server.admin_token),
            Some(&json!({ "projects": ["rival/app"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    for (method, path, body) in [
        (Method::GET, format!("/builders/{id}/keys"), None),
        (Method::POST, format!("/builders/{id}/keys"), Some(&body)),
        (
            Method::POST,
            format!("/builders/{id}/keys/{fingerprint}/revoke"),
            Some(&reason),
        ),
    ] {
        for token in [Some(project_admin.as_str()), None] {
            let (status, answer) = server.call(method.clone(), &path, token, body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path} {token:?}: {answer}");
            assert_eq!(
                answer["error"]["message"],
                format!("builder {id} not found"),
                "the same answer as for a missing builder"
            );
        }
    }
    // Nothing changed (the admin sees every builder).
    let (status, keys) = server
        .call(
            Method::GET,
            &format!("/builders/{id}/keys"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys["keys"][0]["revoked_at"], Value::Null);
    server.shutdown().await;
}
