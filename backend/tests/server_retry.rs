//! Automatic retry by failure kind (issue 17 item 4), through the real backend with a scripted
//! builder: which failures retry, the back-off before the next assignment, the bound of
//! `max_attempts`, manual retries counted apart, and refused `retry` values.

use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_protocol::{
    BuildError, BuildErrorKind, ClientMessage, CompletionResult, JobAssignment, Outcome,
};
use buildfleet_testkit::builder_client::{job_ref, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_listed_exit_status_is_retried_after_its_back_off_then_succeeds,
    an_unlisted_exit_status_is_not_retried,
    an_infrastructure_error_is_retried_when_asked,
    automatic_attempts_stop_at_max_attempts_with_a_doubling_back_off,
    a_manual_retry_is_recorded_as_manual_and_not_counted,
    bad_retry_values_are_refused_with_a_sentence,
    a_job_without_retry_behaves_as_before,
    a_lost_builder_is_not_retried_when_the_policy_says_so,
    the_cli_submits_a_retry_policy,
}

/// A connected builder with one free slot.
async fn builder(server: &TestServer, name: &str) -> (TestKey, BuilderClient) {
    let key = TestKey::generate(name);
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    (key, builder)
}

/// Runs the next assignment and ends it as failed with `kind` and `exit_status`; returns the
/// assignment once the backend acknowledged the completion. The builder asks for its next
/// job right after.
async fn fail_next(
    builder: &mut BuilderClient,
    key: &TestKey,
    kind: BuildErrorKind,
    exit_status: Option<i32>,
) -> JobAssignment {
    let job = builder.next_assignment().await;
    builder.accept(&job);
    let mut response = builder.job_response(key, &job, Outcome::Failed, vec![]);
    response.exit_status = exit_status;
    response.error = Some(BuildError {
        kind,
        message: format!("{} in the test", kind.as_str()),
    });
    builder.send(ClientMessage::JobResponse(response));
    let ack = builder.expect_completion_ack(job_ref(&job)).await;
    assert_eq!(ack, CompletionResult::Accepted);
    builder.request_jobs(1);
    job
}

async fn succeed_next(builder: &mut BuilderClient, key: &TestKey) -> JobAssignment {
    let job = builder.next_assignment().await;
    builder.accept(&job);
    let ack = builder
        .complete(key, &job, Outcome::Succeeded, vec![])
        .await;
    assert_eq!(ack, CompletionResult::Accepted);
    builder.request_jobs(1);
    job
}

fn attempts(detail: &Value) -> &Vec<Value> {
    detail["attempts"].as_array().expect("attempts")
}

fn causes(detail: &Value) -> Vec<&str> {
    attempts(detail)
        .iter()
        .map(|a| a["started_because"].as_str().expect("started_because"))
        .collect()
}

fn at(attempt: &Value, field: &str) -> i64 {
    attempt[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} of {attempt}"))
}

async fn a_listed_exit_status_is_retried_after_its_back_off_then_succeeds(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key, mut builder) = builder(&server, "retrier").await;
    let id = server
        .submit(json!({
            "max_attempts": 3,
            "retry": { "exit_codes": [3, 137], "backoff_initial_ms": 300 },
        }))
        .await;
    let first = fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, Some(3)).await;
    assert_eq!(first.attempt.0, 1);

    // Back in the queue, held until its back-off ends.
    let queued = server.job(id).await;
    assert_eq!(queued["state"], "queued", "{queued}");
    assert_eq!(queued["attempt"], 2);
    assert_eq!(queued["failed_attempts"], 1);
    assert_eq!(queued["retry"]["exit_codes"], json!([3, 137]));
    assert_eq!(queued["retry"]["backoff_initial_ms"], 300);
    let failed_at = at(&attempts(&queued)[0], "finished_at");
    let not_before = at(&queued, "retry_not_before");
    assert_eq!(not_before, failed_at + 300, "{queued}");
    let transition = queued["events"]
        .as_array()
        .and_then(|events| events.last())
        .expect("a transition");
    assert!(
        transition["detail"]
            .as_str()
            .is_some_and(|d| d.contains("retry after script failure in 300 ms")),
        "{transition}"
    );

    let second = succeed_next(&mut builder, &key).await;
    assert_eq!(second.attempt.0, 2);
    let done = server.wait_for_state(id, "succeeded").await;
    let detail = server.job(id).await;
    assert_eq!(causes(&detail), ["first", "retry_after_script_failure"]);
    let assigned_again = at(&attempts(&detail)[1], "assigned_at");
    assert!(
        assigned_again >= failed_at + 300,
        "assigned at {assigned_again}, before the back-off ended at {}",
        failed_at + 300
    );
    assert_eq!(attempts(&detail)[0]["exit_status"], 3);
    assert_eq!(attempts(&detail)[0]["outcome"], "failed");
    assert_eq!(done["retry_not_before"], Value::Null);
    assert_eq!(done["manual_retries"], 0);
}

