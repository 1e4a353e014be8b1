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

/// `GET /api/v1/allowed_signers`: every key of every admitted builder, for `ssh-keygen -Y
/// verify`, each limited to its lifetime (`valid-after`, and `valid-before` once rotated
/// out), so a statement checked at its signing time (`-Overify-time=`) verifies with the key
/// that signed it. Revoked keys are left out: what they signed no longer verifies. Disabled
/// builders stay listed: what they signed while trusted stays verifiable.
pub async fn allowed_signers(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let keys = blocking(move || Ok(store.all_builder_keys()?)).await?;
    let mut body = String::new();
    for (name, key) in keys.into_iter().filter(|(_, key)| !key.is_revoked()) {
        let validity = validity_secs(key.valid_after, key.valid_before);
        let line = signing::parse_public_key(&key.public_key)
            .and_then(|public| signing::allowed_signers_line_within(&name, &public, validity));
        match line {
            Ok(line) => {
                body.push_str(&line);
                body.push('\n');
            }
            // Left out (a verifier then refuses that key's statements) and logged.
            Err(e) => {
                tracing::error!(builder = %name, fingerprint = %key.fingerprint, error = %e, "stored key cannot be served")
            }
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(body))
}

/// A key's lifetime in whole seconds for OpenSSH, which reads both ends inclusively and
/// refuses a line whose end is not after its start: the start rounded down, the end rounded
/// up (and at least a second after the start), so no moment of the lifetime is lost.
pub fn validity_secs(valid_after_ms: i64, valid_before_ms: Option<i64>) -> signing::KeyValidity {
    let after = valid_after_ms.div_euclid(1000);
    signing::KeyValidity {
        after: Some(after),
        before: valid_before_ms
            .map(|ms| (ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0)).max(after + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::validity_secs;

    #[test]
    fn lifetimes_round_outwards_and_never_end_before_they_start() {
        let v = validity_secs(1_000_500, Some(2_000_200));
        assert_eq!((v.after, v.before), (Some(1000), Some(2001)));
        let v = validity_secs(1_000_000, Some(2_000_000));
        assert_eq!((v.after, v.before), (Some(1000), Some(2000)));
        // Rotated within the second it was admitted in.
        let v = validity_secs(5_000_100, Some(5_000_900));
        assert_eq!((v.after, v.before), (Some(5000), Some(5001)));
        let v = validity_secs(5_000_000, Some(5_000_000));
        assert_eq!((v.after, v.before), (Some(5000), Some(5001)));
        assert_eq!(validity_secs(7_000, None).before, None);
    }
}
