//! The frame decoder: any text a peer may send as one WebSocket text frame.

use buildfleet_protocol::codec::decode;
use buildfleet_protocol::{
    ClientMessage, DecodeError, ErrorCode, ServerMessage, DEFAULT_MAX_FRAME_BYTES,
};

/// Decodes `bytes` (read as UTF-8, as a WebSocket text frame is) in both directions.
///
/// Invariants: decoding never panics; `ClientMessage::decode` (with its `job_event` fast
/// path) answers exactly what the generic decoder answers; a decoded message re-encodes to
/// a frame that decodes to the same message, and that encoding is a fixed point; a frame
/// over the limit is refused as too large before it is parsed; every error maps to an error
/// code and prints.
pub fn check(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.as_ref();

    let client = ClientMessage::decode(text, DEFAULT_MAX_FRAME_BYTES);
    assert_eq!(
        client,
        decode::<ClientMessage>(text, DEFAULT_MAX_FRAME_BYTES),
        "the job_event fast path disagrees with the generic decoder on {text:?}"
    );
    match &client {
        Ok(message) => {
            let json = message.to_json();
            let again = ClientMessage::decode(&json, usize::MAX)
                .unwrap_or_else(|e| panic!("{json:?} (from {text:?}) does not decode: {e}"));
            assert_eq!(&again, message, "decode(encode(m)) != m for {text:?}");
            assert_eq!(again.to_json(), json, "encoding is not a fixed point");
        }
        Err(error) => check_error(error),
    }

    let server = ServerMessage::decode(text, DEFAULT_MAX_FRAME_BYTES);
    match &server {
        Ok(message) => {
            let json = message.to_json();
            let again = ServerMessage::decode(&json, usize::MAX)
                .unwrap_or_else(|e| panic!("{json:?} (from {text:?}) does not decode: {e}"));
            assert_eq!(&again, message, "decode(encode(m)) != m for {text:?}");
            assert_eq!(again.to_json(), json, "encoding is not a fixed point");
        }
        Err(error) => check_error(error),
    }

    // The limit is checked before parsing, on both paths.
    if let Some(max) = text.len().checked_sub(1) {
        let too_large = DecodeError::TooLarge {
            len: text.len(),
            max,
        };
        assert_eq!(ClientMessage::decode(text, max), Err(too_large.clone()));
        assert_eq!(ServerMessage::decode(text, max), Err(too_large));
    }
}

fn check_error(error: &DecodeError) {
    let code = error.code();
    match error {
        DecodeError::TooLarge { len, max } => {
            assert!(len > max);
            assert_eq!(code, ErrorCode::FrameTooLarge);
        }
        DecodeError::Syntax(detail) | DecodeError::Invalid(detail) => {
            assert!(!detail.is_empty(), "an error without a detail");
            assert_eq!(code, ErrorCode::MalformedFrame);
        }
    }
    assert!(!error.to_string().is_empty());
}
