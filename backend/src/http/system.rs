//! Health, metrics and the allowed-signers file.

use actix_web::{web, HttpResponse};
use buildfleet_protocol::signing;

use crate::error::{blocking, ApiError};
use crate::http::AppState;
use crate::metrics::StoreGauges;

/// `GET /healthz`: 200 when the database answers, 503 otherwise.
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    blocking(move || {
        store
            .ping()
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    })
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })))
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let gauges = blocking(move || {
        let by_state = store.count_jobs_by_state()?;
        Ok(StoreGauges {
            queue_depth: store.queue_depth()?,
            jobs_by_state: by_state.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&gauges)))
}

/// `GET /api/v1/allowed_signers`: every admitted builder's key, for `ssh-keygen -Y verify`.
/// Disabled builders stay listed: what they signed while trusted stays verifiable.
pub async fn allowed_signers(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let builders = blocking(move || Ok(store.list_builders()?)).await?;
    let mut body = String::new();
    for builder in builders {
        let line = signing::parse_public_key(&builder.public_key)
            .and_then(|key| signing::allowed_signers_line(&builder.name, &key));
        match line {
            Ok(line) => {
                body.push_str(&line);
                body.push('\n');
            }
            // Left out (a verifier then refuses that builder's statements) and logged.
            Err(e) => {
                tracing::error!(builder = %builder.name, error = %e, "stored key cannot be served")
            }
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(body))
}
