//! Log events arrive in bursts: the session hands what it read in one go to the LogSink as
//! one batch, and registers where acknowledgements go once per attempt. These scenarios check
//! that batching keeps every promise of the log: per-job order, no duplicates across a
//! reconnect, nothing lost before a completion or a protocol error, the size limit with its
//! marker, and live fan-out. Plus the heartbeat side: `last_seen_at` written by the sweep.

use std::time::{Duration, Instant};

use buildfleet_backend::store::BuilderId;
use buildfleet_protocol::{
    ClientMessage, CompletionResult, ErrorCode, HeldJob, JobAssignment, JobRef, Outcome,
    ResumeAction, ResumeResult,
};
use buildfleet_testkit::builder_client::{job_ref, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{wait_until, TestServer};
use buildfleet_testkit::server_tests;
use futures_util::StreamExt as _;
use serde_json::json;

server_tests! {
    bursts_split_by_a_reconnect_keep_each_log_exact,
    a_completion_right_after_a_burst_finds_the_whole_log,
    events_read_before_a_protocol_error_are_stored,
    the_size_limit_cuts_a_burst_with_one_marker,
    an_idle_builder_is_recorded_as_seen_by_the_sweep,
}

fn line(job: JobRef, seq: u64) -> String {
    format!("job {} line {seq}", job.job_id)
}

fn held(job: JobRef) -> HeldJob {
    HeldJob {
        job_id: job.job_id,
        attempt: job.attempt,
        last_acked_seq: None,
        finished: false,
    }
}

fn next_seq(result: &ResumeResult, job: JobRef) -> u64 {
    let decision = result
        .jobs
        .iter()
        .find(|d| d.job_id == job.job_id && d.attempt == job.attempt)
        .unwrap_or_else(|| panic!("no decision for {job:?} in {result:?}"));
    match &decision.decision {
        ResumeAction::Continue { next_seq } => *next_seq,
        other => panic!("expected continue for {job:?}, got {other:?}"),
    }
}

async fn assignments(builder: &mut BuilderClient, count: usize) -> Vec<JobAssignment> {
    let mut jobs = Vec::new();
    while jobs.len() < count {
        jobs.extend(builder.next_jobs().await);
    }
    jobs
}

/// A builder named `name`, connected and authenticated, running `count` fresh jobs (accepted,
/// and stored as running).
async fn running_jobs(
    server: &TestServer,
    name: &str,
    count: usize,
) -> (BuilderClient, TestKey, Vec<JobAssignment>, Vec<i64>) {
    let key = TestKey::generate(name);
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(u32::try_from(count).expect("few jobs"));
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(server.submit(json!({})).await);
    }
    let jobs = assignments(&mut builder, count).await;
    for job in &jobs {
        builder.accept(job);
    }
    for &id in &ids {
        server.wait_for_state(id, "running").await;
    }
    (builder, key, jobs, ids)
}

/// Reads a job's live log stream (SSE) until it has seen `last_seq`; answers the sequence
/// numbers of the records in the order they arrived.
async fn read_live_log(url: String, last_seq: u64) -> Vec<u64> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut response = client.get(url).send().await.expect("log stream");
    assert!(response.status().is_success(), "{:?}", response.status());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending = Vec::new();
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last_seq) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.next())
            .await
            .unwrap_or_else(|_| panic!("live log stopped at {:?}", seqs.last()))
            .expect("the live log ended early")
            .expect("reading the live log");
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let mut fields = event.split(|&b| b == b'\n');
            if fields.clone().any(|f| f.starts_with(b"event:")) {
                continue; // not a record: `attempt` or `end`
            }
            let Some(data) = fields.find_map(|f| f.strip_prefix(b"data: ")) else {
                continue; // a keepalive comment
            };
            let record: serde_json::Value =
                serde_json::from_slice(data).expect("an SSE record is JSON");
            seqs.push(record["seq"].as_u64().expect("seq"));
        }
    }
    seqs
}

async fn bursts_split_by_a_reconnect_keep_each_log_exact(db: TestDb) {
    const LAST: u64 = 300;
    let server = TestServer::start(db).await;
    let (mut builder, key, jobs, ids) = running_jobs(&server, "bursty", 2).await;
    let refs: Vec<JobRef> = jobs.iter().map(job_ref).collect();
    let viewer = actix_rt::spawn(read_live_log(
        server.api(&format!("/jobs/{}/log/stream", refs[0].job_id)),
        LAST,
    ));

    // One burst, two jobs interleaved, with a resend of earlier events in the middle; the
    // connection drops before any acknowledgment is read.
    for seq in 1..=150 {
        for &r in &refs {
            builder.log(r, seq, &line(r, seq));
        }
        if seq == 100 {
            for old in 40..=60 {
                builder.log(refs[0], old, &line(refs[0], old));
            }
        }
    }
    builder.drop_connection();

    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let result = builder
        .handshake(&key, refs.iter().copied().map(held).collect())
        .await;
    // Resend from before the resume point on purpose, again in one interleaved burst.
    let from: Vec<u64> = refs
        .iter()
        .map(|&r| next_seq(&result, r).saturating_sub(25).max(1))
        .collect();
    for seq in 1..=LAST {
        for (i, &r) in refs.iter().enumerate() {
            if seq >= from[i] {
                builder.log(r, seq, &line(r, seq));
            }
        }
    }
    for &r in &refs {
        assert_eq!(builder.expect_event_ack(r, LAST).await, LAST);
    }
    for job in &jobs {
        let outcome = builder
            .complete(&key, job, Outcome::Succeeded, vec![])
            .await;
        assert_eq!(outcome, CompletionResult::Accepted);
    }

    for (&id, &r) in ids.iter().zip(&refs) {
        let expected: Vec<String> = (1..=LAST).map(|seq| line(r, seq)).collect();
        assert_eq!(
            server.log_lines(id).await,
            expected,
            "job {id}: no line lost or doubled"
        );
    }
    let live = viewer.await.expect("viewer task");
    assert_eq!(
        live,
        (1..=LAST).collect::<Vec<_>>(),
        "the live viewer saw each line once"
    );

    builder.close().await;
    server.shutdown().await;
}

