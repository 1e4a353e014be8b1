//! Buildfleet backend library: the binary in `main.rs` is a thin shell over it.

pub mod store;
