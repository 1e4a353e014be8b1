//! `buildfleet`: the backend server and its administration commands.

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

use anyhow::Context;
use buildfleet_backend::cli;
use buildfleet_backend::config::{ServeArgs, ServerConfig, SERVE_AFTER_HELP};
use buildfleet_backend::server;
use buildfleet_backend::store;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "buildfleet",
    version,
    about = "Buildfleet backend: job queue, builder sessions, API",
    after_help = SERVE_AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the backend (the default when no command is given).
    #[command(after_help = SERVE_AFTER_HELP)]
    Serve(ServeArgs),
    /// Apply or revert database migrations.
    Migrate {
        #[command(flatten)]
        serve: ServeArgs,
        /// Revert every migration instead (drops all data).
        #[arg(long)]
        revert_all: bool,
    },
    /// Admit, list and steer builders (a client of the API at --url).
    Builder(cli::BuilderArgs),
    /// Submit, list, inspect, cancel and retry jobs; print or follow their logs.
    Job(cli::JobArgs),
    /// List a job's artifacts; download one and verify its signed build statement.
    Artifact(cli::ArtifactArgs),
    /// Backfill a crate's versions; show what the registry follower saw and built of it.
    Crate(cli::CrateArgs),
    /// The registry follower's standing.
    Registry(cli::RegistryArgs),
    /// Create, list, show and change projects.
    Project(cli::ProjectArgs),
    /// Create, list and revoke API tokens (a project's, or the whole service's).
    Token(cli::TokenArgs),
    /// Check an artifact file against its signed statement: the digest, every signature
    /// against the allowed signers at the statement's time; say who built and reproduced it.
    Verify(cli::VerifyArgs),
}

/// Where the process's own log goes.
#[derive(Clone, Copy)]
enum LogTo {
    /// The server's log (`serve`, `migrate`) is its output.
    Stdout,
    /// An admin command's warnings must not mix with its results (`--json` on stdout).
    Stderr,
}

/// The log goes to `to`; colour escapes only when that is a terminal and `NO_COLOR` is
/// unset (no-color.org), so a log file or a pipe holds plain text.
fn init_tracing(to: LogTo) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BUILDFLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = match to {
        LogTo::Stdout => std::io::stdout().is_terminal(),
        LogTo::Stderr => std::io::stderr().is_terminal(),
    };
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour);
    match to {
        LogTo::Stdout => builder.init(),
        LogTo::Stderr => builder.with_writer(std::io::stderr).init(),
    }
}

fn migrate(args: &ServeArgs, revert_all: bool) -> anyhow::Result<()> {
    let config = ServerConfig::resolve(args)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let mut conn = store::connect(&config.database_url).context("connecting to the database")?;
    let changed = if revert_all {
        store::revert_all_migrations(&mut conn)?
    } else {
        store::run_migrations(&mut conn)?
    };
    let verb = if revert_all { "reverted" } else { "applied" };
    if changed.is_empty() {
        println!("nothing to do");
    }
    for name in changed {
        println!("{verb} {name}");
    }
    Ok(())
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig::resolve(args)?;
    let data_dir = config.data_dir.clone();
    let (local_builders, tls_cert) = (
        config.local_builders,
        config.tls.as_ref().map(|(c, _)| c.clone()),
    );
    let running = server::start(config).await?;
    let builders = buildfleet_backend::local::start_builders(
        &running,
        &data_dir,
        local_builders,
        tls_cert.as_deref(),
    )
    .await?;
    println!("Buildfleet backend listening on {}", running.public_url);
    println!("  dashboard:   {}/", running.public_url);
    println!(
        "  admin token: {}",
        match &args.admin_token {
            Some(_) => "(from BUILDFLEET_ADMIN_TOKEN / --admin-token)".to_owned(),
            None => format!("cat {}", server::admin_token_path(&data_dir).display()),
        }
    );
    if !builders.is_empty() {
        println!(
            "  local builders: {} (keys under {})",
            builders.len(),
            data_dir.join("local-builders").display()
        );
    }
    running.wait().await?;
    for builder in builders {
        builder.cancel();
        let _ = builder.wait().await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(match cli.command {
        None | Some(Command::Serve(_) | Command::Migrate { .. }) => LogTo::Stdout,
        Some(_) => LogTo::Stderr,
    });
    match cli.command {
        Some(Command::Migrate { serve, revert_all }) => migrate(&serve, revert_all),
        Some(Command::Serve(args)) => actix_web::rt::System::new().block_on(serve(&args)),
        None => actix_web::rt::System::new().block_on(serve(&cli.serve)),
        Some(Command::Builder(args)) => cli::run_and_exit(cli::Command::Builder(args)),
        Some(Command::Job(args)) => cli::run_and_exit(cli::Command::Job(args)),
        Some(Command::Artifact(args)) => cli::run_and_exit(cli::Command::Artifact(args)),
        Some(Command::Crate(args)) => cli::run_and_exit(cli::Command::Crate(args)),
        Some(Command::Registry(args)) => cli::run_and_exit(cli::Command::Registry(args)),
        Some(Command::Project(args)) => cli::run_and_exit(cli::Command::Project(args)),
        Some(Command::Token(args)) => cli::run_and_exit(cli::Command::Token(args)),
        Some(Command::Verify(args)) => cli::run_and_exit(cli::Command::Verify(args)),
    }
}
