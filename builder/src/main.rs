//! `buildfleet-builder run` and `buildfleet-builder keygen`.

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

use std::io::IsTerminal as _;

use anyhow::Context as _;
use buildfleet_builder::config::{Cli, Command};
use buildfleet_builder::Shutdown;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen(args) => {
            let comment = format!("buildfleet-builder@{}", args.out.display());
            let key = buildfleet_builder::identity::keygen(&args.out, &comment)?;
            println!(
                "wrote {} and {}",
                key.private_path.display(),
                key.public_path.display()
            );
            println!("public key:  {}", key.public_key);
            println!("fingerprint: {}", key.fingerprint);
            println!(
                "admit it on the backend, then run: buildfleet-builder run --key {}",
                key.private_path.display()
            );
            Ok(())
        }
        Command::Run(args) => {
            // The log goes to stdout; colour escapes only when that is a terminal and
            // `NO_COLOR` is unset (no-color.org), so a log file or a pipe holds plain text.
            let colour = std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_ansi(colour)
                .init();
            let config = args.resolve().context("invalid configuration")?;
            actix_rt::System::new().block_on(async move {
                // Compose passes an unset variable as "", which means no enrolment.
                if let Some(token) = args.enrol_token.as_deref().filter(|t| !t.trim().is_empty()) {
                    buildfleet_builder::enrol::enrol(&config, token)
                        .await
                        .context("cannot enrol with the backend")?;
                }
                let builder = buildfleet_builder::start(config)
                    .await
                    .context("cannot start the builder")?;
                let stopper = builder.stopper();
                actix_rt::spawn(async move {
                    if let Err(e) = stop_on_signals(stopper).await {
                        tracing::error!(error = %e, "cannot listen for signals");
                    }
                });
                builder
                    .wait()
                    .await
                    .context("the builder stopped with an error")
            })
        }
    }
}

/// First SIGTERM/SIGINT drains, the second cancels running jobs.
async fn stop_on_signals(stopper: actix::Recipient<Shutdown>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    for mode in [Shutdown::Drain, Shutdown::Cancel] {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(?mode, "signal received");
        stopper.do_send(mode);
    }
    Ok(())
}
