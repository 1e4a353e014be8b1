//! Lost connections and restarts: resume within the grace period without losing or
//! duplicating a log line, requeue after it, a backend restart with jobs in flight, and the
//! attempt number fencing off what a superseded attempt still sends.

use awc::http::StatusCode;
use buildfleet_backend::store::{AttemptOutcome, JobId};
use buildfleet_protocol::{
    CancelReason, CompletionResult, ErrorCode, HeldJob, JobRef, Outcome, ResumeAction,
    ServerMessage,
};
use buildfleet_testkit::builder_client::{
    job_ref, sha256_hex, upload, upload_ok, BuilderClient, Incoming,
};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    resume_within_grace_keeps_the_job_and_the_log_exact,
    builder_lost_past_grace_loses_the_job_to_another,
    backend_restart_with_a_job_in_flight_resumes_it,
    stale_attempt_cannot_report_or_upload,
}

fn line(seq: u64) -> String {
    format!("line {seq}")
}

fn held(job: JobRef, last_acked_seq: Option<u64>) -> HeldJob {
    HeldJob {
        job_id: job.job_id,
        attempt: job.attempt,
        last_acked_seq,
        finished: false,
    }
}

fn next_seq_of(result: &buildfleet_protocol::ResumeResult, job: JobRef) -> u64 {
    match result.jobs.as_slice() {
        [decision] if decision.job_id == job.job_id && decision.attempt == job.attempt => {
            match &decision.decision {
                ResumeAction::Continue { next_seq } => *next_seq,
                other => panic!("expected continue, got {other:?}"),
            }
        }
        other => panic!("expected one decision for {job:?}, got {other:?}"),
    }
}

async fn resume_within_grace_keeps_the_job_and_the_log_exact(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("flaky-network");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    let r = job_ref(&job);
    builder.accept(&job);
    for seq in 1..=3 {
        builder.log(r, seq, &line(seq));
    }
    assert_eq!(builder.expect_event_ack(r, 3).await, 3);
    // Two more go out and the connection drops before their acknowledgment is read.
    builder.log(r, 4, &line(4));
    builder.log(r, 5, &line(5));
    builder.drop_connection();

    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let result = builder.handshake(&key, vec![held(r, Some(3))]).await;
    let next = next_seq_of(&result, r);
    assert!(
        (4..=6).contains(&next),
        "next_seq {next}: events 1..=3 are stored, 4 and 5 may be"
    );
    // Resend from an already-acknowledged event on purpose: the duplicates must be dropped.
    for seq in 2..=8 {
        builder.log(r, seq, &line(seq));
    }
    assert_eq!(builder.expect_event_ack(r, 8).await, 8);
    let digest = upload_ok(&job, "out.tar", b"resumed output").await;
    let outcome = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(outcome, CompletionResult::Accepted);

    let finished = server.wait_for_state(id, "succeeded").await;
    assert_eq!(finished["attempt"], 1, "the lease was kept: no requeue");
    let expected: Vec<String> = (1..=8).map(line).collect();
    assert_eq!(
        server.log_lines(id).await,
        expected,
        "no line lost or doubled"
    );
    let attempts = server
        .with_store(move |s| s.job_attempts(JobId(id)).expect("attempts"))
        .await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Succeeded));

    builder.close().await;
    server.shutdown().await;
}

