//! The web dashboard: server-rendered HTML (maud) over the same store and scheduler as the
//! API, with one small script for the live log, the admin token and state-changing buttons.
//! Reading needs no token for public projects; a private project's jobs show to a browser
//! whose session cookie (`session.rs`, set from the script's token) may see them. Every
//! change goes through the token-checked API.
//!
//! `pages.rs` holds the layout, the overview and the job pages; `job_summary.rs` and
//! `job_log.rs` the job page's head and log pane; `builders_page.rs` and `submit_page.rs`
//! the builders page (cards, admitting keys, enrolment tokens) and the submit form;
//! `projects_page.rs` and `tokens_page.rs` the projects (jobs, fair share, private builders)
//! and the API tokens the visitor's token manages; `webhooks_page.rs` the projects' storage,
//! and to a project's admin its webhooks and the forms that change them and its retention.

mod builders_page;
mod chain;
mod crates_page;
mod error_page;
mod job_log;
mod job_summary;
mod pages;
mod projects_page;
mod reproduction;
mod session;
mod submit_page;
mod tokens_page;
mod waiting;
mod webhooks_page;

pub use error_page::not_found;

use actix_web::{web, HttpResponse};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(pages::overview))
        .route("/builders", web::get().to(builders_page::builders))
        .route("/jobs", web::get().to(pages::jobs))
        .route("/jobs/{id}", web::get().to(pages::job))
        .route("/submit", web::get().to(submit_page::submit))
        .route("/projects", web::get().to(projects_page::projects))
        .route("/tokens", web::get().to(tokens_page::tokens))
        .route("/crates/{name}", web::get().to(crates_page::crate_page))
        .route("/session", web::post().to(session::set))
        .route("/registry", web::get().to(crates_page::registry_page))
        .route("/webhooks", web::get().to(webhooks_page::overview))
        .route(
            "/projects/{organisation}/{project}/webhooks",
            web::get().to(webhooks_page::project_page),
        )
        .route("/static/app.css", web::get().to(css))
        .route("/static/app.js", web::get().to(js));
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .body(include_str!("../../assets/app.css"))
}

async fn js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .body(include_str!("../../assets/app.js"))
}
