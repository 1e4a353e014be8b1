//! Hostile and edge-case builders against the real backend (issue 12): every event at or
//! below an acknowledgement is stored, unstored events are capped per attempt (a stuck write cannot grow memory), the handshake deadline holds against clients that only
//! answer pings, unauthenticated connections are capped, a refused completion ends its attempt
//! and revokes its token, a rejected job goes to other builders first, and the protocol edges
//! docs/protocol.md defines (credits, repeated accepts, foreign heartbeats, fragments, UTF-8,
//! long lines) behave as written.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use awc::http::StatusCode;
use awc::ws;
use buildfleet_backend::storage::keys;
use buildfleet_protocol::{
    CancelReason, ClientMessage, CompletionResult, ErrorCode, Heartbeat, HeldJob, JobAssignment,
    JobRef, Outcome, ServerMessage,
};
use buildfleet_testkit::builder_client::{
    default_capabilities, job_ref, upload, upload_ok, BuilderClient,
};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{wait_until, TestServer};
use buildfleet_testkit::server_tests;
use bytes::Bytes;
use serde_json::json;

server_tests! {
    a_gap_in_event_sequence_closes_the_session_and_nothing_past_it_is_acknowledged,
    an_event_sequence_beyond_i64_is_a_malformed_frame,
    a_failed_chunk_write_keeps_its_events_until_storage_recovers,
    unstored_events_past_the_cap_are_shed_and_the_session_closed,
    a_client_answering_pings_is_closed_at_the_handshake_deadline,
    unauthenticated_connections_are_capped_per_address,
    a_refused_completion_fails_the_attempt_and_revokes_its_token,
    a_rejected_job_goes_to_another_builder_first,
    a_rejecting_builder_gets_the_job_back_only_after_a_back_off,
    credits_are_additive_and_capped_at_max_concurrent_jobs,
    a_repeated_accept_is_idempotent,
    a_heartbeat_naming_an_unheld_attempt_gets_cancel_superseded,
    fragmented_messages_are_joined_up_to_the_frame_limit,
    text_that_is_not_utf8_closes_with_1007,
    a_log_line_over_the_limit_is_truncated_by_the_backend,
    operator_labels_decide_matching_and_declared_ones_are_shown,
    a_corrupt_stored_job_fails_instead_of_going_out_with_made_up_values,
}

/// An admitted builder, ready, running one fresh job it accepted.
async fn running_job(server: &TestServer, name: &str) -> (BuilderClient, TestKey, JobAssignment) {
    let key = TestKey::generate(name);
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    (builder, key, job)
}

fn held(job: JobRef, last_acked_seq: Option<u64>) -> HeldJob {
    HeldJob {
        job_id: job.job_id,
        attempt: job.attempt,
        last_acked_seq,
        finished: false,
    }
}

fn line(seq: u64) -> String {
    format!("line {seq}")
}

/// Sequence 1, 2, then 5: the session closes with `unexpected_message`, only 1 and 2 are
/// acknowledged, and after the reconnect the backend asks for 3 on; the log ends exact.
async fn a_gap_in_event_sequence_closes_the_session_and_nothing_past_it_is_acknowledged(
    db: TestDb,
) {
    let server = TestServer::start(db).await;
    let (mut builder, key, job) = running_job(&server, "gap").await;
    let job = job_ref(&job);
    builder.log(job, 1, &line(1));
    builder.log(job, 2, &line(2));
    assert_eq!(builder.expect_event_ack(job, 2).await, 2);
    builder.log(job, 5, &line(5));
    let (seen, _) = builder.expect_closed().await;
    assert!(
        seen.iter().any(|m| matches!(m, ServerMessage::Error(e)
            if e.code == ErrorCode::UnexpectedMessage && e.message.contains("skips 3..4"))),
        "a gap is refused with a named error: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, ServerMessage::EventAck(a) if a.acked_seq > 2)),
        "nothing past the gap is acknowledged: {seen:?}"
    );

    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let result = builder.handshake(&key, vec![held(job, Some(2))]).await;
    assert!(
        matches!(
            result.jobs[0].decision,
            buildfleet_protocol::ResumeAction::Continue { next_seq: 3 }
        ),
        "{result:?}"
    );
    for seq in 3..=5 {
        builder.log(job, seq, &line(seq));
    }
    assert_eq!(builder.expect_event_ack(job, 5).await, 5);
    let lines = server.log_lines(job.job_id.0).await;
    assert_eq!(lines, (1..=5).map(line).collect::<Vec<_>>());
    server.shutdown().await;
}

