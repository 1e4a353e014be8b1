//! Every message of both directions survives `to_json` → `decode` unchanged, carries the
//! right `type` tag, and nested enums use the tags the specification names.

pub mod common;

use std::collections::BTreeSet;

use buildfleet_protocol::*;
use serde_json::{json, Value};

fn as_value(text: &str) -> Value {
    serde_json::from_str(text).expect("to_json produces JSON")
}

#[test]
fn every_client_message_round_trips_with_its_type_tag() {
    for message in common::client_samples() {
        let text = message.to_json();
        assert_eq!(as_value(&text)["type"], message.type_name(), "{text}");
        let decoded = ClientMessage::decode(&text, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(decoded, message);
        assert_eq!(decoded.to_json(), text, "encoding is deterministic");
    }
}

#[test]
fn every_server_message_round_trips_with_its_type_tag() {
    for message in common::server_samples() {
        let text = message.to_json();
        assert_eq!(as_value(&text)["type"], message.type_name(), "{text}");
        let decoded = ServerMessage::decode(&text, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(decoded, message);
        assert_eq!(decoded.to_json(), text, "encoding is deterministic");
    }
}

#[test]
fn samples_cover_every_type_and_types_lists_match_type_names() {
    let client: BTreeSet<_> = common::client_samples()
        .iter()
        .map(|m| m.type_name())
        .collect();
    let server: BTreeSet<_> = common::server_samples()
        .iter()
        .map(|m| m.type_name())
        .collect();
    let client_types: BTreeSet<_> = ClientMessage::TYPES.iter().copied().collect();
    let server_types: BTreeSet<_> = ServerMessage::TYPES.iter().copied().collect();
    assert_eq!(
        client_types.len(),
        ClientMessage::TYPES.len(),
        "duplicate in ClientMessage::TYPES"
    );
    assert_eq!(
        server_types.len(),
        ServerMessage::TYPES.len(),
        "duplicate in ServerMessage::TYPES"
    );
    assert_eq!(client, client_types);
    assert_eq!(server, server_types);
}

#[test]
fn a_message_of_one_direction_is_not_a_message_of_the_other() {
    for message in common::client_samples() {
        let err = ServerMessage::decode(&message.to_json(), DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(
            matches!(err, DecodeError::Invalid(_)),
            "{}: {err:?}",
            message.type_name()
        );
    }
    for message in common::server_samples() {
        let err = ClientMessage::decode(&message.to_json(), DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(
            matches!(err, DecodeError::Invalid(_)),
            "{}: {err:?}",
            message.type_name()
        );
    }
}

#[test]
fn nested_enums_use_their_documented_tags() {
    let accept = WorkAck {
        job_id: JobId(1),
        attempt: Attempt(1),
        decision: WorkDecision::Accept,
    };
    assert_eq!(
        as_value(&ClientMessage::WorkAck(accept).to_json()),
        json!({"type": "work_ack", "job_id": 1, "attempt": 1, "decision": {"kind": "accept"}})
    );
    let reject = WorkAck {
        job_id: JobId(1),
        attempt: Attempt(2),
        decision: WorkDecision::Reject {
            reason: "busy".into(),
        },
    };
    assert_eq!(
        as_value(&ClientMessage::WorkAck(reject).to_json())["decision"],
        json!({"kind": "reject", "reason": "busy"})
    );

    let log = JobEventKind::Log {
        stream: LogStream::Stderr,
        line: "warning".into(),
    };
    assert_eq!(
        as_value(&common::job_event(3, log).to_json()),
        json!({
            "type": "job_event", "job_id": 42, "attempt": 1, "seq": 3,
            "timestamp_ms": 1_767_225_600_000_i64,
            "event": {"kind": "log", "stream": "stderr", "line": "warning"}
        })
    );
    let stage = JobEventKind::Stage {
        stage: Stage::FetchingSource,
    };
    assert_eq!(
        as_value(&common::job_event(1, stage).to_json())["event"],
        json!({"kind": "stage", "stage": "fetching_source"})
    );

    let resume = ServerMessage::ResumeResult(ResumeResult {
        jobs: vec![
            ResumeDecision {
                job_id: JobId(1),
                attempt: Attempt(1),
                decision: ResumeAction::Continue { next_seq: 5 },
            },
            ResumeDecision {
                job_id: JobId(2),
                attempt: Attempt(1),
                decision: ResumeAction::Cancel {
                    reason: "gone".into(),
                },
            },
        ],
    });
    assert_eq!(
        as_value(&resume.to_json())["jobs"],
        json!([
            {"job_id": 1, "attempt": 1, "decision": {"action": "continue", "next_seq": 5}},
            {"job_id": 2, "attempt": 1, "decision": {"action": "cancel", "reason": "gone"}}
        ])
    );

    let accepted = CompletionResult::Accepted;
    let refused = CompletionResult::Refused {
        code: ErrorCode::StaleAttempt,
        message: "old".into(),
    };
    assert_eq!(
        serde_json::to_value(accepted).unwrap(),
        json!({"status": "accepted"})
    );
    assert_eq!(
        serde_json::to_value(refused).unwrap(),
        json!({"status": "refused", "code": "stale_attempt", "message": "old"})
    );

    let strings = |values: Vec<Value>| -> Vec<String> {
        values
            .into_iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    };
    let commands = [
        ControlCommand::Drain,
        ControlCommand::Pause,
        ControlCommand::Resume,
    ]
    .map(|c| serde_json::to_value(c).unwrap());
    assert_eq!(strings(commands.to_vec()), ["drain", "pause", "resume"]);
    let reasons = [
        CancelReason::Requested,
        CancelReason::TimedOut,
        CancelReason::Superseded,
    ]
    .map(|r| serde_json::to_value(r).unwrap());
    assert_eq!(
        strings(reasons.to_vec()),
        ["requested", "timed_out", "superseded"]
    );
    let modes = [JobMode::Build, JobMode::Plan].map(|m| serde_json::to_value(m).unwrap());
    assert_eq!(strings(modes.to_vec()), ["build", "plan"]);
    let stages = common::all_stages()
        .into_iter()
        .map(|s| serde_json::to_value(s).unwrap());
    assert_eq!(
        strings(stages.collect()),
        [
            "fetching_source",
            "unpacking",
            "running",
            "uploading",
            "finishing"
        ]
    );
}

#[test]
fn as_str_matches_the_wire_name() {
    for code in common::all_error_codes() {
        assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
    }
    for outcome in common::all_outcomes() {
        assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
    }
    for kind in common::all_build_error_kinds() {
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
    let codes: BTreeSet<_> = common::all_error_codes()
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(
        codes.len(),
        common::all_error_codes().len(),
        "error codes are distinct"
    );
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    let text = r#"{
        "type": "jobs", "future_field": {"nested": [1, 2, 3]},
        "jobs": [{
            "job_id": 42, "attempt": 1, "priority": 9,
            "source": {"url": "https://x.example/a.crate", "max_bytes": 10,
                       "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                       "mirror": "https://y.example/a.crate"},
            "recipe": "cargo-build", "parameters": {}, "mode": "build", "timeout_secs": 60,
            "job_token": "t", "upload_url": "https://x.example/up"
        }]
    }"#;
    let ServerMessage::Jobs(jobs) = ServerMessage::decode(text, DEFAULT_MAX_FRAME_BYTES).unwrap()
    else {
        panic!("not a jobs message");
    };
    assert_eq!(jobs.jobs[0].source.sha256, common::digest('a'));

    let text =
        r#"{"type":"work_ack","job_id":1,"attempt":1,"decision":{"kind":"accept","note":"x"}}"#;
    assert!(ClientMessage::decode(text, DEFAULT_MAX_FRAME_BYTES).is_ok());
}

#[test]
fn optional_fields_may_be_omitted() {
    let capabilities = r#"{"type":"capabilities","recipes":[],"max_concurrent_jobs":1}"#;
    let ClientMessage::Capabilities(c) =
        ClientMessage::decode(capabilities, DEFAULT_MAX_FRAME_BYTES).unwrap()
    else {
        panic!("not capabilities");
    };
    assert!(c.labels.is_empty());

    let resume = r#"{"type":"resume","jobs":[{"job_id":1,"attempt":1}]}"#;
    let ClientMessage::Resume(r) = ClientMessage::decode(resume, DEFAULT_MAX_FRAME_BYTES).unwrap()
    else {
        panic!("not resume");
    };
    assert_eq!(r.jobs[0].last_acked_seq, None);
    assert!(!r.jobs[0].finished);

    let response = r#"{"type":"job_response","job_id":1,"attempt":1,"outcome":"cancelled",
        "artifacts":[],"statement":{"statement":"s","signature":"g"}}"#;
    let ClientMessage::JobResponse(r) =
        ClientMessage::decode(response, DEFAULT_MAX_FRAME_BYTES).unwrap()
    else {
        panic!("not job_response");
    };
    assert_eq!((r.exit_status, r.error, r.plan), (None, None, None));
}

#[test]
fn auth_rejected_round_trips_with_and_without_retry_after() {
    let throttled = ServerMessage::AuthRejected(AuthRejected {
        code: ErrorCode::TooManyAttempts,
        reason: "too many failed attempts with this key".into(),
        retry_after_ms: Some(41_250),
    });
    let text = throttled.to_json();
    assert_eq!(as_value(&text)["retry_after_ms"], 41_250, "{text}");
    assert_eq!(
        ServerMessage::decode(&text, DEFAULT_MAX_FRAME_BYTES).unwrap(),
        throttled
    );

    // Absent when unset, so frames of other codes look exactly as before the field existed.
    let plain = ServerMessage::AuthRejected(AuthRejected {
        code: ErrorCode::AuthFailed,
        reason: "bad signature".into(),
        retry_after_ms: None,
    });
    let text = plain.to_json();
    assert_eq!(
        as_value(&text),
        json!({"type": "auth_rejected", "code": "auth_failed", "reason": "bad signature"})
    );
    assert_eq!(
        ServerMessage::decode(&text, DEFAULT_MAX_FRAME_BYTES).unwrap(),
        plain
    );

    // A frame of an older backend, without the field, still decodes; so does an explicit null.
    for text in [
        r#"{"type":"auth_rejected","code":"too_many_attempts","reason":"later"}"#,
        r#"{"type":"auth_rejected","code":"too_many_attempts","reason":"later","retry_after_ms":null}"#,
    ] {
        let ServerMessage::AuthRejected(rejected) =
            ServerMessage::decode(text, DEFAULT_MAX_FRAME_BYTES).unwrap()
        else {
            panic!("not auth_rejected: {text}");
        };
        assert_eq!(rejected.code, ErrorCode::TooManyAttempts);
        assert_eq!(rejected.retry_after_ms, None);
    }
}
