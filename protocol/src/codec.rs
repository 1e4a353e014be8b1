//! Encoding and decoding of frames, with size limits and typed errors.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::messages::{ClientMessage, ErrorCode, ServerMessage};

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest protocol version this code still accepts from a peer.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Default cap on one text frame; large enough for a `jobs` batch or a long log line.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is larger than the session allows; it was not parsed.
    TooLarge { len: usize, max: usize },
    /// Not JSON, or JSON that ends too early.
    Syntax(String),
    /// JSON that is not a known message: unknown `type`, missing or mistyped field.
    Invalid(String),
}

impl DecodeError {
    /// The error code the backend sends for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::Syntax(_) | DecodeError::Invalid(_) => ErrorCode::MalformedFrame,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            DecodeError::Syntax(e) => write!(f, "frame is not valid JSON: {e}"),
            DecodeError::Invalid(e) => write!(f, "frame is not a valid message: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one frame of type `T`, refusing frames over `max_bytes` before parsing them.
pub fn decode<T: DeserializeOwned>(text: &str, max_bytes: usize) -> Result<T, DecodeError> {
    if text.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            max: max_bytes,
        });
    }
    let message = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::Invalid(e.to_string()),
        _ => DecodeError::Syntax(e.to_string()),
    })?;
    // serde also reads an internally tagged enum from a JSON array whose first element is
    // the tag (`["job_request", 1]`); the protocol's frames are objects only.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(DecodeError::Invalid("a frame must be a JSON object".into()));
    }
    Ok(message)
}

fn encode<T: Serialize>(message: &T) -> String {
    // The message types contain only strings, numbers, sequences and string-keyed maps,
    // which serde_json always serialises.
    serde_json::to_string(message).expect("protocol messages always serialise")
}

impl ClientMessage {
    pub fn decode(text: &str, max_bytes: usize) -> Result<Self, DecodeError> {
        decode(text, max_bytes)
    }

    pub fn to_json(&self) -> String {
        encode(self)
    }
}

impl ServerMessage {
    pub fn decode(text: &str, max_bytes: usize) -> Result<Self, DecodeError> {
        decode(text, max_bytes)
    }

    pub fn to_json(&self) -> String {
        encode(self)
    }
}
