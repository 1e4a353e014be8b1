pub mod browser;
pub mod builder_client;
pub mod cli;
pub mod db;
pub mod keys;
pub mod server;
