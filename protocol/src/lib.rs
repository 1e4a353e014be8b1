//! Buildfleet's builder–backend wire protocol: the messages of each direction, their JSON
//! encoding with limits, and the SSH signatures that authenticate builders and their builds.
//!
//! The specification is `docs/protocol.md`; a test parses every example in it.

// Product code turns no error into a panic and no value into a silently wrong one: a corrupt
// or out-of-range value is an error that is logged and surfaced (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod codec;
pub mod dsse;
pub mod hex;
pub mod messages;
pub mod provenance;
pub mod signing;
pub mod types;

pub use codec::{DecodeError, DEFAULT_MAX_FRAME_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use messages::*;
pub use ssh_key;
pub use types::{validate_artifact_name, Attempt, Fingerprint, InvalidValue, JobId, Sha256Digest};
