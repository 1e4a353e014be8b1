//! Job state pushed as server-sent events (served with `actix-web-lab`'s `sse`):
//!
//! - `GET /api/v1/jobs/{id}/events`: one job. The first event is its current state, then each
//!   change; a terminal state comes as `end` and the stream closes after it. Event ids are
//!   `<attempt>:<state>`; a reconnect with `Last-Event-ID` gets the current state only if it
//!   is newer than that id (and always the `end` of a finished job).
//! - `GET /api/v1/job-events?state=&recipe=`: every job's changes, filtered, for tools and the
//!   dashboard; it never ends by itself. Ids are `<epoch>:<seq>` (the epoch names the server
//!   process); a reconnect replays what it missed from the feed's recent changes, or gets a
//!   `reset` event when those are gone (or the server restarted): then re-read `GET /jobs`.
//!
//! The changes come from [`crate::job_feed::JobFeed`], pushed where transitions commit; no
//! stream polls the database. Every stream here and the live log end when the server stops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, Responder};
use actix_web_lab::sse;
use buildfleet_api as api;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use crate::error::{blocking, ApiError};
use crate::http::auth::Access;
use crate::http::jobs::parse_job_id;
use crate::http::AppState;
use crate::job_feed::{position, JobChange, JobFeed, Published, Since, StreamGuard};
use crate::store::{Attempt, Job, JobId, JobState};

/// Comment lines keep idle streams open through proxies. They are also how a vanished client
/// is noticed: actix ends a response only when a write to its socket fails (a read of EOF
/// may be a half-close), which is the second write after the client left; so an idle stream's
/// task, and the LogSink subscription it holds, outlive their client by at most twice this.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// Events encoded ahead of a slow client.
const OUT_QUEUE: usize = 64;

/// The client went away (or the server is stopping): the stream's work ends.
#[derive(Debug)]
pub struct Gone;

/// Where a stream's task sends its events.
pub struct Out {
    tx: mpsc::Sender<sse::Event>,
}

impl Out {
    pub async fn send(&self, event: impl Into<sse::Event>) -> Result<(), Gone> {
        self.tx.send(event.into()).await.map_err(|_| Gone)
    }
}

/// An SSE response fed by `body`, run as its own task: it stops when `body` returns, when the
/// client goes away (the response, and with it the receiver, is dropped) or when the server
/// stops; the response ends with it.
pub fn stream<F, Fut>(feed: Arc<JobFeed>, body: F) -> impl Responder
where
    F: FnOnce(Out) -> Fut + 'static,
    Fut: Future<Output = Result<(), Gone>> + 'static,
{
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let closing = feed.closing();
    let guard = StreamGuard::new(feed);
    let watcher = tx.clone();
    actix_rt::spawn(async move {
        let _guard = guard;
        tokio::select! {
            _ = closing.cancelled() => {}
            _ = watcher.closed() => {}
            _ = body(Out { tx }) => {}
        }
    });
    sse::Sse::from_infallible_receiver(rx).with_keep_alive(KEEPALIVE)
}

/// The `Last-Event-ID` header, if the client sent a non-empty one.
pub fn last_event_id(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    match req.headers().get("Last-Event-ID") {
        None => Ok(None),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is not visible ASCII".into()))?;
            let text = text.trim();
            Ok((!text.is_empty()).then(|| text.to_owned()))
        }
    }
}

