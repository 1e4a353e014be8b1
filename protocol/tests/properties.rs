//! Property tests: arbitrary messages round-trip; arbitrary input never panics the decoder.

pub mod common;

use std::collections::BTreeMap;

use buildfleet_protocol::ssh_key::public::{Ed25519PublicKey, KeyData};
use buildfleet_protocol::ssh_key::HashAlg;
use buildfleet_protocol::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::Value;

/// Any Unicode text, control characters included (`any::<String>()` leaves them out).
fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..4)
}

fn fingerprint() -> impl Strategy<Value = Fingerprint> {
    any::<[u8; 32]>().prop_map(|bytes| {
        let key = KeyData::Ed25519(Ed25519PublicKey(bytes));
        ssh_key::Fingerprint::new(HashAlg::Sha256, &key).into()
    })
}

fn digest() -> impl Strategy<Value = Sha256Digest> {
    any::<[u8; 32]>().prop_map(|bytes| Sha256Digest::from_bytes(&bytes))
}

fn job_id() -> impl Strategy<Value = JobId> {
    any::<i64>().prop_map(JobId)
}

fn attempt() -> impl Strategy<Value = Attempt> {
    any::<i32>().prop_map(Attempt)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(common::all_error_codes())
}

fn outcome() -> impl Strategy<Value = Outcome> {
    proptest::sample::select(common::all_outcomes())
}

fn mode() -> impl Strategy<Value = JobMode> {
    prop_oneof![Just(JobMode::Build), Just(JobMode::Plan)]
}

fn artifact() -> impl Strategy<Value = ArtifactDigest> {
    (text(), any::<u64>(), digest()).prop_map(|(name, size, sha256)| ArtifactDigest {
        name,
        size,
        sha256,
    })
}

fn build_error() -> impl Strategy<Value = BuildError> {
    (
        proptest::sample::select(common::all_build_error_kinds()),
        text(),
    )
        .prop_map(|(kind, message)| BuildError { kind, message })
}

fn job_event_kind() -> impl Strategy<Value = JobEventKind> {
    let stream = prop_oneof![Just(LogStream::Stdout), Just(LogStream::Stderr)];
    prop_oneof![
        (stream, text()).prop_map(|(stream, line)| JobEventKind::Log { stream, line }),
        proptest::sample::select(common::all_stages())
            .prop_map(|stage| JobEventKind::Stage { stage }),
    ]
}

