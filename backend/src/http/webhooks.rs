//! A project's webhooks, their delivery log, and its event stream:
//!
//! - `POST/GET /api/v1/projects/{organisation}/{project}/webhooks`, `DELETE …/webhooks/{id}`,
//!   `GET …/webhooks/{id}/deliveries`: the project's admin (the admin token or an admin token
//!   of the project).
//! - `GET …/events`: the project's job notifications as server-sent events (the bodies the
//!   webhooks get), for whoever may read the project. Ids are `<epoch>:<seq>`; a reconnect
//!   with `Last-Event-ID` replays what it missed from the recent notifications, or gets a
//!   `reset` event when they are gone (or the server restarted).

use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse;
use buildfleet_api as api;
use tokio::sync::broadcast::error::RecvError;

use crate::error::{blocking, ApiError};
use crate::http::auth::Access;
use crate::http::events::{last_event_id, stream};
use crate::http::AppState;
use crate::store::{Delivery, NewWebhook, Project, ProjectId, TokenScope, Webhook, WEBHOOK_EVENTS};
use crate::webhooks::{ProjectEvent, Replay};

/// Longest webhook URL, in bytes.
const MAX_URL_BYTES: usize = 2048;
/// Bounds of a chosen secret, in bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=256;

/// The project named in the path, or the 404 of one that does not exist.
pub async fn path_project(
    state: &AppState,
    organisation: &str,
    name: &str,
) -> Result<Project, ApiError> {
    let lookup = format!("{organisation}/{name}");
    let store = state.store.clone();
    blocking(move || {
        store
            .project_by_slug(&lookup)?
            .ok_or_else(|| ApiError::NotFound(format!("project {lookup}")))
    })
    .await
}

/// The project of the path, if the caller may administer it (404 if it may not see it).
async fn administered(
    req: &HttpRequest,
    state: &AppState,
    organisation: &str,
    name: &str,
) -> Result<Project, ApiError> {
    let access = Access::of(req, state).await?;
    let project = path_project(state, organisation, name).await?;
    access.require_act(
        project.id,
        TokenScope::Admin,
        ApiError::NotFound(format!("project {organisation}/{name}")),
    )?;
    Ok(project)
}

fn check_url(url: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("webhook url {url:?} {why}"));
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::BadRequest(format!(
            "webhook url is longer than {MAX_URL_BYTES} bytes"
        )));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("contains whitespace or control characters"));
    }
    let uri: awc::http::Uri = url
        .parse()
        .map_err(|e| bad(&format!("is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(())
}

fn check_events(events: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let Some(events) = events else {
        return Ok(WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect());
    };
    if events.is_empty() {
        return Err(ApiError::BadRequest(
            "events is empty: choose some of queued, started, finished (or leave it out for all)"
                .into(),
        ));
    }
    if let Some(unknown) = events
        .iter()
        .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "event {unknown:?}: use queued, started or finished"
        )));
    }
    // The canonical order, each once.
    Ok(WEBHOOK_EVENTS
        .iter()
        .filter(|e| events.iter().any(|x| x == *e))
        .map(|e| (*e).to_owned())
        .collect())
}

fn check_secret(secret: Option<String>) -> Result<String, ApiError> {
    match secret {
        None => Ok(format!(
            "whsec_{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        )),
        Some(secret) => {
            if !SECRET_BYTES.contains(&secret.len())
                || !secret.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ApiError::BadRequest(format!(
                    "secret must be {} to {} printable ASCII characters without spaces \
                     (or left out to have one generated)",
                    SECRET_BYTES.start(),
                    SECRET_BYTES.end()
                )));
            }
            Ok(secret)
        }
    }
}

pub fn webhook_view(project: &Project, hook: Webhook) -> api::notifications::Webhook {
    api::notifications::Webhook {
        id: hook.id,
        project: project.slug(),
        url: hook.url,
        events: hook.events,
        enabled: hook.enabled,
        created_at: hook.created_at,
    }
}

pub fn delivery_view(d: Delivery) -> api::notifications::Delivery {
    let status = if d.delivered_at.is_some() {
        "delivered"
    } else if d.next_attempt_at.is_some() {
        "pending"
    } else {
        "failed"
    };
    api::notifications::Delivery {
        id: d.id,
        webhook: d.webhook,
        job: d.job.0,
        job_attempt: d.job_attempt,
        event: d.event,
        status: status.into(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error,
        delivered_at: d.delivered_at,
        created_at: d.created_at,
        tries: d
            .tries
            .into_iter()
            .map(|t| api::notifications::DeliveryTry {
                attempt: t.attempt,
                at: t.at,
                status: t.status,
                error: t.error,
                duration_ms: t.duration_ms,
            })
            .collect(),
    }
}

/// `POST /api/v1/projects/{organisation}/{project}/webhooks`.
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Json<api::notifications::CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let (organisation, name) = path.into_inner();
    let project = administered(&req, &state, &organisation, &name).await?;
    let body = body.into_inner();
    check_url(&body.url)?;
    let events = check_events(body.events)?;
    let secret = check_secret(body.secret)?;
    let new = NewWebhook {
        project: project.id,
        url: body.url,
        secret,
        events,
        enabled: body.enabled,
    };
    let store = state.store.clone();
    let created = blocking(move || Ok(store.create_webhook(&new)?)).await?;
    let secret = created.secret.clone();
    Ok(
        HttpResponse::Created().json(api::notifications::CreatedWebhook {
            webhook: webhook_view(&project, created),
            secret,
        }),
    )
}

