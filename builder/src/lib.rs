//! The Buildfleet builder: dials the backend over a WebSocket, proves its identity with an
//! SSH key, runs the jobs pushed to it, streams their logs, uploads their artifacts and
//! signs what it built.
//!
//! Embedding (the end-to-end tests do this): inside an actix system,
//! `let builder = buildfleet_builder::start(config).await?;` then `builder.drain()` or
//! `builder.cancel()` and `builder.wait().await`; or `run(config, shutdown_future)`.
//!
//! Actors: [`connection::Connection`] (socket, authentication, reconnects) and
//! [`supervisor::Supervisor`] (jobs, resume, credits); each job runs as a child task
//! ([`job::run_job`]).

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

pub mod artifacts;
pub mod config;
pub mod connection;
pub mod enrol;
pub mod event_buffer;
pub mod http;
pub mod identity;
pub mod job;
pub mod process;
pub mod recipes;
pub mod signals;
pub mod source;
pub mod strategy;
pub mod supervisor;
pub mod unpack;
pub mod upload;

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::prelude::*;
use buildfleet_protocol::{Capabilities, Fingerprint};
use tokio::sync::oneshot;

pub use config::BuilderConfig;
pub use supervisor::Shutdown;

/// Log lines are cut to this length until a session's settings say otherwise.
const DEFAULT_MAX_LOG_LINE_BYTES: usize = 16 * 1024;

/// Why the builder could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Tls(#[from] http::TlsError),
    #[error("cannot prepare the work directory {path}: {source}")]
    WorkDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("protocol version not supported: {0}")]
    UnsupportedVersion(String),
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("the builder stopped unexpectedly")]
    Stopped,
}

/// A running builder.
pub struct Builder {
    supervisor: Addr<supervisor::Supervisor>,
    done: oneshot::Receiver<Result<(), BuilderError>>,
    fingerprint: Fingerprint,
}

impl Builder {
    /// The fingerprint the backend must have admitted.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Takes no new jobs; exits once running jobs finished and were acknowledged.
    pub fn drain(&self) {
        self.supervisor.do_send(Shutdown::Drain);
    }

    /// Cancels running jobs, reports them cancelled, then exits.
    pub fn cancel(&self) {
        self.supervisor.do_send(Shutdown::Cancel);
    }

    /// A cloneable way to stop the builder from elsewhere (e.g. a signal handler).
    pub fn stopper(&self) -> Recipient<Shutdown> {
        self.supervisor.clone().recipient()
    }

    /// Waits until the builder has stopped.
    pub async fn wait(self) -> Result<(), BuilderError> {
        self.done.await.unwrap_or(Err(BuilderError::Stopped))
    }
}

/// Starts the builder's actors on the current actix system. Fails fast on a bad key, CA
/// file or work directory; a backend that cannot be reached is retried forever.
pub async fn start(config: BuilderConfig) -> Result<Builder, BuilderError> {
    let identity = Arc::new(identity::Identity::load(&config.key_path)?);
    let tls = http::tls_config(config.ca_cert.as_deref())?;
    let jobs_dir = config.work_dir.join("jobs");
    let sources_dir = config.work_dir.join("sources");
    let spare_dirs = Arc::new(job::SpareDirs::new(jobs_dir.clone()));
    // Job directories left by an earlier process belong to jobs it can no longer report;
    // its cached sources stay (they are verified on use).
    let prepare = {
        let (jobs_dir, spare_dirs) = (jobs_dir.clone(), spare_dirs.clone());
        let (sources_dir, cache_bytes) = (sources_dir.clone(), config.limits.source_cache_bytes);
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_dir_all(&jobs_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err((jobs_dir, e)),
                _ => {}
            }
            std::fs::create_dir_all(&jobs_dir)
                .and_then(|()| spare_dirs.replenish())
                .map_err(|e| (jobs_dir, e))?;
            source::SourceCache::open(&sources_dir, cache_bytes).map_err(|e| (sources_dir, e))
        })
    };
    let sources = prepare
        .await
        .map_err(|e| (jobs_dir.clone(), std::io::Error::other(e)))
        .and_then(|r| r)
        .map_err(|(path, source)| BuilderError::WorkDir { path, source })?;

    let env = Rc::new(job::JobEnv {
        client: http::client(&tls),
        identity: identity.clone(),
        recipes: config.recipes.clone(),
        strategy: config.strategy.clone(),
        toolchain: config.toolchain.clone(),
        limits: config.limits.clone(),
        offline: config.offline,
        jobs_dir,
        sources,
        spare_dirs,
        max_log_line_bytes: Arc::new(AtomicUsize::new(DEFAULT_MAX_LOG_LINE_BYTES)),
    });
    let capabilities = Capabilities {
        recipes: config.recipes.capabilities(),
        labels: config.labels.clone(),
        max_concurrent_jobs: config.max_concurrent_jobs,
        // It turns assignments down while paused or shutting down, so each one is acked.
        accepts_every_assignment: false,
    };
    let (done_tx, done) = oneshot::channel();
    let supervisor = supervisor::Supervisor::new(env, config.max_concurrent_jobs, done_tx).start();
    let connection = connection::Connection::new(
        config.connect_url.clone(),
        config.name.clone(),
        identity.clone(),
        capabilities,
        http::client(&tls),
        supervisor.clone(),
        config.reconnect.clone(),
    )
    .start();
    supervisor.do_send(SetConnection(connection.recipient()));
    tracing::info!(fingerprint = %identity.fingerprint, url = %config.connect_url, "builder started");
    Ok(Builder {
        supervisor,
        done,
        fingerprint: identity.fingerprint.clone(),
    })
}

/// Runs the builder until `shutdown` resolves, then drains it.
pub async fn run(
    config: BuilderConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BuilderError> {
    let builder = start(config).await?;
    let stopper = builder.stopper();
    let wait = builder.wait();
    tokio::pin!(wait);
    tokio::select! {
        result = &mut wait => return result,
        () = shutdown => stopper.do_send(Shutdown::Drain),
    }
    wait.await
}

#[derive(Message)]
#[rtype(result = "()")]
struct SetConnection(Recipient<supervisor::CloseConnection>);

impl Handler<SetConnection> for supervisor::Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SetConnection, _ctx: &mut Self::Context) {
        self.set_connection(msg.0);
    }
}
