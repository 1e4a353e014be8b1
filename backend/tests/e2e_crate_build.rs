//! End to end with a real crate: the `itoa` `.crate` from the local registry cache is
//! uploaded, a real builder builds it with `cargo build --release --offline`, and the
//! published artifact checks out as a submitter would check it: its SHA-256, its contents,
//! and its build statement with the stock `ssh-keygen -Y verify`, which names the crate and
//! version the job was annotated with. The statement is in-toto: it validates against the
//! in-toto Statement v1 and SLSA Provenance v1 schemas (testkit/fixtures/schemas), and its
//! DSSE envelope verifies with a check written here from the DSSE spec over plain Ed25519,
//! with the key read from the builder's `ssh-keygen` `.pub` line.

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

    // The DSSE envelope carries the same bytes, signed by the same key.
    let envelope = server.get_ok(&format!("/jobs/{id}/statement.dsse")).await;
    let payload = dsse_verify_from_spec(&envelope, &builder.key().public_openssh);
    assert_eq!(
        payload, statement,
        "the envelope's payload is the statement"
    );
    let signatures = server.get_ok(&format!("/jobs/{id}/signatures")).await;
    assert_eq!(
        signatures,
        json!([{
            "builder": builder.name,
            "fingerprint": builder.key().fingerprint.as_str(),
            "signature": std::str::from_utf8(&signature).expect("armored"),
        }])
    );

    // What was verified vouches for this very job and artifact.
    let statement: Value = serde_json::from_slice(&statement).expect("the statement is JSON");
    validate_schemas(&statement);
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    let definition = &statement["predicate"]["buildDefinition"];
    assert_eq!(
        definition["internalParameters"]["jobId"], id,
        "{statement:#}"
    );
    assert_eq!(definition["internalParameters"]["attempt"], 1);
    let external = &definition["externalParameters"];
    assert_eq!(external["source"]["digest"]["sha256"], digest.as_str());
    assert_eq!(external["recipe"], "cargo-build");
    assert_eq!(external["annotations"], annotations, "{statement:#}");
    let details = &statement["predicate"]["runDetails"];
    assert_eq!(
        details["byproducts"][0]["annotations"]["outcome"],
        "succeeded"
    );
    let versions = &details["builder"]["version"];
    assert!(
        versions["rustc"]
            .as_str()
            .is_some_and(|v| v.starts_with("rustc 1.")),
        "{statement:#}"
    );
    assert!(versions["cargo"]
        .as_str()
        .is_some_and(|v| v.starts_with("cargo 1.")));
    assert_eq!(
        statement["subject"],
        json!([{"name": name, "digest": {"sha256": published}}])
    );

    builder.stop().await;
    server.shutdown().await;
}

/// Validates a statement against the vendored in-toto Statement v1 schema and its predicate
/// against the SLSA Provenance v1 schema.
fn validate_schemas(statement: &Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/fixtures/schemas");
    let load = |name: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(name)).expect("a vendored schema");
        serde_json::from_str(&text).expect("the schema is JSON")
    };
    for (schema, instance) in [
        (load("in-toto-statement-v1.schema.json"), statement),
        (
            load("slsa-provenance-v1.schema.json"),
            &statement["predicate"],
        ),
    ] {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{}: {errors:#?}\n{statement:#}",
            schema["title"]
        );
        // The schema can fail: a statement without its required parts does not validate.
        let mut broken = instance.clone();
        if let Some(object) = broken.as_object_mut() {
            object.clear();
        }
        assert!(
            !validator.is_valid(&broken),
            "{} accepts an empty object",
            schema["title"]
        );
    }
}

/// DSSE v1 verification as the spec defines it, with nothing of Buildfleet's: base64 of the
/// payload, PAE("DSSEv1" SP len(type) SP type SP len(body) SP body), Ed25519 over it with
/// the key of an OpenSSH `.pub` line (its wire blob: string "ssh-ed25519", string key).
fn dsse_verify_from_spec(envelope: &Value, public_openssh: &str) -> Vec<u8> {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let b64 = |text: &str| -> Vec<u8> {
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for c in text.trim_end_matches('=').chars() {
            let c = match c {
                '-' => '+',
                '_' => '/',
                c => c,
            };
            let value = alphabet.find(c).expect("a base64 character") as u32;
            bits = (bits << 6) | value;
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
                bits &= (1 << count) - 1;
            }
        }
        out
    };
    let payload_type = envelope["payloadType"].as_str().expect("payloadType");
    assert_eq!(payload_type, "application/vnd.in-toto+json");
    let payload = b64(envelope["payload"].as_str().expect("payload"));
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);

    let blob = b64(public_openssh
        .split_whitespace()
        .nth(1)
        .expect("the key's base64"));
    let (len, rest) = blob.split_at(4);
    let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
    assert_eq!(&rest[..len], b"ssh-ed25519");
    let key_bytes: [u8; 32] = rest[len + 4..].try_into().expect("a 32-byte Ed25519 key");
    let key = VerifyingKey::from_bytes(&key_bytes).expect("an Ed25519 key");

    let signatures = envelope["signatures"].as_array().expect("signatures");
    assert_eq!(
        signatures.len(),
        1,
        "one builder, one signature: {envelope:#}"
    );
    let sig: [u8; 64] = b64(signatures[0]["sig"].as_str().expect("sig"))
        .try_into()
        .expect("64 signature bytes");
    key.verify(&pae, &Signature::from_bytes(&sig))
        .expect("the DSSE signature verifies over PAE");
    // And it can fail: one payload byte changed, and it does not.
    let mut tampered = pae.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    assert!(key.verify(&tampered, &Signature::from_bytes(&sig)).is_err());
    payload
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
