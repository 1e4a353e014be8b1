//! The web dashboard: server-rendered HTML (maud) over the same store and scheduler as the
//! API, with one small script for the live log, the admin token and state-changing buttons.
//! Reading needs no token; every change goes through the token-checked API.

mod error_page;
mod pages;
mod waiting;

pub use error_page::not_found;

use actix_web::{web, HttpResponse};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(pages::overview))
        .route("/builders", web::get().to(pages::builders))
        .route("/jobs", web::get().to(pages::jobs))
        .route("/jobs/{id}", web::get().to(pages::job))
        .route("/submit", web::get().to(pages::submit))
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