fn json_data(value: &impl Serialize) -> sse::Data {
    // The API's bodies always serialise; an empty object is never sent in practice.
    sse::Data::new(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

/// The data of a `state` event.
fn state_data(change: &JobChange) -> sse::Data {
    json_data(&api::JobChange::from(change)).event("state")
}

/// The `end` event of a finished job: the terminal change, its state repeated as the outcome.
pub fn end_event(change: &JobChange) -> sse::Data {
    json_data(&api::JobEnd {
        change: change.into(),
        outcome: change.state,
    })
    .event("end")
}

/// A job the caller may see (404 as for a missing job otherwise).
pub async fn read_job(state: &AppState, access: &Access, id: JobId) -> Result<Job, ApiError> {
    let store = state.store.clone();
    let access = access.clone();
    blocking(move || access.visible_job(store.job(id)?, id)).await
}

/// What one receive from the feed means for a stream of one job.
pub enum Next {
    Change(JobChange),
    /// Another job's change.
    Other,
    /// The feed is gone, or the job is.
    Closed,
}

/// Interprets one receive from the feed for a stream of `job`. A stream that lagged behind
/// the feed re-reads the job (once, not on a timer).
pub async fn resolve(
    feed: &JobFeed,
    received: Result<Arc<Published>, RecvError>,
    job: JobId,
) -> Next {
    match received {
        Ok(published) if published.change.job == job => Next::Change(published.change.clone()),
        Ok(_) => Next::Other,
        Err(RecvError::Lagged(_)) => {
            let store = feed.store().clone();
            match crate::offload::store(move || store.job(job)).await {
                Ok(Ok(Some(found))) => Next::Change(JobChange::of(&found)),
                Ok(Ok(None)) => Next::Closed,
                Ok(Err(e)) => {
                    tracing::warn!(%job, error = %e, "re-reading a job for its stream failed");
                    Next::Closed
                }
                Err(_) => Next::Closed,
            }
        }
        Err(RecvError::Closed) => Next::Closed,
    }
}

/// The next change of `job` on the feed; `None` once there will be none.
pub async fn next_change(
    feed: &JobFeed,
    changes: &mut broadcast::Receiver<Arc<Published>>,
    job: JobId,
) -> Option<JobChange> {
    loop {
        match resolve(feed, changes.recv().await, job).await {
            Next::Change(change) => return Some(change),
            Next::Other => {}
            Next::Closed => return None,
        }
    }
}

/// Parses a one-job stream's id, `<attempt>:<state>`.
fn parse_state_id(raw: &str) -> Result<(Attempt, JobState), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "Last-Event-ID {raw:?}: expected <attempt>:<state> as sent by this stream, e.g. 1:running"
        ))
    };
    let (attempt, state) = raw.split_once(':').ok_or_else(bad)?;
    let attempt: i32 = attempt.parse().map_err(|_| bad())?;
    if attempt < 1 {
        return Err(bad());
    }
    let state: JobState = state.parse().map_err(|_| bad())?;
    Ok((Attempt(attempt), state))
}