fn assignment() -> impl Strategy<Value = JobAssignment> {
    (
        (job_id(), attempt(), text(), digest(), any::<u64>()),
        (
            text(),
            labels(),
            labels(),
            mode(),
            any::<u64>(),
            text(),
            text(),
        ),
    )
        .prop_map(
            |(
                (job_id, attempt, url, sha256, max_bytes),
                (recipe, parameters, annotations, mode, timeout_secs, job_token, upload_url),
            )| {
                JobAssignment {
                    job_id,
                    attempt,
                    source: SourceSpec {
                        url,
                        sha256,
                        max_bytes,
                    },
                    recipe,
                    parameters,
                    annotations,
                    mode,
                    timeout_secs,
                    job_token,
                    upload_url,
                }
            },
        )
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let hello = (any::<u32>(), fingerprint(), text(), text()).prop_map(
        |(protocol_version, fingerprint, builder_name, builder_version)| {
            ClientMessage::Hello(Hello {
                protocol_version,
                fingerprint,
                builder_name,
                builder_version,
            })
        },
    );
    let challenge_response = text()
        .prop_map(|signature| ClientMessage::ChallengeResponse(ChallengeResponse { signature }));
    let recipe = (text(), text()).prop_map(|(name, version)| RecipeCapability { name, version });
    let capabilities = (vec(recipe, 0..4), labels(), any::<u32>(), any::<bool>()).prop_map(
        |(recipes, labels, max_concurrent_jobs, accepts_every_assignment)| {
            ClientMessage::Capabilities(Capabilities {
                recipes,
                labels,
                max_concurrent_jobs,
                accepts_every_assignment,
            })
        },
    );
    let held = (job_id(), attempt(), any::<Option<u64>>(), any::<bool>()).prop_map(
        |(job_id, attempt, last_acked_seq, finished)| HeldJob {
            job_id,
            attempt,
            last_acked_seq,
            finished,
        },
    );
    let resume = vec(held, 0..4).prop_map(|jobs| ClientMessage::Resume(Resume { jobs }));
    let job_request =
        any::<u32>().prop_map(|credits| ClientMessage::JobRequest(JobRequest { credits }));
    let decision = prop_oneof![
        Just(WorkDecision::Accept),
        text().prop_map(|reason| WorkDecision::Reject { reason }),
    ];
    let work_ack = (job_id(), attempt(), decision).prop_map(|(job_id, attempt, decision)| {
        ClientMessage::WorkAck(WorkAck {
            job_id,
            attempt,
            decision,
        })
    });
    let job_event = (
        job_id(),
        attempt(),
        any::<u64>(),
        any::<i64>(),
        job_event_kind(),
    )
        .prop_map(|(job_id, attempt, seq, timestamp_ms, event)| {
            ClientMessage::JobEvent(JobEvent {
                job_id,
                attempt,
                seq,
                timestamp_ms,
                event,
            })
        });
    let job_ref = (job_id(), attempt()).prop_map(|(job_id, attempt)| JobRef { job_id, attempt });
    let heartbeat = vec(job_ref, 0..4)
        .prop_map(|active_jobs| ClientMessage::Heartbeat(Heartbeat { active_jobs }));
    let job_response = (
        (job_id(), attempt(), outcome(), any::<Option<i32>>()),
        (
            proptest::option::of(build_error()),
            vec(artifact(), 0..3),
            proptest::option::of(text()),
        ),
        (text(), text()),
    )
        .prop_map(
            |(
                (job_id, attempt, outcome, exit_status),
                (error, artifacts, plan),
                (statement, signature),
            )| {
                ClientMessage::JobResponse(JobResponse {
                    job_id,
                    attempt,
                    outcome,
                    exit_status,
                    error,
                    artifacts,
                    plan,
                    statement: SignedStatement {
                        statement,
                        signature,
                    },
                    dsse_signature: None,
                    reproduction: None,
                })
            },
        );
    Union::new([
        hello.boxed(),
        challenge_response.boxed(),
        capabilities.boxed(),
        resume.boxed(),
        job_request.boxed(),
        work_ack.boxed(),
        job_event.boxed(),
        heartbeat.boxed(),
        job_response.boxed(),
    ])
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let challenge_request =
        (text(), text(), any::<u64>()).prop_map(|(challenge, backend_id, expires_in_ms)| {
            ServerMessage::ChallengeRequest(ChallengeRequest {
                challenge,
                backend_id,
                expires_in_ms,
            })
        });
    let settings =
        (any::<u32>(), any::<[u64; 6]>()).prop_map(|(protocol_version, n)| SessionSettings {
            protocol_version,
            heartbeat_interval_ms: n[0],
            heartbeat_timeout_ms: n[1],
            max_frame_bytes: n[2],
            max_log_line_bytes: n[3],
            max_log_bytes_per_job: n[4],
            reconnect_grace_ms: n[5],
        });
    let auth_accepted = (any::<i64>(), settings).prop_map(|(builder_id, settings)| {
        ServerMessage::AuthAccepted(AuthAccepted {
            builder_id,
            settings,
        })
    });
    let auth_rejected =
        (error_code(), text(), any::<Option<u64>>()).prop_map(|(code, reason, retry_after_ms)| {
            ServerMessage::AuthRejected(AuthRejected {
                code,
                reason,
                retry_after_ms,
            })
        });
    let action = prop_oneof![
        any::<u64>().prop_map(|next_seq| ResumeAction::Continue { next_seq }),
        text().prop_map(|reason| ResumeAction::Cancel { reason }),
    ];
    let resume_decision =
        (job_id(), attempt(), action).prop_map(|(job_id, attempt, decision)| ResumeDecision {
            job_id,
            attempt,
            decision,
        });
    let resume_result = vec(resume_decision, 0..4)
        .prop_map(|jobs| ServerMessage::ResumeResult(ResumeResult { jobs }));
    let jobs = vec(assignment(), 0..3).prop_map(|jobs| ServerMessage::Jobs(Jobs { jobs }));
    let reason = prop_oneof![
        Just(CancelReason::Requested),
        Just(CancelReason::TimedOut),
        Just(CancelReason::Superseded),
    ];
    let cancel = (job_id(), attempt(), reason).prop_map(|(job_id, attempt, reason)| {
        ServerMessage::Cancel(Cancel {
            job_id,
            attempt,
            reason,
        })
    });
    let command = prop_oneof![
        Just(ControlCommand::Drain),
        Just(ControlCommand::Pause),
        Just(ControlCommand::Resume),
    ];
    let control = command.prop_map(|command| ServerMessage::Control(Control { command }));
    let event_ack = (job_id(), attempt(), any::<u64>()).prop_map(|(job_id, attempt, acked_seq)| {
        ServerMessage::EventAck(EventAck {
            job_id,
            attempt,
            acked_seq,
        })
    });
    let result = prop_oneof![
        Just(CompletionResult::Accepted),
        (error_code(), text())
            .prop_map(|(code, message)| CompletionResult::Refused { code, message }),
    ];
    let completion_ack = (job_id(), attempt(), result).prop_map(|(job_id, attempt, result)| {
        ServerMessage::CompletionAck(CompletionAck {
            job_id,
            attempt,
            result,
        })
    });
    let error = (error_code(), text())
        .prop_map(|(code, message)| ServerMessage::Error(ErrorFrame { code, message }));
    Union::new([
        challenge_request.boxed(),
        auth_accepted.boxed(),
        auth_rejected.boxed(),
        resume_result.boxed(),
        jobs.boxed(),
        cancel.boxed(),
        control.boxed(),
        event_ack.boxed(),
        completion_ack.boxed(),
        error.boxed(),
    ])
}

