//! The REST API under `/api/v1`, plus `/healthz` and `/metrics`. Handlers are grouped by
//! resource; every error goes through [`crate::error::ApiError`].

pub mod artifact_lookup;
pub mod artifacts;
pub mod auth;
pub mod builders;
pub mod enrolment;
pub mod events;
pub mod jobs;
pub mod logs;
pub mod projects;
pub mod registry;
pub mod retention;
pub mod sources;
pub mod streaming;
pub mod system;
pub mod tokens;
pub mod views;
pub mod webhooks;

use std::sync::Arc;

use actix::Addr;
use actix_web::web;

use crate::actors::log_sink::LogSink;
use crate::actors::scheduler::Scheduler;
use crate::config::ServerConfig;
use crate::job_feed::JobFeed;
use crate::metrics::Metrics;
use crate::registry::RegistryFollower;
use crate::storage::Storage;
use crate::store::Store;

/// Shared state of every request handler.
pub struct AppState {
    pub store: Store,
    pub storage: Arc<dyn Storage>,
    pub metrics: Arc<Metrics>,
    pub scheduler: Addr<Scheduler>,
    pub log_sink: Addr<LogSink>,
    /// Committed job state changes, for the event streams; also ends them at shutdown.
    pub job_feed: Arc<JobFeed>,
    pub config: Arc<ServerConfig>,
    /// Base URL for links handed to builders and clients (no trailing slash).
    pub public_url: String,
    pub admin_token: String,
    /// The registry follower, when `[registry]` is configured.
    pub registry: Option<Addr<RegistryFollower>>,
    /// Job notifications by project, for the project event streams.
    pub project_events: Arc<crate::webhooks::ProjectEvents>,
    /// Deletes expired artifacts and logs; asked to refresh the usage after a delete.
    pub janitor: Addr<crate::janitor::Janitor>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(system::healthz))
        .route("/metrics", web::get().to(system::metrics))
        .service(
            web::scope("/api/v1")
                .route(
                    "/builders/connect",
                    web::get().to(crate::actors::session::connect),
                )
                .route("/builders", web::get().to(builders::list))
                .route("/builders", web::post().to(builders::admit))
                .route("/builders/{id}", web::get().to(builders::get))
                .route("/builders/{id}", web::delete().to(builders::remove))
                .route(
                    "/builders/{id}/projects",
                    web::put().to(builders::set_projects),
                )
                .route("/builders/{id}/keys", web::get().to(builders::keys))
                .route("/builders/{id}/keys", web::post().to(builders::rotate_key))
                // A fingerprint's base64 may hold '/': the segment spans them.
                .route(
                    "/builders/{id}/keys/{fingerprint:.+}/revoke",
                    web::post().to(builders::revoke_key),
                )
                .route("/builders/{id}/{action}", web::post().to(builders::act))
                .route("/allowed_signers", web::get().to(system::allowed_signers))
                .route(
                    "/artifacts/by-sha256/{sha256}",
                    web::get().to(artifact_lookup::by_sha256),
                )
                .route("/enrolment-tokens", web::get().to(enrolment::list))
                .route("/enrolment-tokens", web::post().to(enrolment::create))
                .route(
                    "/enrolment-tokens/{id}",
                    web::delete().to(enrolment::revoke),
                )
                .route("/enrol", web::post().to(enrolment::enrol))
                .route("/sources", web::post().to(sources::upload))
                .route("/sources/{sha256}", web::get().to(sources::download))
                .route("/registry", web::get().to(registry::status))
                .route("/registry/backfill", web::post().to(registry::backfill))
                .route("/crates/{name}", web::get().to(registry::crate_detail))
                .route(
                    "/crates/{name}/{version}/{target}/{file}",
                    web::get().to(registry::binstall),
                )
                .route("/projects", web::get().to(projects::list))
                .route("/projects", web::post().to(projects::create))
                .route(
                    "/projects/{organisation}/{project}",
                    web::get().to(projects::get),
                )
                .route(
                    "/projects/{organisation}/{project}",
                    web::patch().to(projects::update),
                )
                .route("/tokens", web::get().to(tokens::list))
                .route("/tokens", web::post().to(tokens::create))
                .route("/tokens/{id}", web::delete().to(tokens::revoke))
                .route(
                    "/projects/{organisation}/{project}/webhooks",
                    web::post().to(webhooks::create),
                )
                .route(
                    "/projects/{organisation}/{project}/webhooks",
                    web::get().to(webhooks::list),
                )
                .route(
                    "/projects/{organisation}/{project}/webhooks/{id}",
                    web::delete().to(webhooks::remove),
                )
                .route(
                    "/projects/{organisation}/{project}/webhooks/{id}/deliveries",
                    web::get().to(webhooks::deliveries),
                )
                .route(
                    "/projects/{organisation}/{project}/events",
                    web::get().to(webhooks::events),
                )
                .route(
                    "/projects/{organisation}/{project}/retention",
                    web::get().to(retention::get),
                )
                .route(
                    "/projects/{organisation}/{project}/retention",
                    web::put().to(retention::set),
                )
                .route(
                    "/projects/{organisation}/{project}/retention",
                    web::patch().to(retention::set),
                )
                .route(
                    "/jobs/{id}/artifacts",
                    web::delete().to(retention::delete_artifacts),
                )
                .route("/jobs", web::get().to(jobs::list))
                .route("/jobs", web::post().to(jobs::submit))
                .route("/jobs/{id}", web::get().to(jobs::get))
                .route("/jobs/{id}/cancel", web::post().to(jobs::cancel))
                .route("/jobs/{id}/retry", web::post().to(jobs::retry))
                .route("/jobs/{id}/boost", web::post().to(jobs::boost))
                .route("/jobs/{id}/plan", web::get().to(jobs::plan))
                .route("/jobs/{id}/log", web::get().to(logs::whole))
                .route("/jobs/{id}/log/stream", web::get().to(logs::stream))
                .route("/jobs/{id}/events", web::get().to(events::job))
                .route("/job-events", web::get().to(events::all))
                .route("/jobs/{id}/artifacts", web::get().to(artifacts::list))
                .route(
                    "/jobs/{id}/artifacts/{name}",
                    web::get().to(artifacts::download),
                )
                .route("/jobs/{id}/statement", web::get().to(artifacts::statement))
                .route(
                    "/jobs/{id}/statement.sig",
                    web::get().to(artifacts::statement_signature),
                )
                .route(
                    "/jobs/{id}/statement.dsse",
                    web::get().to(artifacts::statement_envelope),
                )
                .route(
                    "/jobs/{id}/signatures",
                    web::get().to(artifacts::statement_signatures),
                )
                .route(
                    "/jobs/{id}/attempts/{attempt}/artifacts/{name}",
                    web::put().to(artifacts::upload),
                ),
        );
}