async fn an_unlisted_exit_status_is_not_retried(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key, mut builder) = builder(&server, "unlisted").await;
    let id = server
        .submit(json!({ "retry": { "exit_codes": [3], "backoff_initial_ms": 0 } }))
        .await;
    fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, Some(1)).await;
    let failed = server.wait_for_state(id, "failed").await;
    assert_eq!(failed["attempt"], 1);
    assert_eq!(
        failed["failed_attempts"], 0,
        "an unretried failure is not counted"
    );
    assert_eq!(attempts(&failed).len(), 1);
    // Nor is an infrastructure error the policy does not name.
    let other = server
        .submit(json!({ "retry": { "exit_codes": [3], "backoff_initial_ms": 0 } }))
        .await;
    fail_next(&mut builder, &key, BuildErrorKind::SourceFetch, None).await;
    let failed = server.wait_for_state(other, "failed").await;
    assert_eq!(attempts(&failed).len(), 1);
}

async fn an_infrastructure_error_is_retried_when_asked(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key, mut builder) = builder(&server, "infra").await;
    let id = server
        .submit(json!({ "retry": { "infrastructure": true, "backoff_initial_ms": 0 } }))
        .await;
    fail_next(&mut builder, &key, BuildErrorKind::SourceFetch, None).await;
    fail_next(&mut builder, &key, BuildErrorKind::Upload, None).await;
    let third = succeed_next(&mut builder, &key).await;
    assert_eq!(third.attempt.0, 3);
    let done = server.wait_for_state(id, "succeeded").await;
    assert_eq!(
        causes(&done),
        [
            "first",
            "retry_after_infrastructure_error",
            "retry_after_infrastructure_error"
        ]
    );
    assert_eq!(done["failed_attempts"], 2);

    // A failure of the job's own commands is no infrastructure error.
    let script = server
        .submit(json!({ "retry": { "infrastructure": true, "backoff_initial_ms": 0 } }))
        .await;
    fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, Some(1)).await;
    let failed = server.wait_for_state(script, "failed").await;
    assert_eq!(attempts(&failed).len(), 1);
    // Nor is a source that does not verify: another attempt would fetch the same bytes.
    let digest = server
        .submit(json!({ "retry": { "infrastructure": true, "backoff_initial_ms": 0 } }))
        .await;
    fail_next(
        &mut builder,
        &key,
        BuildErrorKind::SourceDigestMismatch,
        None,
    )
    .await;
    let failed = server.wait_for_state(digest, "failed").await;
    assert_eq!(attempts(&failed).len(), 1);
}

async fn automatic_attempts_stop_at_max_attempts_with_a_doubling_back_off(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key, mut builder) = builder(&server, "stubborn").await;
    let id = server
        .submit(json!({
            "max_attempts": 3,
            "retry": { "exit_codes": "any", "backoff_initial_ms": 150, "backoff_max_ms": 250 },
        }))
        .await;
    for attempt in 1..=3 {
        let job = fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, None).await;
        assert_eq!(job.attempt.0, attempt);
    }
    let failed = server.wait_for_state(id, "failed").await;
    assert_eq!(failed["failed_attempts"], 3);
    assert_eq!(failed["attempt"], 3);
    assert_eq!(failed["retry_not_before"], Value::Null);
    let all = attempts(&failed);
    assert_eq!(all.len(), 3, "no attempt beyond max_attempts: {failed}");
    // 150 ms, then doubled to 300 but capped at 250.
    for (index, wait) in [(1, 150), (2, 250)] {
        let ended = at(&all[index - 1], "finished_at");
        let assigned = at(&all[index], "assigned_at");
        assert!(
            assigned >= ended + wait,
            "attempt {} assigned {} ms after the failure, before its {wait} ms back-off",
            index + 1,
            assigned - ended
        );
    }
    let last = failed["events"]
        .as_array()
        .and_then(|events| events.last())
        .expect("a transition");
    assert_eq!(last["to"], "failed");
    assert!(
        last["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no automatic retry left (3 of at most 3")),
        "{last}"
    );
    // Nothing more is handed out.
    let more = builder
        .try_expect(Duration::from_millis(600), "no further assignment", |m| {
            matches!(m, buildfleet_protocol::ServerMessage::Jobs(_)).then_some(())
        })
        .await;
    assert!(
        more.is_none(),
        "a job past max_attempts was handed out again"
    );
}