async fn builder_lost_past_grace_loses_the_job_to_another(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key_a, key_b) = (TestKey::generate("vanishing"), TestKey::generate("standby"));
    let id_a = server.admit(&key_a).await;
    let id_b = server.admit(&key_b).await;
    let mut a = BuilderClient::connect_ready(&server.ws_url(), &key_a).await;
    a.request_jobs(1);
    let id = server.submit(json!({})).await;
    let first = a.next_assignment().await;
    a.accept(&first);
    a.log(job_ref(&first), 1, "attempt one");
    a.expect_event_ack(job_ref(&first), 1).await;
    a.drop_connection();

    // The other builder waits with credits; the job reaches it once the grace period ends.
    let mut b = BuilderClient::connect_ready(&server.ws_url(), &key_b).await;
    b.request_jobs(1);
    let second = b.next_assignment().await;
    assert_eq!(second.job_id.0, id);
    assert_eq!(second.attempt.0, 2);
    assert_ne!(second.job_token, first.job_token);
    b.accept(&second);

    // The first builder comes back too late: told to drop the job on resume.
    let mut a = BuilderClient::connect(&server.ws_url()).await;
    let result = a
        .handshake(&key_a, vec![held(job_ref(&first), Some(1))])
        .await;
    assert!(
        matches!(
            result.jobs.as_slice(),
            [d] if d.job_id == first.job_id && matches!(d.decision, ResumeAction::Cancel { .. })
        ),
        "{result:?}"
    );
    // Its token is dead too.
    let (status, _) = upload(
        &first.upload_url,
        &first.job_token,
        "old.bin",
        b"old",
        &sha256_hex(b"old"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    b.log(job_ref(&second), 1, "attempt two");
    let digest = upload_ok(&second, "new.bin", b"new").await;
    let outcome = b
        .complete(&key_b, &second, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(outcome, CompletionResult::Accepted);
    let finished = server.wait_for_state(id, "succeeded").await;
    assert_eq!(finished["attempt"], 2);
    assert_eq!(finished["builder_id"], id_b);
    // Builder A came back still holding attempt 1: its lost lease was the network's and
    // was forgiven, so it does not count against the job.
    assert_eq!(finished["failed_attempts"], 0);
    assert_eq!(server.log_lines(id).await, vec!["attempt two"]);
    let old_log: Vec<_> = server
        .log_records_of(id, Some(1))
        .await
        .iter()
        .filter_map(|r| r["line"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        old_log,
        vec!["attempt one"],
        "the lost attempt's log is kept"
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
            (1, Some(id_a), Some(AttemptOutcome::Lost)),
            (2, Some(id_b), Some(AttemptOutcome::Succeeded)),
        ]
    );

    a.close().await;
    b.close().await;
    server.shutdown().await;
}

async fn backend_restart_with_a_job_in_flight_resumes_it(db: TestDb) {
    let mut server = TestServer::start(db).await;
    let key = TestKey::generate("patient");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    let r = job_ref(&job);
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    for seq in 1..=3 {
        builder.log(r, seq, &line(seq));
    }
    assert_eq!(builder.expect_event_ack(r, 3).await, 3);

    server.restart().await;
    // The old connection is gone with the old server.
    loop {
        match builder.next_incoming().await {
            Incoming::Closed(_) => break,
            Incoming::Message(_) | Incoming::Undecodable(_) => {}
        }
    }
    drop(builder);

    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let result = builder.handshake(&key, vec![held(r, Some(3))]).await;
    assert_eq!(next_seq_of(&result, r), 4);
    for seq in 4..=6 {
        builder.log(r, seq, &line(seq));
    }
    assert_eq!(builder.expect_event_ack(r, 6).await, 6);
    let digest = upload_ok(&job, "after-restart.bin", b"made across a restart").await;
    let outcome = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(outcome, CompletionResult::Accepted);
    let finished = server.wait_for_state(id, "succeeded").await;
    assert_eq!(finished["attempt"], 1);
    let expected: Vec<String> = (1..=6).map(line).collect();
    assert_eq!(server.log_lines(id).await, expected);
    let (status, bytes) = server
        .get_raw(&server.api(&format!("/jobs/{id}/artifacts/after-restart.bin")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"made across a restart");

    builder.close().await;
    server.shutdown().await;
}

async fn stale_attempt_cannot_report_or_upload(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key_a, key_b) = (TestKey::generate("stuck"), TestKey::generate("fresh"));
    server.admit(&key_a).await;
    server.admit(&key_b).await;
    let mut a = BuilderClient::connect_ready(&server.ws_url(), &key_a).await;
    a.request_jobs(1);
    let id = server.submit(json!({})).await;
    let first = a.next_assignment().await;
    a.accept(&first);
    // The builder stays connected but stops renewing the lease (a wedged job).
    a.forget(job_ref(&first));

    let mut b = BuilderClient::connect_ready(&server.ws_url(), &key_b).await;
    b.request_jobs(1);
    let second = b.next_assignment().await;
    assert_eq!((second.job_id.0, second.attempt.0), (id, 2));
    b.accept(&second);
    // The accept is fire-and-forget: see it stored before checking that nothing moves.
    server.wait_for_state(id, "running").await;
    let superseded = a
        .expect("cancel of the lost attempt", |m| match m {
            ServerMessage::Cancel(c) if c.job_id == first.job_id => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(superseded.reason, CancelReason::Superseded);
    assert_eq!(superseded.attempt, first.attempt);

    // Attempt 1 uploads anyway: refused, nothing stored.
    let (status, body) = upload(
        &first.upload_url,
        &first.job_token,
        "stale.bin",
        b"stale",
        &sha256_hex(b"stale"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Attempt 2's token does not open attempt 1's URL either.
    let (status, _) = upload(
        &first.upload_url,
        &second.job_token,
        "stale.bin",
        b"stale",
        &sha256_hex(b"stale"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // And reports completion anyway: refused, one way or the other, and nothing changes.
    let response = a.job_response(&key_a, &first, Outcome::Succeeded, vec![]);
    a.send(buildfleet_protocol::ClientMessage::JobResponse(response));
    let refused = loop {
        match a.next_incoming().await {
            Incoming::Message(ServerMessage::CompletionAck(ack)) => {
                break matches!(
                    ack.result,
                    CompletionResult::Refused {
                        code: ErrorCode::StaleAttempt,
                        ..
                    }
                );
            }
            Incoming::Message(ServerMessage::Error(e)) => {
                panic!("a stale completion must be refused, not close the session: {e:?}")
            }
            Incoming::Message(_) | Incoming::Undecodable(_) => {}
            Incoming::Closed(reason) => panic!("closed without a verdict: {reason:?}"),
        }
    };
    assert!(refused, "a stale completion must be refused");
    let job = server.job(id).await;
    assert_eq!(job["state"], "running");
    assert_eq!(job["attempt"], 2);

    let digest = upload_ok(&second, "fresh.bin", b"fresh").await;
    let outcome = b
        .complete(&key_b, &second, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(outcome, CompletionResult::Accepted);
    server.wait_for_state(id, "succeeded").await;
    let artifacts = server
        .with_store(move |s| s.artifacts(JobId(id), false).expect("artifacts"))
        .await;
    let names: Vec<_> = artifacts
        .iter()
        .map(|a| (a.attempt.0, a.name.as_str(), a.published))
        .collect();
    assert_eq!(
        names,
        vec![(2, "fresh.bin", true)],
        "nothing from attempt 1"
    );

    b.close().await;
    server.shutdown().await;
}
