//! Reproducible builds as a job option (issue 19 item 2), through the real backend with
//! scripted builders driving the protocol by hand: a job with `reproduce: 2` runs twice, the
//! second run only on a builder independent of the first (another builder, another owner);
//! agreeing artifacts publish, differing ones end the job `unreproducible` with evidence and
//! nothing published (unless `publish_first`); a lost builder repeats only its run; a cancel
//! between runs; bad input. Both databases.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use buildfleet_protocol::{ArtifactDigest, CompletionResult, JobAssignment, Outcome};
use buildfleet_testkit::builder_client::{upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, wait_until, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    the_second_run_goes_only_to_a_builder_of_another_owner_and_agreement_publishes,
    differing_artifacts_end_unreproducible_with_evidence_and_nothing_published,
    publish_first_publishes_the_first_run_and_flags_the_job,
    a_lost_builder_in_the_second_run_repeats_that_run_only,
    a_cancel_between_runs_ends_the_job_with_nothing_published,
    a_failure_after_a_successful_run_ends_unreproducible,
    bad_reproduce_values_are_refused_and_the_project_default_applies,
}

/// A connected builder admitted with `owner=<owner>` by the operator, asking for one job.
async fn builder(server: &TestServer, name: &str, owner: Option<&str>) -> (TestKey, BuilderClient) {
    let key = TestKey::generate(name);
    let mut body = json!({ "name": key.name, "public_key": key.public_openssh });
    if let Some(owner) = owner {
        body["labels"] = json!({ "owner": owner });
    }
    let (status, answer) = server.post_admin("/builders", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let mut client = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    client.request_jobs(1);
    (key, client)
}

/// Takes the next assignment, uploads `artifact` (name and bytes) and succeeds.
async fn build(
    client: &mut BuilderClient,
    key: &TestKey,
    artifact: (&str, &[u8]),
) -> JobAssignment {
    let job = client.next_assignment().await;
    client.accept(&job);
    let digest: ArtifactDigest = upload_ok(&job, artifact.0, artifact.1).await;
    let ack = client
        .complete(key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(ack, CompletionResult::Accepted);
    job
}

async fn submit_reproducible(server: &TestServer, fields: Value) -> i64 {
    let mut body = json!({ "reproduce": 2 });
    if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
        body.extend(fields.clone());
    }
    server.submit(body).await
}

/// A tar.gz of `files`, byte for byte the same for the same files.
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *body)
            .expect("tar entry");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

async fn download_status(server: &TestServer, id: i64, name: &str) -> StatusCode {
    let (status, _) = server
        .get_raw(&server.api(&format!("/jobs/{id}/artifacts/{name}")))
        .await;
    status
}

/// The job stays queued for a while with its first run done: no builder got it.
async fn still_waiting(server: &TestServer, id: i64) -> Value {
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    let job = server.job(id).await;
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempt"], 2, "{job}");
    job
}