/// `GET /api/v1/projects/{organisation}/{project}/webhooks`.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (organisation, name) = path.into_inner();
    let project = administered(&req, &state, &organisation, &name).await?;
    let store = state.store.clone();
    let id = project.id;
    let hooks = blocking(move || Ok(store.webhooks(id)?)).await?;
    Ok(HttpResponse::Ok().json(api::notifications::WebhookList {
        webhooks: hooks
            .into_iter()
            .map(|h| webhook_view(&project, h))
            .collect(),
    }))
}

fn parse_webhook_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::BadRequest(format!("webhook id {raw:?} is not a positive integer"))
    })
}

/// `DELETE /api/v1/projects/{organisation}/{project}/webhooks/{id}`.
pub async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (organisation, name, raw) = path.into_inner();
    let id = parse_webhook_id(&raw)?;
    let project = administered(&req, &state, &organisation, &name).await?;
    let store = state.store.clone();
    let project_id = project.id;
    let removed = blocking(move || Ok(store.delete_webhook(project_id, id)?)).await?;
    if removed {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!(
            "webhook {id} of project {}",
            project.slug()
        )))
    }
}

/// `GET /api/v1/projects/{organisation}/{project}/webhooks/{id}/deliveries`: the newest
/// deliveries first, each with its tries.
pub async fn deliveries(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (organisation, name, raw) = path.into_inner();
    let id = parse_webhook_id(&raw)?;
    let project = administered(&req, &state, &organisation, &name).await?;
    let store = state.store.clone();
    let project_id = project.id;
    let found = blocking(move || {
        if store.webhook(project_id, id)?.is_none() {
            return Ok(None);
        }
        Ok(Some(store.webhook_deliveries(id)?))
    })
    .await?;
    let Some(list) = found else {
        return Err(ApiError::NotFound(format!(
            "webhook {id} of project {}",
            project.slug()
        )));
    };
    Ok(HttpResponse::Ok().json(api::notifications::DeliveryList {
        deliveries: list.into_iter().map(delivery_view).collect(),
    }))
}

fn notification_event(event: &ProjectEvent, epoch: &str) -> sse::Data {
    // The API's bodies always serialise; an empty object is never sent in practice.
    let data = serde_json::to_string(&event.notification).unwrap_or_else(|_| "{}".into());
    sse::Data::new(data)
        .event(event.notification.event.clone())
        .id(format!("{epoch}:{}", event.seq))
}

fn parse_stream_id(raw: &str) -> Result<(String, u64), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "Last-Event-ID {raw:?}: expected <epoch>:<seq> as sent by this stream"
        ))
    };
    let (epoch, seq) = raw.split_once(':').ok_or_else(bad)?;
    if epoch.is_empty() || epoch.len() > 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((epoch.to_owned(), seq.parse().map_err(|_| bad())?))
}

/// `GET /api/v1/projects/{organisation}/{project}/events`.
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<impl Responder, ApiError> {
    let (organisation, name) = path.into_inner();
    let resume = last_event_id(&req)?
        .map(|raw| parse_stream_id(&raw))
        .transpose()?;
    let access = Access::of(&req, &state).await?;
    let project = path_project(&state, &organisation, &name).await?;
    access.require_visible(
        project.id,
        ApiError::NotFound(format!("project {organisation}/{name}")),
    )?;
    let hub = state.project_events.clone();
    let mut events = hub.subscribe();
    let replay = resume.map(|(epoch, seq)| hub.since(&epoch, seq));
    let epoch = hub.epoch().to_owned();
    let wanted: ProjectId = project.id;
    Ok(stream(state.job_feed.clone(), move |out| async move {
        let mut last_seq = 0;
        match replay {
            None => {}
            Some(Replay::Gap { last }) => {
                let reset = sse::Data::new(
                    serde_json::json!({
                        "reason": "notifications since Last-Event-ID are no longer kept (or the server restarted): re-read GET /api/v1/jobs"
                    })
                    .to_string(),
                )
                .event("reset")
                .id(format!("{epoch}:{last}"));
                out.send(reset).await?;
                last_seq = last;
            }
            Some(Replay::Events(list)) => {
                for event in list {
                    last_seq = event.seq;
                    if event.project == wanted {
                        out.send(notification_event(&event, &epoch)).await?;
                    }
                }
            }
        }
        loop {
            match events.recv().await {
                Ok(event) => {
                    if event.seq <= last_seq {
                        continue;
                    }
                    last_seq = event.seq;
                    if event.project == wanted {
                        out.send(notification_event(&event, &epoch)).await?;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let reset = sse::Data::new(
                        serde_json::json!({
                            "reason": format!("this stream fell {missed} notifications behind: re-read GET /api/v1/jobs")
                        })
                        .to_string(),
                    )
                    .event("reset");
                    out.send(reset).await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("https://example.com/a?b=c").is_ok());
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "http://",
            "http://exa mple.com/",
            "javascript:alert(1)",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_url(&format!("http://x/{}", "a".repeat(MAX_URL_BYTES))).is_err());
    }

    #[test]
    fn events_are_checked_and_ordered() {
        assert_eq!(check_events(None).unwrap().len(), 3);
        assert_eq!(
            check_events(Some(vec![
                "finished".into(),
                "queued".into(),
                "queued".into()
            ]))
            .unwrap(),
            vec!["queued".to_owned(), "finished".to_owned()]
        );
        assert!(check_events(Some(vec![])).is_err());
        assert!(check_events(Some(vec!["assigned".into()])).is_err());
    }

    #[test]
    fn secrets_are_checked_or_generated() {
        assert!(check_secret(None).unwrap().starts_with("whsec_"));
        assert!(check_secret(Some("short".into())).is_err());
        assert!(check_secret(Some("with a space in it here".into())).is_err());
        assert_eq!(
            check_secret(Some("0123456789abcdef".into())).unwrap(),
            "0123456789abcdef"
        );
    }
}
