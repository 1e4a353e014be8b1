//! The checks behind Buildfleet's fuzz targets (`tests/*.rs`), one module per surface that
//! takes untrusted input. Each function takes one fuzzer input and panics when an invariant
//! breaks; a panic inside the code under test is a finding as well.
//!
//! Run them with `cargo test -p buildfleet-fuzz` (corpus plus random inputs for a second,
//! `BOLERO_RANDOM_TEST_TIME_MS` for longer) or under a coverage-guided engine with
//! `cargo bolero test` (docs/fuzzing.md).

pub mod archive;
pub mod frames;
pub mod statement;
