//! Environment variables; a test binary of its own because the process environment is
//! shared by every test thread of a binary.

use buildfleet_builder::config::{Cli, Command};
use clap::Parser;

#[test]
fn environment_variables_are_read() {
    std::env::set_var("BUILDFLEET_BACKEND_URL", "ws://10.0.0.1:9000/prefix");
    std::env::set_var("BUILDFLEET_KEY", "/keys/builder");
    std::env::set_var("BUILDFLEET_NAME", "env-builder");
    std::env::set_var("BUILDFLEET_LABELS", "zone=a,disk=ssd");
    std::env::set_var("BUILDFLEET_MAX_JOBS", "2");
    let parsed = match Cli::try_parse_from(["buildfleet-builder", "run", "--name", "flag-wins"])
        .map(|c| c.command)
    {
        Ok(Command::Run(args)) => Ok(args),
        other => Err(format!("{other:?}")),
    };
    for key in [
        "BUILDFLEET_BACKEND_URL",
        "BUILDFLEET_KEY",
        "BUILDFLEET_NAME",
        "BUILDFLEET_LABELS",
        "BUILDFLEET_MAX_JOBS",
    ] {
        std::env::remove_var(key);
    }
    let config = parsed.unwrap().resolve().unwrap();
    assert_eq!(
        config.connect_urls,
        ["ws://10.0.0.1:9000/prefix/api/v1/builders/connect"]
    );
    assert_eq!(config.key_path.to_str(), Some("/keys/builder"));
    assert_eq!(config.name, "flag-wins");
    assert_eq!(config.max_concurrent_jobs, 2);
    assert_eq!(config.labels.len(), 2);
}
