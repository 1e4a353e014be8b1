//! A job's life through the real backend: pushed dispatch, logs, upload, signed completion,
//! competing builders, rejection, cancellation and timeouts, and builders that accept every
//! assignment (no `work_ack`: the claim starts the job).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use buildfleet_backend::store::{AttemptOutcome, JobId, JobState};
use buildfleet_protocol::signing::STATEMENT_NAMESPACE;
use buildfleet_protocol::{CancelReason, CompletionResult, JobRef, Outcome, ServerMessage};
use buildfleet_testkit::builder_client::{
    default_capabilities, job_ref, upload, upload_ok, BuilderClient,
};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::{ssh_keygen_verify, TestKey};
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    happy_path_pushes_runs_and_publishes_a_verifiable_build,
    two_builders_share_many_jobs_each_assigned_once,
    rejected_job_goes_to_another_builder,
    cancel_through_the_api_reaches_the_builder,
    timed_out_job_is_cancelled_and_recorded,
    timed_out_job_closes_even_without_the_builder,
    a_builder_that_accepts_every_assignment_runs_from_the_claim,
}

async fn happy_path_pushes_runs_and_publishes_a_verifiable_build(db: TestDb) {
    // A sweep far in the future: only the pushed dispatch can deliver the job in time.
    let server = TestServer::start_with(db, |config| {
        config.timings.sweep_interval = Duration::from_secs(60);
    })
    .await;
    let key = TestKey::generate("builder-one");
    let builder_id = server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    // Let the credits reach the scheduler before the job exists.
    buildfleet_testkit::server::wait_until("the builder to be ready with credits", || async {
        let live = server.get_ok(&format!("/builders/{builder_id}")).await;
        (live["live"]["credits"] == 1).then_some(())
    })
    .await;

    let submitted = Instant::now();
    let id = server
        .submit(json!({ "parameters": { "profile": "release" } }))
        .await;
    let job = builder.next_assignment().await;
    let latency = submitted.elapsed();
    assert!(
        latency < Duration::from_secs(2),
        "dispatch took {latency:?}: it must be pushed, not polled"
    );
    assert_eq!(job.job_id.0, id);
    assert_eq!(job.attempt.0, 1);
    assert_eq!(job.recipe, "cargo-build");
    assert_eq!(
        job.parameters.get("profile").map(String::as_str),
        Some("release")
    );
    assert_eq!(
        job.source.sha256.as_str(),
        buildfleet_testkit::server::SOURCE_SHA256
    );
    assert!(job.upload_url.starts_with(&server.url));
    assert_eq!(server.job(id).await["state"], "assigned");

    builder.accept(&job);
    server.wait_for_state(id, "running").await;

    let lines: Vec<String> = (1..=5).map(|i| format!("compiling step {i}")).collect();
    for (i, line) in lines.iter().enumerate() {
        builder.log(job_ref(&job), i as u64 + 1, line);
    }
    assert_eq!(builder.expect_event_ack(job_ref(&job), 5).await, 5);

    let binary = b"\x7fELF pretend this is a binary".repeat(1000);
    let digest = upload_ok(&job, "hello-x86_64", &binary).await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest.clone()])
        .await;
    assert_eq!(result, CompletionResult::Accepted);

    let finished = server.job(id).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_eq!(finished["builder_id"], builder_id);
    assert_eq!(server.log_lines(id).await, lines, "log lines in order");
    let seqs: Vec<u64> = server
        .log_records(id)
        .await
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);

    // The artifact downloads byte for byte, with its digest.
    let (status, listing) = server.get(&format!("/jobs/{id}/artifacts")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["artifacts"][0]["name"], "hello-x86_64");
    assert_eq!(listing["artifacts"][0]["sha256"], digest.sha256.as_str());
    let (status, downloaded) = server
        .get_raw(&server.api(&format!("/jobs/{id}/artifacts/hello-x86_64")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(downloaded, binary);

    // Anyone can check the build with stock OpenSSH.
    let (status, statement) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, signature) = server
        .get_raw(&server.api(&format!("/jobs/{id}/statement.sig")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    assert_eq!(status, StatusCode::OK);
    let allowed = String::from_utf8(allowed).expect("allowed signers are text");
    let signature = String::from_utf8(signature).expect("armored signature");
    let (ok, output) = ssh_keygen_verify(
        &allowed,
        &key.name,
        STATEMENT_NAMESPACE,
        &statement,
        &signature,
    );
    assert!(ok, "ssh-keygen -Y verify rejected the statement: {output}");
    let parsed: serde_json::Value = serde_json::from_slice(&statement).expect("statement JSON");
    assert_eq!(parsed["job_id"], id);
    assert_eq!(parsed["artifacts"][0]["sha256"], digest.sha256.as_str());
    // A tampered statement does not verify.
    let mut tampered = statement.clone();
    tampered.extend_from_slice(b" ");
    let (ok, _) = ssh_keygen_verify(
        &allowed,
        &key.name,
        STATEMENT_NAMESPACE,
        &tampered,
        &signature,
    );
    assert!(!ok, "a modified statement must not verify");

    // Stored state: one attempt, succeeded, its token revoked.
    let attempts = server
        .with_store(move |s| s.job_attempts(JobId(id)).expect("attempts"))
        .await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    assert!(!attempts[0].token_valid);
    let (status, body) = upload(
        &job.upload_url,
        &job.job_token,
        "late",
        b"x",
        &buildfleet_testkit::builder_client::sha256_hex(b"x"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "token revoked: {body}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("buildfleet_jobs{state=\"succeeded\"} 1"),
        "{metrics}"
    );

    builder.close().await;
    server.shutdown().await;
}

async fn two_builders_share_many_jobs_each_assigned_once(db: TestDb) {
    const JOBS: usize = 16;
    let server = TestServer::start(db).await;
    let (key_a, key_b) = (TestKey::generate("alpha"), TestKey::generate("beta"));
    server.admit(&key_a).await;
    server.admit(&key_b).await;
    let mut a = BuilderClient::connect_ready(&server.ws_url(), &key_a).await;
    let mut b = BuilderClient::connect_ready(&server.ws_url(), &key_b).await;
    a.request_jobs(2);
    b.request_jobs(2);
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(server.submit(json!({})).await);
    }

    let done = std::cell::Cell::new(0usize);
    let (taken_a, taken_b) = futures_util::join!(
        work_until_all_done(&mut a, &key_a, &done, JOBS),
        work_until_all_done(&mut b, &key_b, &done, JOBS),
    );
    let mut all: Vec<i64> = taken_a.iter().chain(&taken_b).copied().collect();
    all.sort_unstable();
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(all, expected, "every job assigned exactly once");
    assert!(
        !taken_a.is_empty() && !taken_b.is_empty(),
        "both builders got work: {taken_a:?} {taken_b:?}"
    );

    let (status, list) = server.get("/jobs?state=succeeded&limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(JOBS));
    let stored = server
        .with_store(move |s| {
            ids.iter()
                .map(|&id| {
                    (
                        s.job(JobId(id)).expect("job").expect("exists").state,
                        s.job_attempts(JobId(id)).expect("attempts").len(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await;
    assert!(
        stored
            .iter()
            .all(|&(state, attempts)| state == JobState::Succeeded && attempts == 1),
        "{stored:?}"
    );

    a.close().await;
    b.close().await;
    server.shutdown().await;
}

/// Runs assignments on `builder` until `total` jobs are done across all builders; returns
/// the job ids this builder was given.
async fn work_until_all_done(
    builder: &mut BuilderClient,
    key: &TestKey,
    done: &std::cell::Cell<usize>,
    total: usize,
) -> Vec<i64> {
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.get() < total {
        assert!(Instant::now() < deadline, "jobs did not all finish");
        let jobs = builder
            .try_expect(Duration::from_millis(100), "jobs", |m| match m {
                ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
                _ => None,
            })
            .await;
        for job in jobs.unwrap_or_default() {
            taken.push(job.job_id.0);
            builder.accept(&job);
            builder.log(job_ref(&job), 1, &format!("building job {}", job.job_id));
            let artifact = format!("output of job {}", job.job_id).into_bytes();
            let digest = upload_ok(&job, "out.bin", &artifact).await;
            let result = builder
                .complete(key, &job, Outcome::Succeeded, vec![digest])
                .await;
            assert_eq!(result, CompletionResult::Accepted, "job {}", job.job_id);
            done.set(done.get() + 1);
            builder.request_jobs(1);
        }
    }
    taken
}

async fn rejected_job_goes_to_another_builder(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key_a, key_b) = (TestKey::generate("picky"), TestKey::generate("willing"));
    let id_a = server.admit(&key_a).await;
    let id_b = server.admit(&key_b).await;
    let mut a = BuilderClient::connect_ready(&server.ws_url(), &key_a).await;
    a.request_jobs(1);
    let id = server.submit(json!({})).await;
    let offered = a.next_assignment().await;
    assert_eq!(offered.job_id.0, id);

    let mut b = BuilderClient::connect_ready(&server.ws_url(), &key_b).await;
    b.request_jobs(1);
    a.reject(&offered, "no disk space");
    let job = b.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    assert_eq!(job.attempt.0, 2, "a rejected assignment ends its attempt");
    b.accept(&job);
    let result = b.complete(&key_b, &job, Outcome::Succeeded, vec![]).await;
    assert_eq!(result, CompletionResult::Accepted);
    let finished = server.wait_for_state(id, "succeeded").await;
    assert_eq!(finished["builder_id"], id_b);
    assert_eq!(
        finished["failed_attempts"], 0,
        "a rejection is not a failure"
    );

    let attempts = server
        .with_store(move |s| s.job_attempts(JobId(id)).expect("attempts"))
        .await;
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt.0, a.builder.map(|b| b.0), a.outcome))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Some(id_a), Some(AttemptOutcome::Rejected)),
            (2, Some(id_b), Some(AttemptOutcome::Succeeded)),
        ]
    );
    // The builder that said no was not offered the job again.
    let again = a
        .try_expect(Duration::from_millis(300), "jobs", |m| {
            matches!(m, ServerMessage::Jobs(_)).then_some(())
        })
        .await;
    assert!(again.is_none());

    a.close().await;
    b.close().await;
    server.shutdown().await;
}

async fn cancel_through_the_api_reaches_the_builder(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("cancelled-builder");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    builder.log(job_ref(&job), 1, "working");

    let (status, body) = server
        .post(&format!("/jobs/{id}/cancel"), None, &json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "cancel needs a token: {body}"
    );
    let (status, body) = server
        .post_admin(&format!("/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["cancel_requested_at"].is_i64(), "{body}");
    let reason = expect_cancel(&mut builder, job_ref(&job)).await;
    assert_eq!(reason, CancelReason::Requested);
    let result = builder
        .complete(&key, &job, Outcome::Cancelled, vec![])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "cancelled").await;
    assert_eq!(server.log_lines(id).await, vec!["working"]);
    let attempts = server
        .with_store(move |s| s.job_attempts(JobId(id)).expect("attempts"))
        .await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Cancelled));
    // A finished job cannot be cancelled again.
    let (status, _) = server
        .post_admin(&format!("/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    builder.close().await;
    server.shutdown().await;
}

async fn expect_cancel(builder: &mut BuilderClient, job: JobRef) -> CancelReason {
    builder
        .expect("cancel", |m| match m {
            ServerMessage::Cancel(c) if c.job_id == job.job_id && c.attempt == job.attempt => {
                Some(c.reason)
            }
            _ => None,
        })
        .await
}

async fn timed_out_job_is_cancelled_and_recorded(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("slow-builder");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({ "timeout_secs": 1 })).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.timeout_secs, 1);
    builder.accept(&job);
    let accepted_at = Instant::now();
    let reason = expect_cancel(&mut builder, job_ref(&job)).await;
    assert_eq!(reason, CancelReason::TimedOut);
    assert!(accepted_at.elapsed() >= Duration::from_millis(900));
    let result = builder
        .complete(&key, &job, Outcome::TimedOut, vec![])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "timed_out").await;
    let attempts = server
        .with_store(move |s| s.job_attempts(JobId(id)).expect("attempts"))
        .await;
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::TimedOut));

    builder.close().await;
    server.shutdown().await;
}

