//! Bad frames are rejected with the right `DecodeError` variant and error code, never a panic.

pub mod common;

use buildfleet_protocol::*;

const MAX: usize = DEFAULT_MAX_FRAME_BYTES;

fn client(text: &str) -> Result<ClientMessage, DecodeError> {
    ClientMessage::decode(text, MAX)
}

#[track_caller]
fn assert_syntax(text: &str) {
    let err = client(text).expect_err(text);
    assert!(matches!(err, DecodeError::Syntax(_)), "{text:?}: {err:?}");
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    assert_eq!(
        ServerMessage::decode(text, MAX).unwrap_err().code(),
        ErrorCode::MalformedFrame
    );
}

/// Asserts an `Invalid` error whose text mentions `needle` (the field or problem at fault).
#[track_caller]
fn assert_invalid(text: &str, needle: &str) {
    let err = client(text).expect_err(text);
    let DecodeError::Invalid(detail) = &err else {
        panic!("{text:?}: expected DecodeError::Invalid, got {err:?}");
    };
    assert!(
        detail.contains(needle),
        "{text:?}: {detail:?} does not mention {needle:?}"
    );
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    assert!(err.to_string().contains(needle));
}

fn hello_with_fingerprint(fingerprint: &str) -> String {
    serde_json::json!({
        "type": "hello", "protocol_version": 1, "fingerprint": fingerprint,
        "builder_name": "b", "builder_version": "0.1.0"
    })
    .to_string()
}

fn response_with_artifact_digest(sha256: &str) -> String {
    let ClientMessage::JobResponse(mut response) =
        common::job_response(Outcome::Succeeded, None, None)
    else {
        unreachable!("job_response builds a job_response");
    };
    let mut value = serde_json::to_value(&response.artifacts[0]).unwrap();
    value["sha256"] = sha256.into();
    response.artifacts.clear();
    let mut message = serde_json::to_value(ClientMessage::JobResponse(response)).unwrap();
    message["artifacts"] = serde_json::Value::Array(vec![value]);
    message.to_string()
}

#[test]
fn malformed_json_is_a_syntax_error() {
    for text in [
        r#"{"type":"job_request","credits":1"#,
        r#"{"type":"job_request","credits":}"#,
        r#"{"type":"job_request",,"credits":1}"#,
        r#"{"type":"job_request","credits":1,}"#,
        r#"{type:"job_request","credits":1}"#,
        r#"{'type':'job_request','credits':1}"#,
        r#"{"type":"job_request","credits":1} {"type":"job_request","credits":1}"#,
        r#"{"type":"job_request","credits":1}x"#,
        r#"{"type":"job_request","credits":01}"#,
        r#"{"type":"job_request","credits":NaN}"#,
        "hello",
        "{",
        "}",
    ] {
        assert_syntax(text);
    }
}

#[test]
fn empty_input_is_a_syntax_error() {
    for text in ["", " ", "\n\t\r "] {
        assert_syntax(text);
    }
}

#[test]
fn json_that_is_not_a_message_is_invalid() {
    // serde would read `["job_request", 1]` as a job_request; the codec refuses it.
    for text in [
        "null",
        "42",
        "true",
        r#""job_request""#,
        "{}",
        "[]",
        r#"["job_request",1]"#,
    ] {
        let err = client(text).expect_err(text);
        assert!(matches!(err, DecodeError::Invalid(_)), "{text:?}: {err:?}");
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }
}

