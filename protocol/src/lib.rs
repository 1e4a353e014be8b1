//! Buildfleet's builder–backend wire protocol: the messages of each direction, their JSON
//! encoding with limits, and the SSH signatures that authenticate builders and their builds.
//!
//! The specification is `docs/protocol.md`; a test parses every example in it.

pub mod codec;
pub mod hex;
pub mod messages;
pub mod signing;
pub mod types;

pub use codec::{DecodeError, DEFAULT_MAX_FRAME_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use messages::*;
pub use ssh_key;
pub use types::{validate_artifact_name, Attempt, Fingerprint, InvalidValue, JobId, Sha256Digest};