async fn a_manual_retry_is_recorded_as_manual_and_not_counted(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key, mut builder) = builder(&server, "manual").await;
    let id = server
        .submit(json!({
            "max_attempts": 2,
            "retry": { "exit_codes": [1], "backoff_initial_ms": 0 },
        }))
        .await;
    fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, Some(1)).await;
    fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, Some(1)).await;
    let failed = server.wait_for_state(id, "failed").await;
    assert_eq!(failed["failed_attempts"], 2);

    let (status, retried) = server
        .post_admin(&format!("/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["state"], "queued");
    assert_eq!(retried["manual_retries"], 1);
    assert_eq!(
        retried["failed_attempts"], 0,
        "a manual retry is not automatic"
    );
    assert_eq!(retried["attempt"], 3);

    // The manual attempt fails too and gets its automatic retry afresh.
    fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, Some(1)).await;
    succeed_next(&mut builder, &key).await;
    let done = server.wait_for_state(id, "succeeded").await;
    assert_eq!(
        causes(&done),
        [
            "first",
            "retry_after_script_failure",
            "manual_retry",
            "retry_after_script_failure"
        ]
    );
    assert_eq!(done["manual_retries"], 1);
    let max = done["max_attempts"].as_i64().expect("max_attempts");
    assert!(done["failed_attempts"].as_i64().expect("failed") <= max);
    // The dashboard's job page says why each attempt started.
    let (status, page) = server.get_raw(&format!("{}/jobs/{id}", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).expect("html");
    assert!(page.contains("manual retry"), "job page without the cause");
    assert!(page.contains("automatic retry after a script failure"));
}

async fn bad_retry_values_are_refused_with_a_sentence(db: TestDb) {
    let server = TestServer::start(db).await;
    let base = json!({
        "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
        "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
        "recipe": "cargo-build",
    });
    let cases = [
        (
            json!({ "exit_codes": [0] }),
            "retry.exit_codes: 0 is not the exit status of a failed script",
        ),
        (
            json!({ "exit_codes": [256] }),
            "retry.exit_codes: 256 is not",
        ),
        (
            json!({ "exit_codes": (1..=65).collect::<Vec<_>>() }),
            "at most 64 may be given",
        ),
        (json!({ "exit_codes": "all" }), "\"any\""),
        (
            json!({ "backoff_initial_ms": 4_000_000 }),
            "the first back-off may be at most",
        ),
        (
            json!({ "backoff_max_ms": 100_000_000 }),
            "may grow to at most",
        ),
        (
            json!({ "backoff_initial_ms": 5000, "backoff_max_ms": 1000 }),
            "the cap must be at least the first back-off",
        ),
        (json!({ "when": ["script_failure"] }), "when"),
        (json!({ "infrastructure": "yes" }), "infrastructure"),
    ];
    for (retry, expected) in cases {
        let mut body = base.clone();
        body["retry"] = retry.clone();
        let (status, answer) = server.post_admin("/jobs", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{retry}: {answer}");
        assert_eq!(error_code(&answer), "bad_request", "{answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(expected),
            "{retry}: {message:?} lacks {expected:?}"
        );
    }
    let mut body = base.clone();
    body["max_attempts"] = 1.into();
    body["retry"] = json!({ "exit_codes": [1] });
    let (status, answer) = server.post_admin("/jobs", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_attempts is 1, so no attempt would be left")),
        "{answer}"
    );
    // Nothing was queued by the refusals.
    let list = server.get_ok("/jobs").await;
    assert_eq!(list["jobs"], json!([]));
}

async fn a_job_without_retry_behaves_as_before(db: TestDb) {
    let server = TestServer::start(db).await;
    let (key, mut builder) = builder(&server, "legacy").await;
    let id = server.submit(json!({})).await;
    let job = server.job(id).await;
    assert_eq!(
        job["retry"],
        json!({
            "lost_builder": true,
            "infrastructure": false,
            "exit_codes": [],
            "backoff_initial_ms": 10_000,
            "backoff_max_ms": 300_000,
        })
    );
    fail_next(&mut builder, &key, BuildErrorKind::CommandFailed, Some(1)).await;
    let failed = server.wait_for_state(id, "failed").await;
    assert_eq!(attempts(&failed).len(), 1);
    assert_eq!(failed["failed_attempts"], 0);

    let infra = server.submit(json!({})).await;
    fail_next(&mut builder, &key, BuildErrorKind::Internal, None).await;
    let failed = server.wait_for_state(infra, "failed").await;
    assert_eq!(attempts(&failed).len(), 1);
    assert_eq!(causes(&failed), ["first"]);

    // A lost builder is still retried, at once, as before.
    let lost = server.submit(json!({})).await;
    let held = builder.next_assignment().await;
    builder.accept(&held);
    server.wait_for_state(lost, "running").await;
    builder.drop_connection();
    let requeued = server.wait_for_state(lost, "queued").await;
    assert_eq!(requeued["failed_attempts"], 1);
    assert_eq!(
        requeued["retry_not_before"],
        Value::Null,
        "no back-off for a lost builder"
    );
    let (key2, mut other) = self::builder(&server, "legacy-2").await;
    succeed_next(&mut other, &key2).await;
    let done = server.wait_for_state(lost, "succeeded").await;
    assert_eq!(causes(&done), ["first", "retry_after_lost_builder"]);
}

async fn a_lost_builder_is_not_retried_when_the_policy_says_so(db: TestDb) {
    let server = TestServer::start(db).await;
    let (_key, mut builder) = builder(&server, "vanishing").await;
    let id = server
        .submit(json!({ "retry": { "lost_builder": false } }))
        .await;
    let held = builder.next_assignment().await;
    builder.accept(&held);
    server.wait_for_state(id, "running").await;
    builder.drop_connection();
    let failed = server.wait_for_state(id, "failed").await;
    assert_eq!(failed["failed_attempts"], 1);
    assert_eq!(attempts(&failed).len(), 1);
    assert_eq!(attempts(&failed)[0]["outcome"], "lost");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("builder lost 1 time(s)")),
        "{failed}"
    );
}