#[test]
fn unknown_or_missing_type_is_invalid() {
    assert_invalid(r#"{"type":"bogus","credits":1}"#, "bogus");
    assert_invalid(r#"{"type":"JOB_REQUEST","credits":1}"#, "JOB_REQUEST");
    assert_invalid(r#"{"type":"JobRequest","credits":1}"#, "JobRequest");
    assert_invalid(r#"{"type":"","credits":1}"#, "unknown variant");
    assert_invalid(r#"{"type":7,"credits":1}"#, "invalid type");
    assert_invalid(r#"{"type":null,"credits":1}"#, "invalid type");
    assert_invalid(r#"{"credits":1}"#, "missing field `type`");
    // A server-only type in the client direction.
    assert_invalid(
        r#"{"type":"cancel","job_id":1,"attempt":1,"reason":"requested"}"#,
        "cancel",
    );
}

#[test]
fn missing_required_fields_are_invalid() {
    assert_invalid(r#"{"type":"job_request"}"#, "missing field `credits`");
    assert_invalid(
        r#"{"type":"work_ack","job_id":1,"attempt":1}"#,
        "missing field `decision`",
    );
    assert_invalid(
        r#"{"type":"work_ack","job_id":1,"attempt":1,"decision":{}}"#,
        "kind",
    );
    assert_invalid(
        r#"{"type":"work_ack","job_id":1,"attempt":1,"decision":{"kind":"reject"}}"#,
        "missing field `reason`",
    );
    assert_invalid(
        r#"{"type":"job_event","job_id":1,"attempt":1,"seq":1,"timestamp_ms":0,
            "event":{"kind":"log","stream":"stdout"}}"#,
        "missing field `line`",
    );
    assert_invalid(r#"{"type":"hello","protocol_version":1}"#, "missing field");
    let err = ServerMessage::decode(r#"{"type":"error","code":"internal"}"#, MAX).unwrap_err();
    assert!(matches!(&err, DecodeError::Invalid(d) if d.contains("missing field `message`")));
}

#[test]
fn mistyped_fields_are_invalid() {
    for (text, needle) in [
        (r#"{"type":"job_request","credits":"3"}"#, "invalid type"),
        (r#"{"type":"job_request","credits":-1}"#, "invalid value"),
        (r#"{"type":"job_request","credits":1.5}"#, "invalid type"),
        (
            r#"{"type":"job_request","credits":4294967296}"#,
            "invalid value",
        ),
        (r#"{"type":"job_request","credits":null}"#, "invalid type"),
        (r#"{"type":"job_request","credits":[1]}"#, "invalid type"),
        (r#"{"type":"job_request","credits":1e400}"#, ""),
        (r#"{"type":"heartbeat","active_jobs":{}}"#, "invalid type"),
        (
            r#"{"type":"heartbeat","active_jobs":[{"job_id":"1","attempt":1}]}"#,
            "invalid type",
        ),
        (
            r#"{"type":"heartbeat","active_jobs":[{"job_id":1,"attempt":2147483648}]}"#,
            "invalid value",
        ),
        (
            r#"{"type":"job_event","job_id":1,"attempt":1,"seq":1,"timestamp_ms":0,
                "event":{"kind":"log","stream":"stdin","line":"x"}}"#,
            "stdin",
        ),
        (
            r#"{"type":"job_event","job_id":1,"attempt":1,"seq":1,"timestamp_ms":0,
                "event":{"kind":"stage","stage":"compiling"}}"#,
            "compiling",
        ),
        (
            r#"{"type":"resume","jobs":[{"job_id":1,"attempt":1,"finished":"yes"}]}"#,
            "invalid type",
        ),
    ] {
        let err = client(text).expect_err(text);
        // `1e400` overflows f64: serde_json reports it while parsing, as a syntax error.
        if needle.is_empty() {
            assert_eq!(err.code(), ErrorCode::MalformedFrame);
        } else {
            assert_invalid(text, needle);
        }
    }
}

#[test]
fn duplicate_fields_are_invalid() {
    assert_invalid(
        r#"{"type":"job_request","credits":1,"credits":2}"#,
        "duplicate field",
    );
    assert_invalid(
        r#"{"type":"job_request","type":"job_request","credits":1}"#,
        "duplicate field",
    );
}

#[test]
fn invalid_fingerprints_are_rejected() {
    let valid = hello_with_fingerprint(common::FINGERPRINT);
    assert!(client(&valid).is_ok());
    for bad in [
        "",
        "SHA256:",
        "SHA256:not base64!",
        "sha256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80",
        "kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80",
        "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu8",
        "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80AAAA",
        " SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80",
        "MD5:90:ab:55:24:a4:ef:49:ba:b3:5f:06:48:a6:07:72:43",
        // A well-formed SHA512 fingerprint: only SHA256 is accepted.
        "SHA512:yvA9Ab2yNxnAmKMyeOFfdnLaPMNtCUXwaZ+HnuL1vS2kgrSYQjSnW9GkSqYcB5j9lrBAPGGAMT6CBHbNiFRkrg",
    ] {
        assert_invalid(&hello_with_fingerprint(bad), "fingerprint");
        assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn invalid_sha256_digests_are_rejected() {
    let valid = "0123456789abcdef".repeat(4);
    assert!(client(&response_with_artifact_digest(&valid)).is_ok());
    for bad in [
        String::new(),
        "0123456789ABCDEF".repeat(4),
        valid[..63].to_owned(),
        format!("{valid}0"),
        format!("{}g", &valid[..63]),
        format!("sha256:{valid}"),
        format!(" {}", &valid[..63]),
        "é".repeat(32),
    ] {
        assert_invalid(&response_with_artifact_digest(&bad), "sha256");
        assert!(bad.parse::<Sha256Digest>().is_err(), "{bad:?} parsed");
    }
    let source = r#"{"type":"jobs","jobs":[{"job_id":1,"attempt":1,
        "source":{"url":"u","sha256":"abc","max_bytes":1},"recipe":"r","mode":"build",
        "timeout_secs":1,"job_token":"t","upload_url":"u"}]}"#;
    let err = ServerMessage::decode(source, MAX).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid(d) if d.contains("sha256")),
        "{err:?}"
    );
}

#[test]
fn oversized_frames_are_refused_without_parsing() {
    // Garbage over the limit: TooLarge, not Syntax, proves the parser never ran.
    let garbage = "x".repeat(MAX + 1);
    assert_eq!(
        client(&garbage),
        Err(DecodeError::TooLarge {
            len: MAX + 1,
            max: MAX
        })
    );
    let err = ServerMessage::decode(&garbage, MAX).unwrap_err();
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert!(err.to_string().contains(&MAX.to_string()));

    // A valid message padded to exactly the limit is accepted; one byte more is not.
    let message = r#"{"type":"job_request","credits":1}"#;
    let exact = format!("{message}{}", " ".repeat(MAX - message.len()));
    assert_eq!(exact.len(), MAX);
    assert!(client(&exact).is_ok());
    let over = format!("{exact} ");
    assert_eq!(
        client(&over),
        Err(DecodeError::TooLarge {
            len: MAX + 1,
            max: MAX
        })
    );

    // The limit counts bytes, not characters.
    let line = "é".repeat(40);
    let event = common::job_event(
        1,
        JobEventKind::Log {
            stream: LogStream::Stdout,
            line,
        },
    );
    let text = event.to_json();
    let chars = text.chars().count();
    assert!(text.len() > chars);
    assert!(matches!(
        ClientMessage::decode(&text, chars),
        Err(DecodeError::TooLarge { len, max }) if len == text.len() && max == chars
    ));
    assert_eq!(ClientMessage::decode(&text, text.len()), Ok(event));

    // A zero limit refuses everything but the empty frame, which is then a syntax error.
    assert!(matches!(
        client_with_limit("{}", 0),
        Err(DecodeError::TooLarge { len: 2, max: 0 })
    ));
    assert!(matches!(
        client_with_limit("", 0),
        Err(DecodeError::Syntax(_))
    ));
}

fn client_with_limit(text: &str, max: usize) -> Result<ClientMessage, DecodeError> {
    ClientMessage::decode(text, max)
}

#[test]
fn deeply_nested_input_is_rejected_without_overflowing_the_stack() {
    for depth in [200, 10_000, 100_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            // In an unknown field and in a known field: the parser's depth limit trips.
            // The limit is lifted so that the deepest inputs reach the parser.
            for text in [
                format!(r#"{{"type":"job_request","credits":1,"extra":{nested}}}"#),
                format!(r#"{{"type":"job_request","credits":{nested}}}"#),
            ] {
                let err = ClientMessage::decode(&text, usize::MAX).unwrap_err();
                assert!(
                    matches!(err, DecodeError::Syntax(_)),
                    "depth {depth}: {err:?}"
                );
            }
            // As the whole frame: refused at the first value that cannot be a `type`.
            let err = ClientMessage::decode(&nested, usize::MAX).unwrap_err();
            assert_eq!(err.code(), ErrorCode::MalformedFrame, "{err:?}");
        }
    }
    // Moderate nesting in an unknown field is fine and ignored.
    let nested = format!("{}{}", "[".repeat(50), "]".repeat(50));
    let text = format!(r#"{{"type":"job_request","credits":1,"extra":{nested}}}"#);
    assert_eq!(
        client(&text),
        Ok(ClientMessage::JobRequest(JobRequest { credits: 1 }))
    );
}

#[test]
fn strange_strings_are_rejected_or_kept_exactly() {
    let line_event = |line: &str| {
        format!(
            r#"{{"type":"job_event","job_id":1,"attempt":1,"seq":1,"timestamp_ms":0,
                "event":{{"kind":"log","stream":"stdout","line":"{line}"}}}}"#
        )
    };
    // Lone surrogates, invalid escapes and raw control characters are not valid JSON.
    for line in [
        r"\ud800",
        r"\udc00x",
        r"\ud800\u0041",
        r"\x41",
        r"\u12",
        r"\uZZZZ",
        "a\u{1}b",
        "tab\there",
        "new\nline",
    ] {
        assert_syntax(&line_event(line));
    }
    // A byte-order mark before the object is not JSON either.
    assert_syntax(&format!(
        "\u{feff}{}",
        r#"{"type":"job_request","credits":1}"#
    ));

    // Escaped NUL, escaped controls, surrogate pairs, noncharacters and raw non-ASCII text
    // are valid and arrive unchanged.
    for (escaped, expected) in [
        (r"nul\u0000byte", "nul\0byte"),
        (r"\u001b[31mred\u001b[0m", "\u{1b}[31mred\u{1b}[0m"),
        (r"\ud83d\ude00", "\u{1f600}"),
        (r"\uffff\ufffe", "\u{ffff}\u{fffe}"),
        ("\u{fffd}\u{10ffff}日本", "\u{fffd}\u{10ffff}日本"),
        (
            r#"quote \" backslash \\ slash \/"#,
            r#"quote " backslash \ slash /"#,
        ),
    ] {
        let decoded = client(&line_event(escaped)).unwrap_or_else(|e| panic!("{escaped:?}: {e}"));
        let ClientMessage::JobEvent(JobEvent {
            event: JobEventKind::Log { line, .. },
            ..
        }) = &decoded
        else {
            panic!("not a log event");
        };
        assert_eq!(line, expected);
        assert_eq!(client(&decoded.to_json()).as_ref(), Ok(&decoded));
    }
}

#[test]
fn error_display_is_informative() {
    let syntax = client("{").unwrap_err();
    assert!(
        syntax.to_string().starts_with("frame is not valid JSON"),
        "{syntax}"
    );
    let invalid = client("{}").unwrap_err();
    assert!(
        invalid
            .to_string()
            .starts_with("frame is not a valid message"),
        "{invalid}"
    );
    assert_eq!(syntax.code().as_str(), "malformed_frame");
    assert_eq!(
        DecodeError::TooLarge { len: 2, max: 1 }.code().as_str(),
        "frame_too_large"
    );
}