/// `GET /api/v1/jobs/{id}/events`.
pub async fn job(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<impl Responder, ApiError> {
    let access = Access::of(&req, &state).await?;
    let id = parse_job_id(&path)?;
    // Before the resume id is looked at, so a hidden job is told nothing about it.
    read_job(&state, &access, id).await?;
    let resume = last_event_id(&req)?
        .map(|raw| parse_state_id(&raw))
        .transpose()?;
    let feed = state.job_feed.clone();
    // Before the read: a change committed after it is on the receiver.
    let mut changes = feed.subscribe();
    let found = read_job(&state, &access, id).await?;
    let first = JobChange::of(&found);
    if let Some((attempt, seen)) = resume {
        if position(attempt, seen) > first.position() {
            return Err(ApiError::BadRequest(format!(
                "Last-Event-ID {attempt}:{seen} is ahead of job {id}, which is {}:{}",
                first.attempt, first.state
            )));
        }
    }
    let task_feed = feed.clone();
    Ok(stream(feed, move |out| async move {
        let mut last = resume.map(|(attempt, seen)| position(attempt, seen));
        let mut current = first;
        loop {
            if current.state.is_terminal() {
                return out
                    .send(end_event(&current).id(current.job_event_id()))
                    .await;
            }
            if last.is_none_or(|l| current.position() > l) {
                let event = state_data(&current).id(current.job_event_id());
                out.send(event).await?;
                last = Some(current.position());
            }
            match next_change(&task_feed, &mut changes, id).await {
                Some(change) => current = change,
                None => return Ok(()),
            }
        }
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Comma-separated states; changes into other states are left out.
    pub state: Option<String>,
    /// Only jobs of this recipe.
    pub recipe: Option<String>,
}

struct Filter {
    states: Option<Vec<JobState>>,
    recipe: Option<String>,
    /// Changes of jobs the caller may not see are never sent.
    access: Access,
}

impl Filter {
    fn parse(query: FeedQuery, access: Access) -> Result<Filter, ApiError> {
        let states = query
            .state
            .map(|list| {
                list.split(',')
                    .map(|s| {
                        s.trim().parse::<JobState>().map_err(|_| {
                            ApiError::BadRequest(format!(
                                "state {s:?}: use queued, assigned, running, succeeded, failed, cancelled or timed_out"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Filter {
            states,
            recipe: query.recipe,
            access,
        })
    }

    fn matches(&self, change: &JobChange) -> bool {
        self.access.sees(change.project)
            && self
                .states
                .as_ref()
                .is_none_or(|states| states.contains(&change.state))
            && self.recipe.as_ref().is_none_or(|r| *r == change.recipe)
    }
}

/// Parses an all-jobs stream's id, `<epoch>:<seq>`.
fn parse_feed_id(raw: &str) -> Result<(String, u64), ApiError> {
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

fn reset_event(reason: &str) -> sse::Data {
    json_data(&serde_json::json!({ "reason": reason })).event("reset")
}

/// `GET /api/v1/job-events?state=&recipe=`.
pub async fn all(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<FeedQuery>,
) -> Result<impl Responder, ApiError> {
    let access = Access::of(&req, &state).await?;
    let filter = Filter::parse(query.into_inner(), access)?;
    let resume = last_event_id(&req)?
        .map(|raw| parse_feed_id(&raw))
        .transpose()?;
    let feed = state.job_feed.clone();
    let mut changes = feed.subscribe();
    let replay = resume.map(|(epoch, seq)| feed.since(&epoch, seq));
    let epoch = feed.epoch().to_owned();
    Ok(stream(feed, move |out| async move {
        let mut last_seq = 0;
        let send = |published: &Published| {
            state_data(&published.change).id(format!("{epoch}:{}", published.seq))
        };
        match replay {
            None => {}
            Some(Since::Gap { last }) => {
                out.send(
                    reset_event("changes since Last-Event-ID are no longer kept (or the server restarted): re-read GET /api/v1/jobs")
                        .id(format!("{epoch}:{last}")),
                )
                .await?;
                last_seq = last;
            }
            Some(Since::Changes(list)) => {
                for published in list {
                    last_seq = published.seq;
                    if filter.matches(&published.change) {
                        out.send(send(&published)).await?;
                    }
                }
            }
        }
        loop {
            match changes.recv().await {
                Ok(published) => {
                    if published.seq <= last_seq {
                        continue;
                    }
                    last_seq = published.seq;
                    if filter.matches(&published.change) {
                        out.send(send(&published)).await?;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    out.send(reset_event(&format!(
                        "this stream fell {missed} changes behind: re-read GET /api/v1/jobs"
                    )))
                    .await?;
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
    fn state_ids_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_state_id("2:running").unwrap(),
            (Attempt(2), JobState::Running)
        );
        for bad in ["", "2", "0:queued", "x:queued", "2:sleeping", "-1:queued"] {
            assert!(parse_state_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn feed_ids_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_feed_id("0a1b2c3d:17").unwrap(),
            ("0a1b2c3d".into(), 17)
        );
        for bad in ["17", "zz:1", ":1", "0a:x", "0a:-1"] {
            assert!(parse_feed_id(bad).is_err(), "{bad:?}");
        }
    }
}