async fn a_completion_right_after_a_burst_finds_the_whole_log(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, jobs, ids) = running_jobs(&server, "hasty", 2).await;
    let refs: Vec<JobRef> = jobs.iter().map(job_ref).collect();
    // No waiting for acknowledgments: the first job's completion follows its events in the
    // same burst, and the other job's events follow the completion, so the events read just
    // before the completion may still be buffered in the session when it reads it.
    for seq in 1..=200 {
        builder.log(refs[0], seq, &line(refs[0], seq));
    }
    let response = builder.job_response(&key, &jobs[0], Outcome::Succeeded, vec![]);
    builder.send(ClientMessage::JobResponse(response));
    for seq in 1..=64 {
        builder.log(refs[1], seq, &line(refs[1], seq));
    }
    let outcome = builder.expect_completion_ack(refs[0]).await;
    assert_eq!(outcome, CompletionResult::Accepted);

    assert_eq!(server.job(ids[0]).await["state"], "succeeded");
    let expected: Vec<String> = (1..=200).map(|seq| line(refs[0], seq)).collect();
    assert_eq!(
        server.log_lines(ids[0]).await,
        expected,
        "the log is complete when the job says it finished"
    );
    assert_eq!(builder.expect_event_ack(refs[1], 64).await, 64);

    builder.close().await;
    server.shutdown().await;
}

async fn events_read_before_a_protocol_error_are_stored(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, jobs, ids) = running_jobs(&server, "garbled", 1).await;
    let (r, id) = (job_ref(&jobs[0]), ids[0]);
    for seq in 1..=5 {
        builder.log(r, seq, &line(r, seq));
    }
    builder.send_raw("{\"type\": \"job_event\", \"oops\"");
    builder
        .expect_error_and_close(ErrorCode::MalformedFrame)
        .await;
    drop(builder);

    let expected: Vec<String> = (1..=5).map(|seq| line(r, seq)).collect();
    wait_until("the events before the bad frame to be stored", || async {
        (server.log_lines(id).await == expected).then_some(())
    })
    .await;
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let result = builder.handshake(&key, vec![held(r)]).await;
    assert_eq!(next_seq(&result, r), 6);

    builder.close().await;
    server.shutdown().await;
}

async fn the_size_limit_cuts_a_burst_with_one_marker(db: TestDb) {
    const LIMIT: u64 = 4096;
    let server = TestServer::start_with(db, |config| {
        config.limits.max_log_bytes_per_job = LIMIT;
    })
    .await;
    let key = TestKey::generate("chatty");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    let r = job_ref(&job);
    builder.accept(&job);
    let long = "x".repeat(100);
    for seq in 1..=100 {
        builder.log(r, seq, &format!("{seq} {long}"));
    }
    // Lines past the limit are acknowledged (and dropped), so the builder is not held up.
    assert_eq!(builder.expect_event_ack(r, 100).await, 100);
    // Resent lines past the limit change nothing.
    for seq in 90..=100 {
        builder.log(r, seq, &format!("{seq} {long}"));
    }
    assert_eq!(builder.expect_event_ack(r, 100).await, 100);
    let outcome = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(outcome, CompletionResult::Accepted);

    let records = server.log_records(id).await;
    let markers: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["stream"] == "system")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(markers, vec![records.len() - 1], "one marker, at the end");
    let marker = &records[records.len() - 1];
    assert!(
        marker["line"]
            .as_str()
            .is_some_and(|l| l.contains("truncated")),
        "{marker}"
    );
    let kept = records.len() - 1;
    assert!(
        kept > 5 && kept < 100,
        "{kept} lines kept under {LIMIT} bytes"
    );
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    let expected: Vec<u64> = (1..=u64::try_from(records.len()).expect("count")).collect();
    assert_eq!(
        seqs, expected,
        "lines in order, the marker in the place of the first cut one"
    );
    for (i, record) in records[..kept].iter().enumerate() {
        assert_eq!(record["line"], format!("{} {long}", i + 1));
    }

    builder.close().await;
    server.shutdown().await;
}

async fn last_seen(server: &TestServer, id: BuilderId) -> Option<i64> {
    server
        .with_store(move |s| {
            s.builder_by_id(id)
                .expect("builder")
                .expect("admitted")
                .last_seen_at
        })
        .await
}

async fn an_idle_builder_is_recorded_as_seen_by_the_sweep(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("quiet");
    let id = BuilderId(server.admit(&key).await);
    assert_eq!(last_seen(&server, id).await, None);
    // Heartbeats with no active jobs: no store call of their own, the sweep records them.
    let builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let first = wait_until("the sweep to record the builder as seen", || async {
        last_seen(&server, id).await
    })
    .await;
    wait_until("last_seen_at to move on with later heartbeats", || async {
        last_seen(&server, id).await.filter(|&t| t > first)
    })
    .await;

    builder.close().await;
    server.shutdown().await;
}
