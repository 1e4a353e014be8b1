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
pub mod backends;
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
pub mod versions;

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::prelude::*;
use buildfleet_protocol::{Capabilities, Fingerprint};
use tokio::sync::oneshot;

use crate::backends::Backends;

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
    #[error("the key file {} is open to other users (mode {mode:04o}): whoever reads it, a build included, can sign as this builder; run `chmod 600 {}`", path.display(), path.display())]
    KeyFileMode { path: std::path::PathBuf, mode: u32 },
    #[error("build_user = {user:?}: {reason}")]
    BuildUser { user: String, reason: String },
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
    isolation::check_key_file(&config.key_path, config.build_user.as_ref())?;
    if let Some(user) = &config.build_user {
        isolation::check_can_switch(user)?;
        isolation::check_reachable(&config.work_dir, user)?;
        isolation::warn_unreachable_toolchain(&config.toolchain, user);
    }
    let tls = http::tls_config(config.ca_cert.as_deref())?;
    let jobs_dir = config.work_dir.join("jobs");
    let sources_dir = config.work_dir.join("sources");
    let spare_dirs = Arc::new(job::SpareDirs::new(jobs_dir.clone()));
    // Job directories left by an earlier process belong to jobs it can no longer report;
    // its cached sources stay (they are verified on use).
    let prepare = {
        let (jobs_dir, spare_dirs) = (jobs_dir.clone(), spare_dirs.clone());
        let (sources_dir, cache_bytes) = (sources_dir.clone(), config.limits.source_cache_bytes);
        let isolating = config.build_user.is_some();
        let set_mode = |path: &std::path::Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        };
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_dir_all(&jobs_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err((jobs_dir, e)),
                _ => {}
            }
            std::fs::create_dir_all(&jobs_dir)
                .and_then(|()| {
                    // Builds may pass through to their own directory, not list the others.
                    if isolating {
                        set_mode(&jobs_dir, 0o711)?;
                    }
                    spare_dirs.replenish()
                })
                .map_err(|e| (jobs_dir, e))?;
            let cache = source::SourceCache::open(&sources_dir, cache_bytes)
                .map_err(|e| (sources_dir.clone(), e))?;
            if isolating {
                set_mode(&sources_dir, 0o700).map_err(|e| (sources_dir, e))?;
            }
            Ok(cache)
        })
    };
    let sources = prepare
        .await
        .map_err(|e| (jobs_dir.clone(), std::io::Error::other(e)))
        .and_then(|r| r)
        .map_err(|(path, source)| BuilderError::WorkDir { path, source })?;

    let backends = Arc::new(Backends::new(config.connect_urls.clone()));
    let env = Rc::new(job::JobEnv {
        client: http::client(&tls),
        backends: backends.clone(),
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
        build_user: config.build_user.clone(),
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
        backends.clone(),
        config.name.clone(),
        identity.clone(),
        capabilities,
        http::client(&tls),
        supervisor.clone(),
        config.reconnect.clone(),
    )
    .start();
    supervisor.do_send(SetConnection(connection.recipient()));
    tracing::info!(fingerprint = %identity.fingerprint, urls = %config.connect_urls.join(","), "builder started");
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

/// Start-up checks that keep the signing key out of the builds' reach (SLSA Build L3: the
/// provenance signing key is not accessible to the build). See docs/builder.md, "The signing
/// key and the build".
pub mod isolation {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use crate::config::{BuildUser, ToolchainEnv};
    use crate::BuilderError;

    /// Refuses a key file that group or others may read or write, as OpenSSH refuses an
    /// unprotected private key; with a build user, also one that user owns.
    pub fn check_key_file(path: &Path, build_user: Option<&BuildUser>) -> Result<(), BuilderError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            BuilderError::Identity(crate::identity::IdentityError::Read {
                path: path.to_owned(),
                source: e,
            })
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(BuilderError::KeyFileMode {
                path: path.to_owned(),
                mode,
            });
        }
        if let Some(user) = build_user {
            if meta.uid() == user.uid {
                return Err(BuilderError::BuildUser {
                    user: user.name.clone(),
                    reason: format!(
                        "it owns the key file {}, so its builds could read it; give the key to the builder's user",
                        path.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Fails unless this process may change its user and groups (root, or CAP_SETUID and
    /// CAP_SETGID), so a misconfigured builder stops at start, not at its first job.
    pub fn check_can_switch(user: &BuildUser) -> Result<(), BuilderError> {
        const CAP_SETGID: u32 = 6;
        const CAP_SETUID: u32 = 7;
        let able = match effective_capabilities() {
            Some(caps) => caps & (1 << CAP_SETUID) != 0 && caps & (1 << CAP_SETGID) != 0,
            None => is_root(),
        };
        if able {
            return Ok(());
        }
        Err(BuilderError::BuildUser {
            user: user.name.clone(),
            reason: "the builder cannot switch users: run it as root or give it CAP_SETUID and CAP_SETGID (or unset build_user)".into(),
        })
    }

    /// `CapEff` of this process from `/proc/self/status`.
    fn effective_capabilities() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(line.trim(), 16).ok()
    }

    #[expect(unsafe_code, reason = "geteuid(2) has no safe wrapper in std")]
    fn is_root() -> bool {
        // SAFETY: geteuid cannot fail and takes no arguments.
        unsafe { libc::geteuid() == 0 }
    }

    /// The permission bits (of 0o7) `user` has on `meta`, by owner, group, then others.
    fn bits_for(meta: &std::fs::Metadata, user: &BuildUser) -> u32 {
        let mode = meta.mode();
        if meta.uid() == user.uid {
            (mode >> 6) & 0o7
        } else if meta.gid() == user.gid || user.groups.contains(&meta.gid()) {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        }
    }

    /// The first of `dir` and its existing ancestors that `user` cannot pass through.
    fn blocked_at(dir: &Path, user: &BuildUser) -> Option<(std::path::PathBuf, u32)> {
        dir.ancestors()
            .filter_map(|d| std::fs::metadata(d).ok().map(|m| (d, m)))
            .find(|(_, meta)| bits_for(meta, user) & 0o1 == 0)
            .map(|(d, meta)| (d.to_owned(), meta.mode() & 0o7777))
    }

    /// Builds run in `<work_dir>/jobs/…`: the build user must be able to pass through the
    /// work directory and every directory above it.
    pub fn check_reachable(work_dir: &Path, user: &BuildUser) -> Result<(), BuilderError> {
        match blocked_at(work_dir, user) {
            None => Ok(()),
            Some((dir, mode)) => Err(BuilderError::BuildUser {
                user: user.name.clone(),
                reason: format!(
                    "it cannot reach the work directory: {} (mode {mode:04o}) does not let it pass; allow it (e.g. chmod o+x) or choose another work_dir",
                    dir.display()
                ),
            }),
        }
    }

    /// Cargo and rustup under a home only the builder's user can enter fail every cargo
    /// recipe; said once at start, since other recipes may not need them.
    pub fn warn_unreachable_toolchain(toolchain: &ToolchainEnv, user: &BuildUser) {
        let homes = [&toolchain.cargo_home, &toolchain.rustup_home];
        for home in homes.into_iter().flatten() {
            if let Some((dir, mode)) = blocked_at(home, user) {
                tracing::warn!(
                    build_user = %user.name,
                    toolchain = %home.display(),
                    blocked = %dir.display(),
                    mode = format!("{mode:04o}"),
                    "the build user cannot reach this toolchain directory: cargo recipes will fail (install the toolchain where it can, e.g. /usr/local/cargo and /usr/local/rustup)"
                );
            }
        }
    }
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
