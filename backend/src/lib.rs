//! Buildfleet backend library: the binary in `main.rs` is a thin shell over it, and the
//! integration tests start the real server through [`server::start`].

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

pub mod actors;
pub mod cli;
pub mod completion;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod janitor;
pub mod job_feed;
pub mod local;
pub mod log_segments;
pub mod logs;
pub mod metrics;
pub mod offload;
pub mod queue_standing;
pub mod registry;
pub mod reproduction_evidence;
pub mod server;
pub mod storage;
pub mod store;
pub mod tls;
pub mod webhooks;
mod wire;