async fn an_event_sequence_beyond_i64_is_a_malformed_frame(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, _key, job) = running_job(&server, "huge-seq").await;
    builder.log(job_ref(&job), 1, &line(1));
    builder.expect_event_ack(job_ref(&job), 1).await;
    builder.log(job_ref(&job), i64::MAX as u64 + 1, "too far");
    builder
        .expect_error_and_close(ErrorCode::MalformedFrame)
        .await;
    assert_eq!(server.log_lines(job.job_id.0).await, vec![line(1)]);
    server.shutdown().await;
}

/// The log segment cannot be written (a directory stands where it goes): the events are
/// neither acknowledged nor dropped, a completion meanwhile is refused as `internal` so the
/// builder resends it, and once storage works again every event is stored exactly once.
async fn a_failed_chunk_write_keeps_its_events_until_storage_recovers(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, job) = running_job(&server, "disk-error").await;
    let job_key = job_ref(&job);
    let blocker = first_log_segment(&server);
    std::fs::create_dir(&blocker).expect("a directory where the log segment goes");
    for seq in 1..=5 {
        builder.log(job_key, seq, &line(seq));
    }
    wait_until("a failed chunk write", || async {
        let metrics = server.metrics().await;
        metric(&metrics, "buildfleet_log_store_failures_total").filter(|n| *n >= 1.0)
    })
    .await;
    let early_ack = builder
        .try_expect(Duration::from_millis(300), "an event_ack", |m| match m {
            ServerMessage::EventAck(ack) => Some(ack.acked_seq),
            _ => None,
        })
        .await;
    assert_eq!(
        early_ack, None,
        "nothing is acknowledged while storage fails"
    );

    let refused = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert!(
        matches!(
            &refused,
            CompletionResult::Refused {
                code: ErrorCode::Internal,
                ..
            }
        ),
        "a job cannot finish with its log short: {refused:?}"
    );
    assert_eq!(server.job(job.job_id.0).await["state"], "running");

    std::fs::remove_dir(&blocker).expect("storage works again");
    assert_eq!(builder.expect_event_ack(job_key, 5).await, 5);
    let accepted = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(accepted, CompletionResult::Accepted);
    server.wait_for_state(job.job_id.0, "succeeded").await;
    assert_eq!(
        server.log_lines(job.job_id.0).await,
        (1..=5).map(line).collect::<Vec<_>>()
    );
    server.shutdown().await;
}

/// While storage is stuck (a write that does not return), a builder that keeps writing does
/// not grow the backend's memory past the per-attempt cap (8 MiB): the unacknowledged events
/// are let go and the session closed, so the builder resends them after it reconnects.
async fn unstored_events_past_the_cap_are_shed_and_the_session_closed(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, _key, job) = running_job(&server, "log-cap").await;
    let job_key = job_ref(&job);
    // A FIFO where the log segment goes: the first chunk write blocks opening it.
    let log_file = first_log_segment(&server);
    let made = std::process::Command::new("mkfifo")
        .arg(&log_file)
        .status()
        .expect("running mkfifo");
    assert!(made.success(), "mkfifo failed");
    builder.log(job_key, 1, &line(1));
    // 9 MiB in 4 KiB lines while that write hangs.
    let long_line = "x".repeat(4096);
    for seq in 2..=(2 + 9 * 256) {
        builder.log(job_key, seq, &long_line);
    }
    let (seen, _) = builder.expect_closed().await;
    assert!(
        seen.iter().any(|m| matches!(m,
            ServerMessage::Error(e) if e.code == ErrorCode::Internal && e.message.contains("behind storing"))),
        "expected the cap's error before the close, got {seen:?}"
    );
    assert!(
        !seen.iter().any(|m| matches!(m, ServerMessage::EventAck(_))),
        "nothing was stored, so nothing may be acknowledged: {seen:?}"
    );
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "buildfleet_log_sheds_total"), Some(1.0));

    // Unstick the write (the FIFO is refused as a segment once open, which closes it for the
    // reader): later writes go to a plain file again.
    let stuck = log_file.with_extension("fifo");
    std::fs::rename(&log_file, &stuck).expect("moving the FIFO aside");
    let drained = std::thread::spawn(move || {
        let mut sink = Vec::new();
        std::fs::File::open(&stuck)
            .and_then(|mut fifo| fifo.read_to_end(&mut sink))
            .map(|_| sink.len())
    });
    drained
        .join()
        .expect("the FIFO reader")
        .expect("reading the FIFO");
    assert_eq!(
        server.job(job.job_id.0).await["state"],
        "running",
        "the job waits for its builder to come back and resend"
    );
    server.shutdown().await;
}

