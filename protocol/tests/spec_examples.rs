//! `docs/protocol.md` stays true: every ```json block is a valid message, every message type
//! and sub-variant has an example, every error code is documented, and the signed examples
//! verify.

pub mod common;

use std::collections::BTreeSet;

use buildfleet_protocol::signing::{self, BuildStatement};
use buildfleet_protocol::*;
use serde_json::Value;

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A fenced block: its language, the 1-based line of its opening fence, and its text.
struct Block {
    language: String,
    line: usize,
    text: String,
}

fn fenced_blocks(spec: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in spec.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(language)) => {
                open = Some(Block {
                    language: language.trim().to_owned(),
                    line: index + 1,
                    text: String::new(),
                });
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.extend(open.take()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        open.is_none(),
        "unclosed fence at line {}",
        open.map_or(0, |b| b.line)
    );
    blocks
}

enum Example {
    Client(ClientMessage, Value),
    Server(ServerMessage, Value),
}

fn examples(spec: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut failures = Vec::new();
    for block in fenced_blocks(spec)
        .into_iter()
        .filter(|b| b.language == "json")
    {
        let client = ClientMessage::decode(&block.text, DEFAULT_MAX_FRAME_BYTES);
        let server = ServerMessage::decode(&block.text, DEFAULT_MAX_FRAME_BYTES);
        let value = serde_json::from_str::<Value>(&block.text);
        match (client, server, value) {
            (Ok(message), Err(_), Ok(value)) => examples.push(Example::Client(message, value)),
            (Err(_), Ok(message), Ok(value)) => examples.push(Example::Server(message, value)),
            (client, server, _) => failures.push(format!(
                "the json block at docs/protocol.md line {} is not one message:\n\
                 as ClientMessage: {:?}\nas ServerMessage: {:?}\n{}",
                block.line,
                client.err(),
                server.err(),
                block.text
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    examples
}

#[test]
fn every_json_block_is_a_client_or_server_message() {
    let examples = examples(&spec());
    assert!(
        examples.len() > 20,
        "only {} examples found",
        examples.len()
    );
    for example in &examples {
        let (type_name, value) = match example {
            Example::Client(m, v) => (m.type_name(), v),
            Example::Server(m, v) => (m.type_name(), v),
        };
        assert_eq!(
            value["type"], type_name,
            "type_name() disagrees with the example's tag"
        );
    }
}

#[test]
fn only_json_text_and_mermaid_blocks_are_used() {
    for block in fenced_blocks(&spec()) {
        assert!(
            ["json", "text", "mermaid"].contains(&block.language.as_str()),
            "docs/protocol.md line {}: fence language {:?}; use json for messages, text otherwise",
            block.line,
            block.language
        );
    }
}

#[test]
fn every_message_type_has_an_example() {
    let examples = examples(&spec());
    let client: BTreeSet<_> = examples
        .iter()
        .filter_map(|e| match e {
            Example::Client(m, _) => Some(m.type_name()),
            Example::Server(..) => None,
        })
        .collect();
    let server: BTreeSet<_> = examples
        .iter()
        .filter_map(|e| match e {
            Example::Server(m, _) => Some(m.type_name()),
            Example::Client(..) => None,
        })
        .collect();
    assert_eq!(
        client,
        ClientMessage::TYPES.iter().copied().collect(),
        "client examples vs TYPES"
    );
    assert_eq!(
        server,
        ServerMessage::TYPES.iter().copied().collect(),
        "server examples vs TYPES"
    );
}

#[test]
fn every_sub_variant_has_an_example() {
    let mut seen = BTreeSet::new();
    for example in examples(&spec()) {
        match example {
            Example::Client(ClientMessage::WorkAck(ack), _) => {
                seen.insert(match ack.decision {
                    WorkDecision::Accept => "work_ack accept",
                    WorkDecision::Reject { .. } => "work_ack reject",
                });
            }
            Example::Client(ClientMessage::JobEvent(event), _) => {
                seen.insert(match event.event {
                    JobEventKind::Log { .. } => "job_event log",
                    JobEventKind::Stage { .. } => "job_event stage",
                });
            }
            Example::Server(ServerMessage::ResumeResult(result), _) => {
                for job in result.jobs {
                    seen.insert(match job.decision {
                        ResumeAction::Continue { .. } => "resume_result continue",
                        ResumeAction::Cancel { .. } => "resume_result cancel",
                    });
                }
            }
            Example::Server(ServerMessage::CompletionAck(ack), _) => {
                seen.insert(match ack.result {
                    CompletionResult::Accepted => "completion_ack accepted",
                    CompletionResult::Refused { .. } => "completion_ack refused",
                });
            }
            Example::Server(ServerMessage::Control(control), _) => {
                seen.insert(match control.command {
                    ControlCommand::Drain => "control drain",
                    ControlCommand::Pause => "control pause",
                    ControlCommand::Resume => "control resume",
                });
            }
            Example::Server(ServerMessage::Cancel(cancel), _) => {
                seen.insert(match cancel.reason {
                    CancelReason::Requested => "cancel requested",
                    CancelReason::TimedOut => "cancel timed_out",
                    CancelReason::Superseded => "cancel superseded",
                });
            }
            _ => {}
        }
    }
    let expected = [
        "work_ack accept",
        "work_ack reject",
        "job_event log",
        "job_event stage",
        "resume_result continue",
        "resume_result cancel",
        "completion_ack accepted",
        "completion_ack refused",
        "control drain",
        "control pause",
        "control resume",
        "cancel requested",
        "cancel timed_out",
        "cancel superseded",
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|name| !seen.contains(*name))
        .collect();
    assert!(missing.is_empty(), "no example of {missing:?}");
}

#[test]
fn every_error_code_is_documented() {
    let spec = spec();
    for code in common::all_error_codes() {
        let row = format!("| `{}` |", code.as_str());
        assert!(
            spec.contains(&row),
            "docs/protocol.md has no error table row {row}"
        );
    }
}

#[test]
fn every_enum_value_is_named() {
    let spec = spec();
    let names = common::all_build_error_kinds()
        .into_iter()
        .map(|k| k.as_str().to_owned())
        .chain(
            common::all_outcomes()
                .into_iter()
                .map(|o| o.as_str().to_owned()),
        )
        .chain(common::all_stages().into_iter().map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        }));
    for name in names {
        assert!(
            spec.contains(&format!("`{name}`")),
            "docs/protocol.md does not name `{name}`"
        );
    }
}

#[test]
fn constants_match_the_code() {
    let spec = spec();
    for needle in [
        format!("| `max_frame_bytes` | {} ", DEFAULT_MAX_FRAME_BYTES),
        format!("`{}`", signing::CHALLENGE_NAMESPACE),
        format!("`{}`", signing::STATEMENT_NAMESPACE),
        format!("`{}`", signing::STATEMENT_FORMAT),
        format!("(both {} today)", PROTOCOL_VERSION),
    ] {
        assert!(
            spec.contains(&needle),
            "docs/protocol.md does not contain {needle:?}"
        );
    }
    assert_eq!(
        MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
        "update \"(both 1 today)\" in the spec"
    );
}

#[test]
fn the_challenge_message_format_is_the_code_s() {
    let block = fenced_blocks(&spec())
        .into_iter()
        .find(|b| b.language == "text" && b.text.starts_with("buildfleet challenge"))
        .expect("a text block with the challenge message");
    let fingerprint = common::fingerprint();
    let filled = block
        .text
        .replace("{backend_id}", "https://b.example")
        .replace("{fingerprint of the signing key}", fingerprint.as_str())
        .replace("{challenge hex}", "00ff");
    let expected = signing::challenge_message("https://b.example", "00ff", &fingerprint);
    assert_eq!(filled, String::from_utf8(expected).unwrap());
}

/// The signed examples are real: they verify with the key in the allowed-signers example.
#[test]
fn the_signed_examples_verify() {
    let spec = spec();
    let prefix = format!(
        "builder-01 namespaces=\"{}\" ",
        signing::STATEMENT_NAMESPACE
    );
    let key_line = spec
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .expect("an allowed-signers example");
    let key = signing::parse_public_key(key_line).unwrap();
    let fingerprint = signing::fingerprint(&key);

    let examples = examples(&spec);
    let hello = examples.iter().find_map(|e| match e {
        Example::Client(ClientMessage::Hello(h), _) => Some(h),
        _ => None,
    });
    assert_eq!(hello.expect("a hello example").fingerprint, fingerprint);

    let request = examples
        .iter()
        .find_map(|e| match e {
            Example::Server(ServerMessage::ChallengeRequest(r), _) => Some(r),
            _ => None,
        })
        .expect("a challenge_request example");
    let response = examples
        .iter()
        .find_map(|e| match e {
            Example::Client(ClientMessage::ChallengeResponse(r), _) => Some(r),
            _ => None,
        })
        .expect("a challenge_response example");
    signing::verify_challenge(
        &key,
        &request.backend_id,
        &request.challenge,
        &response.signature,
    )
    .expect("the challenge_response example answers the challenge_request example");

    let succeeded = examples
        .iter()
        .find_map(|e| match e {
            Example::Client(ClientMessage::JobResponse(r), _)
                if r.outcome == Outcome::Succeeded =>
            {
                Some(r)
            }
            _ => None,
        })
        .expect("a succeeded job_response example");
    let statement: BuildStatement = signing::verify_statement(&key, &succeeded.statement)
        .expect("the job_response example's statement verifies");
    assert_eq!(
        (statement.job_id, statement.attempt),
        (succeeded.job_id, succeeded.attempt)
    );
    assert_eq!(statement.artifacts, succeeded.artifacts);
    assert_eq!(statement.outcome, succeeded.outcome);
    assert_eq!(statement.backend_id, request.backend_id);
    assert_eq!(
        succeeded.statement.statement,
        statement.to_signed_text(),
        "statement text is canonical"
    );
    assert!(
        spec.contains(&format!("```text\n{}```", statement.to_signed_text())),
        "the statement text block differs from the signed example"
    );
}

#[test]
fn the_too_many_attempts_example_carries_its_retry_after() {
    let throttled: Vec<_> = examples(&spec())
        .into_iter()
        .filter_map(|e| match e {
            Example::Server(ServerMessage::AuthRejected(r), _)
                if r.code == ErrorCode::TooManyAttempts =>
            {
                Some(r)
            }
            _ => None,
        })
        .collect();
    assert!(
        !throttled.is_empty(),
        "docs/protocol.md shows no auth_rejected{{too_many_attempts}}"
    );
    for rejected in throttled {
        assert!(
            rejected.retry_after_ms.is_some_and(|ms| ms > 0),
            "{rejected:?}"
        );
    }
}