async fn the_second_run_goes_only_to_a_builder_of_another_owner_and_agreement_publishes(
    db: TestDb,
) {
    let server = TestServer::start(db).await;
    let (alice_key, mut alice) = builder(&server, "alice-1", Some("alice")).await;
    let id = submit_reproducible(&server, json!({})).await;
    let first = build(&mut alice, &alice_key, ("tool", b"identical bytes")).await;
    assert_eq!(first.attempt.0, 1);

    // Queued for run 2; neither the first builder nor another of its owner takes it.
    let queued = server.job(id).await;
    assert_eq!(queued["state"], "queued", "{queued}");
    assert_eq!(queued["reproduce"], 2);
    assert_eq!(queued["reproduction"]["required"], 2);
    assert_eq!(queued["reproduction"]["runs"][0]["owner"], "alice");
    assert_eq!(queued["reproduction"]["runs"][0]["builder_name"], "alice-1");
    assert_eq!(queued["reproduction"].get("verdict"), None);
    assert!(queued["artifacts"]
        .as_array()
        .expect("artifacts")
        .is_empty());
    let causes: Vec<&str> = queued["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(
        causes.iter().any(|d| d.contains("run 1 of 2 succeeded")),
        "{causes:?}"
    );
    alice.request_jobs(1);
    let (_same_owner_key, _same_owner) = builder(&server, "alice-2", Some("alice")).await;
    let waiting = still_waiting(&server, id).await;
    let blocked = waiting["queue"]["blocked"].as_str().unwrap_or_default();
    assert!(
        blocked.contains("run 2 needs a builder independent of the earlier runs")
            && blocked.contains("owner=alice"),
        "{waiting}"
    );

    let (bob_key, mut bob) = builder(&server, "bob-1", Some("bob")).await;
    let second = build(&mut bob, &bob_key, ("tool", b"identical bytes")).await;
    assert_eq!(second.attempt.0, 2);
    assert_eq!(second.job_id, first.job_id);

    let done = server.wait_for_state(id, "succeeded").await;
    let detail = server.job(id).await;
    let reproduction = &detail["reproduction"];
    assert_eq!(reproduction["verdict"], "reproduced", "{detail}");
    let owners: Vec<&str> = reproduction["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["owner"].as_str().expect("owner"))
        .collect();
    assert_eq!(owners, ["alice", "bob"]);
    assert_eq!(
        reproduction["runs"][0]["artifacts"],
        reproduction["runs"][1]["artifacts"]
    );
    let started: Vec<&str> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["started_because"].as_str().expect("cause"))
        .collect();
    assert_eq!(started, ["first", "reproduction_run"]);
    // Published once, from the last run.
    let artifacts = detail["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 1, "{detail}");
    assert_eq!(artifacts[0]["attempt"], 2);
    assert_eq!(download_status(&server, id, "tool").await, StatusCode::OK);
    assert_eq!(done["error"], Value::Null);
}

async fn differing_artifacts_end_unreproducible_with_evidence_and_nothing_published(db: TestDb) {
    let server = TestServer::start(db).await;
    let (a_key, mut a) = builder(&server, "a", Some("alice")).await;
    let id = submit_reproducible(&server, json!({})).await;
    let same = b"\x7fELF same binary".as_slice();
    let one = tar_gz(&[
        ("bin/tool", same),
        ("BUILD_INFO", b"built\nat 1000\nby a\n"),
    ]);
    let two = tar_gz(&[
        ("bin/tool", same),
        ("BUILD_INFO", b"built\nat 2000\nby a\n"),
    ]);
    build(&mut a, &a_key, ("out.tar.gz", &one)).await;
    let (b_key, mut b) = builder(&server, "b", Some("bob")).await;
    build(&mut b, &b_key, ("out.tar.gz", &two)).await;

    let done = server.wait_for_state(id, "unreproducible").await;
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("out.tar.gz")),
        "{done}"
    );
    let detail = server.job(id).await;
    let r = &detail["reproduction"];
    assert_eq!(r["verdict"], "mismatch", "{detail}");
    assert_eq!(r["runs"].as_array().map(Vec::len), Some(2));
    let evidence = &r["evidence"];
    let artifact = &evidence["artifacts"][0];
    assert_eq!(artifact["name"], "out.tar.gz");
    assert_ne!(artifact["sha256"][0], artifact["sha256"][1]);
    let entries = artifact["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "only BUILD_INFO differs: {artifact}");
    assert_eq!(entries[0]["path"], "BUILD_INFO");
    assert_eq!(entries[0]["runs"][0]["size"], 19);
    let diff = entries[0]["text_diff"].as_str().expect("a text diff");
    assert!(diff.contains("-at 1000\n+at 2000\n"), "{diff}");
    // Nothing published, nothing downloadable.
    assert!(detail["artifacts"]
        .as_array()
        .expect("artifacts")
        .is_empty());
    assert_eq!(
        download_status(&server, id, "out.tar.gz").await,
        StatusCode::NOT_FOUND
    );
    // Terminal: a retry is refused; the state shows in the metrics.
    let (status, _) = server
        .post_admin(&format!("/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("buildfleet_jobs{state=\"unreproducible\"} 1"),
        "{metrics}"
    );
}

async fn publish_first_publishes_the_first_run_and_flags_the_job(db: TestDb) {
    let server = TestServer::start(db).await;
    let (a_key, mut a) = builder(&server, "a", Some("alice")).await;
    let id = submit_reproducible(&server, json!({ "on_mismatch": "publish_first" })).await;
    build(&mut a, &a_key, ("tool", b"first bytes")).await;
    let (b_key, mut b) = builder(&server, "b", Some("bob")).await;
    build(&mut b, &b_key, ("tool", b"second bytes")).await;

    let done = server.wait_for_state(id, "unreproducible").await;
    assert_eq!(done["on_mismatch"], "publish_first");
    let detail = server.job(id).await;
    assert_eq!(detail["reproduction"]["published_first"], true, "{detail}");
    let artifacts = detail["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 1, "{detail}");
    assert_eq!(artifacts[0]["attempt"], 1, "the first run's");
    let (status, body) = server
        .get_raw(&server.api(&format!("/jobs/{id}/artifacts/tool")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"first bytes");
    // Not a tar.gz: compared by digest, with a note.
    let note = detail["reproduction"]["evidence"]["artifacts"][0]["note"]
        .as_str()
        .unwrap_or_default();
    assert!(note.contains("cannot be listed"), "{detail}");
}

async fn a_lost_builder_in_the_second_run_repeats_that_run_only(db: TestDb) {
    let server = TestServer::start(db).await;
    let (a_key, mut a) = builder(&server, "a", Some("alice")).await;
    let id = submit_reproducible(&server, json!({})).await;
    build(&mut a, &a_key, ("tool", b"same")).await;
    let (_b_key, mut b) = builder(&server, "b", Some("bob")).await;
    let taken = b.next_assignment().await;
    assert_eq!(taken.attempt.0, 2);
    b.accept(&taken);
    b.drop_connection();

    // The lease runs out: attempt 3 is run 2 again, the recorded run 1 stays.
    let requeued = wait_until("the lost run requeued", || async {
        let job = server.job(id).await;
        (job["state"] == "queued" && job["attempt"] == 3).then_some(job)
    })
    .await;
    assert_eq!(
        requeued["reproduction"]["runs"].as_array().map(Vec::len),
        Some(1)
    );
    // Alice still may not take it; carol may.
    a.request_jobs(1);
    let (c_key, mut c) = builder(&server, "c", Some("carol")).await;
    let again = build(&mut c, &c_key, ("tool", b"same")).await;
    assert_eq!(again.attempt.0, 3);
    server.wait_for_state(id, "succeeded").await;
    let detail = server.job(id).await;
    let runs = detail["reproduction"]["runs"].as_array().expect("runs");
    let attempts: Vec<i64> = runs
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 3]);
    assert_eq!(runs[1]["owner"], "carol");
    let outcomes: Vec<&str> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(outcomes, ["succeeded", "lost", "succeeded"]);
}

async fn a_cancel_between_runs_ends_the_job_with_nothing_published(db: TestDb) {
    let server = TestServer::start(db).await;
    let (a_key, mut a) = builder(&server, "a", Some("alice")).await;
    let id = submit_reproducible(&server, json!({})).await;
    build(&mut a, &a_key, ("tool", b"bytes")).await;
    let (status, body) = server
        .post_admin(&format!("/jobs/{id}/cancel"), &json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    let done = server.wait_for_state(id, "cancelled").await;
    assert_eq!(done["attempt"], 2);
    // A builder of another owner arriving now gets nothing.
    let (_b_key, _b) = builder(&server, "b", Some("bob")).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let detail = server.job(id).await;
    assert_eq!(detail["state"], "cancelled");
    assert_eq!(detail["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        detail["reproduction"]["runs"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(detail["reproduction"].get("verdict"), None);
    assert!(detail["artifacts"]
        .as_array()
        .expect("artifacts")
        .is_empty());
    assert_eq!(
        download_status(&server, id, "tool").await,
        StatusCode::NOT_FOUND
    );
}

async fn a_failure_after_a_successful_run_ends_unreproducible(db: TestDb) {
    let server = TestServer::start(db).await;
    let (a_key, mut a) = builder(&server, "a", None).await;
    let id = submit_reproducible(&server, json!({})).await;
    build(&mut a, &a_key, ("tool", b"bytes")).await;
    // Without owner labels, another builder is independent enough.
    let (b_key, mut b) = builder(&server, "b", None).await;
    let job = b.next_assignment().await;
    b.accept(&job);
    let ack = b.complete(&b_key, &job, Outcome::Failed, vec![]).await;
    assert_eq!(ack, CompletionResult::Accepted);
    let done = server.wait_for_state(id, "unreproducible").await;
    let detail = server.job(id).await;
    let r = &detail["reproduction"];
    assert_eq!(r["verdict"], "run_failed", "{detail}");
    assert_eq!(r["evidence"]["failure"], "exit status 1");
    assert!(done["error"]
        .as_str()
        .is_some_and(|e| e.contains("run 2 (attempt 2) failed after 1 run(s) succeeded")));
    assert!(detail["artifacts"]
        .as_array()
        .expect("artifacts")
        .is_empty());
}

async fn bad_reproduce_values_are_refused_and_the_project_default_applies(db: TestDb) {
    let server = TestServer::start(db).await;
    let token = server.admin_token.clone();
    let base = json!({
        "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
        "source_sha256": "ab".repeat(32),
        "recipe": "cargo-build",
    });
    let with = |extra: Value| {
        let mut body = base.clone();
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body
    };
    for (extra, says) in [
        (json!({ "reproduce": 0 }), "reproduce must be from 1 to 5"),
        (json!({ "reproduce": 6 }), "reproduce must be from 1 to 5"),
        (json!({ "reproduce": "two" }), "reproduce"),
        (
            json!({ "reproduce": 1, "on_mismatch": "publish_first" }),
            "on_mismatch is for",
        ),
        (
            json!({ "reproduce": 2, "on_mismatch": "shrug" }),
            "on_mismatch",
        ),
        (
            json!({ "reproduce": 2, "mode": "plan" }),
            "plan-mode job cannot be reproduced",
        ),
    ] {
        let (status, body) = server
            .post("/jobs", Some(&token), &with(extra.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        assert_eq!(error_code(&body), "bad_request");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{extra}: {message}");
    }

    // A project's default: refused out of range, applied to jobs that name none.
    let project = "/projects/default/default";
    let (status, body) = server
        .call(
            Method::PATCH,
            project,
            Some(&token),
            Some(&json!({ "reproduce": 9 })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .call(
            Method::PATCH,
            project,
            Some(&token),
            Some(&json!({ "reproduce": 3 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reproduce"], 3);
    let id = server.submit(json!({})).await;
    assert_eq!(server.job(id).await["reproduce"], 3);
    let own = server.submit(json!({ "reproduce": 1 })).await;
    let ordinary = server.job(own).await;
    assert_eq!(
        ordinary.get("reproduce"),
        None,
        "1 is not shown: {ordinary}"
    );
    assert_eq!(ordinary.get("reproduction"), None);
    let plan = server.submit(json!({ "mode": "plan" })).await;
    assert_eq!(
        server.job(plan).await.get("reproduce"),
        None,
        "plan jobs stay ordinary"
    );
}