/// The first log segment of the server: under the directory the backend process made for
/// itself at start (the only one, as the server was not restarted); opened at the first log
/// write, so a test can put something in its way before that.
fn first_log_segment(server: &TestServer) -> std::path::PathBuf {
    let blobs = server.data_dir().join("blobs");
    let prefixes: Vec<_> = std::fs::read_dir(blobs.join(keys::LOG_SEGMENTS))
        .expect("the log segment directory")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert_eq!(prefixes.len(), 1, "one backend process: {prefixes:?}");
    let prefix = prefixes[0].to_str().expect("a UTF-8 prefix");
    blobs.join(keys::log_segment(prefix, 0))
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// The scripted client answers every ping, as WebSocket libraries do by themselves; the
/// deadline counts from the accept anyway.
async fn a_client_answering_pings_is_closed_at_the_handshake_deadline(db: TestDb) {
    let server = TestServer::start_with(db, |config| {
        config.timings.handshake_timeout = Duration::from_millis(1500);
        config.timings.challenge_ttl = Duration::from_secs(1);
    })
    .await;
    let started = std::time::Instant::now();
    let mut idle = BuilderClient::connect(&server.ws_url()).await;
    idle.expect_error_and_close(ErrorCode::UnexpectedMessage)
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "closed after {took:?}, the deadline is 1.5 s"
    );
    server.shutdown().await;
}

/// Past the per-address cap the upgrade itself is refused (503, the API's error shape); a
/// connection that authenticates frees its place.
async fn unauthenticated_connections_are_capped_per_address(db: TestDb) {
    let server = TestServer::start_with(db, |config| {
        config.limits.max_unauthenticated_per_address = 2;
    })
    .await;
    let key = TestKey::generate("capped");
    server.admit(&key).await;
    let mut first = BuilderClient::connect(&server.ws_url()).await;
    let _second = BuilderClient::connect(&server.ws_url()).await;
    let refused = awc::Client::new()
        .ws(server.ws_url())
        .protocols(["buildfleet.v1"])
        .connect()
        .await;
    match refused {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE)
        }
        Err(other) => panic!("expected a 503 refusal, got {other}"),
        Ok(_) => panic!("a third unauthenticated connection from one address was accepted"),
    }
    first.handshake(&key, vec![]).await;
    // The authenticated session no longer counts: a new connection fits again.
    let mut third = BuilderClient::connect(&server.ws_url()).await;
    third.hello(&TestKey::generate("stranger"));
    third.expect_auth_rejected(ErrorCode::UnknownBuilder).await;
    server.shutdown().await;
}

/// A statement signed by another key is refused: the attempt ends failed at once with the
/// refusal as its error, and its job token no longer uploads anything.
async fn a_refused_completion_fails_the_attempt_and_revokes_its_token(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, _key, job) = running_job(&server, "forger").await;
    let artifact = upload_ok(&job, "out.bin", b"built").await;
    let impostor = TestKey::generate("impostor");
    let result = builder
        .complete(&impostor, &job, Outcome::Succeeded, vec![artifact.clone()])
        .await;
    assert!(
        matches!(
            &result,
            CompletionResult::Refused {
                code: ErrorCode::InvalidStatement,
                ..
            }
        ),
        "{result:?}"
    );
    let failed = server.wait_for_state(job.job_id.0, "failed").await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("completion refused")),
        "the refusal is the job's error: {failed}"
    );
    let (status, body) = upload(
        &job.upload_url,
        &job.job_token,
        "late.bin",
        b"late",
        &buildfleet_testkit::builder_client::sha256_hex(b"late"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "token revoked: {body}");
    let (status, _) = server
        .get(&format!("/jobs/{}/artifacts/out.bin", job.job_id))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing is published");
    server.shutdown().await;
}