async fn timed_out_job_closes_even_without_the_builder(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("silent-builder");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({ "timeout_secs": 1 })).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    assert_eq!(
        expect_cancel(&mut builder, job_ref(&job)).await,
        CancelReason::TimedOut
    );
    // A builder that hangs: it neither reports nor renews the lease any more.
    builder.forget(job_ref(&job));
    // No answer: after the cancel grace period the backend closes the job itself.
    let finished = server.wait_for_state(id, "timed_out").await;
    assert!(finished["error"]
        .as_str()
        .is_some_and(|e| e.contains("timed out")));
    // A late report is not recorded over it.
    let late = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert!(
        matches!(late, CompletionResult::Refused { .. }),
        "a late success after the timeout must be refused, got {late:?}"
    );
    assert_eq!(server.job(id).await["state"], "timed_out");
    let counts: BTreeMap<_, _> = server
        .with_store(|s| s.count_jobs_by_state().expect("counts"))
        .await;
    assert_eq!(counts.get(&JobState::TimedOut), Some(&1));

    builder.close().await;
    server.shutdown().await;
}

/// A builder that declared `accepts_every_assignment` sends no `work_ack`: its job is
/// `running` from the claim (the history still shows `assigned` then `running`), its timeout
/// runs from then, and it completes as usual.
async fn a_builder_that_accepts_every_assignment_runs_from_the_claim(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("eager-builder");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let capabilities = buildfleet_protocol::Capabilities {
        accepts_every_assignment: true,
        ..default_capabilities(2)
    };
    builder.handshake_with(&key, capabilities, Vec::new()).await;
    builder.request_jobs(2);

    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    let running = server.job(id).await;
    assert_eq!(running["state"], "running", "{running}");
    assert!(running["started_at"].is_i64(), "{running}");
    let transitions: Vec<String> = running["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["to"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(transitions, ["queued", "assigned", "running"]);
    builder.log(job_ref(&job), 1, "no work_ack was sent");
    assert_eq!(builder.expect_event_ack(job_ref(&job), 1).await, 1);
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(id, "succeeded").await;

    // The timeout is watched from the claim, as for an accepted job.
    let slow = server.submit(json!({ "timeout_secs": 1 })).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, slow);
    let reason = expect_cancel(&mut builder, job_ref(&job)).await;
    assert_eq!(reason, CancelReason::TimedOut);
    builder
        .complete(&key, &job, Outcome::TimedOut, vec![])
        .await;
    server.wait_for_state(slow, "timed_out").await;
    builder.close().await;
    server.shutdown().await;
}
