pub mod browser;
pub mod builder_client;
pub mod cli;
pub mod db;
pub mod e2e;
pub mod keys;
pub mod processes;
pub mod server;