/// Arbitrary JSON trees, to reach the decoder's type checks rather than its parser.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
        digest().prop_map(|d| Value::from(d.as_str())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(text(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Decodes `text` in both directions; returns whether either accepted it. Any panic fails
/// the property.
fn decode_both(text: &str, max: usize) -> bool {
    let client = ClientMessage::decode(text, max);
    let server = ServerMessage::decode(text, max);
    for err in [client.as_ref().err(), server.as_ref().err()]
        .into_iter()
        .flatten()
    {
        let expected = if text.len() > max {
            ErrorCode::FrameTooLarge
        } else {
            ErrorCode::MalformedFrame
        };
        assert_eq!(err.code(), expected, "{err:?}");
    }
    if let Ok(message) = &client {
        assert_eq!(
            ClientMessage::decode(&message.to_json(), usize::MAX).as_ref(),
            Ok(message)
        );
    }
    if let Ok(message) = &server {
        assert_eq!(
            ServerMessage::decode(&message.to_json(), usize::MAX).as_ref(),
            Ok(message)
        );
    }
    client.is_ok() || server.is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let text = message.to_json();
        let value: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&value["type"], message.type_name());
        prop_assert_eq!(ClientMessage::decode(&text, usize::MAX), Ok(message));
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let text = message.to_json();
        let value: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&value["type"], message.type_name());
        prop_assert_eq!(ServerMessage::decode(&text, usize::MAX), Ok(message));
    }

    #[test]
    fn size_limit_is_exact(message in client_message(), max in 0usize..2048) {
        let text = message.to_json();
        let result = ClientMessage::decode(&text, max);
        if text.len() > max {
            prop_assert_eq!(result, Err(DecodeError::TooLarge { len: text.len(), max }));
        } else {
            prop_assert_eq!(result, Ok(message));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_both(&String::from_utf8_lossy(&bytes), DEFAULT_MAX_FRAME_BYTES);
        decode_both(&String::from_utf8_lossy(&bytes), 64);
    }

    #[test]
    fn arbitrary_strings_never_panic(text in text()) {
        decode_both(&text, DEFAULT_MAX_FRAME_BYTES);
        let _ = text.parse::<Fingerprint>();
        let _ = text.parse::<Sha256Digest>();
    }

    #[test]
    fn json_with_a_known_type_never_panics(
        value in json_value(),
        type_name in proptest::sample::select(
            [ClientMessage::TYPES, ServerMessage::TYPES].concat()
        ),
    ) {
        let mut object = match value {
            Value::Object(map) => map,
            other => serde_json::Map::from_iter([("value".to_owned(), other)]),
        };
        object.insert("type".into(), type_name.into());
        decode_both(&Value::Object(object).to_string(), DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn mutated_frames_never_panic(
        message in client_message(),
        cut in any::<prop::sample::Index>(),
        len in 0usize..8,
        insert in text(),
    ) {
        let text = message.to_json();
        let chars: Vec<char> = text.chars().collect();
        let start = cut.index(chars.len() + 1);
        let end = (start + len).min(chars.len());
        let mutated: String =
            chars[..start].iter().chain(insert.chars().collect::<Vec<_>>().iter()).chain(&chars[end..]).collect();
        decode_both(&mutated, DEFAULT_MAX_FRAME_BYTES);
        let truncated: String = chars[..start].iter().collect();
        decode_both(&truncated, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn validated_values_reparse_from_their_display(fingerprint in fingerprint(), digest in digest()) {
        prop_assert_eq!(fingerprint.to_string().parse::<Fingerprint>(), Ok(fingerprint.clone()));
        prop_assert!(fingerprint.as_str().starts_with("SHA256:"));
        prop_assert_eq!(digest.to_string().parse::<Sha256Digest>(), Ok(digest));
    }
}
