//! Buildfleet backend library: the binary in `main.rs` is a thin shell over it, and the
//! integration tests start the real server through [`server::start`].

pub mod actors;
pub mod cli;
pub mod completion;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod job_feed;
pub mod local;
pub mod logs;
pub mod metrics;
pub mod offload;
pub mod server;
pub mod storage;
pub mod store;
pub mod tls;
mod wire;