async fn a_rejected_job_goes_to_another_builder_first(db: TestDb) {
    let server = TestServer::start(db).await;
    let picky_key = TestKey::generate("picky");
    server.admit(&picky_key).await;
    let mut picky = BuilderClient::connect_ready(&server.ws_url(), &picky_key).await;
    picky.request_jobs(1);
    let id = server.submit(json!({})).await;
    let offered = picky.next_assignment().await;
    assert_eq!(offered.job_id.0, id);

    let willing_key = TestKey::generate("willing");
    server.admit(&willing_key).await;
    let mut willing = BuilderClient::connect_ready(&server.ws_url(), &willing_key).await;
    willing.request_jobs(1);
    picky.reject(&offered, "not today");
    picky.request_jobs(1);
    let taken = willing.next_assignment().await;
    assert_eq!(
        (taken.job_id.0, taken.attempt.0),
        (id, offered.attempt.0 + 1)
    );
    let again = picky
        .try_expect(Duration::from_millis(500), "a second offer", |m| match m {
            ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        again, None,
        "the rejecting builder is not offered the job again"
    );
    server.shutdown().await;
}

/// Alone, a builder that rejects gets the job back, but after a back-off, not in a loop.
async fn a_rejecting_builder_gets_the_job_back_only_after_a_back_off(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("alone");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let first = builder.next_assignment().await;
    builder.reject(&first, "busy");
    builder.request_jobs(1);
    let soon = builder
        .try_expect(
            Duration::from_millis(600),
            "an immediate re-offer",
            |m| match m {
                ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
                _ => None,
            },
        )
        .await;
    assert_eq!(soon, None, "no re-offer inside the back-off");
    let later = builder.next_assignment().await;
    assert_eq!((later.job_id.0, later.attempt.0), (id, first.attempt.0 + 1));
    server.shutdown().await;
}

/// `job_request{5}` on a builder of 2 slots: two assignments, no more until a slot frees and
/// a credit comes.
async fn credits_are_additive_and_capped_at_max_concurrent_jobs(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("two-slots");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    builder
        .handshake_with(&key, default_capabilities(2), vec![])
        .await;
    builder.request_jobs(5);
    for _ in 0..3 {
        server.submit(json!({})).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(builder.next_jobs().await);
    }
    assert_eq!(got.len(), 2);
    for job in &got {
        builder.accept(job);
    }
    let extra = builder
        .try_expect(
            Duration::from_millis(400),
            "a third assignment",
            |m| match m {
                ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
                _ => None,
            },
        )
        .await;
    assert_eq!(extra, None, "never more than max_concurrent_jobs at once");
    let done = builder
        .complete(&key, &got[0], Outcome::Succeeded, vec![])
        .await;
    assert_eq!(done, CompletionResult::Accepted);
    let leftover = builder
        .try_expect(
            Duration::from_millis(400),
            "an assignment without credit",
            |m| match m {
                ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
                _ => None,
            },
        )
        .await;
    assert_eq!(leftover, None, "the surplus credits were capped, not kept");
    builder.request_jobs(1);
    assert_eq!(builder.next_jobs().await.len(), 1);
    server.shutdown().await;
}

async fn a_repeated_accept_is_idempotent(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, job) = running_job(&server, "eager").await;
    builder.accept(&job);
    builder.accept(&job);
    let cancelled = builder
        .try_expect(Duration::from_millis(500), "a cancel", |m| match m {
            ServerMessage::Cancel(c) => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        cancelled, None,
        "a repeated accept is not a reason to cancel"
    );
    assert_eq!(server.job(job.job_id.0).await["state"], "running");
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.shutdown().await;
}

async fn a_heartbeat_naming_an_unheld_attempt_gets_cancel_superseded(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, job) = running_job(&server, "confused").await;
    let stranger = JobRef {
        job_id: buildfleet_protocol::JobId(job.job_id.0 + 1000),
        attempt: buildfleet_protocol::Attempt(3),
    };
    builder.send(ClientMessage::Heartbeat(Heartbeat {
        active_jobs: vec![job_ref(&job), stranger],
    }));
    let cancel = builder
        .expect("cancel of the unheld attempt", |m| match m {
            ServerMessage::Cancel(c) if c.job_id == stranger.job_id => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (cancel.attempt, cancel.reason),
        (stranger.attempt, CancelReason::Superseded)
    );
    // The session goes on, and the held attempt is untouched.
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.shutdown().await;
}

/// RFC 6455 clients may fragment a message: the pieces are joined and handled as one text
/// frame; a fragmented message over the frame limit is refused like a large frame.
async fn fragmented_messages_are_joined_up_to_the_frame_limit(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("fragments");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let hello = ClientMessage::Hello(buildfleet_protocol::Hello {
        protocol_version: buildfleet_protocol::PROTOCOL_VERSION,
        fingerprint: key.fingerprint.clone(),
        builder_name: key.name.clone(),
        builder_version: "test".into(),
    })
    .to_json();
    let (a, rest) = hello.split_at(10);
    let (b, c) = rest.split_at(rest.len() / 2);
    builder.send_ws(ws::Message::Continuation(actix_http::ws::Item::FirstText(
        Bytes::from(a.to_owned()),
    )));
    builder.send_ws(ws::Message::Continuation(actix_http::ws::Item::Continue(
        Bytes::from(b.to_owned()),
    )));
    builder.send_ws(ws::Message::Continuation(actix_http::ws::Item::Last(
        Bytes::from(c.to_owned()),
    )));
    match builder.recv().await {
        ServerMessage::ChallengeRequest(_) => {}
        other => panic!("a fragmented hello is answered like a whole one: {other:?}"),
    }

    let limit = buildfleet_protocol::DEFAULT_MAX_FRAME_BYTES;
    let mut big = BuilderClient::connect(&server.ws_url()).await;
    let piece = Bytes::from(vec![b' '; limit / 2 + 1]);
    big.send_ws(ws::Message::Continuation(actix_http::ws::Item::FirstText(
        piece.clone(),
    )));
    big.send_ws(ws::Message::Continuation(actix_http::ws::Item::Continue(
        piece.clone(),
    )));
    big.send_ws(ws::Message::Continuation(actix_http::ws::Item::Last(piece)));
    big.expect_error_and_close(ErrorCode::FrameTooLarge).await;
    server.shutdown().await;
}

/// Not UTF-8, whether in one frame or in fragments: close code 1007 (invalid payload data).
async fn text_that_is_not_utf8_closes_with_1007(db: TestDb) {
    let server = TestServer::start(db).await;
    let mut fragmented = BuilderClient::connect(&server.ws_url()).await;
    fragmented.send_ws(ws::Message::Continuation(actix_http::ws::Item::FirstText(
        Bytes::from_static(b"{\"type\": \"hel"),
    )));
    fragmented.send_ws(ws::Message::Continuation(actix_http::ws::Item::Last(
        Bytes::from_static(b"lo\xff\xfe\"}"),
    )));
    let (_, reason) = fragmented.expect_closed().await;
    assert_eq!(reason.map(|r| r.code), Some(ws::CloseCode::Invalid));

    // One unfragmented frame: awc only sends valid text, so this one is written by hand.
    let addr = server.addr;
    let code = tokio::task::spawn_blocking(move || raw_text_frame_close_code(addr, b"\xc3\x28"))
        .await
        .expect("raw client");
    assert_eq!(code, 1007);
    server.shutdown().await;
}

/// Upgrades a plain TCP connection, sends one masked text frame with `payload`, and returns
/// the close code the server answers with.
fn raw_text_frame_close_code(addr: std::net::SocketAddr, payload: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(addr).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let request = format!(
        "GET /api/v1/builders/connect HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: buildfleet.v1\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("upgrade response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![
        0x81,
        0x80 | u8::try_from(payload.len()).expect("short payload"),
    ];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).expect("frame");
    // Frames until the close: [0x88, len, code_hi, code_lo, reason...].
    loop {
        let mut header = [0u8; 2];
        tcp.read_exact(&mut header)
            .expect("a frame from the server");
        let len = usize::from(header[1] & 0x7f);
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body).expect("frame body");
        if header[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([body[0], body[1]]);
        }
    }
}

