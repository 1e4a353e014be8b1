//! Errors in a browser: a dashboard page that fails, and an unknown address that is not under
//! `/api/`, get an HTML page with the navigation and a way on, not the API's JSON. The API
//! keeps its JSON error shape everywhere under `/api/`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use maud::html;

use super::pages::page;
use crate::error::ApiError;

/// A dashboard page's error: the API's error, shown as a page.
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        PageError(error)
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = &self.0 {
            tracing::error!(error = format!("{e:#}"), "internal error serving a page");
        }
        render(self.status_code(), &self.0.to_string())
    }
}

/// The page for an error: what happened, in words, and where to go from here.
fn render(status: StatusCode, message: &str) -> HttpResponse {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (status.as_u16()) " · " (title) }
        p.error-message { (message) }
        p {
            "Go to the " a href="/" { "overview" } ", the " a href="/jobs" { "jobs" }
            " or the " a href="/builders" { "builders" } "."
        }
    };
    let mut response = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.insert_header((header::RETRY_AFTER, "1"));
    }
    response
        .content_type("text/html; charset=utf-8")
        .body(page(title, body).into_string())
}

/// The answer for an address no route serves: JSON under `/api/` and for clients that do
/// not ask for HTML, a page for a browser.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let error = ApiError::NotFound(format!("{:?}", req.path()));
    if req.path().starts_with("/api/") || !wants_html(&req) {
        return error.error_response();
    }
    render(StatusCode::NOT_FOUND, &format!("no page at {}", req.path()))
}

/// Whether the client asked for HTML (a browser's `Accept` names `text/html`).
fn wants_html(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}
