//! Assembles the backend: store, storage, actors and the HTTP server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use actix::Actor;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::actors::auth::Auth;
use crate::actors::log_sink::{LogLimits, LogSink};
use crate::actors::scheduler::{Scheduler, SchedulerSettings};
use crate::actors::session::{session_settings, SessionContext};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::http::{self, AppState};
use crate::job_feed::JobFeed;
use crate::metrics::Metrics;
use crate::registry::{FollowerParts, RegistryFollower};
use crate::storage::{FsStorage, S3Storage, Storage};
use crate::store::Store;

/// A started backend. Dropping it does not stop the server; call [`RunningServer::stop`].
pub struct RunningServer {
    pub addr: SocketAddr,
    pub public_url: String,
    pub backend_id: String,
    pub admin_token: String,
    pub store: Store,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The thread of the Scheduler, Auth and LogSink actors; stopped with the server so that
    /// nothing of this instance keeps acting on the database.
    /// `None` once stopped.
    actors: Option<actix::Arbiter>,
    /// Ends the open event streams and builder sessions at shutdown: a graceful stop would
    /// otherwise wait its whole timeout for connections that never end by themselves.
    job_feed: Arc<JobFeed>,
}

impl RunningServer {
    /// Stops accepting, ends event streams and builder sessions, waits for the server task,
    /// then stops the actors.
    pub async fn stop(mut self, graceful: bool) {
        // Accepting stops first (the command is sent at once), so nothing new opens while
        // the streams and builder sessions are told to end.
        let stopped = self.handle.stop(graceful);
        self.job_feed.close();
        stopped.await;
        let _ = (&mut self.server).await;
        Self::stop_actors(self.actors.take()).await;
    }

    /// Waits until the server stops: on SIGINT or SIGTERM gracefully, on SIGQUIT at once.
    /// The signals are handled here rather than by actix, so that the event streams end
    /// before the graceful stop starts waiting for open responses.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let result = tokio::select! {
            result = &mut self.server => result,
            graceful = shutdown_signal() => {
                let stopped = self.handle.stop(graceful);
                self.job_feed.close();
                stopped.await;
                (&mut self.server).await
            }
        };
        Self::stop_actors(self.actors.take()).await;
        result??;
        Ok(())
    }

    async fn stop_actors(actors: Option<actix::Arbiter>) {
        let Some(actors) = actors else { return };
        actors.stop();
        let _ = tokio::task::spawn_blocking(move || actors.join()).await;
    }
}

impl Drop for RunningServer {
    /// A server dropped without [`RunningServer::stop`] (a test that ends, an embedder that
    /// forgets) still stops its actors, so that nothing of it keeps acting on a database that
    /// may be gone, holding the process's store permits while it waits for connections.
    fn drop(&mut self) {
        if let Some(actors) = self.actors.take() {
            actors.stop();
        }
    }
}

/// Resolves with whether to stop gracefully once SIGINT, SIGTERM (graceful) or SIGQUIT
/// arrives. Never resolves if the handlers cannot be installed (the server then runs until
/// killed, as it would with no signal handling).
async fn shutdown_signal() -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::quit()),
    );
    let (Ok(mut interrupt), Ok(mut terminate), Ok(mut quit)) = handlers else {
        tracing::error!("installing signal handlers failed; stop the backend with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => true,
        _ = terminate.recv() => true,
        _ = quit.recv() => false,
    }
}

/// The admin token: from the configuration, or generated once and kept in the data directory
/// (mode 0600) so restarts keep it.
pub fn admin_token(config: &ServerConfig) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        // An empty token would match `Authorization: Bearer ` and grant admin rights.
        anyhow::ensure!(
            token.trim().len() >= 16,
            "the admin token must be at least 16 characters"
        );
        return Ok(token.clone());
    }
    let path = admin_token_path(&config.data_dir);
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let token = format!(
        "bfa_{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

pub fn admin_token_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("admin-token")
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

/// A start refused because of the backend id (issue 16 item 6).
#[derive(Debug, thiserror::Error)]
pub enum BackendIdError {
    /// The configuration names an id other than the one the database holds for the cluster.
    #[error(
        "the configured backend_id {configured:?} differs from the cluster's backend id \
         {stored:?} stored in the database: every replica must use the cluster's id; remove \
         the backend_id setting to use it (changing the cluster's id is done in the database, \
         see docs/scale-out.md)"
    )]
    ConflictsWithCluster { configured: String, stored: String },
}