async fn the_cli_submits_a_retry_policy(db: TestDb) {
    let server = TestServer::start(db).await;
    let sha256 = buildfleet_testkit::server::SOURCE_SHA256;
    let url = "https://example.invalid/crate-1.0.0.tar.gz";
    let submit = [
        "job",
        "submit",
        "--source-url",
        url,
        "--sha256",
        sha256,
        "--json",
    ];
    let with = |extra: &[&'static str]| {
        let mut args = submit.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let job = server
        .cli(&with(&[
            "--retry-exit-code",
            "137",
            "--retry-exit-code",
            "1",
            "--retry-infra",
            "--retry-backoff-ms",
            "500",
            "--max-attempts",
            "4",
        ]))
        .await
        .ok()
        .json();
    assert_eq!(
        job["retry"],
        json!({
            "lost_builder": true,
            "infrastructure": true,
            "exit_codes": [137, 1],
            "backoff_initial_ms": 500,
            "backoff_max_ms": 300_000,
        })
    );
    let any = server
        .cli(&with(&[
            "--retry-exit-code",
            "any",
            "--no-retry-lost-builder",
        ]))
        .await
        .ok()
        .json();
    assert_eq!(any["retry"]["exit_codes"], "any");
    assert_eq!(any["retry"]["lost_builder"], false);
    // Without a retry flag the submission has no `retry`: the defaults.
    let plain = server.cli(&submit).await.ok().json();
    assert_eq!(plain["retry"]["exit_codes"], json!([]));
    assert_eq!(plain["retry"]["infrastructure"], false);

    let refused = server
        .cli(&with(&["--retry-exit-code", "0"]))
        .await
        .expect_code(2);
    assert!(
        refused
            .stderr
            .contains("\"0\" is not an exit status of a failed command: give 1 to 255, or any"),
        "{}",
        refused.stderr
    );
    let refused = server
        .cli(&with(&[
            "--retry-backoff-ms",
            "5000",
            "--retry-backoff-max-ms",
            "100",
        ]))
        .await
        .expect_code(3);
    assert!(
        refused
            .stderr
            .contains("the cap must be at least the first back-off"),
        "{}",
        refused.stderr
    );
}