/// A builder that ignores `max_log_line_bytes` gets its line cut by the backend, at the
/// same limit, on a character boundary.
async fn a_log_line_over_the_limit_is_truncated_by_the_backend(db: TestDb) {
    let server = TestServer::start_with(db, |config| {
        config.limits.max_log_line_bytes = 100;
    })
    .await;
    let (mut builder, _key, job) = running_job(&server, "verbose").await;
    let long = "é".repeat(200);
    builder.log(job_ref(&job), 1, &long);
    builder.expect_event_ack(job_ref(&job), 1).await;
    let lines = server.log_lines(job.job_id.0).await;
    assert_eq!(lines.len(), 1);
    let kept = lines[0]
        .strip_suffix('…')
        .unwrap_or_else(|| panic!("a cut line ends with the marker: {:?}", lines[0]));
    assert!(lines[0].len() <= 100, "stored {} bytes", lines[0].len());
    assert!(long.starts_with(kept) && kept.len() >= 90, "kept {kept:?}");
    server.shutdown().await;
}

/// Admitted with `pool=ci, arch=*`, the builder declares `pool=trusted, arch=aarch64,
/// os=linux`: it is matched as `pool=ci, arch=aarch64` only, and the API shows both sets.
async fn operator_labels_decide_matching_and_declared_ones_are_shown(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("labelled");
    let (status, body) = server
        .post_admin(
            "/builders",
            &json!({
                "name": key.name,
                "public_key": key.public_openssh,
                "labels": { "pool": "ci", "arch": "*" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().expect("builder id");
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    let mut capabilities = default_capabilities(1);
    capabilities.labels = [("pool", "trusted"), ("arch", "aarch64"), ("os", "linux")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    builder.handshake_with(&key, capabilities, vec![]).await;
    builder.request_jobs(1);

    for claimed in [json!({"pool": "trusted"}), json!({"os": "linux"})] {
        server.submit(json!({ "labels": claimed })).await;
    }
    let offered = builder
        .try_expect(
            Duration::from_millis(500),
            "a job for self-declared labels",
            |m| match m {
                ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
                _ => None,
            },
        )
        .await;
    assert_eq!(
        offered, None,
        "labels the operator did not give are not matched"
    );
    let meant = server
        .submit(json!({ "labels": { "pool": "ci", "arch": "aarch64" } }))
        .await;
    assert_eq!(builder.next_assignment().await.job_id.0, meant);

    let view = server.get_ok(&format!("/builders/{id}")).await;
    assert_eq!(view["labels"], json!({ "pool": "ci", "arch": "*" }));
    assert_eq!(
        view["live"]["declared_labels"],
        json!({ "pool": "trusted", "arch": "aarch64", "os": "linux" })
    );
    assert_eq!(
        view["live"]["effective_labels"],
        json!({ "pool": "ci", "arch": "aarch64" })
    );
    server.shutdown().await;
}

/// A job row whose source digest was corrupted behind the backend's back is never sent with
/// a stand-in digest: claiming it fails the job with the reason.
async fn a_corrupt_stored_job_fails_instead_of_going_out_with_made_up_values(db: TestDb) {
    let server = TestServer::start(db).await;
    let id = server.submit(json!({})).await;
    server.execute_sql(&format!(
        "UPDATE jobs SET source_sha256 = 'not-a-digest' WHERE id = {id}"
    ));
    let key = TestKey::generate("careful");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let failed = server.wait_for_state(id, "failed").await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("source_sha256")),
        "{failed}"
    );
    let sent = builder
        .try_expect(Duration::from_millis(300), "a jobs frame", |m| match m {
            ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
            _ => None,
        })
        .await;
    assert_eq!(sent, None, "nothing went out for the corrupt job");
    server.shutdown().await;
}
