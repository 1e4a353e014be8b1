//! Issue 19 item 2, done when: a crate built with `reproduce: 2` on two real builders with
//! different keys ends `succeeded` with one statement carrying both signatures, each verified
//! by a real `ssh-keygen -Y verify -I <builder>` and the DSSE envelope verified; a
//! deliberately non-reproducible recipe (its artifact holds the time and random bytes) ends
//! `unreproducible` with its evidence and nothing published. Both databases. Run
//! `bash scripts/e2e-crate.sh` first (the crate is built offline).

use std::time::Duration;

use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeBook, RecipeConfig};
use buildfleet_protocol::dsse::{self, Envelope};
use buildfleet_protocol::signing;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    e2e_recipes, itoa_crate, start_server, upload_source, wait_outcome, E2eBuilder,
};
use buildfleet_testkit::keys::ssh_keygen_verify;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_crate_reproduced_by_two_builders_carries_both_signatures,
    a_recipe_writing_the_time_ends_unreproducible_with_evidence,
}

const CARGO_JOB_LIMIT: Duration = Duration::from_secs(300);

const UNSTABLE_RECIPE: &str = "e2e-unstable";

/// The e2e recipes and one whose archive holds the build time and random bytes.
fn recipes_with_unstable() -> RecipeBook {
    let mut recipes = e2e_recipes();
    recipes.push(RecipeConfig {
        name: UNSTABLE_RECIPE.into(),
        version: "1".into(),
        commands: vec![vec![
            "sh".into(),
            "-c".into(),
            "mkdir -p \"$BUILDFLEET_OUT/dist\" && cd \"$BUILDFLEET_OUT/dist\" && \
             echo 'the same in every build' > README && \
             { echo built; date +%s%N; od -An -tx1 -N16 /dev/urandom; echo end; } > BUILD_INFO"
                .into(),
        ]],
        env: Default::default(),
        artifacts: vec![ArtifactConfig {
            name: "dist.tar.gz".into(),
            path: "dist".into(),
            pack: Pack::TarGz,
        }],
        image: None,
        version_commands: Vec::new(),
    });
    RecipeBook::with_builtins(recipes).expect("recipes")
}

/// Two real builders with their own keys, both connected.
async fn two_builders(server: &TestServer) -> (E2eBuilder, E2eBuilder) {
    let a = E2eBuilder::start(server, "repro-one", |c| c.recipes = recipes_with_unstable()).await;
    let b = E2eBuilder::start(server, "repro-two", |c| c.recipes = recipes_with_unstable()).await;
    (a, b)
}

