//! The admin CLI: `buildfleet builder|job|artifact|crate|registry …`, a client of the REST API under
//! `/api/v1` (it never opens the database, so it works against any backend it can reach).
//!
//! Output: aligned tables for people by default, the API's own JSON with `--json`. Progress
//! and notes go to stderr, results to stdout. The exit codes in [`EXIT_CODES_HELP`] are a
//! contract scripts rely on; `docs/cli.md` repeats them.

mod artifacts;
mod builders;
mod client;
mod crates;
mod exit;
mod jobs;
mod logs;
mod notifications;
pub(crate) mod output;
mod projects;
mod source;
mod sse;
mod tokens;
mod verify;
mod wait;

use std::path::PathBuf;

use clap::Args;

pub use exit::{CliError, Outcome, EXIT_CODES_HELP};
pub use verify::VerifyArgs;

/// Where the backend is and who we are to it; every admin command takes these.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Base URL of the backend, http:// or https:// [default: http://127.0.0.1:8000].
    #[arg(long, global = true, env = "BUILDFLEET_URL")]
    pub url: Option<String>,
    /// Bearer token for admin actions and submissions [default: the admin-token file in
    /// --data-dir, when readable]. Reads need no token.
    #[arg(long, global = true, env = "BUILDFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of a backend on this machine; its `admin-token` is used when no
    /// --token is given [default: data].
    #[arg(long, global = true, env = "BUILDFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Extra PEM CA certificate(s) to trust for an https:// backend.
    #[arg(long, global = true, env = "BUILDFLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Print the API's JSON (machine output) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl GlobalArgs {
    pub const DEFAULT_URL: &'static str = "http://127.0.0.1:8000";
    pub const DEFAULT_DATA_DIR: &'static str = "data";
}

/// `buildfleet builder …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct BuilderArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: builders::BuilderCommand,
}

/// `buildfleet job …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct JobArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: jobs::JobCommand,
}

/// `buildfleet artifact …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct ArtifactArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: artifacts::ArtifactCommand,
}

/// `buildfleet crate …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct CrateArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: crates::CrateCommand,
}

/// `buildfleet registry …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: crates::RegistryCommand,
}

/// `buildfleet project …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: projects::ProjectCommand,
}

/// `buildfleet token …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct TokenArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: tokens::TokenCommand,
}

/// One admin command, as parsed by the binary.
#[derive(Debug)]
pub enum Command {
    Builder(BuilderArgs),
    Job(JobArgs),
    Artifact(ArtifactArgs),
    Crate(CrateArgs),
    Registry(RegistryArgs),
    Project(ProjectArgs),
    Token(TokenArgs),
    Verify(VerifyArgs),
}

/// Runs `command` on a fresh actix system and exits the process with its exit code.
pub fn run_and_exit(command: Command) -> ! {
    let code = actix_rt::System::new().block_on(run(command));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Runs `command`, prints any error on stderr, and answers the exit code.
pub async fn run(command: Command) -> i32 {
    match dispatch(command).await {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.advice() {
                eprintln!("hint: {hint}");
            }
            e.exit_code()
        }
    }
}

async fn dispatch(command: Command) -> Result<Outcome, CliError> {
    match command {
        Command::Builder(args) => {
            let api = client::Api::new(&args.global)?;
            builders::run(&api, args.global.json, args.command).await
        }
        Command::Job(args) => {
            let api = client::Api::new(&args.global)?;
            jobs::run(&api, args.global.json, args.command).await
        }
        Command::Artifact(args) => {
            let api = client::Api::new(&args.global)?;
            artifacts::run(&api, args.global.json, args.command).await
        }
        Command::Crate(args) => {
            let api = client::Api::new(&args.global)?;
            crates::run(&api, args.global.json, args.command).await
        }
        Command::Registry(args) => {
            let api = client::Api::new(&args.global)?;
            crates::run_registry(&api, args.global.json, args.command).await
        }
        Command::Project(args) => {
            let api = client::Api::new(&args.global)?;
            projects::run(&api, args.global.json, args.command).await
        }
        Command::Token(args) => {
            let api = client::Api::new(&args.global)?;
            tokens::run(&api, args.global.json, args.command).await
        }
        Command::Verify(args) => verify::run(args).await,
    }
}
