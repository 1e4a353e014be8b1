//! What the backend's, the builder's and the benchmark's tests share: a real database per
//! test ([`db`]), the real backend in-process ([`server`]), builder keys made by `ssh-keygen`
//! ([`keys`]), the one scripted builder client that speaks the protocol frame by frame
//! ([`builder_client`]), real builders and a cutting TCP proxy ([`e2e`]), the binaries as
//! processes ([`processes`], [`cli`]), a PostgreSQL server of a test's own
//! ([`private_postgres`]) and headless Chromium ([`browser`]).
//!
//! A test file instantiates its scenarios on both databases with [`server_tests!`] (async
//! scenarios taking a [`db::TestDb`]) or [`db_tests!`] (synchronous ones taking `&TestDb`).
//! Test code: it panics on every failure, which is how a test fails.

pub mod browser;
pub mod builder_client;
pub mod cli;
pub mod db;
pub mod e2e;
pub mod keys;
pub mod private_postgres;
pub mod processes;
pub mod registry;
pub mod s3;
pub mod server;
pub mod tls;