async fn a_crate_reproduced_by_two_builders_carries_both_signatures(db: TestDb) {
    // Made before the server starts: packaging runs cargo and blocks.
    let (_, library) = itoa_crate();
    let server = start_server(db).await;
    let (digest, _) = upload_source(&server, library).await;
    let (one, two) = two_builders(&server).await;
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": "cargo-build",
            "parameters": { "offline": "true" },
            "reproduce": 2,
        }))
        .await;
    wait_outcome(&server, id, "succeeded", CARGO_JOB_LIMIT).await;
    let detail = server.job(id).await;
    let r = &detail["reproduction"];
    assert_eq!(r["verdict"], "reproduced", "{detail:#}");
    let builders: Vec<&str> = r["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| run["builder_name"].as_str().expect("builder name"))
        .collect();
    let mut sorted = builders.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["repro-one", "repro-two"], "two different builders");
    assert_eq!(r["runs"][0]["artifacts"], r["runs"][1]["artifacts"]);

    // One statement, two signatures: each SSHSIG verifies with stock OpenSSH for its builder.
    let (status, statement) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement")))
        .await;
    assert!(status.is_success(), "{status}");
    let (status, signers) = server.get_raw(&server.api("/allowed_signers")).await;
    assert!(status.is_success(), "{status}");
    let signers = String::from_utf8(signers).expect("allowed signers text");
    let signatures = server.get_ok(&format!("/jobs/{id}/signatures")).await;
    let signatures = signatures.as_array().expect("signatures");
    assert_eq!(signatures.len(), 2, "{signatures:#?}");
    let mut signed_by = Vec::new();
    for entry in signatures {
        let builder = entry["builder"].as_str().expect("builder");
        let sig = entry["signature"].as_str().expect("signature");
        let (ok, output) = ssh_keygen_verify(
            &signers,
            builder,
            signing::STATEMENT_NAMESPACE,
            &statement,
            sig,
        );
        assert!(ok, "ssh-keygen -Y verify -I {builder}: {output}");
        signed_by.push(builder.to_owned());
    }
    signed_by.sort();
    assert_eq!(signed_by, ["repro-one", "repro-two"]);

    // The DSSE envelope carries both, each verified against its builder's key.
    let (status, envelope) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement.dsse")))
        .await;
    assert!(status.is_success(), "{status}");
    let envelope =
        Envelope::parse(std::str::from_utf8(&envelope).expect("utf-8")).expect("a DSSE envelope");
    let payload = envelope.payload_bytes().expect("payload");
    assert_eq!(
        payload, statement,
        "the envelope carries the published statement"
    );
    assert_eq!(envelope.signatures.len(), 2);
    for builder in [&one, &two] {
        let key = signing::parse_public_key(&builder.key().public_openssh).expect("key");
        let keyid = dsse::keyid(&key);
        let signature = envelope
            .signatures
            .iter()
            .find(|s| s.keyid == keyid)
            .unwrap_or_else(|| panic!("no DSSE signature of {}", builder.name));
        dsse::verify(&key, &payload, signature)
            .unwrap_or_else(|e| panic!("DSSE signature of {}: {e}", builder.name));
    }
    // Revoking the key of the run whose signature is not the job's own (the first run's)
    // still marks the job: every signer of the statement counts.
    let first = [&one, &two]
        .into_iter()
        .find(|b| b.name == builders[0])
        .expect("the first run's builder");
    let builder_id = server.get_ok("/builders").await["builders"]
        .as_array()
        .expect("builders")
        .iter()
        .find(|b| b["name"] == first.name.as_str())
        .and_then(|b| b["id"].as_i64())
        .expect("the first run's builder id");
    let fingerprint = first.key().fingerprint.to_string();
    let revoke = format!(
        "/builders/{builder_id}/keys/{}/revoke",
        fingerprint
            .replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D")
    );
    let (status, body) = server
        .post_admin(&revoke, &json!({ "reason": "key leaked" }))
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (_, page) = server.get_raw(&format!("{}/jobs/{id}", server.url)).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("Signed by a revoked key: key leaked") && page.contains(&fingerprint),
        "the job page does not mark the first run's revoked signer"
    );
    assert!(
        page.contains("reproduced by 2 of 2 builders"),
        "the job page does not say it was reproduced"
    );
    // The artifact downloaded is the one every run built.
    let listing = server.get_ok(&format!("/jobs/{id}/artifacts")).await;
    let artifacts = listing["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 1, "{listing:#}");
    assert_eq!(
        artifacts[0]["sha256"],
        r["runs"][0]["artifacts"][0]["sha256"]
    );
    one.stop().await;
    two.stop().await;
    server.shutdown().await;
}

async fn a_recipe_writing_the_time_ends_unreproducible_with_evidence(db: TestDb) {
    let server = start_server(db).await;
    let (digest, _) = upload_source(&server, buildfleet_testkit::e2e::small_source()).await;
    let (one, two) = two_builders(&server).await;
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": UNSTABLE_RECIPE,
            "reproduce": 2,
        }))
        .await;
    let done = wait_outcome(&server, id, "unreproducible", Duration::from_secs(60)).await;
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("dist.tar.gz")),
        "{done:#}"
    );
    let detail = server.job(id).await;
    let r: &Value = &detail["reproduction"];
    assert_eq!(r["verdict"], "mismatch", "{detail:#}");
    let artifact = &r["evidence"]["artifacts"][0];
    assert_eq!(artifact["name"], "dist.tar.gz");
    let entries = artifact["entries"].as_array().expect("entries");
    let paths: Vec<&str> = entries.iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(
        paths,
        ["dist/BUILD_INFO"],
        "README is the same in both: {artifact:#}"
    );
    let diff = entries[0]["text_diff"].as_str().expect("a text diff");
    assert!(
        diff.contains("-") && diff.contains("+") && diff.contains(" built"),
        "{diff}"
    );
    // The job page says so, with the file that differs and its diff.
    let (_, page) = server.get_raw(&format!("{}/jobs/{id}", server.url)).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("unreproducible")
            && page.contains("dist.tar.gz differs")
            && page.contains("dist/BUILD_INFO"),
        "the job page does not show the evidence"
    );
    // Nothing published.
    assert!(detail["artifacts"]
        .as_array()
        .expect("artifacts")
        .is_empty());
    let (status, _) = server
        .get_raw(&server.api(&format!("/jobs/{id}/artifacts/dist.tar.gz")))
        .await;
    assert_eq!(status, awc::http::StatusCode::NOT_FOUND);
    one.stop().await;
    two.stop().await;
    server.shutdown().await;
}