/// The backend id this replica signs with: the cluster's, stored in the database by the first
/// backend to start (its configured `backend_id`, else its public URL). A configured id must
/// be the stored one, so no replica signs under a name the others would refuse.
async fn cluster_backend_id(
    store: &Store,
    configured: Option<String>,
    public_url: &str,
) -> anyhow::Result<String> {
    let candidate = configured.clone().unwrap_or_else(|| public_url.to_owned());
    let lookup = store.clone();
    let stored = tokio::task::spawn_blocking(move || lookup.cluster_backend_id(&candidate))
        .await?
        .context("reading the cluster's backend id")?;
    match configured {
        Some(configured) if configured != stored => {
            Err(BackendIdError::ConflictsWithCluster { configured, stored }.into())
        }
        Some(_) => Ok(stored),
        None => {
            if stored != public_url {
                tracing::info!("backend id {stored} (the cluster's, stored in the database)");
            }
            Ok(stored)
        }
    }
}

/// Starts the backend on the configured address and returns once it listens.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    // Embedders build a ServerConfig by hand; they get the same checks as `serve`.
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let admin_token = admin_token(&config)?;
    let database_url = config.database_url.clone();
    let pool_size = config.limits.db_pool_size;
    crate::offload::configure(usize::try_from(pool_size).unwrap_or(usize::MAX));
    let store = tokio::task::spawn_blocking(move || Store::open(&database_url, pool_size))
        .await?
        .context("opening the database")?;
    let storage: Arc<dyn Storage> = match &config.storage {
        crate::config::StorageConfig::Fs => {
            Arc::new(FsStorage::new(config.data_dir.join("blobs"))?)
        }
        crate::config::StorageConfig::S3(settings) => {
            let settings = settings.as_ref().clone();
            let storage =
                tokio::task::spawn_blocking(move || S3Storage::connect(&settings)).await??;
            tracing::info!("blobs in object storage: {}", storage.describe());
            Arc::new(storage)
        }
    };
    let metrics = Arc::new(Metrics::default());

    let listener = std::net::TcpListener::bind(config.bind)
        .with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let backend_id = cluster_backend_id(&store, config.backend_id.clone(), &public_url).await?;

    let job_feed = JobFeed::new(store.clone(), metrics.clone());
    let actors = actix::Arbiter::new();
    // Wake-ups between replicas sharing a PostgreSQL database (none on SQLite).
    let (bus, bus_listener) =
        crate::actors::replica_bus::ReplicaBus::for_database(&config.database_url);
    let log_sink = LogSink::new(
        store.clone(),
        storage.clone(),
        metrics.clone(),
        LogLimits {
            max_bytes_per_attempt: config.limits.max_log_bytes_per_job,
            max_line_bytes: config.limits.max_log_line_bytes,
            flush_interval: config.timings.log_flush_interval,
        },
    )
    .with_replica_bus(bus.clone());
    let log_sink = LogSink::start_in_arbiter(&actors.handle(), move |_| log_sink);
    let scheduler = Scheduler::new(
        store.clone(),
        SchedulerSettings {
            public_url: public_url.clone(),
            backend_id: backend_id.clone(),
            lease: config.timings.heartbeat_timeout + config.timings.reconnect_grace,
            reconnect_grace: config.timings.reconnect_grace,
            cancel_grace: config.timings.cancel_grace,
            sweep_interval: config.timings.sweep_interval,
            fair_share_window: config.scheduler.fair_share_window,
            reproduce_independence_label: config.scheduler.reproduce_independence_label.clone(),
        },
        metrics.clone(),
        log_sink.clone(),
        job_feed.clone(),
        storage.clone(),
    )
    .with_replica_bus(bus);
    let scheduler = Scheduler::start_in_arbiter(&actors.handle(), move |_| scheduler);
    if let Some(listener) = bus_listener {
        actors.spawn(listener.run(scheduler.clone(), log_sink.clone()));
    }
    let auth = Auth::new(
        store.clone(),
        backend_id.clone(),
        config.timings.challenge_ttl,
        metrics.clone(),
    );
    let auth = Auth::start_in_arbiter(&actors.handle(), move |_| auth);
    let registry = match config.registry.clone() {
        Some(settings) => {
            let tls = buildfleet_builder::http::tls_config(None)
                .context("the registry follower's TLS roots")?;
            let parts = FollowerParts {
                store: store.clone(),
                storage: storage.clone(),
                job_feed: job_feed.clone(),
                scheduler: scheduler.clone(),
            };
            let data_dir = config.data_dir.clone();
            Some(RegistryFollower::start_in_arbiter(
                &actors.handle(),
                move |_| {
                    let client = buildfleet_builder::http::client(&tls);
                    RegistryFollower::new(parts, settings, data_dir, client)
                },
            ))
        }
        None => None,
    };

    let project_events = crate::webhooks::ProjectEvents::new();
    let notifier_parts = (
        store.clone(),
        job_feed.clone(),
        job_feed.subscribe(),
        project_events.clone(),
    );
    let notifier_settings = crate::webhooks::NotifierSettings {
        public_url: public_url.clone(),
        retry_base: config.timings.webhook_retry_base,
    };
    let webhook_tls =
        buildfleet_builder::http::tls_config(None).context("the webhook sender's TLS roots")?;
    crate::webhooks::Notifier::start_in_arbiter(&actors.handle(), move |_| {
        let (store, feed, changes, hub) = notifier_parts;
        let client = buildfleet_builder::http::client(&webhook_tls);
        crate::webhooks::Notifier::new(store, feed, changes, hub, client, notifier_settings)
    });
    let janitor = crate::janitor::Janitor::new(
        store.clone(),
        storage.clone(),
        metrics.clone(),
        crate::janitor::JanitorSettings {
            interval: config.timings.janitor_interval,
        },
    );
    let janitor = crate::janitor::Janitor::start_in_arbiter(&actors.handle(), move |_| janitor);
    let session_context = web::Data::new(SessionContext {
        auth,
        scheduler: scheduler.clone(),
        log_sink: log_sink.clone(),
        backend_id: backend_id.clone().into(),
        settings: session_settings(&config),
        metrics: metrics.clone(),
        handshake_timeout: config.timings.handshake_timeout,
        admission: crate::actors::admission::Admission::new(
            config.limits.max_unauthenticated_connections,
            config.limits.max_unauthenticated_per_address,
        ),
    });
    let json_limit = config.limits.max_json_body_bytes;
    let tls = config.tls.clone();
    let config = Arc::new(config);
    let state = web::Data::new(AppState {
        store: store.clone(),
        storage,
        metrics,
        scheduler,
        log_sink,
        job_feed: job_feed.clone(),
        config,
        public_url: public_url.clone(),
        admin_token: admin_token.clone(),
        registry,
        project_events,
        janitor,
    });

    let server =
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(session_context.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(json_limit)
                        .error_handler(|e, _| {
                            ApiError::BadRequest(format!("invalid JSON body: {e}")).into()
                        }),
                )
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("invalid query: {e}")).into()
                }))
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("invalid path: {e}")).into()
                }))
                .wrap(
                    actix_web::middleware::Logger::new("%a \"%r\" %s %b %Dms")
                        .log_target("buildfleet::http"),
                )
                .configure(http::routes)
                .configure(crate::dashboard::routes)
                .default_service(web::to(crate::dashboard::not_found))
        })
        // Builders' frames are small and come back to back; Nagle would hold each behind
        // the peer's delayed ACK (up to 40 ms).
        .tcp_nodelay(true)
        .shutdown_timeout(10)
        // `RunningServer::wait` handles them: event streams end first.
        .disable_signals();
    let server = match tls {
        Some((cert, key)) => {
            server.listen_rustls_0_23(listener, crate::tls::server_config(&cert, &key)?)?
        }
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    tracing::info!(%addr, %public_url, "backend listening");
    Ok(RunningServer {
        addr,
        public_url,
        backend_id,
        admin_token,
        store,
        handle,
        server,
        actors: Some(actors),
        job_feed,
    })
}
