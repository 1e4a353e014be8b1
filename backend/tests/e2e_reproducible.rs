//! Reproducible outputs: the same source built by two real builders (each with its own key,
//! work directory and job number) gives byte-identical artifacts. Before the builder
//! normalised its builds (`SOURCE_DATE_EPOCH` from the source, `--remap-path-prefix` for the
//! job directory and cargo's home, archives without owners or times, entries in name order),
//! the same `itoa` source built twice gave two digests.

use std::time::Duration;

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{itoa_crate, start_server, upload_source, wait_outcome, E2eBuilder};
use buildfleet_testkit::registry::CrateFile;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_library_and_a_binary_build_to_the_same_bytes_on_two_builders,
}

const CARGO_JOB_LIMIT: Duration = Duration::from_secs(180);

/// Builds `digest` with `cargo-build` (on the one builder connected) and returns its one
/// artifact.
async fn build(server: &TestServer, digest: &str, builder: &E2eBuilder) -> Value {
    let id = server
        .submit(json!({
            "source_url": null,
            "source_sha256": digest,
            "recipe": "cargo-build",
            "parameters": { "offline": "true" },
        }))
        .await;
    let job = wait_outcome(server, id, "succeeded", CARGO_JOB_LIMIT).await;
    assert_eq!(
        job["builder_id"], builder.id,
        "job {id} ran on {}",
        builder.name
    );
    let listing = server.get_ok(&format!("/jobs/{id}/artifacts")).await;
    let artifacts = listing["artifacts"].as_array().expect("artifact list");
    assert_eq!(artifacts.len(), 1, "one artifact: {listing:#}");
    artifacts[0].clone()
}

async fn a_library_and_a_binary_build_to_the_same_bytes_on_two_builders(db: TestDb) {
    // Made before the server starts: packaging runs cargo and blocks.
    let (_, library) = itoa_crate();
    let binary = CrateFile::binary("repro-sample", "0.1.0").bytes;
    let server = start_server(db).await;
    let mut sources = Vec::new();
    for (what, archive) in [("itoa (an rlib)", library), ("a binary crate", binary)] {
        sources.push((what, upload_source(&server, archive).await.0));
    }

    // One builder at a time, so each source is built once by each: different keys, work
    // directories and job numbers.
    let mut built = Vec::new();
    for name in ["repro-a", "repro-b"] {
        let builder = E2eBuilder::start(&server, name, |_| {}).await;
        let mut artifacts = Vec::new();
        for (_, digest) in &sources {
            artifacts.push(build(&server, digest, &builder).await);
        }
        built.push((builder.work_dir().to_owned(), artifacts));
        builder.stop().await;
    }

    let ((dir_a, first), (dir_b, second)) = (&built[0], &built[1]);
    assert_ne!(dir_a, dir_b, "the two builders shared a work directory");
    for (((what, _), a), b) in sources.iter().zip(first).zip(second) {
        assert_eq!(a["name"], b["name"], "{what}: artifact names");
        assert_eq!(
            a["sha256"], b["sha256"],
            "{what}: two builders built different bytes ({} and {} bytes)",
            a["size"], b["size"]
        );
    }
    server.shutdown().await;
}
