pub mod cli;
pub mod db;
pub mod builder_client;
pub mod keys;
pub mod server;
